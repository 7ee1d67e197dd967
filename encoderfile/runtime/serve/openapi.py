"""The OpenAPI 3.0 document (what the bundled Swagger UI 4 renders) of the HTTP API, generated
from the request and response types of wire.py: each route is one `Op` in OPERATIONS. The
server's own values (this model's widths, prompts and names; --max-inputs, --max-chars) fill the
fields the types mark with `Bound`, so the document states exactly what Service checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

import encoderfile
from encoderfile.runtime import openai_tokens
from encoderfile.runtime.manifest import MIN_DIMENSION, NO_PROMPT, Manifest
from encoderfile.runtime.serve import routes, wire
from encoderfile.runtime.serve.compat import model_ids

if TYPE_CHECKING:
    from encoderfile.runtime.serve.service import Limits

# A character that str.strip() keeps: a text without one is blank and refused.
NOT_BLANK = (
    "[^\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
)
Types = tuple[Any, ...]  # wire.Request / wire.Response subclasses, or wire.Named

# Error statuses by route family: (status, description).
NATIVE = (
    (400, "Body is not UTF-8 JSON"),
    (401, "Missing or wrong API key"),
    (404, "Unknown model"),
    (413, "Body too large"),
    (422, "Invalid field"),
    (429, "Too many inputs in flight; retry"),
    (503, "Loading or draining; retry"),
)
OPENAI = tuple(
    (400, "Body is not JSON, or a field is invalid") if s == 400 else (s, d)
    for s, d in NATIVE
    if s != 422
)
TEI = (
    (400, "Empty batch"),
    (401, "Missing or wrong API key"),
    (413, "Body too large, or more inputs than --max-inputs"),
    (422, "Body is not JSON, or a field is invalid"),
    (424, "The model cannot serve the request"),
    (429, "Too many inputs in flight; retry"),
    (503, "Loading or draining; retry"),
)
BOTH = (*NATIVE, (424, "The model cannot serve the request (TEI)"))
OTHER_KIND = (
    (401, "Missing or wrong API key"),
    (413, "Body too large"),
    (422, "Body is not a JSON object"),
    (424, "This model kind does not serve the route"),
)


@dataclass(frozen=True)
class Op:
    """One operation: its types and the statuses it answers besides 200."""

    summary: str
    tag: str
    request: Types = ()  # several: the body is one of them
    response: Types = ()  # several: the answer is one of them; none: no body
    errors: Types = (wire.Error,)
    statuses: tuple[tuple[int, str], ...] = NATIVE
    method: str = "post"
    media: str = "application/json"
    path_params: tuple[str, ...] = ()
    when: Callable[[Manifest], bool] = lambda manifest: True


# A reranker's document lists its rerank routes and not the embedding ones (which answer 400).
reranks: Callable[[Manifest], bool] = lambda m: routes.serves(m, "rerank")  # noqa: E731
other_kind: Callable[[Manifest], bool] = lambda m: not routes.serves(m, "rerank")  # noqa: E731
# Likewise the embedding routes are listed where the artifact embeds (not on sparse or rerankers).
embeds: Callable[[Manifest], bool] = lambda m: routes.serves(m, "embed")  # noqa: E731
sparse: Callable[[Manifest], bool] = lambda m: routes.serves(m, "embed_sparse")  # noqa: E731

embed = Op(
    "Embed one text; with `inputs`, TEI's request and answer",
    "native",
    (wire.EmbedRequest, wire.TeiEmbedRequest),
    (wire.EmbedResponse, wire.TeiEmbedResponse),
    (wire.Error, wire.TeiError),
    BOTH,
    when=embeds,
)
batch = Op(
    "Embed several texts",
    "native",
    (wire.BatchRequest,),
    (wire.BatchResponse,),
    when=embeds,
)
openai = Op(
    "OpenAI-compatible embeddings",
    "openai",
    (wire.OpenAIRequest,),
    (wire.OpenAIResponse,),
    (wire.OpenAIError,),
    OPENAI,
    when=embeds,
)
query = Op(
    "Embed a search query (nomic-serve)",
    "native",
    (wire.QueryRequest,),
    (wire.EmbedResponse,),
    when=embeds,
)
tei_embed = Op(
    "Embed (TEI): a bare list of vectors",
    "tei",
    (wire.TeiEmbedRequest,),
    (wire.TeiEmbedResponse,),
    (wire.TeiError,),
    TEI,
    when=embeds,
)
has_image: Callable[[Manifest], bool] = lambda manifest: manifest.image is not None  # noqa: E731
tei_rerank = Op(
    "Re-rank (TEI): the texts scored against the query by the cross-encoder, best first",
    "rerank",
    (wire.TeiRerankRequest,),
    (wire.TeiRerankResponse,),
    (wire.TeiError,),
    TEI,
    when=reranks,
)
tei_embed_sparse = Op(
    "Sparse vectors (TEI): per input, its nonzero vocabulary terms",
    "tei",
    (wire.TeiEmbedSparseRequest,),
    (wire.TeiEmbedSparseResponse,),
    (wire.TeiError,),
    TEI,
    when=sparse,
)
cohere_rerank = Op(
    "Re-rank (Cohere / Jina): relevance scores of the documents, best first",
    "rerank",
    (wire.CohereRerankRequest,),
    (wire.CohereRerankResponse,),
    (wire.OpenAIError,),
    OPENAI,
    when=reranks,
)

OPERATIONS: dict[str, list[Op]] = {
    "/health": [Op("Liveness", "ops", response=(wire.Status,), statuses=(), method="get")],
    "/ready": [
        Op(
            "200 once the model is loaded; 503 while loading or draining",
            "ops",
            response=(wire.Status,),
            errors=(),
            statuses=((503, "Loading or draining; retry"),),
            method="get",
        )
    ],
    "/info": [
        Op("Model, dimensions, prompts and limits", "ops", response=(wire.Info,), statuses=(), method="get")
    ],
    "/metrics": [
        Op("Prometheus metrics", "ops", response=(wire.MetricsText,), statuses=(), method="get", media="text/plain")
    ],
    "/embed": [embed],
    "/txt/embed": [embed],
    "/embed/batch": [batch],
    "/batch": [batch],
    "/txt/batch": [batch],
    "/v1/embeddings": [openai],
    "/embeddings": [openai],
    "/tokenize": [
        Op(
            "Token ids and strings; with `inputs`, TEI's request and answer",
            "native",
            (wire.TokenizeRequest, wire.TeiTokenizeRequest),
            (wire.TokenizeResponse, wire.TeiTokenizeResponse),
            (wire.Error, wire.TeiError),
            BOTH,
        )
    ],
    "/query": [query],
    "/txt/query": [query],
    "/img/stats": [
        Op(
            "EXIF tags, average and dominant colour",
            "images",
            (wire.ImageStatsRequest,),
            (wire.ImageStatsResponse,),
        )
    ],
    "/img/embed": [
        Op("Embed one image", "images", (wire.ImageEmbedRequest,), (wire.EmbedResponse,), when=has_image)
    ],
    "/img/batch": [
        Op("Embed several images", "images", (wire.ImageBatchRequest,), (wire.BatchResponse,), when=has_image)
    ],
    "/v1/models": [
        Op("The model this server embeds with", "openai", response=(wire.ModelList,), statuses=(), method="get")
    ],
    "/v1/models/{model}": [
        Op(
            "One model by id (the artifact name or the repo id)",
            "openai",
            response=(wire.Model,),
            errors=(),
            statuses=((404, "Unknown model"),),
            method="get",
            path_params=("model",),
        )
    ],
    "/docs/openapi.json": [
        Op(
            "This document (also at /openapi.json, nomic-serve's path)",
            "ops",
            response=(wire.AnyObject,),
            statuses=(),
            method="get",
        )
    ],
    "/": [
        Op(
            "TEI's health check: 200 once the model is loaded",
            "tei",
            errors=(wire.TeiError,),
            statuses=((503, "Loading or draining; retry"),),
            method="get",
        ),
        tei_embed,
        tei_rerank,  # a reranker's POST / is its /rerank, as TEI's
        tei_embed_sparse,  # and a sparse model's its /embed_sparse
    ],
    "/decode": [
        Op(
            "Token ids of this model's vocabulary back to text (TEI)",
            "tei",
            (wire.TeiDecodeRequest,),
            (wire.TeiDecodeResponse,),
            (wire.TeiError,),
            TEI,
        )
    ],
    "/rerank": [
        tei_rerank,
        Op("Re-rank (TEI): 424, this artifact is not a reranker", "tei", (wire.AnyObject,), (), (wire.TeiError,), OTHER_KIND, when=other_kind),
    ],
    "/v1/rerank": [cohere_rerank],
    "/embed_sparse": [
        tei_embed_sparse,
        Op("Sparse vectors (TEI): 424, this artifact is not a sparse model", "tei", (wire.AnyObject,), (), (wire.TeiError,), OTHER_KIND, when=lambda m: not sparse(m)),
    ],
    **{
        path: [Op(summary, "tei", (wire.AnyObject,), (), (wire.TeiError,), OTHER_KIND)]
        for path, summary in (
            ("/embed_all", "Per-token vectors (TEI): 424, the graph outputs only pooled vectors"),
            ("/predict", "Classify (TEI): 424 until the artifact holds a classifier"),
        )
    },
}  # fmt: skip


def document(manifest: Manifest, limits: Limits, vocab_size: int = 0) -> dict[str, Any]:
    """The document served at GET /openapi.json; examples use this model's name and prompts."""
    paths: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for path, ops in OPERATIONS.items():
        item = {}
        for op in ops:
            if not op.when(manifest):
                continue
            for t in (*op.request, *op.response, *op.errors):
                types[_name(t)] = t
            item[op.method] = _operation(op)
        if item:
            paths[path] = item
    schemas = _components(types)
    schemas = {name: _openapi30(schema) for name, schema in schemas.items()}
    schemas = {name: bind(schema, manifest, limits, vocab_size) for name, schema in schemas.items()}
    if "OpenAIRequest" in schemas:
        schemas["OpenAIRequest"]["example"] = {"model": manifest.name, "input": ["hello world"]}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"{manifest.name} (encoderfile)",
            "version": manifest.version,
            "description": f"Embeddings from {manifest.name}, dimension {manifest.dimension}, "
            f"served by encoderfile {encoderfile.__version__}.",
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


