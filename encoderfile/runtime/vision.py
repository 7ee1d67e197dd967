"""Run the bundle's vision graph: uint8 pixels in, image embeddings out (maths in the graph)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from encoderfile.errors import ArtifactError, RequestError
from encoderfile.runtime import image as pictures
from encoderfile.runtime.payload import Bundle
from encoderfile.runtime.session import open_session, shorten

BATCH_SIZE = 16
INPUT = "pixel_values"
OUTPUT = "image_embedding"


class ImageEmbedder:
    """One ORT session over vision.onnx; images are decoded and preprocessed by the caller."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        section = bundle.manifest.image
        if bundle.vision is None or section is None:
            raise RequestError(
                f"{bundle.manifest.name} has no image model. Build it from a recipe with an "
                "'image' section."
            )
        self.manifest = bundle.manifest
        self.section = section
        self.size = int(section["size"])
        self.normalized = bool(section.get("normalized", True))
        self._session = open_session(bundle.vision, threads, f"{bundle.source}: vision.onnx")

    def pixels(self, image: pictures.Image.Image, where: str = "image") -> np.ndarray:
        """uint8 [size, size, 3] for one decoded image."""
        return pictures.preprocess(image, self.size, where)

    def embed(self, pixels: Sequence[np.ndarray], dimensions: int | None = None) -> np.ndarray:
        """float32 [n, dimensions] for preprocessed images, rows in input order."""
        width = self.manifest.dimension if dimensions is None else dimensions
        if width not in self.manifest.dimensions and width != self.manifest.dimension:
            allowed = ", ".join(map(str, self.manifest.dimensions))
            raise RequestError(f"dimensions={width} is not offered. Use one of: {allowed}.")
        out = np.empty((len(pixels), self.manifest.dimension), dtype=np.float32)
        for start in range(0, len(pixels), BATCH_SIZE):
            batch = np.stack(pixels[start : start + BATCH_SIZE])
            (out[start : start + len(batch)],) = self._session.run([OUTPUT], {INPUT: batch})
        if not np.isfinite(out).all():
            raise ArtifactError("vision.onnx produced NaN or infinite values. Rebuild the bundle.")
        return shorten(out, width, self.normalized)

    def golden(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(expected, recomputed, tolerance) for the golden images stored at build time."""
        golden = self.section.get("golden") or {}
        expected = np.asarray(golden.get("vectors") or [], dtype=np.float32)
        images = [pictures.Image.fromarray(a) for a in pictures.sample_images(self.size)]
        got = self.embed([self.pixels(i) for i in images])
        return expected, got, float(golden.get("tolerance", 1e-4))
