"""Run the bundle's vision graph: uint8 pixels in, image embeddings out (maths in the graph)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from encoderfile.errors import ArtifactError, RequestError
from encoderfile.runtime import image as pictures
from encoderfile.runtime.artifact import Bundle
from encoderfile.runtime.manifest import IMAGE_INPUT, IMAGE_OUTPUT
from encoderfile.runtime.session import all_finite, open_session, shorten

BATCH_SIZE = 16


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
        self.size = section.size
        self.normalized = section.normalized
        self._session = open_session(bundle.vision, threads, f"{bundle.source}: vision.onnx")

    def pixels(self, image: pictures.Image.Image, where: str = "image") -> np.ndarray:
        """uint8 [size, size, 3] for one decoded image."""
        return pictures.preprocess(image, self.size, where)

    def embed(self, pixels: Sequence[np.ndarray], dimensions: int | None = None) -> np.ndarray:
        """float32 [n, dimensions] for preprocessed images, rows in input order."""
        width = self.manifest.width(dimensions)
        out = np.empty((len(pixels), self.manifest.dimension), dtype=np.float32)
        for start in range(0, len(pixels), BATCH_SIZE):
            batch = np.stack(pixels[start : start + BATCH_SIZE])
            (out[start : start + len(batch)],) = self._session.run(
                [IMAGE_OUTPUT], {IMAGE_INPUT: batch}
            )
        if not all_finite(out):
            raise ArtifactError("vision.onnx produced NaN or infinite values. Rebuild the bundle.")
        return shorten(out, width, self.normalized)
