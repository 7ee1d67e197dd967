"""One exception family; every message reads '<what went wrong>. <how to fix it>.'"""


class EncoderfileError(Exception):
    """Base of every error a user can cause; the CLI prints it and exits 2."""


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


class ArtifactError(EncoderfileError):
    """A bundle or frozen artifact is incomplete or fails its own hash check."""


class RequestError(EncoderfileError):
    """Runtime: the caller sent bad input (HTTP 4xx, gRPC INVALID_ARGUMENT, CLI exit 2)."""


class OverloadedError(RequestError):
    """Runtime: too much work in flight (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""
