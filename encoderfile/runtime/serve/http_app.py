"""The HTTP API: native routes (/embed, /embed/batch), OpenAI's /v1/embeddings, TEI's routes
(tei.py), docs, metrics."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from encoderfile.errors import (
    ClientGoneError,
    EncoderfileError,
    InvalidFieldError,
    MalformedRequestError,
    MethodNotAllowedError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    UnauthorizedError,
)
from encoderfile.runtime import openai_tokens, sparse
from encoderfile.runtime.serve import compat, guards, logs, routes, tei, wire
from encoderfile.runtime.serve import metrics as prom
from encoderfile.runtime.serve.image_service import BATCH_BODY_BYTES, BODY_BYTES
from encoderfile.runtime.serve.kinds import kind_of
from encoderfile.runtime.serve.service import Service

if TYPE_CHECKING:
    from tokenizers import Encoding

    from encoderfile.runtime.embedder import Embeddings
    from encoderfile.runtime.serve.service import TokenIds

log = logging.getLogger("encoderfile.serve")

OPEN_ROUTES = frozenset({"/health", "/ready", "/docs", "/openapi.json"})  # no API key needed
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Json(JSONResponse):
    """JSON written by orjson: numpy float32 rows go out as they are, without .tolist() (the
    float formatting was the largest cost of an embedding response after the ASGI stack)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def status_of(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, error type) of kinds.KINDS, the table every transport reads."""
    kind = kind_of(exc)
    return kind.http, kind.name


def error_response(exc: BaseException, scope: Scope) -> Json:
    """Native shape {"error": {message, type}}; on /v1 and /embeddings OpenAI's, with param/code;
    on TEI's routes (and /embed, /tokenize with `inputs`) TEI's {"error", "error_type"}."""
    status, kind = status_of(exc)
    if tei.is_tei(scope):
        status, body = tei.error(exc)
        scope.setdefault("state", {})["error_kind"] = kind
        retry = {"Retry-After": "1"} if status in (429, 503) else {}
        return Json(body, status, retry)
    if status == 422 and _is_openai(scope["path"]):
        status = 400  # OpenAI answers 400 for every invalid request; its SDK raises BadRequestError
    scope.setdefault("state", {})["error_kind"] = kind
    error: dict[str, Any] = {"message": str(exc), "type": kind}
    if _is_openai(scope["path"]):
        error["param"] = getattr(exc, "param", None)
        error["code"] = getattr(exc, "code", None)
    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = "1"
    elif status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Json({"error": error}, status, headers)


def _is_openai(path: str) -> bool:
    return path.startswith("/v1/") or path == "/embeddings"


def create_app(
    service: Service, *, cors_origins: Sequence[str] = (), extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The Starlette app over `service`; it answers 503 on model routes until service.ready.

    `extra_routes` (serve --mcp's /mcp) share the API key, request log and metrics."""
    api = _Api(service)
    post = ["POST"]
    routes: list[BaseRoute] = [
        Route("/health", api.health),
        Route("/ready", api.ready),
        Route("/info", api.info),
        Route("/", api.tei_root, methods=["GET", "POST"]),
        Route("/metrics", api.metrics),
        Route("/openapi.json", api.openapi),
        Route("/docs", api.docs),
        *[Route(path, api.embed, methods=post) for path in ("/embed", "/txt/embed")],
        *[
            Route(path, api.embed_batch, methods=post)
            for path in ("/embed/batch", "/batch", "/txt/batch")
        ],
        *[Route(path, api.openai, methods=post) for path in ("/v1/embeddings", "/embeddings")],
        *[Route(path, api.query, methods=post) for path in ("/query", "/txt/query")],
        *compat.CompatRoutes(service.manifest, api.openapi).routes(),
        Route("/tokenize", api.tokenize, methods=post),
        Route("/decode", api.tei_decode, methods=post),
        Route("/embed_all", api.tei_embed_all, methods=post),
        Route("/rerank", api.tei_rerank, methods=post),
        Route("/v1/rerank", api.cohere_rerank, methods=post),
        Route("/embed_sparse", api.tei_embed_sparse, methods=post),
        *[Route(path, api.tei_other_kind, methods=post) for path in tei.OTHER_KINDS],
        Route("/img/embed", api.img_embed, methods=post),
        Route("/img/batch", api.img_batch, methods=post),
        Route("/img/stats", api.img_stats, methods=post),
        *extra_routes,
    ]
    assets = _swagger_ui_assets()
    if assets is not None:  # without them /docs is a blank page; the API works the same
        from starlette.staticfiles import StaticFiles

        routes.append(Mount("/docs/assets", StaticFiles(directory=assets)))
    known = frozenset(r.path for r in routes if isinstance(r, Route))
    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                expose_headers=["X-Request-Id"],
            )
        )
    middleware.append(Middleware(_Frame, service=service, routes=known))
    handlers: Any = {
        EncoderfileError: _on_error,
        HTTPException: _on_http_exception,
        Exception: _on_crash,
    }
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


