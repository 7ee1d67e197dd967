"""The one table from error class to what each transport says: the error kind (HTTP's error
`type` and the `kind` label of encoderfile_errors_total), the HTTP status, the gRPC status code
and TEI's (status, error_type). The first class in the exception's MRO wins."""

from __future__ import annotations

from dataclasses import dataclass

from encoderfile.errors import (
    ClientGoneError,
    EncoderfileError,
    MalformedRequestError,
    MethodNotAllowedError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RequestError,
    UnauthorizedError,
    WrongKindError,
)


@dataclass(frozen=True)
class Kind:
    name: str  # HTTP's error type; the metric label
    http: int
    grpc: str  # a grpc.StatusCode member's name (grpc is imported by the gRPC transport only)
    tei: tuple[int, str]  # TEI's status and ErrorType


KINDS: dict[type[BaseException], Kind] = {
    WrongKindError: Kind("invalid_request_error", 400, "FAILED_PRECONDITION", (424, "Backend")),
    MalformedRequestError: Kind("invalid_request_error", 400, "INVALID_ARGUMENT", (422, "Validation")),
    UnauthorizedError: Kind("authentication_error", 401, "UNAUTHENTICATED", (401, "Validation")),
    NotFoundError: Kind("not_found_error", 404, "NOT_FOUND", (424, "Backend")),
    MethodNotAllowedError: Kind("invalid_request_error", 405, "INVALID_ARGUMENT", (405, "Validation")),
    PayloadTooLargeError: Kind("invalid_request_error", 413, "RESOURCE_EXHAUSTED", (413, "Validation")),
    OverloadedError: Kind("overloaded_error", 429, "RESOURCE_EXHAUSTED", (429, "Overloaded")),
    ClientGoneError: Kind("client_closed_request", 499, "CANCELLED", (499, "Validation")),
    RequestError: Kind("invalid_request_error", 422, "INVALID_ARGUMENT", (422, "Validation")),
    NotReadyError: Kind("unavailable_error", 503, "UNAVAILABLE", (503, "Unhealthy")),
    EncoderfileError: Kind("internal_error", 500, "INTERNAL", (500, "Backend")),
}  # fmt: skip
INTERNAL = KINDS[EncoderfileError]


def kind_of(exc: BaseException) -> Kind:
    for cls in type(exc).__mro__:
        kind = KINDS.get(cls)
        if kind is not None:
            return kind
    return INTERNAL
