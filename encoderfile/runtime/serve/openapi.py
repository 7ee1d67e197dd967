"""The OpenAPI 3.0 description (what the bundled Swagger UI 4 renders) of the HTTP API, written by hand to match http_app's routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import encoderfile
from encoderfile.runtime import openai_tokens
from encoderfile.runtime.manifest import MIN_DIMENSION, NO_PROMPT, Manifest

if TYPE_CHECKING:
    from encoderfile.runtime.serve.service import Limits


# A character that str.strip() keeps: a text without one is blank and refused.
NOT_BLANK = (
    "[^\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _post(summary: str, request: str, response: str, tag: str, errors: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": [tag],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(request)}},
            },
            "responses": {
                "200": _json(_ref(response)),
                **{
                    code: _json(_ref(errors), text)
                    for code, text in (
                        ("400", "Body is not UTF-8 JSON"),
                        ("401", "Missing or wrong API key"),
                        ("404", "Unknown model"),
                        ("413", "Body too large"),
                        ("422", "Invalid field"),
                        ("429", "Too many inputs in flight; retry"),
                        ("503", "Loading or draining; retry"),
                    )
                },
            },
        }
    }


def _get(summary: str, tag: str, schema: dict[str, Any], media: str = "application/json") -> Any:
    return {
        "get": {
            "summary": summary,
            "tags": [tag],
            "responses": {"200": {"description": "OK", "content": {media: {"schema": schema}}}},
        }
    }


def spec(manifest: Manifest, limits: Limits | None = None, vocab_size: int = 0) -> dict[str, Any]:
    """The document served at GET /openapi.json; examples use this model's name and prompts.

    It states the server's checks exactly (limits, blank texts, token-id range, nullable
    options), so that a request valid under it is accepted and an invalid one refused."""
    from encoderfile.runtime.serve.service import Limits

    limits = limits or Limits()
    dims = list(manifest.dimensions)
    prompts = list(manifest.prompts)
    dim: dict[str, Any] = {
        "type": "integer",
        "nullable": True,
        "description": "Matryoshka width (a prefix of the vector, re-normalised); default the "
        f"full {manifest.dimension}; recommended: {', '.join(map(str, dims))}",
    }
    if manifest.restrict_dimensions:  # OpenAPI 3.0: a nullable enum lists null
        dim["enum"] = sorted({manifest.dimension, *dims}, reverse=True) + [None]
    else:
        dim.update(minimum=MIN_DIMENSION, maximum=manifest.dimension)
    prompt: dict[str, Any] = {
        "type": "string",
        "enum": [*prompts, *NO_PROMPT, None],
        "nullable": True,
        "description": "prompt name (prefix from the manifest; 'none' for no prefix); default: "
        + str(manifest.default_prompt),
    }
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_chars, "pattern": NOT_BLANK}
    texts = {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_inputs}
    openai_ids = {  # tiktoken cl100k_base, as OpenAI's API reads token arrays (openai_tokens)
        "type": "array",
        "items": {
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": openai_tokens.RANKS - 1},
                {"type": "integer", "enum": sorted(openai_tokens.SPECIAL)},
            ]
        },
        "minItems": 1,
        "maxItems": openai_tokens.MAX_IDS,
    }
    vector = {"type": "array", "items": {"type": "number"}}
    native_error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"message": {"type": "string"}, "type": {"type": "string"}},
            }
        },
    }
    openai_error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "code": {"type": "string", "nullable": True},
                },
            }
        },
    }
    schemas: dict[str, Any] = {
        "EmbedRequest": {
            "type": "object",
            "required": ["input"],
            "additionalProperties": False,
            "properties": {
                "input": text,
                "dim": dim,
                "prompt": prompt,
                "truncate": {"type": "boolean", "default": True},
            },
            "example": {"input": "hello world"},
        },
        "EmbedResponse": {
            "type": "object",
            "properties": {
                "embedding": vector,
                "tokens": {"type": "integer"},
                "time_ms": {"type": "number"},
            },
        },
        "BatchRequest": {
            "type": "object",
            "required": ["inputs"],
            "additionalProperties": False,
            "properties": {
                "inputs": texts,
                "dim": dim,
                "prompt": prompt,
                "truncate": {"type": "boolean", "default": True},
            },
            "example": {"inputs": ["hello world", "goodbye"]},
        },
        "BatchResponse": {
            "type": "object",
            "properties": {
                "embeddings": {"type": "array", "items": vector},
                "tokens": {"type": "array", "items": {"type": "integer"}},
                "time_ms": {"type": "number"},
            },
        },
        "OpenAIRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {
                "model": {"type": "string", "enum": [manifest.name]},
                "input": {
                    "oneOf": [
                        text,
                        texts,
                        openai_ids,
                        {
                            "type": "array",
                            "items": openai_ids,
                            "minItems": 1,
                            "maxItems": limits.max_inputs,
                        },
                    ],
                    "description": "text(s), or token ids of tiktoken's cl100k_base (OpenAI's "
                    "embedding tokenizer, what LangChain sends), decoded to text; ids of this "
                    "model's vocabulary go to POST /embed as TEI's `inputs`",
                },
                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                "dimensions": dim,
                "user": {"type": "string", "nullable": True},
                "prompt": {**prompt, "description": "extension: " + prompt["description"]},
            },
            "example": {"model": manifest.name, "input": ["hello world"]},
        },
        "OpenAIResponse": {
            "type": "object",
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "object": {"type": "string", "enum": ["embedding"]},
                            "index": {"type": "integer"},
                            "embedding": {
                                "oneOf": [vector, {"type": "string", "format": "byte"}],
                                "description": "floats, or base64 of little-endian float32",
                            },
                        },
                    },
                },
                "model": {"type": "string"},
                "usage": {
                    "type": "object",
                    "properties": {
                        "prompt_tokens": {"type": "integer"},
                        "total_tokens": {"type": "integer"},
                    },
                },
            },
        },
        "TokenizeRequest": {
            "type": "object",
            "required": ["input"],
            "additionalProperties": False,
            "properties": {
                "input": {"oneOf": [text, texts]},
                "prompt": prompt,
            },
            "example": {"input": "hello world"},
        },
        "TokenizeResponse": {
            "type": "object",
            "properties": {
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "ids": {"type": "array", "items": {"type": "integer"}},
                            "tokens": {"type": "array", "items": {"type": "string"}},
                            "truncated": {"type": "boolean"},
                        },
                    },
                }
            },
        },
        "Error": native_error,
        "OpenAIError": openai_error,
        **_image_schemas(dims),
    }
    embed = _post("Embed one text", "EmbedRequest", "EmbedResponse", "native", "Error")
    batch = _post("Embed several texts", "BatchRequest", "BatchResponse", "native", "Error")
    openai = _post(
        "OpenAI-compatible embeddings", "OpenAIRequest", "OpenAIResponse", "openai", "OpenAIError"
    )
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"{manifest.name} (encoderfile)",
            "version": manifest.version,
            "description": f"Embeddings from {manifest.name}, dimension {manifest.dimension}, "
            f"served by encoderfile {encoderfile.__version__}.",
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/health": _get("Liveness", "ops", status),
            "/ready": _ready(status),
            "/info": _get("Model, dimensions, prompts and limits", "ops", {"type": "object"}),
            "/metrics": _get("Prometheus metrics", "ops", {"type": "string"}, "text/plain"),
            "/embed": embed,
            "/txt/embed": embed,
            "/embed/batch": batch,
            "/batch": batch,
            "/txt/batch": batch,
            "/v1/embeddings": openai,
            "/embeddings": openai,
            "/tokenize": _post(
                "Token ids and strings", "TokenizeRequest", "TokenizeResponse", "native", "Error"
            ),
            **_image_paths(manifest.image is not None),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    ready: dict[str, Any] = _get(
        "200 once the model is loaded; 503 while loading or draining", "ops", status
    )
    ready["get"]["responses"]["503"] = {"description": "Loading or draining; retry"}
    return ready


def _image_paths(vision: bool) -> dict[str, Any]:
    """/img/stats always (it needs no model); /img/embed and /img/batch with an image model."""
    paths = {
        "/img/stats": _post(
            "EXIF tags, average and dominant colour", "ImageStatsRequest", "ImageStatsResponse",
            "images", "Error",
        )
    }  # fmt: skip
    if vision:
        paths["/img/embed"] = _post(
            "Embed one image", "ImageEmbedRequest", "EmbedResponse", "images", "Error"
        )
        paths["/img/batch"] = _post(
            "Embed several images", "ImageBatchRequest", "BatchResponse", "images", "Error"
        )
    return paths


def _image_schemas(dims: list[int]) -> dict[str, Any]:
    content = {
        "type": "string",
        "minLength": 1,
        "description": "data URL (data:image/png;base64,...) or raw base64 of a JPEG, PNG, GIF, "
        "WebP, BMP or TIFF file; at most 20 MB and 50 megapixels. URLs are not fetched.",
    }
    dim = {"type": "integer", "enum": dims, "description": "prefix width, re-normalised"}
    color = {
        "type": "object",
        "properties": {
            "rgb": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
            "hex": {"type": "string"},
            "method": {"type": "string"},
        },
    }
    return {
        "ImageEmbedRequest": {
            "type": "object",
            "required": ["content"],
            "additionalProperties": False,
            "properties": {"content": content, "dim": dim},
        },
        "ImageBatchRequest": {
            "type": "object",
            "required": ["contents"],
            "additionalProperties": False,
            "properties": {"contents": {"type": "array", "items": content}, "dim": dim},
        },
        "ImageStatsRequest": {
            "type": "object",
            "required": ["content"],
            "additionalProperties": False,
            "properties": {
                "content": content,
                "averaging_method": {"type": "string", "enum": ["arithmetic", "geometric"]},
            },
        },
        "ImageStatsResponse": {
            "type": "object",
            "properties": {
                "exif_data": {"type": "object"},
                "color_data": {
                    "type": "object",
                    "nullable": True,
                    "properties": {"avg_color": color, "dominant_color": color},
                },
                "time_ms": {"type": "number"},
            },
        },
    }


def add_tei(doc: dict[str, Any], manifest: Manifest, limits: Limits, vocab_size: int) -> None:
    """TEI's routes (tei.py) into `doc`, after compat.extend_spec: `/` and the TEI-only routes,
    and on /embed, /txt/embed and /tokenize TEI's request beside the native one (told apart by
    `inputs` against `input`)."""
    schemas, paths = doc["components"]["schemas"], doc["paths"]
    native = schemas["EmbedRequest"]["properties"]
    text, prompt = native["input"], schemas["OpenAIRequest"]["properties"]["prompt"]
    ids_item = {"type": "integer", "minimum": 0, "maximum": max(vocab_size - 1, 0)}
    token_ids = {"type": "array", "items": ids_item, "minItems": 1, "maxItems": manifest.max_length}
    one = {"oneOf": [text, token_ids]}
    many = {"type": "array", "items": one, "minItems": 1, "maxItems": limits.max_inputs}
    texts = {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_inputs}
    nullable_bool = {"type": "boolean", "nullable": True}
    normalize: dict[str, Any] = {**nullable_bool, "default": True}
    if manifest.normalized:  # the graph ends in L2: there is no unnormalised vector to give
        normalize["enum"] = [True, None]
    prompt_name = {**prompt, "description": "TEI's name for 'prompt' (text inputs only)"}
    vector = {"type": "array", "items": {"type": "number"}}
    schemas["TeiEmbedRequest"] = {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "inputs": {
                "oneOf": [text, token_ids, many],
                "description": "text, token ids of this model's vocabulary, or a list of those",
            },
            "normalize": normalize,
            "truncate": {**nullable_bool, "default": True},
            "truncation_direction": {
                "type": "string",
                "enum": ["Right", "Left", "right", "left", None],
                "nullable": True,
            },
            "prompt_name": prompt_name,
            "dimensions": schemas["OpenAIRequest"]["properties"]["dimensions"],
            "encoding_format": {"type": "string", "enum": ["float", None], "nullable": True},
        },
        "example": {"inputs": ["hello world", "goodbye"]},
    }
    schemas["TeiEmbedResponse"] = {"type": "array", "items": vector}
    schemas["TeiTokenizeRequest"] = {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "inputs": {"oneOf": [text, texts]},
            "add_special_tokens": {**nullable_bool, "default": True},
            "prompt_name": prompt_name,
        },
        "example": {"inputs": "hello world"},
    }
    schemas["TeiTokenizeResponse"] = {
        "type": "array",
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "text", "special"],
                "properties": {
                    "id": {"type": "integer"},
                    "text": {"type": "string"},
                    "special": {"type": "boolean"},
                    "start": {"type": "integer", "nullable": True},
                    "stop": {"type": "integer", "nullable": True},
                },
            },
        },
    }
    any_ids = {"type": "array", "items": ids_item, "minItems": 1}
    schemas["TeiDecodeRequest"] = {
        "type": "object",
        "required": ["ids"],
        "additionalProperties": False,
        "properties": {
            "ids": {
                "oneOf": [
                    any_ids,
                    {
                        "type": "array",
                        "items": any_ids,
                        "minItems": 1,
                        "maxItems": limits.max_inputs,
                    },
                ]
            },
            "skip_special_tokens": {**nullable_bool, "default": True},
        },
        "example": {"ids": [101, 7592, 102]},
    }
    schemas["TeiDecodeResponse"] = {"type": "array", "items": {"type": "string"}}
    schemas["TeiError"] = {
        "type": "object",
        "required": ["error", "error_type"],
        "properties": {
            "error": {"type": "string"},
            "error_type": {
                "type": "string",
                "enum": ["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"],
            },
        },
    }
    tei_embed = _tei_post(
        "Embed (TEI): a bare list of vectors", "TeiEmbedRequest", "TeiEmbedResponse"
    )
    paths["/"] = {
        "get": {
            "summary": "TEI's health check: 200 once the model is loaded",
            "tags": ["tei"],
            "responses": {
                "200": {"description": "Ready"},
                "503": _json(_ref("TeiError"), "Loading or draining; retry"),
            },
        },
        **tei_embed,
    }
    paths["/decode"] = _tei_post(
        "Token ids of this model's vocabulary back to text (TEI)",
        "TeiDecodeRequest",
        "TeiDecodeResponse",
    )
    for path, summary in (
        ("/embed_all", "Per-token vectors (TEI): 424, the graph outputs only pooled vectors"),
        ("/rerank", "Re-rank (TEI): 424 until the artifact holds a re-ranker"),
        ("/predict", "Classify (TEI): 424 until the artifact holds a classifier"),
        ("/embed_sparse", "Sparse vectors (TEI): 424 until the artifact holds a sparse model"),
    ):
        paths[path] = {
            "post": {
                "summary": summary,
                "tags": ["tei"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "401": _json(_ref("TeiError"), "Missing or wrong API key"),
                    "413": _json(_ref("TeiError"), "Body too large"),
                    "422": _json(_ref("TeiError"), "Body is not a JSON object"),
                    "424": _json(_ref("TeiError"), "This model kind does not serve the route"),
                },
            }
        }
    for path, request, response in (
        ("/embed", "TeiEmbedRequest", "TeiEmbedResponse"),
        ("/tokenize", "TeiTokenizeRequest", "TeiTokenizeResponse"),
    ):
        _both(paths, path, request, response)
    paths["/txt/embed"] = paths["/embed"]


def _tei_post(summary: str, request: str, response: str) -> dict[str, Any]:
    op = _post(summary, request, response, "tei", "TeiError")
    responses = op["post"]["responses"]
    responses["400"] = _json(_ref("TeiError"), "Empty batch")
    responses["413"] = _json(_ref("TeiError"), "Body too large, or more inputs than --max-inputs")
    responses["422"] = _json(_ref("TeiError"), "Body is not JSON, or a field is invalid")
    responses["424"] = _json(_ref("TeiError"), "The model cannot serve the request")
    responses.pop("404", None)
    return op


def _both(paths: dict[str, Any], path: str, tei_request: str, tei_response: str) -> None:
    """A native route that takes TEI's request too: each body, answer and error either kind."""
    native = paths[path]["post"]
    body = native["requestBody"]["content"]["application/json"]["schema"]
    responses = {}
    for code, answer in native["responses"].items():
        schema = answer["content"]["application/json"]["schema"]
        other = _ref(tei_response) if code == "200" else _ref("TeiError")
        responses[code] = _json({"oneOf": [schema, other]}, answer["description"])
    responses["424"] = _json(_ref("TeiError"), "The model cannot serve the request (TEI)")
    paths[path] = {
        "post": {
            **native,
            "summary": native["summary"] + "; with `inputs`, TEI's request and answer",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"oneOf": [body, _ref(tei_request)]}}},
            },
            "responses": responses,
        }
    }
