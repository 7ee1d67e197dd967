"""JoinedWrites: a response's head and body leave in one write, in order, and nothing held is lost."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from encoderfile.runtime.serve.guards import JoinedWrites, timed_protocol


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def run_steps(*steps: Any) -> RecordingTransport:
    """Each step runs in its own turn of a real event loop, then the loop runs dry."""

    async def main() -> RecordingTransport:
        transport = RecordingTransport()
        joined = JoinedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        for step in steps:
            step(joined)
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        return transport

    return asyncio.run(main())


def test_head_and_body_written_in_one_step_leave_together() -> None:
    def respond(t: JoinedWrites) -> None:
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"{}"))

    sent = run_steps(respond, respond)
    assert sent.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"] * 2


def test_a_lone_write_leaves_at_the_end_of_its_step() -> None:
    sent = run_steps(lambda t: t.write(b"HTTP/1.1 100 Continue\r\n\r\n"), lambda t: None)
    assert sent.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_close_sends_what_is_held_first() -> None:
    def answer_and_close(t: JoinedWrites) -> None:
        t.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        t.close()

    sent = run_steps(answer_and_close)
    assert sent.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and sent.closed


def test_a_write_held_when_the_peer_went_away_is_dropped_and_the_rest_is_delegated() -> None:
    def write_then_lose(t: JoinedWrites) -> None:
        t.write(b"late")
        t._transport.close()  # type: ignore[attr-defined]  # the connection was lost

    sent = run_steps(write_then_lose)
    assert sent.writes == [] and sent.closed
    loop = asyncio.new_event_loop()
    joined = JoinedWrites(RecordingTransport(), loop)  # type: ignore[arg-type]
    assert joined.get_extra_info("peername") == "info:peername"
    loop.close()


async def _json_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b'{"n": 1}' * 1000
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def uvicorn_port() -> Iterator[int]:
    """A real uvicorn server on the serve protocol, in a thread."""
    config = uvicorn.Config(
        _json_app, host="127.0.0.1", port=0, http=timed_protocol(5), log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def test_kept_alive_connection_gets_whole_answers_through_the_protocol(uvicorn_port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", uvicorn_port, timeout=10)
    for _ in range(3):
        connection.request("GET", "/")
        answer = connection.getresponse()
        assert answer.status == 200
        assert answer.read() == b'{"n": 1}' * 1000
    connection.close()
