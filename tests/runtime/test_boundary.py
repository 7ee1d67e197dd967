"""The runtime imports nothing from the builder, and its layers import only downwards.

The build side is derived, not listed: every encoderfile module outside the runtime, errors and
proto (encoderfile.freeze.builder_modules, which also feeds the freeze step's exclude list).
"""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from encoderfile import freeze

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "encoderfile" / "runtime"
BUILDER_LIBRARIES = ["onnx", "yaml", "huggingface_hub", "torch", "typer", "pydantic", "PyInstaller"]
SERVING = ["uvicorn", "starlette", "grpc", "google.protobuf", "encoderfile.runtime.serve"]
# The MCP SDK and what it needs: only `mcp` and `serve --mcp` load them, through this module.
MCP = ["mcp", "mcp_types", "pydantic", "pydantic_core", "cryptography", "httpx2", "sse_starlette"]
MCP_MODULE = "encoderfile.runtime.serve.mcp"
# Layers, lowest first: a module may import its own layer and those below, never above.
LAYERS = [
    [],  # the core: every other runtime module
    ["encoderfile.runtime.serve"],
    ["encoderfile.runtime.cli", "encoderfile.runtime.__main__"],
]

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


def build_side(modules: list[str]) -> list[str]:
    """encoderfile modules that are not runtime-side (errors, runtime, proto, the package)."""
    own = [m for m in modules if m.startswith("encoderfile.")]
    return [m for m in own if not matching([m], list(freeze.RUNTIME_SIDE))]


# `serve` in-process until /ready answers, then the loaded modules, then SIGTERM to itself.
SERVE_PROBE = """
import json, os, signal, sys, threading, time, urllib.request
from encoderfile.runtime.cli import main
report, url = sys.argv[1], sys.argv[2]

def watch():
    while True:
        try:
            urllib.request.urlopen(url + "/ready", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    with open(report, "w") as fh:
        json.dump({"rc": 0, "modules": sorted(sys.modules)}, fh)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
sys.exit(main(sys.argv[3:]))
"""


def serve_modules(tmp_path: Path, bundle: Path, *args: str) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = tmp_path / "serve-modules.json"
    argv = ["--bundle", str(bundle), "serve", "--no-grpc", "--port", str(port), *args]
    subprocess.run(
        [sys.executable, "-c", SERVE_PROBE, str(report), f"http://127.0.0.1:{port}", *argv],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    modules: list[str] = json.loads(report.read_text())["modules"]
    return modules


@pytest.mark.slow  # runs the runtime in processes
def test_only_mcp_commands_import_the_mcp_sdk(tiny_bundle: Path, tmp_path: Path) -> None:
    for command in (["embed", "hello world"], ["info"]):
        modules = loaded_modules(tmp_path, "--bundle", str(tiny_bundle), *command)
        assert matching(modules, MCP) == [], command
    plain = serve_modules(tmp_path, tiny_bundle)
    assert "uvicorn" in plain and matching(plain, MCP) == []
    with_mcp = serve_modules(tmp_path, tiny_bundle, "--mcp")
    assert {"mcp", "pydantic", MCP_MODULE} <= set(with_mcp)


def test_builder_modules_are_derived_and_excluded_from_the_freeze() -> None:
    builder = freeze.builder_modules()
    assert {"encoderfile.recipe", "encoderfile.cli", "encoderfile.splice.pooling"} <= set(builder)
    assert not matching(builder, list(freeze.RUNTIME_SIDE))
    assert set(builder) <= set(freeze.EXCLUDES)


@pytest.mark.slow  # runs the runtime in a process
def test_embed_imports_no_builder_and_no_server(tiny_bundle: Path, tmp_path: Path) -> None:
    modules = loaded_modules(tmp_path, "--bundle", str(tiny_bundle), "embed", "hello world")
    assert "onnxruntime" in modules and "tokenizers" in modules  # the probe did run
    assert build_side(modules) == []
    assert matching(modules, BUILDER_LIBRARIES + SERVING) == []


@pytest.mark.slow  # runs the runtime in a process
def test_info_and_verify_import_no_builder(tiny_bundle: Path, tmp_path: Path) -> None:
    for command in ("info", "verify"):
        modules = loaded_modules(tmp_path, "--bundle", str(tiny_bundle), command)
        assert build_side(modules) == []
        assert matching(modules, BUILDER_LIBRARIES + SERVING) == []


def imports(source: str, module: str) -> list[str]:
    """Absolute names a module's source imports, `from encoderfile import X` as encoderfile.X."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def layer(module: str) -> int:
    return max((i for i, names in enumerate(LAYERS) if matching([module], names)), default=0)


def violations(source: str, module: str) -> list[str]:
    """Imports of the build side or of a higher runtime layer in one runtime module."""
    found = []
    builder = freeze.builder_modules()
    for name in imports(source, module):
        if matching([name], MCP):
            if module != MCP_MODULE:
                found.append(f"{module} imports an MCP library outside {MCP_MODULE}: {name}")
        elif matching([name], builder) or matching([name], BUILDER_LIBRARIES):
            found.append(f"{module} imports the build side: {name}")
        elif name.startswith("encoderfile.runtime") and layer(name) > layer(module):
            found.append(f"{module} imports {name} from a higher layer")
    return found


def runtime_modules() -> list[tuple[str, str]]:
    out = []
    for path in sorted(RUNTIME.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path.read_text()))
    return out


def test_runtime_sources_import_only_the_runtime_and_downwards() -> None:
    """Static: catches imports on paths the probes above do not take (lazy ones included)."""
    problems = [v for name, source in runtime_modules() for v in violations(source, name)]
    assert problems == []


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from encoderfile import recipe", "encoderfile.runtime.embedder"),
        ("import encoderfile.splice.pooling", "encoderfile.runtime.cli"),
        ("def f():\n    import yaml", "encoderfile.runtime.artifact"),
        ("from encoderfile.runtime.serve import service", "encoderfile.runtime.embedder"),
        ("from ..cli import main", "encoderfile.runtime.serve.server"),
        ("def f():\n    from mcp.server.mcpserver import MCPServer", "encoderfile.runtime.cli"),
        ("from pydantic import Field", "encoderfile.runtime.serve.http_app"),
    ],
)
def test_the_static_check_can_fail(source: str, module: str) -> None:
    assert violations(source, module)
