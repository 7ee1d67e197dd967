"""Defences of the HTTP transport against hostile input: strict JSON, safe log text, read timeouts."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from encoderfile.errors import MalformedRequestError

READ_TIMEOUT_S = 30.0  # default --read-timeout
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029]")


def loads(text: str) -> Any:
    """json.loads, with what it lets through that no handler can use refused as a bad body:
    integers over Python's digit limit and lone UTF-16 surrogates (\\ud800) in any string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise MalformedRequestError(
            "The body has an integer literal too long to convert. Send numbers of at most "
            "4300 digits."
        ) from None
    if _SURROGATE_ESCAPE.search(text):  # cheap test first: valid pairs are rare too
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedRequestError(
                "The body has a lone UTF-16 surrogate escape (such as \\ud800) in a string. "
                "Send valid Unicode text."
            ) from None
    return value


def printable(text: str) -> str:
    """`text` with control characters and backslashes escaped, for one honest log line."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a read timeout (uvicorn only times out idle keep-alive
    connections): a request's head must arrive whole within `read_timeout` seconds of the
    connection (or of its first byte, on a kept-alive connection), and its body may pause at
    most `read_timeout` seconds between two pieces; else the connection is closed."""

    read_timeout = READ_TIMEOUT_S
    _read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout, self._expire)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _expire(self) -> None:
        self._read_timer = None
        if self.flow.read_paused:  # the server stopped reading, not the client sending
            self._arm()
        elif not self.transport.is_closing():
            self.transport.close()


def timed_protocol(read_timeout: float) -> type[TimedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...) with this read timeout."""
    return type("HttpToolsProtocol", (TimedHttpToolsProtocol,), {"read_timeout": read_timeout})
