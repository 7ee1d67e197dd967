"""Fit a recipe's rotate step: read its pinned fit texts, embed them with the graph up to the step,
and take their principal axes (the maths: encoderfile/splice/rotate.py)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tokenizers import Tokenizer

from encoderfile import splice, verify
from encoderfile.errors import RecipeError, ResolveError
from encoderfile.recipe import Recipe, Rotate
from encoderfile.resolve import sha256_file
from encoderfile.runtime.manifest import TEXT_OUTPUT
from encoderfile.splice import rotate

FIT_BATCH = 16  # texts a model call, sorted by length (as the runtime batches)


@dataclass(frozen=True)
class Fitted:
    matrix: np.ndarray  # float32 [hidden, hidden], orthogonal
    texts: int
    variance: np.ndarray  # fraction of the fit vectors' variance along each axis

    def to_manifest(self, widths: list[int]) -> dict[str, Any]:
        """What the bundle's manifest records about the fit."""
        kept = np.cumsum(self.variance)
        return {
            "fit_texts": self.texts,
            "matrix_sha256": _digest(self.matrix),
            "variance_kept": {str(w): round(float(kept[w - 1]), 4) for w in widths},
        }


def step(recipe: Recipe) -> Rotate | None:
    return next((s for s in recipe.steps if isinstance(s, Rotate)), None)


def fit(
    model: onnx.ModelProto,
    recipe: Recipe,
    tokenizer: Tokenizer,
    inputs: list[str],
    hidden: int,
    where: str,
) -> Fitted | None:
    """The rotation of the recipe's rotate step (None without one), from `model`'s vectors."""
    spec = step(recipe)
    if spec is None:
        return None
    splice.check_rotate(recipe, hidden)
    texts = read_texts(recipe.path.parent / spec.fit.texts, spec.fit.sha256, recipe.path)
    before = recipe.steps[: recipe.steps.index(spec)]
    partial = splice.apply(
        model,
        recipe.model_copy(update={"steps": before, "dimension": hidden, "dimensions": None}),
        hidden,
        where,
    )
    session = verify.session(partial.model.SerializeToString())
    vectors = np.empty((len(texts), hidden), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), FIT_BATCH):
        rows = order[start : start + FIT_BATCH]
        batch = verify.encode(tokenizer, [texts[i] for i in rows], partial.inputs)
        vectors[rows] = verify.run(session, batch, TEXT_OUTPUT, where)
    matrix, variance = rotate.fit(vectors)
    return Fitted(matrix, len(texts), variance)


def read_texts(path: Path, sha256: str, recipe_path: Path) -> list[str]:
    """Texts of a .txt file (one a line) or JSONL ({"text"[, "title"]}, title first), .gz ok."""
    if not path.is_file():
        raise ResolveError(
            f"{recipe_path}: rotate fit texts {path} do not exist. Fix fit.texts (relative to the "
            "recipe file)."
        )
    actual = sha256_file(path)
    if actual != sha256:
        raise ResolveError(
            f"{recipe_path}: fit texts {path.name} sha256 is {actual}, the recipe pins {sha256}. "
            "If the new file is intended, set fit.sha256 to the new value."
        )
    opener: Any = gzip.open if path.suffix == ".gz" else open
    stem = path.name.removesuffix(".gz")
    texts = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if stem.endswith(".jsonl"):
                try:
                    obj = json.loads(line)
                    text = f"{obj.get('title') or ''} {obj['text']}".strip()
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise RecipeError(
                        f"{path} line {n} is not a JSON object with a 'text' string. Fix the line."
                    ) from None
            else:
                text = line.rstrip("\r\n")
            if text.strip():
                texts.append(text)
    return texts


def _digest(matrix: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(matrix, "<f4").tobytes()).hexdigest()
