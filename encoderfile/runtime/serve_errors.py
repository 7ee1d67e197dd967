"""Request errors that only the servers raise; each transport maps them in its one table."""

from encoderfile.errors import EncoderfileError, RequestError


class ServeError(RequestError):
    """A request error that can name the field at fault (OpenAI's `param`) and a `code`."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class InvalidFieldError(ServeError):
    """A field has the wrong type or value (HTTP 422, gRPC INVALID_ARGUMENT)."""


class MalformedRequestError(ServeError):
    """The body is not UTF-8 JSON (HTTP 400, gRPC INVALID_ARGUMENT)."""


class UnauthorizedError(ServeError):
    """The API key is missing or wrong (HTTP 401, gRPC UNAUTHENTICATED)."""


class NotFoundError(ServeError):
    """No such route or model (HTTP 404, gRPC NOT_FOUND)."""


class MethodNotAllowedError(ServeError):
    """The route exists but not for this HTTP method (HTTP 405)."""


class PayloadTooLargeError(ServeError):
    """The body exceeds --max-body-bytes (HTTP 413, gRPC RESOURCE_EXHAUSTED)."""


class ClientGoneError(ServeError):
    """The client disconnected before its answer was ready; its inputs left the queue (HTTP 499,
    nginx's code: the client never sees it, the access log and metrics do)."""


class NotReadyError(EncoderfileError):
    """The model is still loading or the server is draining (HTTP 503, gRPC UNAVAILABLE)."""
