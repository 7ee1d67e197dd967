"""One exception family; every message reads '<what went wrong>. <how to fix it>.'

Each transport maps these classes to its codes in one table (CLI: exit 2; HTTP and gRPC: see
encoderfile/runtime/serve/). Anything that is not an EncoderfileError is a bug.
"""


class EncoderfileError(Exception):
    """Base of every error a user can cause; the CLI prints it and exits 2."""


class UsageError(EncoderfileError):
    """Bad command line (unknown option, conflicting flags, missing argument)."""


# ------------------------------------------------------------------------------------ builder


class RecipeError(EncoderfileError):
    """The recipe file is unreadable, malformed or out of range."""


class ResolveError(EncoderfileError):
    """A model file is missing, fails its sha256 pin, or cannot be downloaded."""


class SpliceError(EncoderfileError):
    """The graph lacks what a post-processing step needs."""


class VerifyError(EncoderfileError):
    """The spliced graph disagrees with the numpy reference."""


class BuildError(EncoderfileError):
    """Freezing the bundle into an executable failed."""


class EvaluationError(EncoderfileError):
    """sweep: the queries, corpus or qrels are missing or malformed."""


# ------------------------------------------------------------------------------------ runtime


class ArtifactError(EncoderfileError):
    """A bundle or frozen artifact is incomplete or fails its own hash check."""


class NotReadyError(EncoderfileError):
    """The model is still loading or the server is draining (HTTP 503, gRPC UNAVAILABLE)."""


class RequestError(EncoderfileError):
    """The caller sent bad input (HTTP 4xx, gRPC INVALID_ARGUMENT, CLI exit 2).

    `param` names the field at fault (OpenAI's error `param`), `code` a machine-readable kind.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class InvalidFieldError(RequestError):
    """A field has the wrong type or value (HTTP 422, gRPC INVALID_ARGUMENT)."""


class MalformedRequestError(RequestError):
    """The body is not UTF-8 JSON (HTTP 400, gRPC INVALID_ARGUMENT)."""


class UnauthorizedError(RequestError):
    """The API key is missing or wrong (HTTP 401, gRPC UNAUTHENTICATED)."""


class NotFoundError(RequestError):
    """No such route, model or model kind in this artifact (HTTP 404, gRPC NOT_FOUND)."""


class MethodNotAllowedError(RequestError):
    """The route exists but not for this HTTP method (HTTP 405)."""


class PayloadTooLargeError(RequestError):
    """The body exceeds --max-body-bytes (HTTP 413, gRPC RESOURCE_EXHAUSTED)."""


class OverloadedError(RequestError):
    """Too much work in flight (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""


class ClientGoneError(RequestError):
    """The client disconnected before its answer was ready; its inputs left the queue (HTTP 499,
    nginx's code: the client never sees it, the access log and metrics do)."""


class WrongKindError(RequestError):
    """The route serves another kind of model than this artifact's (an embedding route on a
    reranker, /rerank on an embedder): HTTP 400 (TEI's routes: 424, as TEI), gRPC
    FAILED_PRECONDITION."""
