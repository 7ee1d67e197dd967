"""The HTTP API's request and response types, one per route family (nomic-serve, OpenAI, TEI,
images, operations). msgspec Structs: they validate a request (strict: no coercion; unknown
fields refused), and openapi.py generates the document served at /openapi.json from them.

What a type cannot know before the server starts (this model's widths, prompts and names, the
server's --max-inputs and --max-chars) is marked on a field with `bound(name)` and filled in by
openapi.BOUNDS from the manifest and the limits — the values Service checks. A field that is one
of several array types (msgspec unions hold one array-like type at most) is `one_of(name)`: its
alternatives are types in ONE_OF, each validated and documented by msgspec. A failed validation
becomes the project's error, naming the field: "'dim' must be an integer, got '8'."
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct
from msgspec import inspect as mi

from encoderfile.errors import InvalidFieldError

BIND = "x-bound"  # the JSON Schema key openapi.bind replaces with the server's values
ONE = "x-one-of"  # the JSON Schema key openapi replaces with ONE_OF's alternatives


def bound(name: str, description: str | None = None) -> Meta:
    """A per-server constraint on a field (see openapi.BOUNDS): `text`, `width`, `prompt` …"""
    return Meta(extra_json_schema={BIND: name}, description=description)


def one_of(name: str, description: str | None = None) -> Meta:
    """The field is one of the types ONE_OF[name]."""
    return Meta(extra_json_schema={ONE: name}, description=description)


@dataclass(frozen=True)
class Says:
    """How a field's error reads: "'<field>' must be <expects>, got <kind>. <hint>"."""

    expects: str
    hint: str = ""
    required: bool = False  # when left out: "'<field>' is required and must be <expects>."


# -- shared field types ----------------------------------------------------------------------

Text = Annotated[str, bound("text")]
Texts = Annotated[list[Text], bound("texts")]
WIDTH = "Matryoshka width (a prefix of the vector, re-normalised); default the full width"
Width = Annotated[int | None, bound("width", WIDTH)]
PROMPT = "prompt name (prefix from the manifest; 'none' for no prefix)"
Prompt = Annotated[str | None, bound("prompt", PROMPT)]
Vector = list[float]


