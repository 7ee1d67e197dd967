"""Images: build-time splice + verify, parity with transformers + torch, batching, stats, limits."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from encoderfile.errors import RecipeError, RequestError, SpliceError
from encoderfile.recipe import load
from encoderfile.runtime import golden
from encoderfile.runtime import image as pictures
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.vision import ImageEmbedder
from tests.fixtures.image_bundle import WIDTH, image_recipe, make_image_bundle
from tests.fixtures.images import (
    bomb_png,
    data_url,
    encode,
    exif_jpeg,
    independent_stats,
    reference_vectors,
    varied_images,
)

PARITY_COSINE = 0.999
BATCH_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def embedder(image_bundle: Path) -> ImageEmbedder:
    return ImageEmbedder(open_bundle(image_bundle), threads=1)


def embed_files(embedder: ImageEmbedder, files: dict[str, bytes]) -> np.ndarray:
    return embedder.embed([embedder.pixels(pictures.decode(d, n)) for n, d in files.items()])


# ----------------------------------------------------------------------------- build


def test_bundle_records_the_image_model(image_bundle: Path) -> None:
    manifest = json.loads((image_bundle / "manifest.json").read_text())
    section = manifest["image"]
    assert section["size"] == 224 and section["graph"]["inputs"] == ["pixel_values"]
    assert section["graph"]["output"] == "image_embedding"
    assert [s["op"] for s in section["steps"]] == ["pooling", "normalize"]
    assert len(section["golden"]["vectors"]) == 4 and section["golden"]["tolerance"] == 1e-4
    assert "vision.onnx" in manifest["files"]
    assert section["graph"]["added_nodes"][0].startswith("image/")


def test_recipe_rejects_mean_pooling_for_images(tmp_path: Path, clip_dir: Path) -> None:
    path = image_recipe(tmp_path, clip_dir, steps=[{"op": "pooling", "mode": "mean"}])
    with pytest.raises(RecipeError, match="cls"):
        load(path)


def test_image_dimension_beyond_hidden_size_fails(tmp_path: Path, clip_dir: Path) -> None:
    from encoderfile.compiler import compile_bundle
    from tests.fixtures.models import recipe_dict, write_recipe, write_tiny_model

    text = write_tiny_model(tmp_path / "text", hidden=96, positions=False, token_type_ids=False)
    image = {
        "model": {
            "local": {"path": str(clip_dir), "files": {"model.onnx": None}},
            "graph": "model.onnx",
        }
    }
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(text, dimension=96, image=image))
    with pytest.raises(SpliceError, match="hidden size 64"):
        compile_bundle(recipe, tmp_path / "build")


def test_truncated_image_dimension(tmp_path: Path, clip_dir: Path) -> None:
    """An image model wider than the text model is truncated (Matryoshka) to its dimension."""
    from encoderfile.compiler import compile_bundle
    from tests.fixtures.models import recipe_dict, write_recipe, write_tiny_model

    text = write_tiny_model(tmp_path / "text", hidden=16, positions=False, token_type_ids=False)
    steps = [{"op": "pooling", "mode": "cls"}, {"op": "truncate"}, {"op": "normalize"}]
    image = {
        "model": {
            "local": {"path": str(clip_dir), "files": {"model.onnx": None}},
            "graph": "model.onnx",
        },
        "steps": steps,
    }
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(text, dimension=16, image=image))
    bundle = open_bundle(compile_bundle(recipe, tmp_path / "build"))
    vectors = ImageEmbedder(bundle).embed([np.zeros((224, 224, 3), np.uint8)])
    assert vectors.shape == (1, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)


# ----------------------------------------------------------------------------- parity


@pytest.mark.slow  # torch and transformers
def test_parity_with_transformers_and_torch(embedder: ImageEmbedder) -> None:
    files = varied_images()
    got = embed_files(embedder, files).astype(np.float64)
    expected = reference_vectors(files)
    cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1)
    worst = dict(zip(files, cosines.round(6), strict=True))
    assert cosines.min() >= PARITY_COSINE, worst
    print(f"min cosine vs transformers+torch over {len(files)} images: {cosines.min():.7f}")


@pytest.mark.slow  # transformers as the reference
def test_preprocessing_matches_clip_image_processor_pixels() -> None:
    """Same resize and crop as CLIPImageProcessor: normalised pixels agree to float rounding."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from encoderfile.recipe import CLIP_MEAN, CLIP_STD
    from encoderfile.splice.image import normalized_pixels

    processor = CLIPImageProcessorPil()
    for name, data in varied_images().items():
        image = Image.open(io.BytesIO(data))
        ours = normalized_pixels(pictures.preprocess(image, 224)[None], CLIP_MEAN, CLIP_STD)
        theirs = processor(ImageOps.exif_transpose(image), return_tensors="np")["pixel_values"]
        assert np.abs(ours - theirs).max() < 1e-5, name


def test_batch_equals_single(embedder: ImageEmbedder) -> None:
    files = varied_images()
    pixels = [embedder.pixels(pictures.decode(d)) for d in files.values()]
    batched = embedder.embed(pixels)
    single = np.concatenate([embedder.embed([p]) for p in pixels])
    diff = float(np.abs(batched - single).max())
    assert diff <= BATCH_TOLERANCE, diff
    print(f"batch vs single max |diff|: {diff:.3g}")


