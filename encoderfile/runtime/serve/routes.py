"""The one rule of which routes each kind of artifact serves (manifest `kind`).

Each transport asks `require(manifest, task)` before it tokenizes; a route of another kind is
answered with WrongKindError (HTTP 400, gRPC FAILED_PRECONDITION, MCP tool error) naming this
artifact's kind and the routes it does serve.
"""

from __future__ import annotations

from encoderfile.errors import WrongKindError
from encoderfile.runtime.manifest import Manifest

# task -> the kind that serves it
TASKS = {"embed": "embedder", "rerank": "reranker", "embed_sparse": "sparse"}

# kind -> its routes, as the error message names them
ROUTES = {
    "embedder": "POST /embed, /embed/batch or /v1/embeddings (gRPC Embed, MCP embed)",
    "reranker": "POST /rerank or /v1/rerank (gRPC Rerank, MCP rank)",
    "sparse": "POST /embed_sparse (gRPC EmbedSparse, MCP embed)",
}


def serves(manifest: Manifest, task: str) -> bool:
    return TASKS[task] == manifest.kind


def require(manifest: Manifest, task: str) -> None:
    """Raise WrongKindError unless this artifact's kind serves `task`."""
    if serves(manifest, task):
        return
    article = "an" if manifest.kind[0] in "aeiou" else "a"
    raise WrongKindError(
        f"{manifest.name} is {article} {manifest.kind} artifact; this route serves {TASKS[task]} "
        f"artifacts. Use {ROUTES[manifest.kind]}.",
        code="wrong_kind",
    )
