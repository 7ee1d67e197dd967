"""The one golden check: recompute the vectors the build stored and compare within tolerance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encoderfile.errors import ArtifactError
from encoderfile.runtime import image as pictures
from encoderfile.runtime.artifact import Bundle
from encoderfile.runtime.manifest import Golden


@dataclass(frozen=True)
class GoldenResult:
    kind: str  # "texts" | "images"
    count: int
    max_abs_diff: float
    tolerance: float
    worst: str  # the input whose vector differs most

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        line = (
            f"{'ok' if self.ok else 'FAILED'}: max |diff| {self.max_abs_diff:.3g} over "
            f"{self.count} golden {self.kind} (tolerance {self.tolerance:g})"
        )
        return line if self.ok else f"{line}, worst {self.worst!r}"


def check(bundle: Bundle, threads: int | None = None) -> list[GoldenResult]:
    """One result per model in the bundle (text first, then image)."""
    from encoderfile.runtime.reranker import model_class
    from encoderfile.runtime.vision import ImageEmbedder

    manifest, results = bundle.manifest, []
    if manifest.has_text:
        if manifest.golden is None or not manifest.golden.inputs:
            raise ArtifactError("manifest.json has no golden vectors. Rebuild the bundle.")
        got = model_class(manifest)(bundle, threads).embed_raw(list(manifest.golden.inputs))
        results.append(_compare(manifest.golden, got))
    if manifest.image is not None and bundle.vision is not None:
        embedder = ImageEmbedder(bundle, threads)
        images = [pictures.Image.fromarray(a) for a in pictures.sample_images(embedder.size)]
        got = embedder.embed([embedder.pixels(i) for i in images])
        results.append(_compare(manifest.image.golden, got))
    return results


def _compare(golden: Golden, got: np.ndarray) -> GoldenResult:
    expected = np.asarray(golden.vectors, dtype=np.float32)
    if got.shape != expected.shape:
        raise ArtifactError(
            f"golden {golden.kind} vectors have shape {expected.shape}, the model gives "
            f"{got.shape}. Rebuild the bundle."
        )
    per_input = np.abs(got - expected).max(1) if expected.size else np.zeros(1)
    worst = int(per_input.argmax())
    shown = golden.inputs[worst] if golden.inputs else ""
    shown = " / ".join(shown) if isinstance(shown, tuple) else shown  # a (query, document) pair
    shown = shown if len(shown) <= 60 else shown[:59] + "…"
    return GoldenResult(
        golden.kind, len(expected), float(per_input[worst]), golden.tolerance, shown
    )
