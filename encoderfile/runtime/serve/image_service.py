"""What HTTP, gRPC and the CLI share for images: decoding with limits, embedding, stats."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from encoderfile.errors import InvalidFieldError, NotFoundError, NotReadyError, RequestError

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from encoderfile.runtime.artifact import Bundle
    from encoderfile.runtime.vision import ImageEmbedder

MAX_IMAGES = 64  # per request
BODY_BYTES = 32 * 1024 * 1024  # one base64 image of MAX_BYTES (20 MB) fits, with room
BATCH_BODY_BYTES = 64 * 1024 * 1024


class ImageService:
    """The bundle's image model behind the servers; absent models answer 404."""

    def __init__(self, bundle: Bundle, max_inputs: int):
        self.bundle = bundle
        self.max_inputs = min(max_inputs, MAX_IMAGES)
        self.embedder: ImageEmbedder | None = None
        self._running = threading.Semaphore(2)  # images are heavy: bound concurrent work
        self._lock = threading.Lock()
        self._active = 0  # image jobs running
        self._pending = 0  # pixels decoded since memory was last released

    @property
    def available(self) -> bool:
        return self.bundle.vision is not None

    def load(self, threads: int | None = None) -> None:
        """Create the ImageEmbedder and run one warm-up image (no-op without an image model)."""
        if not self.available:
            return
        import numpy as np

        from encoderfile.runtime.vision import ImageEmbedder

        embedder = ImageEmbedder(self.bundle, threads)
        embedder.embed([np.zeros((embedder.size, embedder.size, 3), np.uint8)])
        self.embedder = embedder

    def check_available(self) -> None:
        if not self.available:
            raise NotFoundError(
                f"{self.bundle.manifest.name} has no image model. Use the text routes, or an "
                "artifact built from a recipe with an 'image' section."
            )

    def _embedder(self) -> ImageEmbedder:
        self.check_available()
        if self.embedder is None:
            raise NotReadyError("The model is still loading. Retry shortly.")
        return self.embedder

    def check_count(self, n: int, param: str) -> None:
        if n == 0:
            raise InvalidFieldError(f"'{param}' is empty. Send at least one image.", param=param)
        if n > self.max_inputs:
            raise InvalidFieldError(
                f"'{param}' has {n} images, over the limit of {self.max_inputs}. "
                "Split the request.",
                param=param,
            )

    def decode(self, content: object, where: str) -> Image:
        """A data URL or base64 string (HTTP), or raw bytes (gRPC, CLI), as a loaded image."""
        from encoderfile.runtime import image as pictures

        try:
            if isinstance(content, bytes):
                return pictures.decode(content, where)
            return pictures.from_content(content, where)
        except RequestError as e:
            raise InvalidFieldError(str(e), param=where.split("[")[0]) from None

    def embed(
        self, contents: Sequence[object], dimensions: int | None, param: str, single: bool = False
    ) -> np.ndarray:
        """Decode, preprocess and embed images; blocking (call it from a worker thread)."""
        embedder = self._embedder()
        self.check_count(len(contents), param)
        with self._running, self._releasing() as decoded:
            pixels = []
            for i, content in enumerate(contents):
                where = param if single else f"{param}[{i}]"
                image = self.decode(content, where)
                decoded.append(image.width * image.height)
                try:
                    pixels.append(embedder.pixels(image, where))
                except RequestError as e:
                    raise InvalidFieldError(str(e), param=param) from None
                del image
            return embedder.embed(pixels, dimensions)

    def stats(self, content: object, averaging_method: str | None, param: str) -> dict[str, Any]:
        """EXIF and colour statistics of one image; blocking."""
        from encoderfile.runtime import image as pictures

        method = averaging_method or "arithmetic"
        if method not in pictures.AVERAGING:
            raise InvalidFieldError(
                f"'averaging_method' must be one of {', '.join(pictures.AVERAGING)}, "
                f"got {method!r}.",
                param="averaging_method",
            )
        with self._running, self._releasing() as decoded:
            image = self.decode(content, param)
            decoded.append(image.width * image.height)
            result = pictures.stats(image, method)
            del image  # freed before the memory is released
            return result

    @contextlib.contextmanager
    def _releasing(self) -> Iterator[list[int]]:
        """Collects the pixel counts decoded inside; once the last image job to finish has
        handled over TRIM_PIXELS in all, freed memory goes back to the OS (see
        image.release_memory), so big images leave no lasting RSS behind."""
        from encoderfile.runtime import image as pictures

        decoded: list[int] = []
        with self._lock:
            self._active += 1
        try:
            yield decoded
        finally:
            with self._lock:
                self._active -= 1
                self._pending += sum(decoded)
                release = self._active == 0 and self._pending >= pictures.TRIM_PIXELS
                if release:
                    self._pending = 0
            if release:
                pictures.release_memory()
