"""Model Context Protocol tools over the Service: `mcp` (stdio) and `serve --mcp` (HTTP /mcp).

The tools go through the same Service as HTTP and gRPC (limits, batching, API key on /mcp), so
their vectors are the ones `embed` and /embed return. Bad arguments come back as MCP tool errors
(isError) carrying the same message the other transports give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import IO, TYPE_CHECKING, Annotated, Any

import numpy as np
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import ToolAnnotations
from pydantic import Field, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from encoderfile.errors import EncoderfileError
from encoderfile.runtime.serve import routes
from encoderfile.runtime.serve.service import Limits, Service

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from encoderfile.runtime.artifact import Bundle
    from encoderfile.runtime.embedder import Embeddings

log = logging.getLogger("encoderfile.mcp")
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
Query = Annotated[str, Field(description="What to search for.")]
Documents = Annotated[
    list[str], Field(description="Candidate texts, scored against the query.", min_length=1)
]
TopK = Annotated[int | None, Field(description="Return only the best top_k documents.", ge=1)]
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


class SparseVector(TypedDict, total=False):
    indices: list[int]
    values: list[float]
    tokens: list[str]


class SparseResult(TypedDict):
    embeddings: list[SparseVector]
    tokens: list[int]


class ImageResult(TypedDict):
    embeddings: list[list[float]]
    dimensions: int


class _Server(MCPServer):
    """MCPServer whose argument errors read as the project's do: the field and what is wrong,
    without pydantic's input echo and documentation URL."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            cause = e.__cause__
            if isinstance(e, UnexpectedToolError):
                raise
            if not isinstance(cause, ValidationError):  # our own message, without the prefix
                prefix = f"Error executing tool {name}: "
                if not str(e).startswith(prefix):
                    raise
                raise ToolError(f"{name}: {str(e).removeprefix(prefix)}") from cause
            problems = "; ".join(
                f"'{_field(err['loc'])}': {err['msg'][:1].lower()}{err['msg'][1:]}"
                if err["loc"]
                else err["msg"]
                for err in cause.errors(include_url=False, include_input=False)
            )
            raise ToolError(
                f"{name}: {problems}. Send arguments as the tool's inputSchema describes."
            ) from cause


