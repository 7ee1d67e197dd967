"""Every sh and python block of docs/serve.md runs against a served all-MiniLM-L6-v2 bundle."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.serve.conftest import Server, serving

ROOT = Path(__file__).parents[3]
DOC = ROOT / "docs" / "serve.md"
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)


@pytest.fixture(scope="module")
def minilm_server(
    minilm_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from serving(minilm_bundle, tmp_path_factory)


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def run_block(kind: str, code: str, server: Server, cwd: Path) -> str:
    code = code.replace("localhost:8080", server.url.removeprefix("http://"))
    code = code.replace("localhost:50051", server.grpc_target)
    argv = (
        ["bash", "-euo", "pipefail", "-c", code] if kind == "sh" else [sys.executable, "-c", code]
    )
    # `python` in the docs is the reader's venv: the interpreter running these tests.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path}
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{kind} block failed:\n{code}\n{result.stderr}"
    return result.stdout


def json_values(text: str) -> list[dict]:
    """The JSON objects at the start of `text`, written back to back (curl -s adds no newline)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text) and text[at] == "{":
        value, at = decoder.raw_decode(text, at)
        values.append(value)
        at += len(text[at:]) - len(text[at:].lstrip())
    return values


def test_doc_has_the_examples() -> None:
    kinds = [kind for kind, _ in blocks()]
    assert kinds.count("sh") >= 5 and kinds.count("python") == 3


def test_every_example_runs(minilm_server: Server, tmp_path: Path) -> None:
    (tmp_path / "encoderfile/proto").mkdir(parents=True)
    shutil.copy(ROOT / "encoderfile/proto/embed.proto", tmp_path / "encoderfile/proto")
    outputs = {code: run_block(kind, code, minilm_server, tmp_path) for kind, code in blocks()}
    by_route = {code.split("localhost:8080")[1].split()[0]: out for code, out in outputs.items()
                if code.startswith("curl")}  # fmt: skip

    health, ready, info = json_values(by_route["/health"])
    assert health["status"] == "OK" and ready["status"] == "ready"
    assert info["dimensions"] == [384, 256, 128]
    assert len(json_values(by_route["/embed/batch"])[0]["embeddings"]) == 2
    openai_reply, tokenized = json_values(by_route["/v1/embeddings"])[:2]
    assert [len(d["embedding"]) for d in openai_reply["data"]] == [256, 256]
    assert tokenized["data"][0]["tokens"] == ["[CLS]", "hello", "world", "[SEP]"]
    assert "encoderfile_requests_total{" in by_route["/v1/embeddings"]

    error_block = next(code for code in outputs if '"dim": 500' in code)
    documented = error_block.split("# ", 1)[1].strip()
    assert outputs[error_block].strip() == documented, "the documented error drifted"
    single = next(out for code, out in outputs.items() if '"dim": 128' in code)
    assert len(json_values(single)[0]["embedding"]) == 128

    printed = [out.strip() for code, out in outputs.items() if "print(" in code]
    assert printed[0].startswith("2 256 ")
    assert printed[1].splitlines() == ["True all-minilm-l6-v2 384", "128 [3, 3]"]
    assert int(printed[2]) == 3
    assert (tmp_path / "encoderfile/proto/embed_pb2_grpc.py").is_file()


def test_readme_python_example_runs(minilm_server: Server, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    examples = [code for kind, code in BLOCK.findall(readme) if kind == "python"]
    assert examples, "the README lost its openai example"
    for code in examples:
        assert run_block("python", code, minilm_server, tmp_path).split() == ["2", "128"]
