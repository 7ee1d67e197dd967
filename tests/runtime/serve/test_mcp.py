"""MCP driven by the official MCP client: stdio (`mcp`, venv runtime and frozen artifact) and
streamable HTTP (`serve --mcp`, a real server on loopback). Tool results are checked against
the vectors `embed` prints for the same texts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import numpy as np
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.fixtures.artifacts import run_artifact
from tests.fixtures.images import varied_images
from tests.runtime.serve.conftest import Server, runtime_command

ROOT = Path(__file__).parents[3]
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]
KEY = "mcp-test-key"
TOOLS = {"embed", "similarity", "rank", "info"}


def cli_vectors(command: list[str], *args: str, env: dict[str, str] | None = None) -> np.ndarray:
    """What `embed --format json` prints for `args`, as float32 rows."""
    out = subprocess.run(
        [*command, "embed", "--format", "json", *args],
        capture_output=True,
        check=True,
        env=env,
        timeout=120,
    ).stdout
    return np.float32([row["embedding"] for row in json.loads(out)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


async def check_tools(client: Client, command: list[str], env: dict[str, str] | None) -> None:
    """List the tools, call each, compare with `embed`'s vectors; bad arguments are tool errors."""
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == TOOLS
    schema = listed["embed"].input_schema
    assert schema["required"] == ["texts"] and schema["properties"]["texts"]["type"] == "array"
    assert listed["rank"].annotations is not None and listed["rank"].annotations.read_only_hint

    info = (await client.call_tool("info", {})).structured_content
    assert info is not None
    dims = info["dimension"]
    small = min(info["dimensions"])
    described = json.loads(subprocess.check_output([*command, "info", "--json"], env=env))
    for key in ("name", "model_id", "revision", "sha256", "dimension", "dimensions", "prompts"):
        assert info[key] == described[key], key

    result = await client.call_tool("embed", {"texts": TEXTS})
    assert not result.is_error and result.structured_content is not None
    got = np.float32(result.structured_content["embeddings"])
    assert got.shape == (len(TEXTS), dims)
    np.testing.assert_array_equal(got, cli_vectors(command, *TEXTS, env=env))

    result = await client.call_tool(
        "embed", {"texts": TEXTS[:1], "dimensions": small, "prompt": "query"}
    )
    assert result.structured_content is not None
    np.testing.assert_array_equal(
        np.float32(result.structured_content["embeddings"]),
        cli_vectors(command, "--dimensions", str(small), "--prompt", "query", TEXTS[0], env=env),
    )

    pairs = [[TEXTS[0], TEXTS[1]], [TEXTS[1], TEXTS[1]], [TEXTS[2], TEXTS[0]]]
    result = await client.call_tool("similarity", {"pairs": pairs})
    assert result.structured_content is not None
    flat = cli_vectors(command, *[t for pair in pairs for t in pair], env=env)
    np.testing.assert_allclose(
        result.structured_content["scores"], cosine(flat[0::2], flat[1::2]), atol=1e-6
    )
    assert result.structured_content["scores"][1] == pytest.approx(1.0, abs=1e-6)

    result = await client.call_tool("rank", {"query": TEXTS[0], "documents": TEXTS, "top_k": 2})
    assert result.structured_content is not None
    ranked = result.structured_content["results"]
    query = cli_vectors(command, "--prompt", "query", TEXTS[0], env=env)
    documents = cli_vectors(command, "--prompt", "document", *TEXTS, env=env)
    scores = cosine(documents, query)
    assert [r["index"] for r in ranked] == list(np.argsort(-scores, kind="stable")[:2])
    np.testing.assert_allclose([r["score"] for r in ranked], np.sort(scores)[::-1][:2], atol=1e-6)

    bad: list[tuple[str, dict[str, Any], str]] = [
        ("embed", {"texts": "not a list"}, "texts"),
        ("embed", {"texts": []}, "texts"),
        ("embed", {"texts": ["  "]}, "'texts[0]' is empty or blank"),
        ("embed", {"texts": ["a"], "dimensions": 3}, "dimensions=3 is not offered"),
        ("embed", {"texts": ["a"], "prompt": "nope"}, "prompt 'nope' is unknown"),
        ("similarity", {"pairs": [["only one"]]}, "pairs"),
        ("similarity", {"pairs": [["a", ""]]}, "'pairs[0][1]' is empty or blank"),
        ("rank", {"query": "a", "documents": ["b"], "top_k": 0}, "top_k"),
        ("rank", {"query": "", "documents": ["b"]}, "'query' is empty or blank"),
        ("no_such_tool", {}, "no_such_tool"),
    ]
    for name, arguments, words in bad:
        result = await client.call_tool(name, arguments)
        assert result.is_error, (name, arguments)
        assert words in result.content[0].text, (name, arguments, result.content[0].text)
    # still serving after the errors
    assert not (await client.call_tool("embed", {"texts": ["still here"]})).is_error

    resource = await client.read_resource("encoderfile://info")
    assert json.loads(resource.contents[0].text)["sha256"] == described["sha256"]


