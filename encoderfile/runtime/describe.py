"""The one description of a bundle, shared by `info`, HTTP /info, gRPC Info and `inspect`."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from encoderfile.runtime import cpu
from encoderfile.runtime.manifest import (
    MIN_DIMENSION,
    MODEL_FILE,
    Manifest,
    ModelSource,
    Precision,
)


def describe(manifest: Manifest) -> dict[str, Any]:
    """What the bundle computes and where it came from, as JSON-ready values."""
    model = manifest.model
    golden = manifest.golden
    return {
        "name": manifest.name,
        "version": manifest.version,
        "kind": manifest.kind,
        "score": manifest.score.to_dict() if manifest.score else None,
        "format_version": manifest.format_version,
        "model": _source(model),
        "model_id": _model_id(manifest),
        "revision": model.revision if model else None,
        "sha256": manifest.files.get(MODEL_FILE),
        "graph": manifest.graph.to_dict() if manifest.graph else None,
        "steps": list(manifest.steps),
        "dimension": manifest.dimension,
        "dimensions": list(manifest.dimensions),
        "restrict_dimensions": manifest.restrict_dimensions,
        "min_dimension": MIN_DIMENSION,
        "normalized": manifest.normalized,
        "prompts": dict(manifest.prompts),
        "default_prompt": manifest.default_prompt,
        "max_length": manifest.max_length,
        "tokenizer": manifest.tokenizer.to_dict() if manifest.tokenizer else None,
        "files": dict(manifest.files),
        "source_files": dict(model.files) if model else {},
        "tools": dict(manifest.tools),
        "built_at": manifest.built_at,
        "build_cpu": list(manifest.build_cpu),
        "pinned": manifest.pinned,
        "golden": {
            "tolerance": golden.tolerance if golden else None,
            "texts": len(golden.inputs) if golden else 0,
        },
        "precision": _precision(manifest.precision),
        "text_model": manifest.has_text,
        "vision_model": manifest.image is not None,
        "image": _image(manifest),
    }


def rows(description: dict[str, Any]) -> list[tuple[str, str]]:
    """The description as (label, value) lines for people."""
    d = description
    steps = " → ".join(
        s.get("op", "?") + "(" + ", ".join(f"{k}={v}" for k, v in s.items() if k != "op") + ")"
        for s in d["steps"]
    )
    prompts = "; ".join(f"{k}: {v!r}" for k, v in d["prompts"].items()) or "none"
    if d["default_prompt"]:
        prompts += f" (default: {d['default_prompt']})"
    normalized = "yes" if d["normalized"] else "no"
    return [
        ("name", f"{d['name']} {d['version']}"),
        ("kind", _kind_line(d)),
        ("model", _label(d["model"]) if d["model"] else "none (image model only)"),
        (
            "dimension",
            f"{d['dimension']} (request: {_widths(d)}; normalized: {normalized})",
        ),
        ("max_length", f"{d['max_length']} tokens"),
        ("steps", steps),
        ("precision", _precision_line(d["precision"])),
        ("prompts", prompts),
        *[(f"sha256 {k}", v) for k, v in sorted(d["files"].items())],
        *[(f"source {k}", v) for k, v in sorted(d["source_files"].items())],
        ("tools", ", ".join(f"{k} {v}" for k, v in sorted(d["tools"].items()))),
        ("built_at", str(d["built_at"])),
        (
            "build_cpu",
            f"{cpu.describe(tuple(d['build_cpu']))} (golden vectors and gate measured there)",
        ),
        ("pinned", "yes" if d["pinned"] else "NO: some source files had no sha256 pin"),
        ("image", _image_line(d["image"])),
    ]


def _kind_line(d: dict[str, Any]) -> str:
    score = d.get("score")
    if not score:
        return str(d["kind"])
    return (
        f"{d['kind']} (score: {score['activation']} of label {score['label']} of "
        f"{score['labels']}; raw_scores: that label's logit)"
    )


def _widths(d: dict[str, Any]) -> str:
    listed = ", ".join(map(str, d["dimensions"]))
    if d["restrict_dimensions"]:
        return f"only {listed}"
    return f"any {d['min_dimension']} to {d['dimension']}, recommended {listed}"


def _source(model: ModelSource | None) -> dict[str, Any] | None:
    """The source without its file hashes; a local directory by its last name only (the
    build machine's paths stay out of what the artifact shows)."""
    if model is None:
        return None
    shown = {k: v for k, v in model.to_dict().items() if k != "files"}
    if shown.get("path"):
        shown["path"] = PurePath(str(shown["path"])).name
    return shown


def _model_id(manifest: Manifest) -> str | None:
    """The Hub repo id built from; for a local build the recipe's first alias, else the name."""
    if manifest.model is None:
        return None
    if manifest.model.repo:
        return manifest.model.repo
    return manifest.aliases[0] if manifest.aliases else manifest.name


def _label(source: dict[str, Any]) -> str:
    if source.get("source") == "hub":
        return f"{source.get('repo')}@{source.get('revision')}"
    return f"local {source.get('path')}"


def _precision(precision: Precision) -> dict[str, Any]:
    shown: dict[str, Any] = {"mode": precision.mode}
    if precision.gate is not None:
        shown["gate"] = precision.gate.to_dict()
    if precision.changes is not None:
        shown["scheme"] = precision.changes.get("scheme")
        shown["changes"] = precision.changes
    return shown


def _precision_line(precision: dict[str, Any]) -> str:
    gate = precision.get("gate")
    if not gate:
        return str(precision["mode"])
    limits = gate["thresholds"]
    if "spearman_min" in gate:  # a reranker's
        return (
            f"{precision['mode']} (gate passed on {gate['held_out_pairs']} held-out pairs: "
            f"score diff {gate['score_rel_diff']:.2%} of the range <= "
            f"{limits.get('score_rel_diff', 0):.0%}, Spearman min {gate['spearman_min']:.4f} >= "
            f"{limits.get('rank_min_spearman')}, top-1 {gate['top1_agreement']}; "
            f"batch invariance max |diff| {gate['batch_max_abs_diff']:.3g} "
            f"<= {limits.get('batch_max_abs_diff')})"
        )
    return (
        f"{precision['mode']} (gate passed on {gate['held_out_texts']} held-out texts: "
        f"cosine to fp32 mean {gate['mean_cosine']:.4f} >= {limits.get('mean_cosine')}, "
        f"min {gate['min_cosine']:.4f} >= {limits.get('min_cosine')}; "
        f"batch invariance max |diff| {gate['batch_max_abs_diff']:.3g} "
        f"<= {limits.get('batch_max_abs_diff')})"
    )


def _image(manifest: Manifest) -> dict[str, Any] | None:
    image = manifest.image
    if image is None:
        return None
    return {
        "model": _source(image.model),
        "source_files": dict(image.model.files),
        "size": image.size,
        "mean": list(image.mean),
        "std": list(image.std),
        "resize": image.resize,
        "steps": list(image.steps),
        "graph": image.graph.to_dict(),
        "golden": {"tolerance": image.golden.tolerance, "images": len(image.golden.inputs)},
    }


def _image_line(image: dict[str, Any] | None) -> str:
    if image is None:
        return "none (text only)"
    steps = " → ".join(s.get("op", "?") for s in image["steps"])
    return f"{_label(image['model'])}; {image['size']} px, bicubic + centre crop; steps {steps}"
