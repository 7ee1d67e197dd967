"""The gRPC API (encoderfile.v1.Embedder) plus grpc.health.v1 and server reflection."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from encoderfile.errors import (
    EncoderfileError,
)
from encoderfile.proto import embed_pb2, embed_pb2_grpc
from encoderfile.runtime import sparse
from encoderfile.runtime.serve import grpc_guards, logs
from encoderfile.runtime.serve.image_service import BATCH_BODY_BYTES
from encoderfile.runtime.serve.kinds import kind_of
from encoderfile.runtime.serve.metrics import error_kind
from encoderfile.runtime.serve.service import Service
from encoderfile.runtime.serve.stream import Pipeline

if TYPE_CHECKING:
    from tokenizers import Encoding

    from encoderfile.runtime.embedder import Embeddings

log = logging.getLogger("encoderfile.serve")
Reply = TypeVar("Reply")
SERVICE_NAME = embed_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code of kinds.KINDS, the table every transport reads."""
    return grpc.StatusCode[kind_of(exc).grpc]


class EmbedderServicer(embed_pb2_grpc.EmbedderServicer):
    """Every RPC checks the API key, goes through the shared Batcher and logs one line."""

    def __init__(self, service: Service):
        self.service = service

    async def Embed(  # noqa: N802 - gRPC method names
        self, request: embed_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedResponse:
        return await self._call(
            "Embed", context, functools.partial(self._embed_one, request), request
        )

    async def EmbedStream(  # noqa: N802
        self,
        requests: AsyncIterator[embed_pb2.EmbedRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[embed_pb2.EmbedResponse]:
        """Each message is queued in the Batcher as it arrives (up to stream.WINDOW ahead of
        the replies), so messages share model calls; replies keep the messages' order."""
        pipeline = Pipeline(
            requests, lambda request: self._submit(request, context), lambda work: work.cancel()
        )
        async for work in pipeline:
            yield await self._call("EmbedStream", context, functools.partial(self._embed, work))

    async def Info(  # noqa: N802
        self, request: embed_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.InfoResponse:
        return await self._call("Info", context, lambda stats: self._info(), request)

    async def EmbedImages(  # noqa: N802
        self, request: embed_pb2.EmbedImagesRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedResponse:
        return await self._call(
            "EmbedImages", context, functools.partial(self._embed_images, request), request
        )

    async def ImageStats(  # noqa: N802
        self, request: embed_pb2.ImageStatsRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.ImageStatsResponse:
        return await self._call(
            "ImageStats", context, functools.partial(self._stats, request), request
        )

    async def Rerank(  # noqa: N802
        self, request: embed_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.RerankResponse:
        return await self._call(
            "Rerank", context, functools.partial(self._rerank, request), request
        )

    async def _rerank(
        self, request: embed_pb2.RerankRequest, stats: dict[str, int]
    ) -> embed_pb2.RerankResponse:
        """Rerank: the same Service.tokenize_pairs and Service.rerank as HTTP's /rerank."""
        from encoderfile.runtime.reranker import order

        started = time.perf_counter()
        encodings = self.service.tokenize_pairs(
            request.query,
            list(request.documents),
            truncate=request.truncate if request.HasField("truncate") else True,
            param="documents",
        )
        scores, tokens = await self.service.rerank(encodings, raw_scores=request.raw_scores)
        stats["inputs"], stats["tokens"] = len(encodings), tokens
        top_n = request.top_n if request.HasField("top_n") else None
        return embed_pb2.RerankResponse(
            results=[
                embed_pb2.RankedDocument(index=i, score=float(scores[i]))
                for i in order(scores, top_n, sort=not request.input_order)
            ],
            total_tokens=tokens,
            time_ms=(time.perf_counter() - started) * 1000,
        )

    async def EmbedSparse(  # noqa: N802
        self, request: embed_pb2.EmbedSparseRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedSparseResponse:
        return await self._call(
            "EmbedSparse", context, functools.partial(self._embed_sparse, request), request
        )

    async def _embed_sparse(
        self, request: embed_pb2.EmbedSparseRequest, stats: dict[str, int]
    ) -> embed_pb2.EmbedSparseResponse:
        """EmbedSparse: Service.tokenize and embed_tokenized, as HTTP's /embed_sparse."""
        started = time.perf_counter()
        self.service.check_kind("embed_sparse")
        encodings = self.service.tokenize(
            list(request.inputs),
            prompt=request.prompt if request.HasField("prompt") else None,
            truncate=request.truncate if request.HasField("truncate") else True,
            param="inputs",
        )
        result = await self.service.embed_tokenized(encodings, task="embed_sparse")
        stats["inputs"], stats["tokens"] = len(encodings), sum(result.tokens)
        vocabulary = sparse.vocabulary(self.service.bundle.tokenizer)
        rows = []
        for vector, tokens, truncated in zip(
            result.vectors, result.tokens, result.truncated, strict=True
        ):
            indices, values = sparse.terms(vector)
            terms = [vocabulary[i] for i in indices] if request.return_tokens else []
            rows.append(
                embed_pb2.SparseEmbedding(
                    indices=indices.tolist(),
                    values=values.tolist(),
                    terms=terms,
                    tokens=tokens,
                    truncated=truncated,
                )
            )
        return embed_pb2.EmbedSparseResponse(
            embeddings=rows,
            total_tokens=stats["tokens"],
            time_ms=(time.perf_counter() - started) * 1000,
        )

    async def _embed_images(
        self, request: embed_pb2.EmbedImagesRequest, stats: dict[str, int]
    ) -> embed_pb2.EmbedResponse:
        started = time.perf_counter()
        dimensions = self.service.check_dimensions(
            request.dimensions if request.HasField("dimensions") else None
        )
        images = list(request.images)
        vectors = await asyncio.to_thread(self.service.images.embed, images, dimensions, "images")
        stats["inputs"] = len(images)
        return embed_pb2.EmbedResponse(
            embeddings=[embed_pb2.Embedding(values=v) for v in vectors.tolist()],
            dimensions=vectors.shape[1],
            time_ms=(time.perf_counter() - started) * 1000,
        )

    async def _stats(
        self, request: embed_pb2.ImageStatsRequest, stats: dict[str, int]
    ) -> embed_pb2.ImageStatsResponse:
        started = time.perf_counter()
        method = request.averaging_method if request.HasField("averaging_method") else None
        result = await asyncio.to_thread(self.service.images.stats, request.image, method, "image")
        stats["inputs"] = 1
        colors = result["color_data"] or {}
        return embed_pb2.ImageStatsResponse(
            exif_json=json.dumps(result["exif_data"], sort_keys=True),
            avg_color=embed_pb2.Color(**colors["avg_color"]) if colors else None,
            dominant_color=embed_pb2.Color(**colors["dominant_color"]) if colors else None,
            time_ms=(time.perf_counter() - started) * 1000,
        )

    async def _info(self) -> embed_pb2.InfoResponse:
        info = self.service.info()
        return embed_pb2.InfoResponse(
            name=info["name"],
            version=info["version"],
            model_id=info["model_id"] or "",
            model_revision=info["revision"] or "",
            model_sha256=info["sha256"] or "",
            dimension=info["dimension"],
            dimensions=info["dimensions"],
            normalized=info["normalized"],
            prompts=info["prompts"],
            default_prompt=info["default_prompt"] or "",
            max_length=info["max_length"],
            limits=embed_pb2.Limits(**info["limits"]),
            encoderfile_version=info["encoderfile_version"],
            artifact_sha256=info["artifact_sha256"] or "",
            vision_model=info["vision_model"],
            kind=info["kind"],
        )

    def _checked(self, request: embed_pb2.EmbedRequest) -> tuple[list[Encoding], int]:
        self.service.check_kind("embed")  # EmbedStream queues without embed_tokenized's check
        dimensions = self.service.check_dimensions(
            request.dimensions if request.HasField("dimensions") else None
        )
        encodings = self.service.tokenize(
            list(request.inputs),
            prompt=request.prompt if request.HasField("prompt") else None,
            truncate=request.truncate if request.HasField("truncate") else True,
            param="inputs",
        )
        return encodings, dimensions

    async def _embed_one(
        self, request: embed_pb2.EmbedRequest, stats: dict[str, int]
    ) -> embed_pb2.EmbedResponse:
        """Embed: through Service.embed_tokenized, which runs a lone request inline or queues it."""
        started = time.perf_counter()
        encodings, dimensions = self._checked(request)
        result = await self.service.embed_tokenized(encodings, dimensions)
        return _reply(result, len(encodings), started, stats)

    def _submit(
        self, request: embed_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> _Submitted:
        """A stream's message checked, tokenized and queued now (so that the messages of a
        stream share model calls); the reply is awaited by _call."""
        started = time.perf_counter()
        try:
            self.service.authorize(dict(context.invocation_metadata() or ()).get("authorization"))
            grpc_guards.check(request)
            encodings, dimensions = self._checked(request)
            job = self.service.enqueue(encodings, dimensions)
        except EncoderfileError as e:
            return _Submitted(started, error=e)
        return _Submitted(started, job=job, inputs=len(encodings))

    async def _embed(self, submitted: _Submitted, stats: dict[str, int]) -> embed_pb2.EmbedResponse:
        if submitted.error is not None:
            raise submitted.error
        assert submitted.job is not None
        result = await asyncio.wrap_future(submitted.job)
        return _reply(result, submitted.inputs, submitted.started, stats)

    async def _call(  # type: ignore[return]  # context.abort() always raises
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[dict[str, int]], Awaitable[Reply]],
        request: object = None,
    ) -> Reply:
        """Run one request with auth and the error table. Its metrics and log line wait in the
        service's backlog, off the reply's path."""
        started = time.perf_counter()
        metadata = dict(context.invocation_metadata() or ())
        request_id = str(metadata.get("x-request-id") or logs.new_request_id())[:64]
        stats = {"inputs": 0, "tokens": 0}
        code = grpc.StatusCode.OK
        try:
            self.service.authorize(metadata.get("authorization"))
            grpc_guards.check(request)
            return await work(stats)
        except EncoderfileError as e:
            code = status_of(e)
            self.service.metrics.errors.inc(kind=error_kind(e), transport="grpc", route=method)
            await context.abort(code, str(e))
        except asyncio.CancelledError:  # the client cancelled or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            self.service.metrics.errors.inc(kind="internal_error", transport="grpc", route=method)
            log.exception("gRPC %s failed (request %s)", method, request_id)
            await context.abort(code, f"Internal error in request {request_id}. Report this bug.")
        finally:
            seconds = time.perf_counter() - started
            self.service.backlog.add(
                self._record, method, code, stats, seconds, request_id, time.time()
            )

    def _record(
        self,
        method: str,
        code: grpc.StatusCode,
        stats: dict[str, int],
        seconds: float,
        request_id: str,
        finished: float,
    ) -> None:
        """The request metrics and its log line."""
        inputs, tokens = stats["inputs"], stats["tokens"]
        m = self.service.metrics
        m.requests.inc(transport="grpc", route=method, status=code.name)
        m.request_seconds.observe(seconds, transport="grpc", route=method)
        m.inputs.inc(inputs)
        m.tokens.inc(tokens)
        logs.info_at(
            log,
            finished,
            "GRPC %s %s inputs=%d tokens=%d ms=%.1f id=%s",
            method,
            code.name,
            inputs,
            tokens,
            seconds * 1000,
            request_id,
            extra={
                "transport": "grpc",
                "method": "GRPC",
                "route": method,
                "status": code.name,
                "inputs": inputs,
                "tokens": tokens,
                "ms": round(seconds * 1000, 3),
                "request_id": request_id,
            },
        )


def _reply(
    result: Embeddings, inputs: int, started: float, stats: dict[str, int]
) -> embed_pb2.EmbedResponse:
    stats["inputs"], stats["tokens"] = inputs, sum(result.tokens)
    return embed_pb2.EmbedResponse(
        embeddings=[
            embed_pb2.Embedding(values=v, tokens=t, truncated=c)  # lists: 9x faster than rows
            for v, t, c in zip(
                result.vectors.tolist(), result.tokens, result.truncated, strict=True
            )
        ],
        dimensions=result.vectors.shape[1],
        total_tokens=sum(result.tokens),
        time_ms=(time.perf_counter() - started) * 1000,
    )


class _Submitted:
    """A request queued in the Batcher (or refused before queueing): awaiting it answers it."""

    def __init__(
        self,
        started: float,
        *,
        job: Future[Embeddings] | None = None,
        inputs: int = 0,
        error: EncoderfileError | None = None,
    ):
        self.started, self.job, self.inputs, self.error = started, job, inputs, error

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()


def create_server(service: Service, address: str) -> tuple[grpc.aio.Server, Any]:
    """An unstarted grpc.aio server bound to `address`, and its health servicer."""
    limit = service.limits.max_body_bytes
    if service.images.available:  # images are larger than texts
        limit = max(limit, BATCH_BODY_BYTES)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    grpc_guards.add_servicer(
        embed_pb2_grpc.add_EmbedderServicer_to_server, EmbedderServicer(service), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise EncoderfileError(f"cannot bind gRPC to {address}. Pick a free --grpc-port.")
    return server, health_servicer


async def set_serving(health_servicer: Any, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