# --------------------------------------------------------------------------------------- stdio


def stdio(command: list[str], env: dict[str, str] | None = None) -> Client:
    return Client(StdioServerParameters(command=command[0], args=[*command[1:], "mcp"], env=env))


@pytest.mark.slow  # starts `mcp` in a process
def test_stdio_tools_match_embed(shared_tiny_bundle: Path) -> None:
    command = runtime_command(shared_tiny_bundle)
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}

    async def session() -> None:
        async with stdio(command, env) as client:
            await check_tools(client, command, env)

    asyncio.run(session())


@pytest.mark.slow  # starts `mcp` in a process
def test_stdio_image_tool_matches_embed_image(image_bundle: Path, tmp_path: Path) -> None:
    command = runtime_command(image_bundle)
    pictures = []
    for name, data in list(varied_images().items())[:2]:
        pictures.append(tmp_path / name)
        pictures[-1].write_bytes(data)

    async def session() -> dict[str, Any]:
        async with stdio(command) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == TOOLS | {"embed_images"}
            contents = [base64.b64encode(p.read_bytes()).decode() for p in pictures]
            bad = await client.call_tool("embed_images", {"images": ["not an image"]})
            assert bad.is_error and "images[0]" in bad.content[0].text
            result = await client.call_tool("embed_images", {"images": contents})
            assert not result.is_error and result.structured_content is not None
            return result.structured_content

    got = asyncio.run(session())
    expected = cli_vectors(command, "--image", *map(str, pictures))
    np.testing.assert_array_equal(np.float32(got["embeddings"]), expected)


@pytest.mark.slow
def test_frozen_artifact_stdio_tools_match_embed(
    minilm_artifact: Path, artifact_env: dict[str, str]
) -> None:
    command = [str(minilm_artifact)]
    assert run_artifact(minilm_artifact, "info", env=artifact_env).returncode == 0

    async def session() -> None:
        async with stdio(command, artifact_env) as client:
            listed = {t.name for t in (await client.list_tools()).tools}
            assert listed == TOOLS
            info = (await client.call_tool("info", {})).structured_content
            assert info is not None and info["dimension"] == 384
            result = await client.call_tool("embed", {"texts": TEXTS, "dimensions": 128})
            assert result.structured_content is not None
            np.testing.assert_array_equal(
                np.float32(result.structured_content["embeddings"]),
                cli_vectors(command, "--dimensions", "128", *TEXTS, env=artifact_env),
            )
            pairs = [
                ["a cat sits on the mat", "a kitten rests on a rug"],
                ["a cat", "stock prices"],
            ]
            scores = (await client.call_tool("similarity", {"pairs": pairs})).structured_content
            assert scores is not None and scores["scores"][0] > scores["scores"][1]
            documents = ["The stock market fell today.", "Cats are small furry pets.", "Rain."]
            ranked = await client.call_tool(
                "rank", {"query": "Which animal purrs?", "documents": documents}
            )
            assert ranked.structured_content is not None
            assert ranked.structured_content["results"][0]["index"] == 1
            bad = await client.call_tool("embed", {"texts": ["a"], "dimensions": 500})
            assert bad.is_error and "Use a width from 1 to 384" in bad.content[0].text

    asyncio.run(session())


# -------------------------------------------------------------------------------- streamable HTTP


