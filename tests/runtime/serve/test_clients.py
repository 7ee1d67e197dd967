"""Every python and js block of docs/clients.md, run unmodified against a served all-MiniLM-L6-v2
bundle: OpenAI (Python, and JavaScript with Node.js), LangChain (defaults: tiktoken cl100k_base
token ids; and check_embedding_ctx_length=False), LlamaIndex, Chroma, huggingface_hub (TEI) and
gRPC. Each block's `vector` must match the CLI's `embed hello` (cosine >= 0.99999). A client that
is not installed fails its test (the dev extra installs the Python ones; the npm package is
installed here into .cache/npm/, and Node.js with npm must be on PATH): never a skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.serve.conftest import Server, serving

pytestmark = pytest.mark.slow  # a real model served in a subprocess

ROOT = Path(__file__).parents[3]
DOC = ROOT / "docs" / "clients.md"
BLOCK = re.compile(r"^```(sh|python|js)\n(.*?)^```", re.S | re.M)
NPM_OPENAI = "openai@6"  # the newest major that runs on Node.js 20 (openai@7 needs 22)
NPM_DIR = ROOT / ".cache" / "npm" / NPM_OPENAI.replace("@", "-")  # git-ignored, kept between runs
CLIENTS = {  # a word each block has -> its name in the test ids
    "from openai import": "openai",
    "check_embedding_ctx_length=False": "langchain-text",
    "from langchain_openai": "langchain-default",
    "llama_index": "llamaindex",
    "chromadb": "chroma",
    "huggingface_hub": "huggingface-hub",
    "grpc": "grpc",
}


def blocks(kind: str) -> list[str]:
    return [m.group(2) for m in BLOCK.finditer(DOC.read_text()) if m.group(1) == kind]


def client_name(code: str) -> str:
    return next(name for word, name in CLIENTS.items() if word in code)


@pytest.fixture(scope="module")
def minilm_server(
    minilm_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from serving(minilm_bundle, tmp_path_factory)


@pytest.fixture(scope="session")
def npm_openai() -> Path:
    """node_modules holding the `openai` npm package, installed once per machine."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "Node.js and npm are needed to test docs/clients.md's OpenAI JavaScript recipe "
            f"(openai npm package {NPM_OPENAI}); install Node.js 20 or later with npm"
        )
    modules = NPM_DIR / "node_modules"
    if not (modules / "openai" / "package.json").exists():
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        (NPM_DIR / "package.json").write_text('{"private": true}\n')
        argv = [npm, "install", "--no-audit", "--no-fund", "--no-save", NPM_OPENAI]
        result = subprocess.run(argv, cwd=NPM_DIR, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.fail(f"`npm install {NPM_OPENAI}` failed in {NPM_DIR}:\n{result.stderr}")
    return modules


@pytest.fixture(scope="module")
def cli_vector(minilm_bundle: Path) -> np.ndarray:
    argv = [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(minilm_bundle)]
    out = subprocess.run([*argv, "embed", "hello"], capture_output=True, check=True, timeout=120)
    return np.float32(json.loads(out.stdout)["embedding"])


def run(
    code: str, server: Server, cwd: Path, env: dict[str, str], kind: str = "python"
) -> subprocess.CompletedProcess:
    code = code.replace("http://localhost:8080", server.url)
    code = code.replace("localhost:8080", server.url.removeprefix("http://"))
    code = code.replace("localhost:50051", server.grpc_target)
    argv = ["bash", "-euo", "pipefail", "-c", code]
    if kind == "js":  # an ES module beside cwd/node_modules; prints the block's `vector` last
        script = cwd / "recipe.mjs"
        script.write_text(code + "\nconsole.log(JSON.stringify(vector));\n")
        argv = ["node", str(script)]
    elif kind == "python":  # prints the block's `vector` last
        argv = [
            sys.executable,
            "-c",
            code + "\nimport json; print(json.dumps([float(x) for x in vector]))",
        ]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1", **env}
    return subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=180)


def test_doc_has_a_block_per_client() -> None:
    names = [client_name(code) for code in blocks("python")]
    assert sorted(names) == sorted(CLIENTS.values())


@pytest.mark.parametrize("code", blocks("python"), ids=client_name)
def test_client_block_matches_the_cli(
    code: str, minilm_server: Server, cli_vector: np.ndarray, tiktoken_offline: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    # tiktoken (LangChain's default) finds cl100k_base in its cache, as after a first download.
    result = run(code, minilm_server, tmp_path, {"TIKTOKEN_CACHE_DIR": str(tiktoken_offline)})
    assert result.returncode == 0, f"{code}\n{result.stderr}"
    assert cosine(result, cli_vector) >= 0.99999, client_name(code)


def cosine(result: subprocess.CompletedProcess, cli_vector: np.ndarray) -> float:
    """Cosine of the vector a block printed last to the CLI's (printed with -s for the record)."""
    vector = np.float32(json.loads(result.stdout.strip().splitlines()[-1]))
    value = float(vector @ cli_vector / (np.linalg.norm(vector) * np.linalg.norm(cli_vector)))
    print(f"cosine {value:.7f}")
    return value


def test_openai_js_block_matches_the_cli(
    minilm_server: Server, cli_vector: np.ndarray, npm_openai: Path, tmp_path: Path
) -> None:
    """The OpenAI JavaScript recipe, run with Node.js and the `openai` npm package (base64)."""
    (code,) = blocks("js")
    assert 'from "openai"' in code
    (tmp_path / "node_modules").symlink_to(npm_openai, target_is_directory=True)
    result = run(code, minilm_server, tmp_path, {}, "js")
    assert result.returncode == 0, f"{code}\n{result.stderr}"
    assert result.stdout.splitlines()[0] == "384"  # the recipe's own console.log
    assert cosine(result, cli_vector) >= 0.99999


def test_langchain_default_without_tiktoken_table_fails_before_any_request(
    minilm_server: Server, tmp_path: Path
) -> None:
    """Offline with no cached cl100k_base, tiktoken fails in the client (no wrong vector)."""
    code = next(c for c in blocks("python") if client_name(c) == "langchain-default")
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    env = {"TIKTOKEN_CACHE_DIR": str(empty), "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = run(code, minilm_server, tmp_path, env)
    assert result.returncode != 0


def test_sh_blocks_run(minilm_server: Server, tmp_path: Path) -> None:
    outputs = [run(code, minilm_server, tmp_path, {}, "sh") for code in blocks("sh")[1:]]
    for result in outputs:
        assert result.returncode == 0, result.stderr
    embed, tokens = outputs[0].stdout.splitlines()
    assert embed.startswith("[[") and json.loads(tokens)[0][1]["text"] == "hello"
