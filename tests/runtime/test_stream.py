"""`stream`: the batch protocol over pipes, driven by the client encoderfile.ray uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoderfile.ray import FRAME, ArtifactProcess
from encoderfile.runtime import stream
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder

ROOT = Path(__file__).resolve().parents[2]


def stream_command(bundle: Path, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "encoderfile.runtime",
        "--bundle",
        str(bundle),
        "stream",
        *options,
    ]


def test_the_client_and_the_artifact_share_one_protocol() -> None:
    assert stream.FRAME.format == FRAME
    from encoderfile import ray as client

    assert (client.HELLO, client.VECTORS, client.REFUSED) == (
        stream.HELLO,
        stream.VECTORS,
        stream.REFUSED,
    )


@pytest.mark.slow  # runs the runtime in a process
def test_batches_in_vectors_out_one_process(tiny_bundle: Path) -> None:
    process = ArtifactProcess(stream_command(tiny_bundle, "--dimensions", "4"))
    try:
        assert process.info["name"] == "tiny" and process.width == 4
        reference = Embedder(open_bundle(tiny_bundle))
        pid = process.process.pid
        for texts in (["hello world"], ["the quick brown fox", "jumps", "hello\nworld"], []):
            vectors = process.embed(texts)
            assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 4)
            if texts:
                expected = reference.embed(texts, dimensions=4).vectors
                np.testing.assert_array_equal(vectors, expected)
        # a refused batch names the problem and leaves the process serving
        with pytest.raises(ValueError, match=r"batch 4: input 1 is empty"):
            process.embed(["hello", " "])
        np.testing.assert_array_equal(
            process.embed(["fox"]), reference.embed(["fox"], dimensions=4).vectors
        )
        assert process.process.pid == pid and process.process.poll() is None
    finally:
        process.close()
    assert process.process.returncode == 0  # end of input ends it cleanly


@pytest.mark.slow  # runs the runtime in a process
def test_malformed_request_is_refused(tiny_bundle: Path) -> None:
    result = subprocess.run(
        stream_command(tiny_bundle),
        input=b'{"texts": "not a list"}\n',
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0
    frames = result.stdout
    kind, length, _ = stream.FRAME.unpack_from(frames, 0)
    assert kind == stream.HELLO
    kind, length, _ = stream.FRAME.unpack_from(frames, stream.FRAME.size + length)
    assert kind == stream.REFUSED
    assert b'expected {"texts": ["...", ...]}' in frames[-length:]