@pytest.fixture(scope="module")
def mcp_server(
    shared_tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("mcp-server")
    keys = tmp / "keys"
    keys.write_text(f"# test key\n{KEY}\n")
    command = runtime_command(shared_tiny_bundle)
    server = Server(command, tmp / "server.log", "--mcp", "--api-key-file", str(keys))
    yield server.wait_ready()
    assert server.stop() == 0, server.log()


def http_client(server: Server, key: str | None = KEY) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = streamable_http_client(
        f"{server.url}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=30)
    )
    return Client(transport)


def test_http_tools_match_embed(mcp_server: Server, shared_tiny_bundle: Path) -> None:
    async def session() -> None:
        async with http_client(mcp_server) as client:
            await check_tools(client, runtime_command(shared_tiny_bundle), None)

    asyncio.run(session())
    metrics = httpx.get(
        f"{mcp_server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}
    ).text
    assert 'route="/mcp",status="200"' in metrics  # the shared request log and metrics


def test_http_mcp_requires_the_api_key(mcp_server: Server) -> None:
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    refused = mcp_server.log().count("POST /mcp 401")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = httpx.post(f"{mcp_server.url}/mcp", json=hello, headers=headers)
        assert answer.status_code == 401
        assert "API key" in answer.json()["error"]["message"]

    async def without_key() -> None:
        async with http_client(mcp_server, key=None) as client:
            await client.list_tools()

    refused += 2
    mcp_server.wait_for_log("POST /mcp 401", refused)
    with pytest.raises(BaseExceptionGroup):  # the SDK's client gives up on the 401
        asyncio.run(without_key())
    mcp_server.wait_for_log("POST /mcp 401", refused + 1)
    assert httpx.get(f"{mcp_server.url}/health").status_code == 200  # open routes stay open


def test_plain_serve_has_no_mcp_route(tiny_server: Server) -> None:
    assert httpx.post(f"{tiny_server.url}/mcp", json={}).status_code == 404


@pytest.mark.slow  # runs the runtime in a process
def test_serve_mcp_needs_http(shared_tiny_bundle: Path) -> None:
    command = runtime_command(shared_tiny_bundle)
    result = subprocess.run(
        [*command, "serve", "--mcp", "--no-http"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "encoderfile: --mcp serves over HTTP, which --no-http turns off. Drop one."
    )


@pytest.mark.slow  # runs the runtime in a process
def test_mcp_command_is_listed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "encoderfile.runtime", "--help"], capture_output=True, text=True
    ).stdout
    assert "mcp" in out and "serve MCP tools over stdio" in out


# ------------------------------------------------------------------------------------------ docs