class Request(Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: strict types, unknown fields refused."""

    route: ClassVar[str] = ""  # "POST /embed": names the route in an unknown-field error
    api: ClassVar[str] = ""  # " (TEI)" on TEI's requests
    says: ClassVar[dict[str, Says]] = {}  # a field's expectation and hint, where needed
    schema_extra: ClassVar[dict[str, Any]] = {}  # example; rules across fields


class Response(Struct, kw_only=True):
    """A response body (documented; written by orjson, numpy rows as they are)."""


# -- nomic-serve (native) --------------------------------------------------------------------

NOT_BOTH = {"not": {"required": ["prefix", "prompt"]}}  # prefix is nomic-serve's name of prompt


class EmbedRequest(Request):
    """POST /embed: one text."""

    route = "POST /embed"
    says = {"input": Says("a string", "For several texts use POST /embed/batch with 'inputs'.")}
    schema_extra = {"example": {"input": "hello world"}, **NOT_BOTH}
    input: Text
    dim: Width = None
    prompt: Prompt = None
    prefix: Annotated[str | None, bound("prompt", "nomic-serve's name for 'prompt'")] = None
    truncate: bool = True


class EmbedResponse(Response):
    embedding: Vector
    tokens: int
    time_ms: float


class BatchRequest(Request):
    """POST /embed/batch: several texts (`input` is nomic-serve clients' alias of `inputs`)."""

    route = "POST /embed/batch"
    schema_extra = {
        "example": {"inputs": ["hello world", "goodbye"]},
        "oneOf": [{"required": ["inputs"]}, {"required": ["input"]}],
        **NOT_BOTH,
    }
    inputs: Texts = []
    input: Annotated[list[Text], bound("texts", "nomic-serve clients' alias of 'inputs'")] = []
    dim: Width = None
    prompt: Prompt = None
    prefix: Annotated[str | None, bound("prompt", "nomic-serve's name for 'prompt'")] = None
    truncate: bool = True


class BatchResponse(Response):
    embeddings: list[Vector]
    tokens: list[int]
    time_ms: float


class QueryRequest(Request):
    """POST /query: /embed with the recipe's search-query prompt (nomic-serve)."""

    route = "POST /query"
    input: Text
    dim: Width = None


class TokenizeRequest(Request):
    """POST /tokenize: token ids and strings of one text or several."""

    route = "POST /tokenize"
    says = {"input": Says("a string or a list of strings")}
    schema_extra = {"example": {"input": "hello world"}}
    input: Text | Texts
    prompt: Prompt = None


class Tokenized(Response):
    ids: list[int]
    tokens: list[str]
    truncated: bool


class TokenizeResponse(Response):
    data: list[Tokenized]


class ErrorDetail(Response):
    message: str
    type: str


class Error(Response):
    error: ErrorDetail


# -- OpenAI ----------------------------------------------------------------------------------

OpenAIIds = Annotated[list[Annotated[int, bound("cl100k_id")]], bound("cl100k_ids")]
OPENAI_INPUT = (
    "a string, a list of strings, a list of token ids or a list of lists of token ids, and "
    "not empty"
)


class OpenAIRequest(Request, forbid_unknown_fields=False):
    """POST /v1/embeddings (fields of newer API versions are ignored, as OpenAI's SDKs send)."""

    route = "POST /v1/embeddings"
    says = {
        "input": Says(OPENAI_INPUT),
        "model": Says("a string", "Use the model's name (GET /v1/models).", required=True),
    }
    model: Annotated[str, bound("model")]
    input: Annotated[
        Any,
        one_of(
            "openai_input",
            "text(s), or token ids of tiktoken's cl100k_base (OpenAI's embedding tokenizer, "
            "what LangChain sends), decoded to text; ids of this model's vocabulary go to "
            "POST /embed as TEI's `inputs`",
        ),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Width = None
    user: str | None = None
    prompt: Annotated[str | None, bound("prompt", "extension: " + PROMPT)] = None


class OpenAIEmbedding(Response):
    object: Literal["embedding"]
    index: int
    embedding: Annotated[
        Vector | str, Meta(description="floats, or base64 of little-endian float32")
    ]


class Usage(Response):
    prompt_tokens: int
    total_tokens: int


class OpenAIResponse(Response):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: Usage


class OpenAIErrorDetail(Response):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(Response):
    error: OpenAIErrorDetail


class Model(Response):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(Response):
    object: str
    data: list[Model]


# -- TEI -------------------------------------------------------------------------------------

TokenIds = Annotated[list[Annotated[int, bound("token_id")]], bound("token_ids")]
AnyIds = Annotated[list[Annotated[int, bound("token_id")]], bound("any_ids")]


class TeiEmbedRequest(Request):
    """TEI's EmbedRequest (POST / and POST /embed with `inputs`)."""

    route = "POST /embed"
    api = " (TEI)"
    says = {
        "inputs": Says(
            "a string, a list of token ids, or a list of those",
            "Send text (or ids from POST /tokenize).",
        ),
        "encoding_format": Says(
            "'float'", "TEI answers floats; use POST /v1/embeddings for base64."
        ),
    }
    schema_extra = {"example": {"inputs": ["hello world", "goodbye"]}}
    inputs: Annotated[
        Any,
        one_of("tei_inputs", "text, token ids of this model's vocabulary, or a list of those"),
    ]
    normalize: Annotated[bool | None, bound("normalize")] = True
    truncate: bool | None = True
    truncation_direction: Literal["Right", "Left", "right", "left"] | None = None
    prompt_name: Annotated[
        str | None, bound("prompt", "TEI's name for 'prompt' (text inputs only)")
    ] = None
    dimensions: Width = None
    encoding_format: Literal["float"] | None = None


class TeiTokenizeRequest(Request):
    """TEI's TokenizeRequest (POST /tokenize with `inputs`)."""

    route = "POST /tokenize"
    api = " (TEI)"
    says = {"inputs": Says("a string or a list of strings")}
    schema_extra = {"example": {"inputs": "hello world"}}
    inputs: Text | Texts
    add_special_tokens: bool | None = True
    prompt_name: Annotated[str | None, bound("prompt", "TEI's name for 'prompt'")] = None


class TeiToken(Response):
    id: int
    text: str
    special: bool
    start: int | None = None
    stop: int | None = None


class TeiDecodeRequest(Request):
    """TEI's DecodeRequest."""

    route = "POST /decode"
    api = " (TEI)"
    says = {"ids": Says("a list of token ids or a list of such lists")}
    schema_extra = {"example": {"ids": [101, 7592, 102]}}
    ids: Annotated[Any, one_of("tei_ids")]
    skip_special_tokens: bool | None = True


class TeiError(Response):
    error: str
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]


# -- rerank (kind reranker): TEI's /rerank, Cohere / Jina's /v1/rerank -----------------------

Direction = Literal["Right", "Left", "right", "left"]


class TeiRerankRequest(Request):
    """TEI's RerankRequest: the texts scored against the query by the cross-encoder."""

    route = "POST /rerank"
    api = " (TEI)"
    says = {"texts": Says("a list of strings", "Send the documents to score as 'texts'.")}
    schema_extra = {"example": {"query": "what is a panda?", "texts": ["a bear", "a city"]}}
    query: Text
    texts: Texts
    raw_scores: bool | None = False
    return_text: bool | None = False
    truncate: bool | None = True
    truncation_direction: Direction | None = None


class TeiRank(Response):
    index: int
    score: float
    text: str | None = None


class CohereDocument(Struct, forbid_unknown_fields=True):
    """A document as Cohere's and Jina's clients may send it: {"text": ...}."""

    text: Text


class CohereRerankRequest(Request, forbid_unknown_fields=False):
    """POST /v1/rerank (Cohere / Jina): fields of newer API versions are ignored, as for OpenAI."""

    route = "POST /v1/rerank"
    says = {"documents": Says('a list of strings or of {"text": string} objects')}
    schema_extra = {
        "example": {"query": "what is a panda?", "documents": ["a bear", "a city"], "top_n": 1}
    }
    query: Text
    documents: Annotated[list[Text | CohereDocument], bound("texts", "strings, or {text} objects")]
    model: Annotated[str | None, bound("model")] = None
    top_n: Annotated[int, Meta(ge=1)] | None = None
    return_documents: bool = False
    max_chunks_per_doc: int | None = None
    rank_fields: list[str] | None = None


class CohereRank(Response):
    index: int
    relevance_score: float
    document: CohereDocument | None = None


class CohereUsage(Response):
    total_tokens: int


class CohereMeta(Response):
    billed_units: dict[str, int]


class CohereRerankResponse(Response):
    id: str
    results: list[CohereRank]
    model: str
    usage: CohereUsage
    meta: CohereMeta


# -- sparse (kind sparse): TEI's /embed_sparse ----------------------------------------------


class TeiEmbedSparseRequest(Request):
    """TEI's EmbedSparseRequest, plus `return_tokens` (the vocabulary's string of each term)."""

    route = "POST /embed_sparse"
    api = " (TEI)"
    says = {
        "inputs": Says(
            "a string, a list of token ids, or a list of those",
            "Send text (or ids from POST /tokenize).",
        )
    }
    schema_extra = {"example": {"inputs": ["The cat sleeps on the sofa."], "return_tokens": True}}
    inputs: Annotated[
        Any,
        one_of("tei_inputs", "text, token ids of this model's vocabulary, or a list of those"),
    ]
    truncate: bool | None = True
    truncation_direction: Literal["Right", "Left", "right", "left"] | None = None
    prompt_name: Annotated[
        str | None, bound("prompt", "TEI's name for 'prompt' (text inputs only)")
    ] = None
    return_tokens: bool | None = False


class SparseValue(Response):
    """One nonzero term: its vocabulary index, weight, and (with return_tokens) its string."""

    index: int
    value: float
    token: str | None = None


# -- images ----------------------------------------------------------------------------------

ImageContent = Annotated[
    str,
    bound(  # minLength 1 in the document; an empty one is ImageService's to refuse
        "image",
        "data URL (data:image/png;base64,...) or raw base64 of a JPEG, PNG, GIF, WebP, BMP or "
        "TIFF file; at most 20 MB and 50 megapixels. URLs are not fetched.",
    ),
]
ImageWidth = Annotated[int | None, bound("image_width", "prefix width, re-normalised")]


IMAGE = Says("a non-empty string: a data URL (data:image/png;base64,...) or raw base64")


class ImageEmbedRequest(Request):
    route = "POST /img/embed"
    says = {"content": IMAGE}
    content: ImageContent
    dim: ImageWidth = None


class ImageBatchRequest(Request):
    route = "POST /img/batch"
    says = {"contents": Says("a list of data URLs or base64 strings")}
    contents: list[ImageContent]
    dim: ImageWidth = None


class ImageStatsRequest(Request):
    route = "POST /img/stats"
    says = {"content": IMAGE}
    content: ImageContent
    averaging_method: Literal["arithmetic", "geometric"] | None = None


class Color(Response):
    rgb: Annotated[list[float], Meta(min_length=3, max_length=3)]
    hex: str
    method: str


class ColorData(Response):
    avg_color: Color
    dominant_color: Color


class ImageStatsResponse(Response):
    exif_data: dict[str, Any]
    color_data: ColorData | None
    time_ms: float


# -- operations ------------------------------------------------------------------------------


class Status(Response):
    status: str


@dataclass(frozen=True)
class Named:
    """A body that is not an object (TEI's bare lists, /metrics' text), by its schema name."""

    name: str
    type: Any
    description: str = ""


TeiEmbedResponse = Named("TeiEmbedResponse", list[Vector], "TEI's answer: a bare list of vectors")
TeiTokenizeResponse = Named("TeiTokenizeResponse", list[list[TeiToken]])
TeiDecodeResponse = Named("TeiDecodeResponse", list[str])
TeiRerankResponse = Named(
    "TeiRerankResponse", list[TeiRank], "TEI's answer: {index, score, text?} by score, best first"
)
TeiEmbedSparseResponse = Named(
    "TeiEmbedSparseResponse",
    list[list[SparseValue]],
    "TEI's answer: per input, its nonzero terms {index, value, token?}, indices ascending",
)
Info = Named("Info", dict[str, Any], "Model, dimensions, prompts and limits")
AnyObject = Named("AnyObject", dict[str, Any], "Any JSON object")
MetricsText = Named("MetricsText", str, "Prometheus' text exposition format")

# The alternatives of each one_of field, in the order they are tried.
ONE_OF: dict[str, tuple[Any, ...]] = {
    "openai_input": (Text, Texts, OpenAIIds, Annotated[list[OpenAIIds], bound("texts")]),
    "tei_inputs": (Text, TokenIds, Annotated[list[Text | TokenIds], bound("texts")]),
    "tei_ids": (AnyIds, Annotated[list[AnyIds], bound("texts")]),
}


# -- validation ------------------------------------------------------------------------------

R = TypeVar("R", bound=Request)
_AT = re.compile(r"`\$\.([^`.\[]+)")
_MISSING = re.compile(r"required field `([^`]+)`")


def parse(model: type[R], body: dict[str, Any], route: str | None = None) -> R:
    """`body` as `model`, or the project's InvalidFieldError naming the (first) bad field."""
    try:
        value = msgspec.convert(body, model)
    except msgspec.ValidationError as e:
        raise _error(model, body, str(e), route or model.route) from None
    for name, kinds in _unions(model):
        if not _is_one_of(getattr(value, name), kinds):
            raise _field_error(model, body, name)
    return value


Alternative = tuple[bool, type[Struct]]  # (is a string type, a Struct holding one of it)


def _is_one_of(value: Any, kinds: tuple[Alternative, ...]) -> bool:
    text = isinstance(value, str)
    for is_str, holder in kinds:
        if text != is_str:
            continue  # no exception raised for a shape that cannot match
        try:
            msgspec.convert({"v": value}, holder)
        except msgspec.ValidationError:
            continue
        return True
    return False


def _alternative(kind: Any) -> Alternative:
    """msgspec caches a Struct's decoder, not a bare type's: converting into a one-field Struct
    is several times faster than into `kind` itself (and hashing `kind` costs a microsecond)."""
    info = mi.type_info(kind)
    is_str = isinstance(info.type if isinstance(info, mi.Metadata) else info, mi.StrType)
    return is_str, msgspec.defstruct("OneOf", [("v", kind)])


_UNIONS: dict[type[Request], list[tuple[str, tuple[Alternative, ...]]]] = {}


def _unions(model: type[Request]) -> list[tuple[str, tuple[Alternative, ...]]]:
    found = _UNIONS.get(model)
    if found is None:
        found = []
        for field in _fields(model):
            t = field.type
            if isinstance(t, mi.Metadata) and (t.extra_json_schema or {}).get(ONE):
                kinds = ONE_OF[t.extra_json_schema[ONE]]  # type: ignore[index]
                found.append((field.name, tuple(_alternative(k) for k in kinds)))
        _UNIONS[model] = found
    return found


def _fields(model: type[Request]) -> tuple[mi.Field, ...]:
    info = mi.type_info(model)
    assert isinstance(info, mi.StructType)
    return info.fields


def _error(model: type[Request], body: dict[str, Any], message: str, route: str) -> Exception:
    names = [f.encode_name for f in _fields(model)]
    if "unknown field" in message:
        unknown = sorted(set(body) - set(names))
        return InvalidFieldError(
            f"{route}{model.api} has no field(s) {', '.join(unknown)}. It takes: "
            f"{', '.join(sorted(names))}.",
            param=unknown[0] if unknown else None,
        )
    match = _MISSING.search(message) or _AT.search(message)
    key = match.group(1) if match else names[0]
    return _field_error(model, body, key)


def _field_error(model: type[Request], body: dict[str, Any], key: str) -> InvalidFieldError:
    says = model.says.get(key)
    if says is None:
        field = next((f for f in _fields(model) if f.encode_name == key), None)
        says = Says(_expects(field.type) if field else "valid")
    hint = f" {says.hint}" if says.hint else ""
    if says.required and key not in body:
        return InvalidFieldError(
            f"'{key}' is required and must be {says.expects}.{hint}", param=key
        )
    return InvalidFieldError(
        f"'{key}' must be {says.expects}, got {_kind(body.get(key))}.{hint}", param=key
    )


def _expects(t: mi.Type) -> str:
    while True:
        if isinstance(t, mi.Metadata):
            t = t.type
        elif isinstance(t, mi.UnionType) and len(t.types) == 2 and t.includes_none:
            t = next(x for x in t.types if not isinstance(x, mi.NoneType))
        else:
            break
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType):
        return "an integer"
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.LiteralType):
        return " or ".join(repr(v) for v in t.values)
    if isinstance(t, mi.ListType):
        return "a list of strings"
    return "of the type GET /openapi.json documents"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an empty list" if not value else "a list of mixed or non-string values"
    if isinstance(value, bool | int | float):
        return "a boolean" if isinstance(value, bool) else "a number"
    if isinstance(value, str):
        return repr(value) if len(value) <= 24 else "a string"
    return "an object"
