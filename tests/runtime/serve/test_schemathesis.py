"""Schemathesis against a server's own GET /openapi.json, started on loopback as a user starts
it: every operation, requests valid and invalid under the document (examples, coverage and
fuzzing phases), every check. The server and its document must agree: zero failures."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.serve.conftest import Server, runtime_command

pytestmark = pytest.mark.slow  # integration: schemathesis against a running server

HERE = Path(__file__).resolve().parent
LIMITS = ["--max-inputs", "4", "--max-chars", "64", "--max-body-bytes", "16384"]
EXAMPLES = 20  # per operation and phase: bounded, and deterministic so every run is the same


@pytest.fixture(scope="module")
def server(shared_tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("schemathesis") / "server.log"
    server = Server(runtime_command(shared_tiny_bundle), log, "--no-grpc", *LIMITS).wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def test_server_agrees_with_its_openapi_document(server: Server, tmp_path: Path) -> None:
    run(server, tmp_path, least=13)


def test_reranker_server_agrees_with_its_openapi_document(
    reranker_server: Server, tmp_path: Path
) -> None:
    """A reranker's document: /rerank and /v1/rerank instead of the embedding routes."""
    run(reranker_server, tmp_path, least=8)


def test_sparse_server_agrees_with_its_openapi_document(
    sparse_server: Server, tmp_path: Path
) -> None:
    """A sparse artifact's document: /embed_sparse instead of the embedding routes."""
    run(sparse_server, tmp_path, least=8)


def run(server: Server, tmp_path: Path, least: int) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--mode",
            "all",  # positive and negative
            "--max-examples",
            str(EXAMPLES),
            "--generation-deterministic",
            "--continue-on-failure",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its example cache (.schemathesis/) stays out of the tree
    )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    assert selected and selected.group(1) == selected.group(2), summary  # every operation
    assert f"Tested: {selected.group(1)}" in summary and int(selected.group(1)) >= least, summary
    assert " passed" in summary and "failure" not in summary.split("Test cases:")[-1], summary