def _field(loc: Sequence[int | str]) -> str:
    """('pairs', 0, 1) -> pairs[0][1]."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


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
    reranks = routes.serves(m, "rerank")
    if reranks:
        facts = (
            f"Model {m.name}{source}: a cross-encoder reranker; at most "
            f"{service.limits.max_inputs} documents of {service.limits.max_chars} characters per "
            f"call, {m.max_length} tokens per query and document together (longer pairs are cut, "
            "longest text first)."
        )
    server = _Server(
        m.name,
        version=m.version,
        instructions=f"Local, offline {'reranking' if reranks else 'embeddings'}. {facts} "
        "Tool 'info' describes the model.",
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
        query: Query,
        documents: Documents,
        top_k: TopK = None,
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
    if reranks:  # a cross-encoder: rank only, scored by the model itself
        tools = [
            (
                _cross_encoder_rank(service),
                "Rank documents against a query with this cross-encoder, which reads each query "
                "and document together (more accurate than comparing vectors; use it on a "
                "shortlist), best first: document indices with relevance scores.",
            )
        ]
    if routes.serves(m, "embed_sparse"):  # SPLADE: embed gives sparse vectors, nothing else
        facts = (
            f"Model {m.name}{source}: sparse vectors over a vocabulary of {m.dimension} terms; "
            f"at most {service.limits.max_inputs} texts of {service.limits.max_chars} characters "
            f"per call, {m.max_length} tokens each (longer texts are truncated)."
        )
        tools = [
            (
                _sparse_embed(service),
                "Embed texts into sparse lexical vectors (one per text, in order): the vocabulary "
                "indices of the active terms with their weights, for keyword-aware and hybrid "
                "search; return_tokens adds each index's token string.",
            )
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
        asyncio.run(_serve_stdio(create_server(service), service.limits.max_body_bytes))
    finally:
        service.close()
    return 0


async def _serve_stdio(server: MCPServer, max_line_bytes: int) -> None:
    """The SDK's run_stdio_async over our transport (the SDK's drops bad lines unanswered)."""
    lowlevel = server._lowlevel_server  # noqa: SLF001 - what run_stdio_async runs, on our streams
    async with stdio_streams(max_line_bytes) as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


@contextlib.asynccontextmanager
async def stdio_streams(
    max_line_bytes: int, stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """MCP's stdio transport, one JSON-RPC message a line, answering every line it cannot pass
    on: not UTF-8 or not JSON with -32700, not a JSON-RPC 2.0 message (an array, a number, no
    method, another version, an object id) or over `max_line_bytes` with -32600, each with the
    request's id when it has a valid one, else null, and a warning on stderr. A reply that
    cannot be UTF-8 (a lone surrogate echoed from the request) is sent with JSON escapes.

    Without explicit streams, fd 1 points at stderr while serving, so stray prints from
    libraries cannot corrupt the wire."""
    import anyio
    from mcp.shared._context_streams import create_context_streams
    from mcp.shared.message import SessionMessage

    restore: Callable[[], None] | None = None
    if stdin is None:
        stdin = os.fdopen(os.dup(0), "rb")
    if stdout is None:
        wire = os.dup(1)
        os.dup2(2, 1)
        stdout = os.fdopen(wire, "wb")

        def restore() -> None:
            os.dup2(wire, 1)

    reader_in, read_stream = create_context_streams[Any](0)
    write_stream, writer_out = create_context_streams[Any](0)
    refusals, refused = create_context_streams[dict[str, Any]](16)

    async def read() -> None:
        assert stdin is not None
        async with reader_in, refusals:
            n = 0
            while True:
                line = await anyio.to_thread.run_sync(
                    _read_line, stdin, max_line_bytes, abandon_on_cancel=True
                )
                if line is None:
                    return
                n += 1
                message, error = _parse(line, max_line_bytes)
                if error is not None:
                    log.warning("mcp stdin line %d: %s", n, error["error"]["message"])
                    await refusals.send(error)
                else:
                    await reader_in.send(SessionMessage(message))

    async def write() -> None:
        assert stdout is not None

        async def put(data: bytes) -> None:
            try:
                await anyio.to_thread.run_sync(_write_line, stdout, data)
            except (BrokenPipeError, ValueError):  # the client closed our stdout: stop serving
                if not serving.cancel_scope.cancel_called:
                    log.warning("mcp stdout is closed (the client went away); stopping")
                    serving.cancel_scope.cancel()
                await anyio.sleep_forever()  # until the cancellation arrives

        async def replies() -> None:
            async with writer_out:
                async for session_message in writer_out:
                    await put(_encode(session_message.message))

        async def errors() -> None:
            async with refused:
                async for error in refused:
                    await put(json.dumps(error).encode())

        async with anyio.create_task_group() as tg:
            tg.start_soon(replies)
            tg.start_soon(errors)

    try:
        async with anyio.create_task_group() as serving:
            serving.start_soon(read)
            serving.start_soon(write)
            yield read_stream, write_stream
    finally:
        if restore is not None:
            restore()


def _read_line(stdin: IO[bytes], limit: int) -> bytes | None:
    """The next line (without its end), None at EOF; a line over `limit` bytes is read to its
    end but kept only to limit + 1 bytes, so memory stays bounded."""
    line = stdin.readline(limit + 1)
    if not line:
        return None
    if line.endswith(b"\n"):
        return line[:-1]
    while (rest := stdin.readline(1 << 20)) and not rest.endswith(b"\n"):
        pass
    return line


def _parse(line: bytes, limit: int) -> tuple[Any, dict[str, Any] | None]:
    """A JSON-RPC message, or the error object that answers the line."""
    import mcp_types

    if len(line) > limit:
        return None, _error(
            None, mcp_types.INVALID_REQUEST, f"The message is over {limit} bytes. Send less."
        )
    if not line.strip():
        return None, _error(
            None, mcp_types.INVALID_REQUEST, "The line is empty. Send one JSON-RPC message a line."
        )
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        return None, _error(
            None,
            mcp_types.PARSE_ERROR,
            f"The message is not UTF-8 (byte {e.start + 1}). Send UTF-8 JSON.",
        )
    except (ValueError, RecursionError):
        return None, _error(
            None,
            mcp_types.PARSE_ERROR,
            "The message is not JSON. Send one JSON-RPC message a line.",
        )
    ident = value.get("id") if isinstance(value, dict) else None
    ident = ident if isinstance(ident, str) or type(ident) is int else None
    if not isinstance(value, dict):
        kind = (
            "an array (batches are not part of MCP)" if isinstance(value, list) else "not an object"
        )
        return None, _error(
            None,
            mcp_types.INVALID_REQUEST,
            f"The message is {kind}. Send one JSON-RPC 2.0 object a line.",
        )
    if "id" in value and ident is None and not (value["id"] is None and "error" in value):
        return None, _error(
            None,
            mcp_types.INVALID_REQUEST,
            "The message's id is neither a string nor an integer. Send a string or integer id.",
        )
    if value.get("jsonrpc") != "2.0":
        return None, _error(
            ident,
            mcp_types.INVALID_REQUEST,
            'The message lacks "jsonrpc": "2.0". Send JSON-RPC 2.0.',
        )
    try:
        return mcp_types.jsonrpc_message_adapter.validate_python(value, by_name=False), None
    except ValidationError:
        if "method" not in value and "result" not in value and "error" not in value:
            why = "it has no method"
        else:
            why = "it is not a request, notification or response"
        return None, _error(
            ident,
            mcp_types.INVALID_REQUEST,
            f"The message is not valid JSON-RPC 2.0: {why}. Fix it.",
        )


def _error(ident: str | int | None, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


def _encode(message: Any) -> bytes:
    try:
        return message.model_dump_json(by_alias=True, exclude_unset=True).encode()  # type: ignore[no-any-return]
    except ValueError:  # a lone surrogate: UTF-8 cannot carry it, a JSON escape can
        return json.dumps(
            message.model_dump(mode="json", by_alias=True, exclude_unset=True)
        ).encode()


def _write_line(stdout: IO[bytes], data: bytes) -> None:
    stdout.write(data + b"\n")
    stdout.flush()


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
        return await service.embed_tokenized(encodings, width)
    except EncoderfileError as e:
        raise ToolError(str(e)) from None


def _sparse_embed(service: Service) -> Callable[..., Any]:
    """The embed tool of a sparse artifact: Service.tokenize and embed_tokenized, as POST
    /embed_sparse and gRPC EmbedSparse."""

    async def embed(
        texts: Texts,
        prompt: Prompt = None,
        return_tokens: Annotated[
            bool, Field(description="Also return each index's vocabulary string.")
        ] = False,
    ) -> SparseResult:
        from encoderfile.runtime import sparse

        try:
            encodings = service.tokenize(texts, prompt=prompt, param="texts")
            result = await service.embed_tokenized(encodings, task="embed_sparse")
        except EncoderfileError as e:
            raise ToolError(str(e)) from None
        vocabulary = sparse.vocabulary(service.bundle.tokenizer) if return_tokens else None
        rows: list[SparseVector] = []
        for vector in result.vectors:
            indices, values = sparse.terms(vector)
            row: SparseVector = {"indices": indices.tolist(), "values": values.tolist()}
            if vocabulary is not None:
                row["tokens"] = [vocabulary[i] for i in row["indices"]]
            rows.append(row)
        return {"embeddings": rows, "tokens": result.tokens}

    return embed


def _cross_encoder_rank(service: Service) -> Callable[..., Any]:
    """The rank tool of a reranker artifact: Service.tokenize_pairs and Service.rerank, as
    POST /rerank and gRPC Rerank."""

    async def rank(
        query: Query,
        documents: Documents,
        top_k: TopK = None,
        raw_scores: Annotated[
            bool, Field(description="The model's raw logit instead of its activation's score.")
        ] = False,
    ) -> RankResult:
        from encoderfile.runtime.reranker import order

        try:
            encodings = service.tokenize_pairs(query, documents, param="documents")
            scores, _ = await service.rerank(encodings, raw_scores=raw_scores)
        except EncoderfileError as e:
            raise ToolError(str(e)) from None
        return {"results": [{"index": i, "score": float(scores[i])} for i in order(scores, top_k)]}

    return rank


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
