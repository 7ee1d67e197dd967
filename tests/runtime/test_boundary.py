"""The runtime imports nothing from the builder: checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = [
    "onnx",
    "yaml",
    "huggingface_hub",
    "torch",
    "typer",
    "pydantic",
    "encoderfile.recipe",
    "encoderfile.resolve",
    "encoderfile.splice",
    "encoderfile.verify",
    "encoderfile.bundle",
    "encoderfile.cli",
    "encoderfile.compiler",
    "encoderfile.freeze",
]
SERVING = ["uvicorn", "starlette", "grpc", "google.protobuf", "encoderfile.runtime.server"]

PROBE = """
import json, sys
from encoderfile.runtime.cli import main
rc = main(sys.argv[2:])
loaded = sorted(sys.modules)
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": rc, "modules": loaded}, fh)
"""


def loaded_modules(tmp_path: Path, *args: str) -> list[str]:
    report = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    result = json.loads(report.read_text())
    assert result["rc"] == 0
    return result["modules"]


def matching(modules: list[str], prefixes: list[str]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_embed_imports_no_builder_and_no_server(tiny_bundle: Path, tmp_path: Path) -> None:
    modules = loaded_modules(tmp_path, "--bundle", str(tiny_bundle), "embed", "hello world")
    assert "onnxruntime" in modules and "tokenizers" in modules  # the probe did run
    assert matching(modules, FORBIDDEN + SERVING) == []


def test_info_and_verify_import_no_builder(tiny_bundle: Path, tmp_path: Path) -> None:
    for command in ("info", "verify"):
        modules = loaded_modules(tmp_path, "--bundle", str(tiny_bundle), command)
        assert matching(modules, FORBIDDEN + SERVING) == []


def test_runtime_sources_import_only_the_runtime() -> None:
    """Static check that catches an import on a path the probes above do not take."""
    allowed = ("encoderfile.errors", "encoderfile.runtime", "encoderfile.proto", "encoderfile")
    for path in sorted((ROOT / "encoderfile" / "runtime").glob("*.py")):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                name = words[1].rstrip(",")
                if name.startswith("encoderfile"):
                    assert name.startswith(allowed) and name not in FORBIDDEN, (path, line)
                    assert not matching([name], FORBIDDEN), (path, line)
                else:
                    assert not matching([name], FORBIDDEN[:6]), (path, line)
