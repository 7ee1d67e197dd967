"""Servers started the way a user starts them, on free loopback ports, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.fixtures.tiny_bundle import make_tiny_bundle

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """`<command> serve --port P --grpc-port Q` in a subprocess; logs go to a file."""

    def __init__(self, command: Sequence[str], log: Path, *args: str, env: dict | None = None):
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.grpc_target = f"{HOST}:{self.grpc_port}"
        self.log_path = log
        argv = [*command, "serve", "--host", HOST, "--port", str(self.port)]
        argv += ["--grpc-port", str(self.grpc_port), *args]
        environ = {**os.environ, "ORT_DISABLE_TELEMETRY": "1", **(env or {})}
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=environ)

    def wait_ready(self, timeout: float = 60) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"server ignored SIGTERM for {timeout} s:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 5) -> str:
        """The log once `text` is in it `count` times: the server writes a request's line up to
        0.1 s after its reply (serve/backlog.py)."""
        deadline = time.monotonic() + timeout
        while (log := self.log()).count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} not {count} times in the log in {timeout} s:\n{log}"
                )
            time.sleep(0.02)
        return log


def runtime_command(bundle: Path) -> list[str]:
    return [sys.executable, "-m", "encoderfile.runtime", "--threads", "1", "--bundle", str(bundle)]


@pytest.fixture(scope="session")
def shared_tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle")


def serving(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server over `bundle` for a fixture's lifetime; it must exit 0 on SIGTERM."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = Server(runtime_command(bundle), log).wait_ready()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def tiny_server(
    shared_tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One shared server over the tiny bundle for the tests of a module."""
    yield from serving(shared_tiny_bundle, tmp_path_factory)


RERANKER_LIMITS = ["--max-inputs", "4", "--max-chars", "2000", "--max-body-bytes", "16384"]


@pytest.fixture(scope="session")
def reranker_server(
    reranker_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The one real server of a reranker artifact (HTTP, gRPC and --mcp) for every test that
    drives it: real clients (test_rerank_routes.py) and schemathesis."""
    log = tmp_path_factory.mktemp("reranker-server") / "server.log"
    command = runtime_command(reranker_bundle)
    server = Server(command, log, "--mcp", *RERANKER_LIMITS).wait_ready()
    yield server
    assert server.stop() == 0, server.log()


SPARSE_LIMITS = ["--max-inputs", "4", "--max-chars", "2000", "--max-body-bytes", "16384"]


@pytest.fixture(scope="session")
def sparse_server(
    splade_artifact: Path, artifact_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The one real server of a sparse artifact, the frozen SPLADE one (HTTP, gRPC and --mcp),
    for every test that drives it: real clients (test_sparse_artifact.py) and schemathesis."""
    log = tmp_path_factory.mktemp("sparse-server") / "server.log"
    command = [str(splade_artifact), "--threads", "1"]
    server = Server(command, log, "--mcp", *SPARSE_LIMITS, env=artifact_env).wait_ready()
    yield server
    assert server.stop() == 0, server.log()
