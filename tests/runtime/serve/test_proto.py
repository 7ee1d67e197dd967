"""The checked-in gRPC stubs are exactly what grpc_tools.protoc makes from embed.proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs grpc_tools.protoc in a process

ROOT = Path(__file__).parents[3]
PROTO = "encoderfile/proto/embed.proto"
STUBS = ("embed_pb2.py", "embed_pb2.pyi", "embed_pb2_grpc.py")


def test_stubs_match_a_fresh_protoc_run(tmp_path: Path) -> None:
    (tmp_path / PROTO).parent.mkdir(parents=True)
    shutil.copy(ROOT / PROTO, tmp_path / PROTO)
    # The command documented at the top of embed.proto.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            PROTO,
        ],
        cwd=tmp_path,
        check=True,
    )
    for name in STUBS:
        fresh = (tmp_path / "encoderfile/proto" / name).read_text()
        checked_in = (ROOT / "encoderfile/proto" / name).read_text()
        assert fresh == checked_in, f"{name} is stale: rerun the command in {PROTO}"
