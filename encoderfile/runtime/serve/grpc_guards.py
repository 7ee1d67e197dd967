"""Malformed protobuf messages answer INVALID_ARGUMENT (grpc answers UNKNOWN with a traceback
when a request deserializer raises)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from encoderfile.errors import MalformedRequestError


class Malformed:
    """What a request that failed to parse is delivered as; check() turns it into the error."""

    def __init__(self, reason: str):
        self.reason = reason


def check(request: object) -> None:
    if isinstance(request, Malformed):
        raise MalformedRequestError(
            f"The request is not a valid protobuf message ({request.reason}). Send a message "
            "built from encoderfile/proto/embed.proto."
        )


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except (DecodeError, ValueError) as e:
            return Malformed(str(e) or type(e).__name__)

    return deserialize


class _Capture:
    """Stands in for a server to collect what a generated add_*Servicer_to_server registers."""

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self.name, self.handlers = name, handlers


def add_servicer(register: Callable[[Any, Any], None], servicer: Any, server: Any) -> None:
    """`register(servicer, server)` (a generated add_*Servicer_to_server), with every request
    deserializer returning Malformed instead of raising."""
    capture = _Capture()
    register(servicer, capture)
    handlers = {
        method: handler._replace(request_deserializer=_lenient(handler.request_deserializer))
        for method, handler in capture.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.name, handlers),))
    server.add_registered_method_handlers(capture.name, handlers)
