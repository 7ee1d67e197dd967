"""Images: decode (data URL / base64 / bytes) with limits, CLIP preprocessing, and /img/stats.

Preprocessing matches transformers' CLIPImageProcessor (PIL backend): EXIF orientation applied,
RGB (transparency composited onto white), shortest side resized to `size` with PIL bicubic,
centre crop `size` x `size`. The uint8 pixels go to the graph, which normalises them itself.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import ExifTags, ImageOps, UnidentifiedImageError
from PIL import Image as Image  # re-exported: callers name Image.Image through this module

from encoderfile.errors import RequestError

MAX_BYTES = 20 * 1024 * 1024  # per image, compressed
MAX_PIXELS = 50_000_000  # decompression-bomb cap (width x height)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
THUMBNAIL = 512  # stats work on a thumbnail whose longest side is at most this
AVERAGING = ("arithmetic", "geometric")
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_BASE64_CHARS = re.compile(rb"[A-Za-z0-9+/=_-]*")

Image.MAX_IMAGE_PIXELS = None  # replaced by the explicit MAX_PIXELS check in `decode`


class ImageError(RequestError):
    """The image could not be read: bad encoding, unsupported format, too large, truncated."""


def from_content(content: object, where: str = "content") -> Image.Image:
    """Decode a data URL (data:image/png;base64,...) or raw base64 string into an image."""
    if not isinstance(content, str) or not content.strip():
        raise ImageError(
            f"'{where}' must be a non-empty string: a data URL (data:image/png;base64,...) "
            "or base64 image bytes."
        )
    text = content.strip()
    if text.startswith("data:"):
        match = _DATA_URL.fullmatch(text)
        if match is None:
            raise ImageError(
                f"'{where}' is not a valid data URL. Use data:image/<type>;base64,<data>."
            )
        if "base64" not in [p.strip().lower() for p in match["params"].split(";")]:
            raise ImageError(
                f"'{where}' is a data URL without ';base64'. Encode the image as "
                "data:image/<type>;base64,<data>."
            )
        if match["type"] and not match["type"].lower().startswith("image/"):
            raise ImageError(
                f"'{where}' is a data URL of type {match['type']!r}, not an image. "
                "Send an image/* data URL."
            )
        text = match["data"]
    elif re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise ImageError(
            f"'{where}' is a URL; this server does not fetch URLs. Send the image itself "
            "as a data URL or base64."
        )
    return decode(_b64decode(text, where), where)


def _b64decode(text: str, where: str) -> bytes:
    compact = "".join(text.split()).encode("ascii", "replace")
    if len(compact) > (MAX_BYTES + 2) // 3 * 4 + 4:
        raise _too_large(where)
    if not _BASE64_CHARS.fullmatch(compact):
        raise ImageError(f"'{where}' is not valid base64. Encode the image bytes with base64.")
    if b"-" in compact or b"_" in compact:
        compact = compact.translate(bytes.maketrans(b"-_", b"+/"))
    compact += b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(
            f"'{where}' is not valid base64. Encode the image bytes with base64."
        ) from None


def _too_large(where: str) -> ImageError:
    return ImageError(
        f"'{where}' is over the limit of {MAX_BYTES // (1024 * 1024)} MB per image. "
        "Send a smaller (or more compressed) image."
    )


def decode(data: bytes, where: str = "image") -> Image.Image:
    """Open and fully load image bytes (first frame of an animation), checking the limits."""
    if len(data) > MAX_BYTES:
        raise _too_large(where)
    if not data:
        raise ImageError(f"'{where}' is empty. Send image bytes.")
    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except UnidentifiedImageError:
        raise ImageError(
            f"'{where}' is not an image in a supported format ({', '.join(FORMATS)}). "
            "Convert it to PNG or JPEG."
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"'{where}' cannot be read ({e}). Send a complete, valid image.") from None
    width, height = image.size
    if width * height > MAX_PIXELS or width < 1 or height < 1:
        raise ImageError(
            f"'{where}' is {width}x{height} pixels, over the limit of {MAX_PIXELS:,} pixels. "
            "Downscale it before sending."
        )
    try:
        image.seek(0)
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(
            f"'{where}' is truncated or corrupt ({e}). Send the complete image file."
        ) from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (as CLIPImageProcessor does)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image, size: int, where: str = "image") -> np.ndarray:
    """EXIF orientation, RGB, shortest side -> size (bicubic), centre crop: uint8 [size, size, 3]."""
    try:
        rgb = to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError) as e:  # an exotic mode or broken EXIF
        raise ImageError(
            f"'{where}' ({image.mode} pixels) cannot be converted to RGB ({e}). "
            "Convert it to an 8-bit RGB PNG or JPEG."
        ) from None
    width, height = rgb.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    resized = rgb.resize((new_width, new_height), Image.Resampling.BICUBIC, reducing_gap=None)
    pixels = np.asarray(resized, dtype=np.uint8)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    if top < 0 or left < 0:  # only for images smaller than the crop after resizing
        pixels = np.pad(pixels, ((max(-top, 0),) * 2, (max(-left, 0),) * 2, (0, 0)))
        top, left = max(top, 0), max(left, 0)
    return np.ascontiguousarray(pixels[top : top + size, left : left + size])


def sample_images(size: int) -> list[np.ndarray]:
    """Deterministic RGB pictures of several shapes around `size` (pure arithmetic, no RNG),
    from which golden vectors are made; `preprocess` resizes and crops them."""
    shapes = [(size, size), (size + size // 3, 2 * size), (size // 2 + 3, size // 2 + 9)]
    shapes.append((3 * size // 2, size - size // 4))
    images = []
    for i, (height, width) in enumerate(shapes):
        y, x = np.mgrid[0:height, 0:width].astype(np.int64)
        channels = [
            (x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256),
            ((x * 7 + y * 13) % 256, (x * y) % 256, (x ^ y) % 256),
            (((x // 16 + y // 16) % 2) * 255, (y // 8 % 2) * 200, np.full_like(x, 90)),
        ][i % 3]
        images.append(np.stack(channels, -1).astype(np.uint8))
    return images


# ------------------------------------------------------------------------------------ memory

TRIM_PIXELS = 4_000_000  # after work on this many pixels, hand freed memory back to the OS
_malloc_trim: Any = None


def release_memory() -> None:
    """Return freed heap memory to the OS. glibc keeps large freed buffers (Pillow's image
    blocks, once its dynamic mmap threshold has risen) in its arenas: four 49-megapixel
    /img/stats held 1.2 GB after they were answered. No-op where there is no malloc_trim
    (musl, macOS)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes

        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