def doc_blocks(path: Path, kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", path.read_text(), re.S | re.M)


def test_documented_client_configs_launch_mcp() -> None:
    for doc in (ROOT / "README.md", ROOT / "docs" / "serve.md"):
        configs = [json.loads(block) for block in doc_blocks(doc, "json")]
        servers = [s for c in configs for s in c.get("mcpServers", {}).values()]
        assert servers, f"{doc.name} lost its MCP client configuration"
        assert all(s["args"] == ["mcp"] and s["command"].startswith("/") for s in servers)


@pytest.mark.slow
def test_documented_session_runs_against_the_artifact(
    minilm_artifact: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    doc = ROOT / "docs" / "serve.md"
    (code,) = doc_blocks(doc, "py")
    printed = next(b for b in doc_blocks(doc, "text") if b.startswith("['embed'"))
    code = code.replace("./dist/all-minilm-l6-v2", str(minilm_artifact))
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=artifact_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    tools, ranked, error = result.stdout.splitlines()
    shown = printed.splitlines()
    assert tools == shown[0] and error == shown[2], "the documented session drifted"
    pattern = r"'index': (\d+), 'score': ([\d.]+)"
    documented = re.findall(pattern, shown[1].replace("...", ""))
    got = re.findall(pattern, ranked)
    assert [i for i, _ in got] == [i for i, _ in documented]
    assert all(a.startswith(b) for (_, a), (_, b) in zip(got, documented, strict=True))


# ------------------------------------------------------------------- hostile stdio (issue 30)

HOSTILE_LINES: list[tuple[bytes, int, Any, str]] = [  # line, code, id, words
    (b"not json", -32700, None, "is not JSON"),
    (b'{"jsonrpc": "2.0", "id": 3,', -32700, None, "is not JSON"),
    (b'{"jsonrpc": "2.0", "method": "ping", "id": "\xff"}', -32700, None, "not UTF-8"),
    (b"[]", -32600, None, "an array"),
    (b"42", -32600, None, "not an object"),
    (b"{}", -32600, None, '"jsonrpc": "2.0"'),
    (b'{"jsonrpc": "2.0", "id": 4}', -32600, 4, "it has no method"),
    (b'{"jsonrpc": "1.0", "id": 5, "method": "ping"}', -32600, 5, '"jsonrpc": "2.0"'),
    (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', -32600, None, "id is neither"),
    (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', -32600, None, "id is neither"),
    (b"[" * 100_000, -32700, None, "is not JSON"),
    (b"x" * 3_000_000, -32600, None, "is over 2097152 bytes"),
]


def raw_mcp(bundle: Path) -> subprocess.Popen[bytes]:
    """`mcp` on raw pipes, initialised."""
    proc = subprocess.Popen(
        [*runtime_command(bundle), "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}  # fmt: skip
    assert "result" in raw_call(proc, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})  # fmt: skip
    raw_send(proc, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())
    return proc


def raw_send(proc: subprocess.Popen[bytes], line: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()


def raw_reply(proc: subprocess.Popen[bytes], timeout: float = 30) -> dict[str, Any]:
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no reply within {timeout} s"
    return json.loads(proc.stdout.readline())  # type: ignore[no-any-return]


def raw_call(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> dict[str, Any]:
    raw_send(proc, json.dumps(message).encode())
    return raw_reply(proc)


@pytest.mark.slow  # starts `mcp` in a process
def test_stdio_answers_every_hostile_line(shared_tiny_bundle: Path) -> None:
    """Each bad line gets a JSON-RPC error (id null unless the message had a valid one) and a
    warning on stderr; a lone surrogate is a tool error as HTTP's 400; serving goes on."""
    proc = raw_mcp(shared_tiny_bundle)
    try:
        for line, code, ident, words in HOSTILE_LINES:
            raw_send(proc, line)
            reply = raw_reply(proc)
            assert reply["id"] == ident and reply["error"]["code"] == code, (line[:40], reply)
            assert words in reply["error"]["message"], (line[:40], reply)

        def call(n: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
            params = {"name": name, "arguments": arguments}
            reply = raw_call(proc, {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params})  # fmt: skip
            assert reply["id"] == n
            return reply["result"]  # type: ignore[no-any-return]

        surrogate = call(10, "embed", {"texts": ["a \ud800 b"]})
        assert surrogate["isError"]
        assert "'texts[0]' has a lone UTF-16 surrogate" in surrogate["content"][0]["text"]
        for arguments, words in (
            ({"texts": "x"}, "embed: 'texts': input should be a valid list."),
            ({"texts": []}, "embed: 'texts': list should have at least 1 item"),
        ):
            text = call(11, "embed", arguments)["content"][0]["text"]
            assert text.startswith(words) and "pydantic" not in text and "input_value" not in text
        unknown = call(12, "no\ud800such", {})  # echoed: sent with a JSON escape, not lost
        assert unknown["isError"] and "no\ud800such" in unknown["content"][0]["text"]
        assert not call(13, "embed", {"texts": ["still here"]})["isError"]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == 0
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert "mcp stdin line 3" in log and "mcp stdin line 14" in log  # after 2 of handshake


@pytest.mark.slow  # starts `mcp` in a process
def test_stdio_stops_quietly_when_the_client_closes_stdout(shared_tiny_bundle: Path) -> None:
    proc = raw_mcp(shared_tiny_bundle)
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    proc.stdout.close()
    raw_send(proc, b'{"jsonrpc": "2.0", "id": 2, "method": "ping"}')
    proc.stdin.close()
    assert proc.wait(30) == 0
    log = proc.stderr.read().decode()
    assert "stdout is closed" in log and "Traceback" not in log, log