def test_exif_orientation_is_applied_before_embedding(embedder: ImageEmbedder) -> None:
    upright = Image.fromarray(np.asarray(Image.open(io.BytesIO(varied_images()["gradient.png"]))))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90° clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    tagged = pictures.decode(encode(stored, "PNG", exif=exif))
    a, b = embedder.embed([embedder.pixels(tagged), embedder.pixels(upright)])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_dimensions_are_a_renormalised_prefix(embedder: ImageEmbedder) -> None:
    pixels = [embedder.pixels(pictures.decode(varied_images()["noise.jpg"]))]
    full, half = embedder.embed(pixels), embedder.embed(pixels, WIDTH // 2)
    prefix = full[:, : WIDTH // 2]
    np.testing.assert_allclose(half, prefix / np.linalg.norm(prefix), atol=1e-6)
    with pytest.raises(RequestError, match="not offered"):
        embedder.embed(pixels, WIDTH + 1)


def test_verify_golden_images(image_bundle: Path) -> None:
    text, result = golden.check(open_bundle(image_bundle))
    assert (text.kind, result.kind, result.count) == ("texts", "images", 4)
    assert result.ok and result.max_abs_diff <= result.tolerance


# ----------------------------------------------------------------------------- stats


@pytest.mark.parametrize("method", ["arithmetic", "geometric"])
def test_stats_match_an_independent_computation(method: str) -> None:
    for name, data in varied_images().items():
        got = pictures.stats(pictures.decode(data), method)["color_data"]
        want = independent_stats(data, method)
        np.testing.assert_allclose(got["avg_color"]["rgb"], want["avg"], rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(got["dominant_color"]["rgb"], want["dominant"], err_msg=name)
        assert got["avg_color"]["method"] == method
        r, g, b = (int(c * 255) for c in want["avg"])
        assert got["avg_color"]["hex"] == f"#{r:02x}{g:02x}{b:02x}"


def test_stats_ignore_transparent_pixels() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (255, 0, 0, 255)
    rgba[:, 5:] = (0, 0, 255, 100)  # alpha < 128: ignored
    result = pictures.stats(pictures.decode(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert result["color_data"]["avg_color"]["rgb"] == [1.0, 0.0, 0.0]
    assert result["color_data"]["dominant_color"]["hex"] == "#ff0000"
    clear = Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA")
    assert pictures.stats(pictures.decode(encode(clear, "PNG")))["color_data"] is None


def test_exif_tags_as_json() -> None:
    image = Image.fromarray(np.full((20, 30, 3), 128, np.uint8))
    exif = pictures.stats(pictures.decode(exif_jpeg(image, orientation=3)))["exif_data"]
    assert exif["Make"] == "EncoderCam" and exif["Model"] == "Model 7"
    assert exif["ExposureTime"] == pytest.approx(1 / 250) and exif["Orientation"] == 3
    assert exif["GPSInfo"]["GPSLatitude"] == [52.0, 31.0, 12.5]
    assert exif["GPSInfo"]["GPSLatitudeRef"] == "N"
    json.dumps(exif, allow_nan=False)
    unset = pictures.stats(pictures.decode(exif_jpeg(image, gps=False)))["exif_data"]
    assert "GPSInfo" not in unset and unset["Make"] == "EncoderCam"


# ----------------------------------------------------------------------------- bad input

PNG = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
NOISE_PNG = varied_images()["rgba.png"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "non-empty string"),
        ("!!!not base64!!!", "not valid base64"),
        ("data:image/png;base64", "not a valid data URL"),
        ("data:image/png," + base64.b64encode(PNG).decode(), "without ';base64'"),
        ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), "not an image"),
        ("https://example.com/cat.png", "does not fetch URLs"),
        (base64.b64encode(b"%PDF-1.4 not an image").decode(), "not an image in a supported format"),
        (base64.b64encode(NOISE_PNG[: len(NOISE_PNG) // 2]).decode(), "truncated or corrupt"),
        (base64.b64encode(bomb_png()).decode(), "over the limit of 50,000,000 pixels"),
        (base64.b64encode(encode(Image.new("RGB", (4, 4)), "ICO")).decode(), "supported format"),
    ],
)
def test_bad_content_is_a_request_error(content: str, match: str) -> None:
    with pytest.raises(RequestError, match=match):
        pictures.from_content(content)


def test_size_cap() -> None:
    with pytest.raises(RequestError, match="over the limit of 20 MB"):
        pictures.decode(b"\0" * (pictures.MAX_BYTES + 1))
    with pytest.raises(RequestError, match="over the limit of 20 MB"):
        pictures.from_content("A" * (pictures.MAX_BYTES * 4 // 3 + 100))


def test_data_urls_and_raw_base64_agree() -> None:
    a = np.asarray(pictures.from_content(data_url(PNG)))
    b = np.asarray(pictures.from_content(base64.b64encode(PNG).decode()))
    c = np.asarray(pictures.from_content(base64.urlsafe_b64encode(PNG).decode().rstrip("=")))
    assert (a == b).all() and (a == c).all() and a[0, 0].tolist() == [1, 2, 3]


def test_gif_first_frame() -> None:
    image = pictures.decode(varied_images()["animated.gif"])
    first = Image.open(io.BytesIO(varied_images()["animated.gif"])).convert("RGB")
    assert (np.asarray(image.convert("RGB")) == np.asarray(first)).all()


def test_text_only_bundle_has_no_image_model(tiny_bundle: Path) -> None:
    with pytest.raises(RequestError, match="no image model"):
        ImageEmbedder(open_bundle(tiny_bundle))


def test_make_image_bundle_twice_is_reproducible(tmp_path: Path, clip_dir: Path) -> None:
    a = make_image_bundle(tmp_path / "a", clip_dir)
    b = make_image_bundle(tmp_path / "b", clip_dir)
    for name in ("vision.onnx", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_shipped_vision_recipe() -> None:
    root = Path(__file__).resolve().parent.parent
    spec = load(root / "recipes" / "nomic-embed-vision-v1.5.yaml")
    assert spec.image is not None and spec.image.model.hub is not None
    assert spec.image.model.hub.repo == "nomic-ai/nomic-embed-vision-v1.5"
    assert [s.op for s in spec.image.steps] == ["pooling", "normalize"]
    assert spec.image.size == 224 and spec.image.mean[0] == 0.48145466
    assert spec.dimension == 768


@pytest.mark.slow  # runs the CLI in a process
def test_pin_covers_the_image_model(tmp_path: Path, clip_dir: Path) -> None:
    """Both models list model.onnx: each pin lands under its own model."""
    import hashlib
    import subprocess
    import sys

    import yaml

    path = image_recipe(tmp_path, clip_dir)
    result = subprocess.run(
        [sys.executable, "-m", "encoderfile.cli", "pin", str(path)], capture_output=True
    )
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(path.read_text())
    text_pin = data["model"]["local"]["files"]["model.onnx"]
    image_pin = data["image"]["model"]["local"]["files"]["model.onnx"]
    assert text_pin == hashlib.sha256((tmp_path / "text" / "model.onnx").read_bytes()).hexdigest()
    assert image_pin == hashlib.sha256((clip_dir / "model.onnx").read_bytes()).hexdigest()


def test_missing_image_model_names_the_image_section(tmp_path: Path) -> None:
    from encoderfile.compiler import compile_bundle
    from encoderfile.errors import ResolveError

    path = image_recipe(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ResolveError, match=r"image\.model\.local\.path"):
        compile_bundle(path, tmp_path / "build")


@pytest.mark.slow  # runs the CLI in a process
def test_inspect_shows_the_image_graph(image_bundle: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "encoderfile.cli", "inspect", str(image_bundle), "--json"],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    image = json.loads(result.stdout)["image"]
    assert image["graph"]["inputs"] == ["pixel_values"] and image["graph"]["hidden_size"] == WIDTH


def test_image_only_bundle(image_only_bundle: Path, image_bundle: Path) -> None:
    """An image model alone: no model.onnx / tokenizer.json; the same image vectors."""
    from encoderfile.runtime.embedder import Embedder

    manifest = json.loads((image_only_bundle / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["vision.onnx"] and manifest["model"] is None
    assert sorted(p.name for p in image_only_bundle.iterdir()) == ["manifest.json", "vision.onnx"]
    bundle = open_bundle(image_only_bundle)
    assert not bundle.manifest.has_text and bundle.manifest.image is not None
    with pytest.raises(RequestError, match="no text model"):
        Embedder(bundle)
    pixels = [pictures.preprocess(pictures.decode(d), 224) for d in varied_images().values()]
    alone = ImageEmbedder(bundle).embed(pixels)
    beside = ImageEmbedder(open_bundle(image_bundle)).embed(pixels)
    assert np.array_equal(alone, beside)


def test_recipe_needs_a_model(tmp_path: Path) -> None:
    from tests.fixtures.models import write_recipe

    path = write_recipe(tmp_path / "r.yaml", {"name": "x", "version": "1", "dimension": 8})
    with pytest.raises(RecipeError, match="'model' \\(text\\), 'image', or both"):
        load(path)


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "F", "I", "LA", "1", "P"])
def test_unusual_pixel_modes_embed(embedder: ImageEmbedder, mode: str) -> None:
    grey = Image.fromarray((np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8))
    fmt = {"CMYK": "JPEG", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    decoded = pictures.decode(encode(grey.convert(mode), fmt))
    assert np.isfinite(embedder.embed([embedder.pixels(decoded)])).all()
    assert pictures.stats(decoded)["color_data"] is not None


def test_unconvertible_image_is_a_request_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(image: Image.Image) -> Image.Image:
        raise ValueError("conversion not supported")

    monkeypatch.setattr(pictures, "to_rgb", refuse)
    with pytest.raises(RequestError, match="cannot be converted to RGB"):
        pictures.preprocess(pictures.decode(PNG), 224, "photo.png")
