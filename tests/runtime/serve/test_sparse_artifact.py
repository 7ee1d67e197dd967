"""One frozen SPLADE artifact (kind sparse): info, verify and embed --format npz from the file,
then one server of it driven by real clients: HTTP /embed_sparse, gRPC EmbedSparse (and Embed
refused), MCP embed."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import scipy.sparse

from encoderfile.proto import embed_pb2, embed_pb2_grpc
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from tests.fixtures.artifacts import run_artifact
from tests.runtime.serve.conftest import Server

TEXTS = ["The cat sleeps on the sofa.", "Where can I buy cheap flights to Lisbon?"]


@pytest.fixture(scope="module")
def dense(splade_bundle: Path) -> np.ndarray:
    return Embedder(open_bundle(splade_bundle), threads=1).embed(TEXTS).vectors


def test_the_artifact_describes_verifies_and_writes_csr(
    splade_artifact: Path, artifact_env: dict[str, str], dense: np.ndarray
) -> None:
    info = run_artifact(splade_artifact, "info", "--json", env=artifact_env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["kind"] == "sparse"
    verify = run_artifact(splade_artifact, "verify", env=artifact_env)
    assert verify.returncode == 0 and b"ok" in verify.stdout + verify.stderr
    npz = run_artifact(splade_artifact, "embed", *TEXTS, "--format", "npz", env=artifact_env)
    assert npz.returncode == 0, npz.stderr
    np.testing.assert_array_equal(scipy.sparse.load_npz(io.BytesIO(npz.stdout)).toarray(), dense)


def test_real_clients(sparse_server: Server, dense: np.ndarray) -> None:
    server = sparse_server
    active = [np.flatnonzero(v).tolist() for v in dense]
    rows = httpx.post(f"{server.url}/embed_sparse", json={"inputs": TEXTS}, timeout=30).json()
    assert [[t["index"] for t in row] for row in rows] == active

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = embed_pb2_grpc.EmbedderStub(channel)
        reply = stub.EmbedSparse(
            embed_pb2.EmbedSparseRequest(inputs=TEXTS, return_tokens=True), timeout=30
        )
        assert [list(e.indices) for e in reply.embeddings] == active
        np.testing.assert_allclose(reply.embeddings[0].values, dense[0][active[0]], rtol=1e-6)
        assert "cat" in reply.embeddings[0].terms and reply.total_tokens > 0
        assert stub.Info(embed_pb2.InfoRequest(), timeout=30).kind == "sparse"
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(embed_pb2.EmbedRequest(inputs=["a"]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is a sparse artifact" in str(refused.value.details())

    from tests.runtime.serve.test_mcp import http_client

    async def session() -> dict:
        async with http_client(server, key=None) as client:
            listed = {t.name for t in (await client.list_tools()).tools}
            assert listed == {"embed", "info"}
            result = await client.call_tool("embed", {"texts": TEXTS, "return_tokens": True})
            assert not result.is_error, result
            return dict(result.structured_content or {})

    answer = asyncio.run(session())
    assert [e["indices"] for e in answer["embeddings"]] == active
    assert "cat" in answer["embeddings"][0]["tokens"]


def test_frozen_sparse_artifact_runs_air_gapped(
    splade_artifact: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    """No network namespace, an empty environment and HOME: embed and verify still work."""
    from tests.test_freeze import air_gapped

    bare, _ = air_gapped(tmp_path)
    expected = run_artifact(splade_artifact, "embed", *TEXTS, env=artifact_env)
    offline = run_artifact(splade_artifact, "embed", *TEXTS, env={}, prefix=bare)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == expected.stdout and b'"indices"' in offline.stdout
    assert run_artifact(splade_artifact, "verify", env={}, prefix=bare).returncode == 0