def _swagger_ui_assets() -> str | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return swagger_ui_path if os.path.isdir(swagger_ui_path) else None


async def _on_error(request: Request, exc: Exception) -> Response:
    return error_response(exc, request.scope)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    route = f"{request.method} {request.url.path}"
    code = getattr(exc, "status_code", 400)
    if code == 405:
        error: Exception = MethodNotAllowedError(f"{route} is not allowed. See GET /docs.")
        response = error_response(error, request.scope)
        response.headers.update(getattr(exc, "headers", None) or {})  # Allow: the route's methods
        return response
    elif code == 404:
        error = NotFoundError(f"No route {route}. See GET /docs for the routes.")
    else:
        error = MalformedRequestError(f"{route}: {getattr(exc, 'detail', exc)}.")
    return error_response(error, request.scope)


async def _on_crash(request: Request, exc: Exception) -> Response:
    """A bug, not a bad request: JSON like every other error; uvicorn logs the traceback."""
    request_id = request.scope.get("state", {}).get("request_id", "?")
    error = EncoderfileError(
        f"Internal error in request {request_id}. This is a bug: report it with the server log."
    )
    return error_response(error, request.scope)


class _Frame:
    """Request id, API key, one log line and the request metrics for every request (the last
    two through the service's backlog, after the reply)."""

    def __init__(self, app: ASGIApp, service: Service, routes: frozenset[str]):
        self.app, self.service, self.routes = app, service, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else logs.new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        path = scope["path"]
        try:
            if path not in OPEN_ROUTES and not path.startswith("/docs/"):
                try:
                    self.service.authorize(headers.get("authorization"))
                except UnauthorizedError as e:
                    await error_response(e, scope)(scope, receive, send_with_id)
                    return
            await self.app(scope, receive, send_with_id)
        except Exception:
            state["error_kind"] = "internal_error"
            raise
        finally:
            seconds = time.perf_counter() - started
            self.service.backlog.add(self._record, scope, path, status, seconds, time.time())

    def _record(
        self, scope: Scope, path: str, status: int, seconds: float, finished: float
    ) -> None:
        state, m = scope["state"], self.service.metrics
        route = path if path in self.routes else "other"
        m.requests.inc(transport="http", route=route, status=str(status))
        m.request_seconds.observe(seconds, transport="http", route=route)
        if status >= 400:
            m.errors.inc(kind=state.get("error_kind", str(status)), transport="http", route=route)
        inputs, tokens = state.get("inputs", 0), state.get("tokens", 0)
        m.inputs.inc(inputs)
        m.tokens.inc(tokens)
        logs.info_at(
            log,
            finished,
            "%s %s %d inputs=%d tokens=%d ms=%.1f id=%s",
            scope["method"],
            guards.printable(path),
            status,
            inputs,
            tokens,
            seconds * 1000,
            state["request_id"],
            extra={
                "transport": "http",
                "method": scope["method"],
                "route": path,
                "status": status,
                "inputs": inputs,
                "tokens": tokens,
                "ms": round(seconds * 1000, 3),
                "request_id": state["request_id"],
            },
        )


