"""Write the bundle directory: model.onnx, tokenizer.json, manifest.json (atomic, deterministic)."""

from __future__ import annotations

import datetime as dt
import glob
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
from encoderfile.runtime import cpu
from encoderfile.runtime.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SCORE_OUTPUT,
    TEXT_OUTPUT,
    TOKENIZER_FILE,
    VISION_FILE,
    Golden,
    GraphInfo,
    ImageSection,
    Manifest,
    Precision,
    ScoreSettings,
    TokenizerSettings,
)
from encoderfile.runtime.records import process_alive
from encoderfile.splice import Spliced
from encoderfile.vision import VisionBuild, manifest_section

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
    precision: Precision | None = None,
    pinned: bool = True,
    rotation: dict[str, Any] | None = None,
    score: ScoreSettings | None = None,
) -> Path:
    """Write the bundle into `out`, replacing it only once every file is complete;
    `rotation` (what the rotate step was fitted on) joins that step's manifest entry; `score`
    is a reranker's activation (its graph outputs score and logit)."""
    files = {
        MODEL_FILE: _serialize(spliced.model),
        TOKENIZER_FILE: (tokenizer.to_str(pretty=True) + "\n").encode(),
    }
    if image is not None:
        files[VISION_FILE] = _serialize(image.spliced.model)
    manifest = Manifest(
        name=recipe.name,
        version=recipe.version,
        dimension=recipe.dimension,
        dimensions=tuple(recipe.allowed_dimensions),
        restrict_dimensions=recipe.restrict_dimensions or recipe.kind == "sparse",
        normalized=bool(recipe.steps) and recipe.steps[-1].op == "normalize",
        files=_hashes(files),
        model=resolved.model_source,
        graph=GraphInfo(
            inputs=tuple(spliced.inputs),
            output=SCORE_OUTPUT if score else TEXT_OUTPUT,
            token_states=spliced.token_states,
            hidden_size=spliced.hidden_size,
            added_nodes=tuple(spliced.added_nodes),
            removed_nodes=tuple(spliced.removed_nodes),
        ),
        steps=_steps(recipe.steps, recipe.dimension, rotation),
        prompts=dict(recipe.prompts),
        default_prompt=recipe.default_prompt,
        tokenizer=TokenizerSettings.from_dict(recipe.tokenizer.model_dump()),
        tools=tool_versions(),
        built_at=_built_at(),
        build_cpu=cpu.isa(),
        golden=golden,
        precision=precision or Precision(recipe.precision),
        image=_image_section(image, recipe),
        pinned=pinned,
        aliases=tuple(recipe.aliases),
        kind=recipe.kind,
        score=score,
    )
    return _write_files(out, files, manifest)


def write_image_only(out: Path, recipe: Recipe, image: VisionBuild, pinned: bool = True) -> Path:
    """A bundle with vision.onnx and no text model (manifest: model, graph, tokenizer None)."""
    files = {VISION_FILE: _serialize(image.spliced.model)}
    section = _image_section(image, recipe)
    assert section is not None
    manifest = Manifest(
        name=recipe.name,
        version=recipe.version,
        dimension=recipe.dimension,
        dimensions=tuple(recipe.allowed_dimensions),
        restrict_dimensions=recipe.restrict_dimensions,
        normalized=section.normalized,
        files=_hashes(files),
        tools=tool_versions(),
        built_at=_built_at(),
        build_cpu=cpu.isa(),
        image=section,
        pinned=pinned,
        aliases=tuple(recipe.aliases),
    )
    return _write_files(out, files, manifest)


def _image_section(image: VisionBuild | None, recipe: Recipe) -> ImageSection | None:
    if image is None:
        return None
    return manifest_section(image, _steps(image.spec.steps, recipe.dimension))


def _hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def _write_files(out: Path, files: dict[str, bytes], manifest: Manifest) -> Path:
    files[MANIFEST_FILE] = manifest.to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    _remove_stale(out)
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


def _remove_stale(out: Path) -> None:
    """Staging dirs of `out` left by a builder that is gone (SIGKILL), and our own old one."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, pid = stale.name[len(out.name) + 2 :].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    # ours is from an earlier build in this process
    return pid != os.getpid() and process_alive(pid)


def _serialize(model: onnx.ModelProto) -> bytes:
    try:
        data = model.SerializeToString()
    except ValueError as e:  # protobuf refuses messages over 2 GB
        raise BuildError(
            "the spliced model is over 2 GB, which one ONNX protobuf cannot hold. "
            "Models of that size are not supported yet; use an fp16 or int8 export."
        ) from e
    return data


def _built_at() -> str | None:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return None
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _steps(
    steps: Sequence[Step], dimension: int, rotation: dict[str, Any] | None = None
) -> tuple[dict[str, Any], ...]:
    entries = []
    for step in steps:
        entry = step.model_dump()
        if step.op == "truncate":
            entry["dimension"] = dimension
        if step.op == "rotate":
            entry.update(rotation or {})
        entries.append(entry)
    return tuple(entries)


def tool_versions() -> dict[str, str]:
    tools = {"encoderfile": encoderfile.__version__, "python": platform.python_version()}
    for package in ("onnx", "onnxruntime", "tokenizers", "numpy"):
        tools[package] = version(package)
    return tools