# ------------------------------------------------------------------------------------- stats


def stats(image: Image.Image, averaging_method: str = "arithmetic") -> dict[str, Any]:
    """EXIF tags and colour statistics, with nomic-serve's semantics (see docs/serve.md)."""
    if averaging_method not in AVERAGING:
        raise RequestError(
            f"averaging_method {averaging_method!r} is unknown. Use one of: {', '.join(AVERAGING)}."
        )
    exif_data = exif(image)
    pixels = visible_pixels(image)  # shrinks `image` in place: one full-size copy at most
    color: dict[str, Any] | None = None
    if len(pixels):
        average = average_color(pixels, averaging_method)
        dominant = dominant_color(pixels)
        color = {
            "avg_color": {
                "rgb": average.tolist(),
                "hex": to_hex(average),
                "method": averaging_method,
            },
            "dominant_color": {"rgb": dominant.tolist(), "hex": to_hex(dominant)},
        }
    return {"exif_data": exif_data, "color_data": color}


def thumbnail(image: Image.Image) -> Image.Image:
    """The image itself, shrunk in place (no full-size copy) to a Lanczos thumbnail whose longest
    side is THUMBNAIL."""
    width, height = image.size
    if max(width, height) <= THUMBNAIL:
        return image
    if width > height:
        box = (THUMBNAIL, int(height * (THUMBNAIL / width)))
    else:
        box = (int(width * (THUMBNAIL / height)), THUMBNAIL)
    image.thumbnail(box, Image.Resampling.LANCZOS)
    return image


def visible_pixels(image: Image.Image) -> np.ndarray:
    """RGBA pixels [n, 4] of the thumbnail whose alpha is at least 128."""
    thumb = thumbnail(image)
    rgba = np.asarray(thumb if thumb.mode == "RGBA" else thumb.convert("RGBA")).reshape(-1, 4)
    return rgba[rgba[:, 3] >= 128]


def average_color(pixels: np.ndarray, method: str) -> np.ndarray:
    """Mean RGB in [0, 1]: arithmetic, or geometric (exp of the mean log, epsilon 1e-8)."""
    rgb = pixels[:, :3].astype(np.float64)
    if method == "geometric":
        rgb = np.log(np.maximum(rgb, 1e-8))
    mean: np.ndarray = rgb.mean(axis=0)
    return (np.exp(mean) if method == "geometric" else mean) / 255.0


def dominant_color(pixels: np.ndarray) -> np.ndarray:
    """The first pixel of the most common HSV bin (10 bins a channel; ties: earliest bin)."""
    rgb = pixels[:, :3].astype(np.float64) / 255.0
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    maxc, minc = rgb.max(axis=1), rgb.min(axis=1)
    span = maxc - minc
    grey = span == 0
    safe = np.where(grey, 1.0, span)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(grey, 0.0, (h / 6.0) % 1.0)
    s = np.where(grey, 0.0, span / np.where(maxc == 0, 1.0, maxc))
    key = (h * 10).astype(np.int64) * 1000 + (s * 10).astype(np.int64) * 10
    key += (maxc * 10).astype(np.int64)
    values, first, counts = np.unique(key, return_index=True, return_counts=True)
    best = first[counts == counts.max()].min()
    dominant: np.ndarray = pixels[best, :3] / 255.0
    return dominant


def to_hex(rgb: Sequence[float] | np.ndarray) -> str:
    r, g, b = (int(c * 255) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


_POINTERS = {0x8769, 0x8825, 0xA005}  # Exif / GPS / Interop IFD offsets: not tags a user wants


def exif(image: Image.Image) -> dict[str, Any]:
    """EXIF tags by name as JSON values (rationals as numbers); GPSInfo only when it is set."""
    try:
        tags = image.getexif()
        found: dict[int, Any] = dict(tags)
        found.update(tags.get_ifd(0x8769))
        gps = {ExifTags.GPSTAGS.get(k, str(k)): _json(v) for k, v in tags.get_ifd(0x8825).items()}
    except Exception:  # malformed EXIF must not fail the request; report what is readable
        return {}
    data = {
        ExifTags.TAGS[k]: _json(v)
        for k, v in found.items()
        if k in ExifTags.TAGS and k not in _POINTERS
    }
    if _gps_set(gps):
        data["GPSInfo"] = gps
    return data


def _gps_set(gps: dict[str, Any]) -> bool:
    coordinates = [gps.get("GPSLatitude"), gps.get("GPSLongitude")]
    return any(isinstance(c, list) and any(v for v in c) for c in coordinates)


def _json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if hasattr(value, "numerator") and hasattr(value, "denominator") and not isinstance(value, int):
        return float(value.numerator) / value.denominator if value.denominator else 0
    if isinstance(value, bytes):
        text = value.rstrip(b"\0").decode("utf-8", "replace")
        return text if text.isprintable() else value.hex()
    if isinstance(value, str):
        return value.rstrip("\0")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