class _Api:
    def __init__(self, service: Service):
        self.service = service
        self.name = service.manifest.name
        self.tei = tei.Tei(service)
        self._document: bytes | None = None

    async def health(self, request: Request) -> Response:
        text, vision = self.service.manifest.has_text, self.service.images.available
        return Json(
            {
                "status": "OK",
                "text_model": text,
                "vision_model": vision,
                "gpu_enabled": compat.GPU_ENABLED,
            }
        )

    async def ready(self, request: Request) -> Response:
        if not self.service.ready:
            raise NotReadyError("The model is loading or the server is draining. Retry shortly.")
        return Json({"status": "ready"})

    async def info(self, request: Request) -> Response:
        manifest = self.service.manifest
        return Json({**compat.nomic_info(manifest), **self.tei.info(), **self.service.info()})

    async def metrics(self, request: Request) -> Response:
        self.service.backlog.flush()
        return PlainTextResponse(self.service.metrics.render(), media_type=prom.CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        if self._document is None:  # the same for the server's life: generated once
            from encoderfile.runtime.serve.openapi import document  # off serve's start-up path

            service = self.service
            self._document = orjson.dumps(
                document(service.manifest, service.limits, service.vocab_size())
            )
        return Response(self._document, media_type="application/json")

    async def docs(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return HTMLResponse(_DOCS_PAGE.format(title=f"{self.name} — encoderfile", root=root))

    async def embed(self, request: Request) -> Response:
        """nomic-serve's /embed (`input`), or TEI's (`inputs`): the field tells them apart."""
        started = time.perf_counter()
        body = await _read_object(request, self.service.limits.max_body_bytes)
        if _api(request, body) == "tei":
            return await self._tei_embed(request, body)
        body = compat.native_fields(body, self.service.manifest, batch=False)
        req = wire.parse(wire.EmbedRequest, body)
        dim = self.service.check_dimensions(req.dim, "dim")
        encodings = self.service.tokenize(
            [req.input], prompt=req.prompt, truncate=req.truncate, single=True
        )
        result = await self._embed(request, encodings, dim)
        return Json(
            {
                "embedding": result.vectors[0],
                "tokens": result.tokens[0],
                "time_ms": _ms(started),
            }
        )

    async def embed_batch(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await _read_object(request, self.service.limits.max_body_bytes)
        body = compat.native_fields(body, self.service.manifest, batch=True)
        req = wire.parse(wire.BatchRequest, body)
        if "inputs" not in body:
            raise InvalidFieldError("'inputs' must be a list of strings, got null.", param="inputs")
        dim = self.service.check_dimensions(req.dim, "dim")
        encodings = self.service.tokenize(
            req.inputs, prompt=req.prompt, truncate=req.truncate, param="inputs"
        )
        result = await self._embed(request, encodings, dim)
        return Json(
            {
                "embeddings": result.vectors,
                "tokens": result.tokens,
                "time_ms": _ms(started),
            }
        )

    async def openai(self, request: Request) -> Response:
        body = await _read_object(request, self.service.limits.max_body_bytes)
        req = wire.parse(wire.OpenAIRequest, body)
        self._check_model(req.model)
        fmt = req.encoding_format
        dimensions = self.service.check_dimensions(req.dimensions)
        prompt = req.prompt  # extension: a key of the manifest's prompts
        value = req.input
        encodings: list[Encoding] | list[TokenIds]
        if isinstance(value, str):
            encodings = self.service.tokenize([value], prompt=prompt, single=True)
        elif not value:
            raise InvalidFieldError(
                f"'input' must be {wire.OPENAI_INPUT}; got an empty list.", param="input"
            )
        elif isinstance(value[0], str):
            encodings = self.service.tokenize(value, prompt=prompt)  # type: ignore[arg-type]
        elif isinstance(value[0], int):
            encodings = await self._openai_token_ids([value], prompt)  # type: ignore[list-item]
        else:
            encodings = await self._openai_token_ids(value, prompt)  # type: ignore[arg-type]
        result = await self._embed(request, encodings, dimensions)
        if fmt == "base64":
            rows: list[Any] = [
                base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors
            ]
        else:
            rows = list(result.vectors)
        total = sum(result.tokens)
        return Json(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": row}
                    for i, row in enumerate(rows)
                ],
                "model": self.name,
                "usage": {"prompt_tokens": total, "total_tokens": total},
            }
        )

    def _check_model(self, model: str) -> None:
        accepted = compat.model_ids(self.service.manifest)
        if model not in accepted:
            raise NotFoundError(
                f"The model {model!r} does not exist on this server. "
                f"Use {' or '.join(map(repr, accepted))}.",
                param="model",
                code="model_not_found",
            )

    async def tei_rerank(self, request: Request) -> Response:
        """TEI's /rerank: [{index, score, text?}] sorted by score, best first."""
        body = await _read_object(request, self.service.limits.max_body_bytes)
        return await self._tei_rerank(request, body)

    async def _tei_rerank(self, request: Request, body: dict[str, Any]) -> Response:
        self.service.check_kind("rerank")  # an embedder answers 424 whatever the body, as TEI
        req = wire.parse(wire.TeiRerankRequest, body)
        direction = (req.truncation_direction or "right").lower()
        scores = await self._rerank(
            request,
            req.query,
            req.texts,
            truncate=req.truncate is not False,
            direction=direction,
            raw_scores=bool(req.raw_scores),
        )
        return Json(
            [
                {
                    "index": i,
                    "score": float(scores[i]),
                    **({"text": req.texts[i]} if req.return_text else {}),
                }
                for i in _order(scores)
            ]
        )

    async def cohere_rerank(self, request: Request) -> Response:
        """Cohere's and Jina's /v1/rerank: {results: [{index, relevance_score, document?}]}."""
        body = await _read_object(request, self.service.limits.max_body_bytes)
        req = wire.parse(wire.CohereRerankRequest, body)
        if req.model is not None:
            self._check_model(req.model)
        texts = [d if isinstance(d, str) else d.text for d in req.documents]
        scores = await self._rerank(request, req.query, texts, param="documents")
        results = [
            {
                "index": i,
                "relevance_score": float(scores[i]),
                **({"document": {"text": texts[i]}} if req.return_documents else {}),
            }
            for i in _order(scores, req.top_n)
        ]
        tokens = request.state.tokens
        return Json(
            {
                "id": request.scope["state"]["request_id"],
                "results": results,
                "model": self.name,
                "usage": {"total_tokens": tokens},
                "meta": {"billed_units": {"search_units": 1}},
            }
        )

    async def _rerank(
        self,
        request: Request,
        query: str,
        texts: list[str],
        *,
        truncate: bool = True,
        direction: str = "right",
        raw_scores: bool = False,
        param: str = "texts",
    ) -> np.ndarray:
        encodings = self.service.tokenize_pairs(
            query, texts, truncate=truncate, direction=direction, param=param
        )
        scores, tokens = await self.service.rerank(
            encodings, raw_scores=raw_scores, until=functools.partial(_disconnect, request)
        )
        request.state.inputs = len(encodings)
        request.state.tokens = tokens
        return scores

    async def query(self, request: Request) -> Response:
        """nomic-serve's /query: /embed with the recipe's search-query prompt."""
        started = time.perf_counter()
        body = await _read_object(request, self.service.limits.max_body_bytes)
        req = wire.parse(wire.QueryRequest, body, f"POST {request.url.path}")
        text, dim = req.input, self.service.check_dimensions(req.dim, "dim")
        prompt = compat.query_prompt(self.service.manifest)
        encodings = self.service.tokenize([text], prompt=prompt, single=True)
        result = await self._embed(request, encodings, dim)
        return Json(
            {
                "embedding": result.vectors[0],
                "tokens": result.tokens[0],
                "time_ms": _ms(started),
            }
        )

    async def tokenize(self, request: Request) -> Response:
        body = await _read_object(request, self.service.limits.max_body_bytes)
        if _api(request, body) == "tei":
            tokens = self.tei.tokenize(body)
            request.state.inputs = len(tokens)
            return Json(tokens)
        req = wire.parse(wire.TokenizeRequest, body)
        value = req.input
        single = isinstance(value, str)
        texts = [value] if isinstance(value, str) else value
        encodings = self.service.tokenize(texts, prompt=req.prompt, single=single)
        request.state.inputs = len(encodings)
        return Json(
            {
                "data": [
                    {"ids": e.ids, "tokens": e.tokens, "truncated": bool(e.overflowing)}
                    for e in encodings
                ]
            }
        )

    async def img_embed(self, request: Request) -> Response:
        started = time.perf_counter()
        self.service.images.check_available()  # answer 404 before reading a large body
        body = await _read_object(request, max(self.service.limits.max_body_bytes, BODY_BYTES))
        req = wire.parse(wire.ImageEmbedRequest, body)
        dim = self.service.check_dimensions(req.dim, "dim")
        images = self.service.images
        vectors = await asyncio.to_thread(images.embed, [req.content], dim, "content", True)
        request.state.inputs = 1
        return Json({"embedding": vectors[0], "time_ms": _ms(started)})

    async def img_batch(self, request: Request) -> Response:
        started = time.perf_counter()
        self.service.images.check_available()  # answer 404 before reading a large body
        limit = max(self.service.limits.max_body_bytes, BATCH_BODY_BYTES)
        body = await _read_object(request, limit)
        req = wire.parse(wire.ImageBatchRequest, body)
        contents = req.contents
        dim = self.service.check_dimensions(req.dim, "dim")
        vectors = await asyncio.to_thread(self.service.images.embed, contents, dim, "contents")
        request.state.inputs = len(contents)
        return Json({"embeddings": vectors, "time_ms": _ms(started)})

    async def img_stats(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await _read_object(request, max(self.service.limits.max_body_bytes, BODY_BYTES))
        req = wire.parse(wire.ImageStatsRequest, body)
        stats = await asyncio.to_thread(
            self.service.images.stats, req.content, req.averaging_method, "content"
        )
        request.state.inputs = 1
        return Json({**stats, "time_ms": _ms(started)})

    async def tei_root(self, request: Request) -> Response:
        """TEI's `/`: GET is its health check, POST its /embed."""
        request.scope.setdefault("state", {})[tei.STATE_KEY] = "tei"
        if request.method == "GET":
            if not self.service.ready:
                raise NotReadyError(
                    "The model is loading or the server is draining. Retry shortly."
                )
            return Response(status_code=200)
        body = await _read_object(request, self.service.limits.max_body_bytes)
        if routes.serves(self.service.manifest, "rerank"):  # TEI's POST / is the model's route
            return await self._tei_rerank(request, body)
        if routes.serves(self.service.manifest, "embed_sparse"):
            return await self._tei_embed_sparse(request, body)
        return await self._tei_embed(request, body)

    async def _tei_embed(self, request: Request, body: dict[str, Any]) -> Response:
        encodings, dimensions, normalize = self.tei.embed_inputs(body)
        result = await self._embed(request, encodings, dimensions)
        rows = result.vectors
        if normalize:  # only for a graph without L2 at its end (TEI's normalize=true)
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            rows = rows / np.maximum(norms, np.float32(1e-12))
        return Json(rows)

    async def tei_decode(self, request: Request) -> Response:
        body = await _read_object(request, self.service.limits.max_body_bytes)
        texts = self.tei.decode(body)
        request.state.inputs = len(texts)
        return Json(texts)

    async def tei_embed_all(self, request: Request) -> Response:
        await _read_object(request, self.service.limits.max_body_bytes)  # a bad body says so
        raise self.tei.embed_all()

    async def tei_embed_sparse(self, request: Request) -> Response:
        """TEI's /embed_sparse: per input, its nonzero terms [{index, value, token?}]."""
        body = await _read_object(request, self.service.limits.max_body_bytes)
        self.service.check_kind("embed_sparse")  # another kind answers 424 whatever the body
        return await self._tei_embed_sparse(request, body)

    async def _tei_embed_sparse(self, request: Request, body: dict[str, Any]) -> Response:
        encodings, return_tokens = self.tei.sparse_inputs(body)
        result = await self._embed(request, encodings, None, task="embed_sparse")
        vocabulary = sparse.vocabulary(self.service.bundle.tokenizer) if return_tokens else None
        return Json(sparse.values(result.vectors, vocabulary))

    async def tei_other_kind(self, request: Request) -> Response:
        await _read_object(request, self.service.limits.max_body_bytes)
        raise self.tei.other_kind(request.url.path)

    async def _openai_token_ids(self, rows: list[list[int]], prompt: str | None) -> list[Encoding]:
        """OpenAI's token arrays: ids of cl100k_base (what OpenAI's embedding models and
        LangChain's OpenAIEmbeddings use), decoded to the text they encode, then embedded as text.
        Never read as ids of this model's vocabulary (that would be a wrong vector)."""
        self.service.check_count(len(rows), "input")
        for i, row in enumerate(rows):
            if not row:
                raise InvalidFieldError(
                    f"'input[{i}]' has no token ids. Send at least one.", param="input"
                )
            if len(row) > openai_tokens.MAX_IDS:
                raise InvalidFieldError(
                    f"'input[{i}]' has {len(row)} token ids, over OpenAI's limit of "
                    f"{openai_tokens.MAX_IDS}. Split it, or send text.",
                    param="input",
                )
            bad = next((t for t in row if not openai_tokens.is_token(t)), None)
            if bad is not None:
                raise InvalidFieldError(
                    f"'input[{i}]' has token id {bad}, which is not a {openai_tokens.ENCODING} "
                    "token. /v1/embeddings reads token ids as tiktoken's cl100k_base, as OpenAI "
                    "does (LangChain's OpenAIEmbeddings sends those by default). Send text "
                    "(LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)), or "
                    "send ids of this model's own vocabulary to POST /embed as TEI's 'inputs'.",
                    param="input",
                )
        texts = await asyncio.to_thread(openai_tokens.decode, rows)
        return self.service.tokenize(texts, prompt=prompt, decoded=True)

    async def _embed(
        self,
        request: Request,
        encodings: Sequence[Encoding | TokenIds],
        dimensions: int | None,
        task: str = "embed",
    ) -> Embeddings:
        result = await self.service.embed_tokenized(
            encodings, dimensions, until=functools.partial(_disconnect, request), task=task
        )
        request.state.inputs = len(encodings)
        request.state.tokens = sum(result.tokens)
        return result


def _order(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    from encoderfile.runtime.reranker import order  # imports onnxruntime: after start-up

    return order(scores, top_n)


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, read up to `limit` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLargeError(
        f"The body is over the limit of {limit} bytes. Send fewer or shorter inputs, "
        "or raise --max-body-bytes."
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:  # also what --read-timeout does to a stalled body
        raise ClientGoneError("The client disconnected while sending the body.") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedRequestError(
            f"The body is not UTF-8 (invalid byte at offset {e.start}). Send UTF-8 JSON."
        ) from None
    try:
        value = guards.loads(text)
    except json.JSONDecodeError as e:
        problem = f"{e.msg} at line {e.lineno} column {e.colno}" if text else "it is empty"
        raise MalformedRequestError(
            f"The body is not valid JSON ({problem}). Send a JSON object."
        ) from None
    except RecursionError:
        raise MalformedRequestError(
            "The body is JSON nested too deeply to parse. Send a flat JSON object."
        ) from None
    if not isinstance(value, dict):
        raise MalformedRequestError(
            f"The body is a JSON {_json_type(value)}, not an object. Send a JSON object."
        )
    return value


def _api(request: Request, body: dict[str, Any]) -> str:
    """ "tei" for a TEI request on a shared path (`inputs`, not `input`), else "native"."""
    if "inputs" in body and "input" in body:
        raise InvalidFieldError(
            f"POST {request.url.path} got both 'input' (nomic-serve's request) and 'inputs' "
            "(TEI's). Send one of them.",
            param="input",
        )
    if "inputs" in body:
        request.scope.setdefault("state", {})[tei.STATE_KEY] = "tei"
        return "tei"
    return "native"


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "boolean" if isinstance(value, bool) else "null"
    names = {list: "array", str: "string", int: "number", float: "number"}
    return names.get(type(value), "value")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{root}/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{root}/docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "{root}/openapi.json", dom_id: "#swagger-ui"}});
</script>
</body>
</html>
"""