REF = "#/components/schemas/{name}"


def _name(t: Any) -> str:
    return t.name if isinstance(t, wire.Named) else t.__name__


def _components(types: dict[str, Any]) -> dict[str, Any]:
    """Each type's JSON Schema (msgspec), named; one_of fields as the anyOf of their types."""
    unions = list(wire.ONE_OF.items())
    kinds = [t.type if isinstance(t, wire.Named) else t for t in types.values()]
    kinds += [alt for _, alts in unions for alt in alts]
    refs, components = msgspec.json.schema_components(kinds, ref_template=REF)
    named = dict(zip(types, refs[: len(types)], strict=True))
    for name, t in types.items():
        if isinstance(t, wire.Named):
            described = {"description": t.description} if t.description else {}
            components[name] = {**named[name], **described}
        else:
            components[name] = {**components[name], **getattr(t, "schema_extra", {})}
    at = len(types)
    alternatives = {}
    for name, alts in unions:
        alternatives[name] = list(refs[at : at + len(alts)])
        at += len(alts)
    return {name: _one_of(schema, alternatives) for name, schema in components.items()}


def _one_of(node: Any, alternatives: dict[str, list[Any]]) -> Any:
    if isinstance(node, list):
        return [_one_of(n, alternatives) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _one_of(v, alternatives) for k, v in node.items()}
    name = node.pop(wire.ONE, None)
    if name is not None:
        node = {**node, "anyOf": alternatives[name]}
        node.pop("default", None)
    return node


