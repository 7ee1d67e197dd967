"""The OpenAPI 3.0 description (what the bundled Swagger UI 4 renders) of the HTTP API, written by hand to match http_app's routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import encoderfile
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
    token_ids = {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": max(vocab_size - 1, 0)},
        "minItems": 1,
        "maxItems": manifest.max_length,
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
                        token_ids,
                        {
                            "type": "array",
                            "items": token_ids,
                            "minItems": 1,
                            "maxItems": limits.max_inputs,
                        },
                    ],
                    "description": "text(s), or token ids of this model's vocabulary",
                },
                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                "dimensions": dim,
                "user": {"type": "string", "nullable": True},
                "prompt": {**prompt, "description": "extension: " + prompt["description"]},
            },
            "not": {  # a prompt is text: it cannot go with token ids
                "required": ["input", "prompt"],
                "properties": {
                    "input": {
                        "type": "array",
                        "items": {"oneOf": [{"type": "integer"}, token_ids]},
                    },
                    "prompt": {"type": "string"},
                },
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
