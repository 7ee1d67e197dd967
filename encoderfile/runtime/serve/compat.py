"""Drop-in compatibility on the HTTP API: nomic-serve's routes and fields, and what OpenAI
clients expect beyond POST /v1/embeddings (GET /v1/models, the repo id as model name)."""

from __future__ import annotations

import calendar
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from encoderfile.errors import InvalidFieldError, NotFoundError
from encoderfile.runtime.manifest import (
    MODEL_FILE,
    NO_PROMPT,
    VISION_FILE,
    Manifest,
)

# nomic-serve's /query and /txt/query embed with its `search_query` prefix; a recipe whose
# prompts use other names serves /query with the first of these it has.
QUERY_PROMPTS = ("search_query", "query")
GPU_ENABLED = False  # the runtime runs ONNX Runtime's CPU execution provider only
AVERAGING = "arithmetic"  # /img/stats' default averaging_method (image_service)


def model_ids(manifest: Manifest) -> list[str]:
    """What the OpenAI routes accept as `model`: the artifact name, the Hub repo id it was built
    from (never a local path), then the recipe's `aliases`."""
    ids = [manifest.name]
    source = manifest.model or (manifest.image.model if manifest.image else None)
    if source is not None and source.repo:
        ids.append(source.repo)
    ids += [a for a in manifest.aliases if a not in ids]
    return ids


def native_fields(body: dict[str, Any], manifest: Manifest, *, batch: bool) -> dict[str, Any]:
    """nomic-serve's spellings mapped onto ours: `prefix` is the prompt of that name (as
    `prompt`), and on the batch routes `input` stands for `inputs`."""
    body = dict(body)
    if "prefix" in body:
        prefix = body.pop("prefix")
        if prefix is not None and not isinstance(prefix, str):
            raise InvalidFieldError("'prefix' must be a string.", param="prefix")
        if "prompt" in body:
            raise InvalidFieldError(
                "'prefix' and 'prompt' name the same thing. Send one of them, not both.",
                param="prefix",
            )
        if prefix is not None and prefix not in NO_PROMPT and prefix not in manifest.prompts:
            names = ", ".join(manifest.prompts) or "none (this model has no prompts)"
            raise InvalidFieldError(
                f"prefix {prefix!r} is not one of this model's prompts. Use one of: {names}; "
                "or 'none' for no prefix.",
                param="prefix",
            )
        body["prompt"] = prefix
    if batch and "input" in body:
        if "inputs" in body:
            raise InvalidFieldError(
                "'input' and 'inputs' are the same field here. Send only 'inputs'.", param="input"
            )
        value = body.pop("input")
        body["inputs"] = [value] if isinstance(value, str) else value
    return body


def query_prompt(manifest: Manifest) -> str:
    for name in QUERY_PROMPTS:
        if name in manifest.prompts:
            return name
    raise NotFoundError(
        f"{manifest.name} has no query prompt ({' or '.join(QUERY_PROMPTS)}), so POST /query "
        "has nothing to add. Use POST /embed."
    )


def nomic_info(manifest: Manifest) -> dict[str, Any]:
    """nomic-serve's GET /info fields; model paths name entries of this artifact
    (`<name>:model.onnx`, never a path of the machine it was built or runs on). Its `tokenizer`
    (a path) is left out: ours, the tokenizer settings, keeps the name."""
    files, name = manifest.files, manifest.name
    return {
        "averaging": AVERAGING,
        "load_cuda": GPU_ENABLED,
        "txt_model": f"{name}:{MODEL_FILE}" if MODEL_FILE in files else None,
        "img_model": f"{name}:{VISION_FILE}" if VISION_FILE in files else None,
    }


def _created(manifest: Manifest) -> int:
    if manifest.built_at:
        try:
            return calendar.timegm(time.strptime(manifest.built_at[:19], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            pass
    return 0


def model_object(manifest: Manifest, model_id: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": _created(manifest),
        "owned_by": "encoderfile",
    }


class CompatRoutes:
    """GET /v1/models[/{model}] and /docs/openapi.json; /query is in http_app (it embeds)."""

    def __init__(self, manifest: Manifest, openapi: Any):
        self.manifest = manifest
        self.openapi = openapi

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models),
            Route("/v1/models/{model:path}", self.model),
            Route("/docs/openapi.json", self.openapi),
        ]

    async def models(self, request: Request) -> Response:
        data = [model_object(self.manifest, i) for i in model_ids(self.manifest)]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        wanted = request.path_params["model"]
        if wanted not in model_ids(self.manifest):
            raise NotFoundError(
                f"The model {wanted!r} does not exist on this server. Use "
                f"{' or '.join(map(repr, model_ids(self.manifest)))}.",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(model_object(self.manifest, wanted))