def _schema(types: Types) -> dict[str, Any]:
    refs = [{"$ref": REF.format(name=_name(t))} for t in types]
    return refs[0] if len(refs) == 1 else {"oneOf": refs}


def _operation(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag]}
    if op.path_params:
        out["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in op.path_params
        ]
    if op.request:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(op.request)}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if op.response:
        ok["content"] = {op.media: {"schema": _schema(op.response)}}
    responses: dict[str, Any] = {"200": ok}
    for status, description in op.statuses:
        answer: dict[str, Any] = {"description": description}
        errors = op.errors if status != 424 else (wire.TeiError,)
        if errors:
            answer["content"] = {"application/json": {"schema": _schema(errors)}}
        responses[str(status)] = answer
    out["responses"] = responses
    return out


def _openapi30(node: Any) -> Any:
    """pydantic's JSON Schema (2020-12) in OpenAPI 3.0's dialect: `X | None` as nullable,
    `const` as a one-value enum."""
    if isinstance(node, list):
        return [_openapi30(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _openapi30(v) for k, v in node.items() if k != "title"}
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if options and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del node[key]
            if len(rest) == 1:
                node = {**rest[0], **node}
            else:
                node[key] = rest
            node["nullable"] = True
            if "$ref" in node:  # OpenAPI 3.0 ignores a $ref's siblings
                node = {"allOf": [{"$ref": node.pop("$ref")}], **node}
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return node


def bind(node: Any, manifest: Manifest, limits: Limits, vocab_size: int) -> Any:
    """Fill every field marked `Bound(name)` with this server's values (BOUNDS)."""
    if isinstance(node, list):
        return [bind(n, manifest, limits, vocab_size) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: bind(v, manifest, limits, vocab_size) for k, v in node.items()}
    name = node.pop(wire.BIND, None)
    if name is not None:
        node = BOUNDS[name](node, manifest, limits, vocab_size)
    return node


def _text(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    return {**node, "minLength": 1, "maxLength": limits.max_chars, "pattern": NOT_BLANK}


def _texts(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    return {**node, "minItems": 1, "maxItems": limits.max_inputs}


def _width(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    dims = ", ".join(map(str, m.dimensions))
    out = {
        **node,
        "type": "integer",
        "nullable": True,
        "description": "Matryoshka width (a prefix of the vector, re-normalised); default the "
        f"full {m.dimension}; recommended: {dims}",
    }
    if m.restrict_dimensions:  # OpenAPI 3.0: a nullable enum lists null
        out["enum"] = [*sorted({m.dimension, *m.dimensions}, reverse=True), None]
    else:
        out.update(minimum=MIN_DIMENSION, maximum=m.dimension)
    return out


def _image_width(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    return {**node, "type": "integer", "nullable": True, "enum": [*m.dimensions, None]}


def _prompt(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    described = node.get(
        "description", "prompt name (prefix from the manifest; 'none' for no prefix)"
    )
    return {
        **node,
        "type": "string",
        "nullable": True,
        "enum": [*m.prompts, *NO_PROMPT, None],
        "description": f"{described}; default: {m.default_prompt}",
    }


def _model(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    optional = [None] if node.get("nullable") else []  # OpenAPI 3.0: a nullable enum lists null
    return {**node, "enum": [*model_ids(m), *optional]}


def _cl100k_id(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    """tiktoken cl100k_base, as OpenAI's API reads token arrays (openai_tokens)."""
    return {
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": openai_tokens.RANKS - 1},
            {"type": "integer", "enum": sorted(openai_tokens.SPECIAL)},
        ]
    }


def _cl100k_ids(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    return {**node, "minItems": 1, "maxItems": openai_tokens.MAX_IDS}


def _token_id(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    return {**node, "minimum": 0, "maximum": max(vocab - 1, 0)}


def _token_ids(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    return {**node, "minItems": 1, "maxItems": m.max_length}


def _any_ids(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    return {**node, "minItems": 1}


def _normalize(node: dict[str, Any], m: Manifest, limits: Limits, vocab: int) -> dict[str, Any]:
    if m.normalized:  # the graph ends in L2: there is no unnormalised vector to give
        return {**node, "enum": [True, None]}
    return node


Binder = Callable[[dict[str, Any], Manifest, "Limits", int], dict[str, Any]]
BOUNDS: dict[str, Binder] = {
    "text": _text,
    "texts": _texts,
    "width": _width,
    "image_width": _image_width,
    "prompt": _prompt,
    "model": _model,
    "cl100k_id": _cl100k_id,
    "cl100k_ids": _cl100k_ids,
    "token_id": _token_id,
    "token_ids": _token_ids,
    "any_ids": _any_ids,
    "normalize": _normalize,
}
BOUNDS["image"] = lambda node, m, limits, vocab: {**node, "minLength": 1}
