"""Write the bundle directory: model.onnx, tokenizer.json, manifest.json (atomic, deterministic)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import onnx
from tokenizers import Tokenizer

import encoderfile
from encoderfile.errors import BuildError, RecipeError, ResolveError
from encoderfile.recipe import Recipe, Step, TokenizerSpec
from encoderfile.resolve import ResolvedModel
from encoderfile.splice import Spliced
from encoderfile.verify import GOLDEN_TOLERANCE, Golden
from encoderfile.vision import GRAPH_FILE, VisionBuild, manifest_section

FORMAT_VERSION = 1
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>")
MAX_PROTO_BYTES = 2**31 - 1


def prepare_tokenizer(path: Path, spec: TokenizerSpec) -> Tokenizer:
    """The model's tokenizer with the recipe's padding, truncation and special-token choice."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception for unreadable JSON
        raise ResolveError(
            f"{path.name} is not a readable tokenizer.json ({str(e).splitlines()[0]}). "
            "Use the tokenizer.json that ships with the model."
        ) from e
    if not spec.add_special_tokens:
        data = json.loads(tokenizer.to_str())
        data["post_processor"] = None
        tokenizer = Tokenizer.from_str(json.dumps(data))
    pad = spec.pad_token or (tokenizer.padding or {}).get("pad_token")
    pad = pad or next((t for t in PAD_TOKENS if tokenizer.token_to_id(t) is not None), None)
    pad_id = tokenizer.token_to_id(pad) if pad else None
    if pad_id is None:
        raise RecipeError(
            f"{path.name} has no pad token{f' {pad!r}' if pad else ''}. "
            "Set tokenizer.pad_token in the recipe to a token of its vocabulary."
        )
    tokenizer.enable_padding(direction=spec.padding_side, pad_id=pad_id, pad_token=pad)
    tokenizer.enable_truncation(spec.max_length, direction=spec.truncation_side)
    return tokenizer


def write(
    out: Path,
    recipe: Recipe,
    resolved: ResolvedModel,
    spliced: Spliced,
    tokenizer: Tokenizer,
    golden: Golden,
    image: VisionBuild | None = None,
    *,
    precision: dict[str, Any] | None = None,
    rotation: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle into `out`, replacing it only once every file is complete;
    `rotation` (what the rotate step was fitted on) joins that step's manifest entry."""
    model_bytes = _serialize(spliced.model)
    tokenizer_bytes = (tokenizer.to_str(pretty=True) + "\n").encode()
    files = {"model.onnx": model_bytes, "tokenizer.json": tokenizer_bytes}
    if image is not None:
        files[GRAPH_FILE] = _serialize(image.spliced.model)
    manifest = _manifest(recipe, resolved, spliced, golden, files)
    manifest["precision"] = {"mode": recipe.precision, **(precision or {})}
    for entry in manifest["steps"]:
        if entry["op"] == "rotate":
            entry.update(rotation or {})
    if image is not None:
        manifest["image"] = manifest_section(image, _steps(image.spec.steps, recipe.dimension))
    return _write_files(out, files, manifest)


def write_image_only(out: Path, recipe: Recipe, image: VisionBuild) -> Path:
    """A bundle with vision.onnx and no text model (manifest: model, graph, tokenizer null)."""
    files = {GRAPH_FILE: _serialize(image.spliced.model)}
    section = manifest_section(image, _steps(image.spec.steps, recipe.dimension))
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": recipe.name,
        "version": recipe.version,
        "model": None,
        "graph": None,
        "steps": [],
        "dimension": recipe.dimension,
        "dimensions": recipe.allowed_dimensions,
        "normalized": section["normalized"],
        "prompts": {},
        "default_prompt": None,
        "tokenizer": None,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "tools": tool_versions(),
        "built_at": _built_at(),
        "golden": None,
        "image": section,
    }
    return _write_files(out, files, manifest)


def _write_files(out: Path, files: dict[str, bytes], manifest: dict[str, Any]) -> Path:
    files["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            shutil.rmtree(old)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _serialize(model: onnx.ModelProto) -> bytes:
    try:
        data = model.SerializeToString()
    except ValueError as e:  # protobuf refuses messages over 2 GB
        raise BuildError(
            "the spliced model is over 2 GB, which one ONNX protobuf cannot hold. "
            "Models of that size are not supported yet; use an fp16 or int8 export."
        ) from e
    return data


def _manifest(
    recipe: Recipe,
    resolved: ResolvedModel,
    spliced: Spliced,
    golden: Golden,
    files: dict[str, bytes],
) -> dict[str, Any]:
    steps = _steps(recipe.steps, recipe.dimension)
    built_at = _built_at()
    return {
        "format_version": FORMAT_VERSION,
        "name": recipe.name,
        "version": recipe.version,
        "model": {**resolved.source, "files": resolved.sha256},
        "graph": {
            "inputs": spliced.inputs,
            "output": "sentence_embedding",
            "token_states": spliced.token_states,
            "hidden_size": spliced.hidden_size,
            "added_nodes": spliced.added_nodes,
        },
        "steps": steps,
        "dimension": recipe.dimension,
        "dimensions": recipe.allowed_dimensions,
        "normalized": recipe.steps[-1].op == "normalize",
        "prompts": recipe.prompts,
        "default_prompt": recipe.default_prompt,
        "tokenizer": recipe.tokenizer.model_dump(exclude={"pad_token", "add_special_tokens"}),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "tools": tool_versions(),
        "built_at": built_at,
        "golden": {
            "tolerance": GOLDEN_TOLERANCE,
            "texts": golden.texts,
            "vectors": [[float(v) for v in row] for row in golden.vectors],
        },
    }


def _built_at() -> str | None:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return None
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _steps(steps: Sequence[Step], dimension: int) -> list[dict[str, Any]]:
    entries = []
    for step in steps:
        entry = step.model_dump()
        if step.op == "truncate":
            entry["dimension"] = dimension
        entries.append(entry)
    return entries


def tool_versions() -> dict[str, str]:
    tools = {"encoderfile": encoderfile.__version__, "python": platform.python_version()}
    for package in ("onnx", "onnxruntime", "tokenizers", "numpy"):
        tools[package] = version(package)
    return tools
