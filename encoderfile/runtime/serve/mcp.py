"""Model Context Protocol tools over the Service: `mcp` (stdio) and `serve --mcp` (HTTP /mcp).

The tools go through the same Service as HTTP and gRPC (limits, batching, API key on /mcp), so
their vectors are the ones `embed` and /embed return. Bad arguments come back as MCP tool errors
(isError) carrying the same message the other transports give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from encoderfile.errors import EncoderfileError
from encoderfile.runtime.serve.service import Limits, Service

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from encoderfile.runtime.artifact import Bundle
    from encoderfile.runtime.embedder import Embeddings

PATH = "/mcp"
INFO_URI = "encoderfile://info"
QUERY, DOCUMENT = "query", "document"  # prompt names rank uses when the model has them
_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

Texts = Annotated[list[str], Field(description="Texts to embed, in order.", min_length=1)]
Dimensions = Annotated[
    int | None,
    Field(description="Vector width: one of the model's offered widths; omit for the full one."),
]
Prompt = Annotated[
    str | None,
    Field(description="Name of one of the model's prompts (a prefix such as 'query: ')."),
]
Pairs = Annotated[
    list[Annotated[list[str], Field(min_length=2, max_length=2)]],
    Field(description="Pairs of texts to compare, each [text_a, text_b].", min_length=1),
]
Images = Annotated[
    list[str],
    Field(description="Images as data URLs (data:image/png;base64,...) or base64.", min_length=1),
]


class EmbedResult(TypedDict):
    embeddings: list[list[float]]
    dimensions: int
    tokens: list[int]


class SimilarityResult(TypedDict):
    scores: list[float]


class Ranked(TypedDict):
    index: int
    score: float


class RankResult(TypedDict):
    results: list[Ranked]


class ImageResult(TypedDict):
    embeddings: list[list[float]]
    dimensions: int


def create_server(service: Service) -> MCPServer:
    """An MCP server whose tools embed through `service` (which must be loaded to answer)."""
    m = service.manifest
    source = f" ({m.model.repo}@{m.model.revision})" if m.model and m.model.repo else ""
    widths = ", ".join(map(str, sorted({m.dimension, *m.dimensions}, reverse=True)))
    prompts = ", ".join(f"{k} ({v!r})" for k, v in m.prompts.items()) or "none"
    facts = (
        f"Model {m.name}{source}: vectors of {m.dimension} floats"
        f"{', L2-normalised' if m.normalized else ''}; widths offered: {widths}; "
        f"prompts: {prompts}; at most {service.limits.max_inputs} texts of "
        f"{service.limits.max_chars} characters per call, {m.max_length} tokens each "
        "(longer texts are truncated)."
    )
    server = MCPServer(
        m.name,
        version=m.version,
        instructions=f"Local, offline embeddings. {facts} Tool 'info' describes the model.",
        log_level="WARNING",
    )

    async def embed(
        texts: Texts, dimensions: Dimensions = None, prompt: Prompt = None
    ) -> EmbedResult:
        result = await _embed(service, texts, dimensions, prompt, "texts")
        return {
            "embeddings": result.vectors.tolist(),
            "dimensions": int(result.vectors.shape[1]),
            "tokens": result.tokens,
        }

    async def similarity(
        pairs: Pairs, dimensions: Dimensions = None, prompt: Prompt = None
    ) -> SimilarityResult:
        for i, pair in enumerate(pairs):
            for j, text in enumerate(pair):
                if not text.strip():
                    raise ToolError(f"'pairs[{i}][{j}]' is empty or blank. Send text to compare.")
        texts = [text for pair in pairs for text in pair]
        vectors = (await _embed(service, texts, dimensions, prompt, "pairs")).vectors
        return {"scores": _cosine(vectors[0::2], vectors[1::2]).tolist()}

    async def rank(
        query: Annotated[str, Field(description="What to search for.")],
        documents: Annotated[
            list[str], Field(description="Candidate texts, scored against the query.", min_length=1)
        ],
        top_k: Annotated[
            int | None, Field(description="Return only the best top_k documents.", ge=1)
        ] = None,
        dimensions: Dimensions = None,
        query_prompt: Prompt = None,
        document_prompt: Prompt = None,
    ) -> RankResult:
        asked = (
            query_prompt if query_prompt is not None else _named(service, QUERY),
            document_prompt if document_prompt is not None else _named(service, DOCUMENT),
        )
        both = await asyncio.gather(
            _embed(service, [query], dimensions, asked[0], "query", single=True),
            _embed(service, documents, dimensions, asked[1], "documents"),
        )
        scores = _cosine(both[1].vectors, both[0].vectors)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return {"results": [{"index": int(i), "score": float(scores[i])} for i in order]}

    def info() -> dict[str, Any]:
        return service.info()

    rank_prompts = (
        f"Without query_prompt / document_prompt, the model's '{QUERY}' and '{DOCUMENT}' prompts "
        "apply when it has them. "
    )
    tools: list[tuple[Callable[..., Any], str]] = [
        (
            embed,
            "Embed texts into vectors (one per text, in order) for semantic search, clustering "
            "or deduplication.",
        ),
        (
            similarity,
            "Cosine similarity of each pair of texts: 1 means same meaning, about 0 unrelated.",
        ),
        (
            rank,
            "Rank documents by semantic similarity to a query, best first: document indices "
            f"with cosine scores. {rank_prompts}",
        ),
    ]
    for fn, text in tools if m.has_text else []:
        server.add_tool(fn, description=f"{text} {facts}", annotations=_READ_ONLY)
    server.add_tool(
        info,
        description="Describe this embedding model: name, source and revision, dimensions, "
        "prompts, max length, precision, limits (the same as the artifact's 'info --json').",
        annotations=_READ_ONLY,
    )
    if service.images.available:

        async def embed_images(images: Images, dimensions: Dimensions = None) -> ImageResult:
            vectors = await _run_images(service, images, dimensions)
            return {"embeddings": vectors.tolist(), "dimensions": int(vectors.shape[1])}

        server.add_tool(
            embed_images,
            description="Embed images into vectors (one per image, in order). "
            f"At most {service.images.max_inputs} images per call. {facts}",
            annotations=_READ_ONLY,
        )

    @server.resource(INFO_URI, name="info", mime_type="application/json")
    def info_resource() -> str:
        """The model's description, as the artifact's 'info --json' gives it."""
        return json.dumps(service.info(), sort_keys=True, ensure_ascii=False)

    return server


class HttpTransport:
    """The streamable HTTP transport at PATH: routes for the HTTP app, and its session manager,
    which must run (`async with transport.running()`) while the app serves."""

    def __init__(self, service: Service, host: str):
        self._server = create_server(service)
        app = self._server.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,  # no sessions to keep: any request may go to any replica
            json_response=True,
            max_request_body_size=service.limits.max_body_bytes,
            host=host,  # loopback: DNS-rebinding protection (Host and Origin checked)
        )
        self.routes: Sequence[BaseRoute] = app.routes

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self._server.session_manager.run():
            yield


def run_stdio(bundle: Bundle, threads: int | None) -> int:
    """`mcp`: load the model, then answer MCP over stdin/stdout until the client closes it."""
    service = Service(bundle, Limits())
    service.load(threads)
    try:
        asyncio.run(create_server(service).run_stdio_async())
    finally:
        service.close()
    return 0


async def _embed(
    service: Service,
    texts: list[str],
    dimensions: int | None,
    prompt: str | None,
    param: str,
    single: bool = False,
) -> Embeddings:
    try:
        width = service.check_dimensions(dimensions)
        encodings = service.tokenize(texts, prompt=prompt, param=param, single=single)
        job: Future[Embeddings] = service.submit(encodings, width)
    except EncoderfileError as e:
        raise ToolError(str(e)) from None
    return await asyncio.wrap_future(job)


async def _run_images(service: Service, images: list[str], dimensions: int | None) -> np.ndarray:
    try:
        width = service.check_dimensions(dimensions)
        return await asyncio.to_thread(service.images.embed, images, width, "images")
    except EncoderfileError as e:
        raise ToolError(str(e)) from None


def _named(service: Service, prompt: str) -> str | None:
    return prompt if prompt in service.manifest.prompts else None


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of a and b (b may be one row); 0 where a vector is all zeros."""
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    dots = np.sum(a * b, axis=-1)
    cosine: np.ndarray = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return cosine
