"""Every python block of docs/clients.md, run unmodified against a served all-MiniLM-L6-v2
bundle: OpenAI, LangChain (defaults: tiktoken cl100k_base token ids; and
check_embedding_ctx_length=False), LlamaIndex, Chroma, huggingface_hub (TEI) and gRPC. Each
block's `vector` must match the CLI's `embed hello` (cosine >= 0.99999)."""

from __future__ import annotations

import json
import os
import re
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
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)
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
    if kind == "python":  # prints the block's `vector` last
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
    vector = np.float32(json.loads(result.stdout.strip().splitlines()[-1]))
    cosine = vector @ cli_vector / (np.linalg.norm(vector) * np.linalg.norm(cli_vector))
    assert cosine >= 0.99999, (client_name(code), cosine)


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
