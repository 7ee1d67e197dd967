"""Servers started the way a user starts them, on free loopback ports, stopped with SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.fixtures.tiny_bundle import make_tiny_bundle

# Mean pooling (ReduceSum, also MatMul) sums in an order that onnxruntime picks by batch size and
# padding, so a vector can move by 1 ulp with its neighbours. Masked max pooling is exact in any
# order: with it, batched and alone vectors must be bitwise equal.
INVARIANT_POOLING = [
    ("Cast", ["attention_mask"], ["mask"], {"to": 1}),
    ("Unsqueeze", ["mask", "last"], ["mask3"], {}),
    ("Mul", ["token_states", "mask3"], ["kept"], {}),
    ("Sub", ["mask3", "one_f"], ["off"], {}),  # 0 for tokens, -1 for padding
    ("Mul", ["off", "big"], ["penalty"], {}),
    ("Add", ["kept", "penalty"], ["masked"], {}),
    ("ReduceMax", ["masked", "seq"], ["pooled"], {"keepdims": 0}),
    ("ReduceL2", ["pooled", "last"], ["norm"], {"keepdims": 1}),
    ("Div", ["pooled", "norm"], ["sentence_embedding"], {}),
]

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


def runtime_command(bundle: Path) -> list[str]:
    return [sys.executable, "-m", "encoderfile.runtime", "--threads", "1", "--bundle", str(bundle)]


@pytest.fixture(scope="session")
def shared_tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle")


@pytest.fixture(scope="session")
def invariant_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with INVARIANT_POOLING in place of its mean pooling."""
    import onnx
    from onnx import helper, numpy_helper

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("invariant") / "bundle")
    model = onnx.load(bundle / "model.onnx")
    gather = next(n for n in model.graph.node if n.op_type == "Gather")
    table = next(i for i in model.graph.initializer if i.name == "table")
    nodes = [gather] + [helper.make_node(op, i, o, **a) for op, i, o, a in INVARIANT_POOLING]
    constants = [
        numpy_helper.from_array(np.array([1], np.int64), "seq"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
        numpy_helper.from_array(np.array(1, np.float32), "one_f"),
        numpy_helper.from_array(np.array(1e9, np.float32), "big"),
    ]
    graph = helper.make_graph(
        nodes, "invariant", model.graph.input, model.graph.output, [table, *constants]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (bundle / "model.onnx").write_bytes(model.SerializeToString())
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = hashlib.sha256(
        (bundle / "model.onnx").read_bytes()
    ).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return bundle


@pytest.fixture(scope="module")
def tiny_server(
    shared_tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One shared server over the tiny bundle for the tests of a module."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = Server(runtime_command(shared_tiny_bundle), log).wait_ready()
    yield server
    assert server.stop() == 0, server.log()
