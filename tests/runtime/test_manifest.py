"""The build→run contract: every manifest section round-trips, and the one width rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoderfile.errors import ArtifactError, InvalidFieldError
from encoderfile.runtime.manifest import (
    GateFigures,
    Golden,
    GraphInfo,
    ImageSection,
    Manifest,
    ModelSource,
    Precision,
    TokenizerSettings,
)

HUB = ModelSource("hub", {"onnx/model.onnx": "ab" * 32}, repo="org/model", revision="c" * 40)
LOCAL = ModelSource("local", {"model.onnx": "cd" * 32}, path="../models/x")
GRAPH = GraphInfo(("input_ids", "attention_mask"), "sentence_embedding", "last", 8, ("pooling/a",))
GATE = GateFigures(24, 0.999, 0.99, ({"text": "t", "cosine": 0.99},), 0.0, {"mean_cosine": 0.99})
IMAGE = ImageSection(
    model=LOCAL,
    graph=GraphInfo(("pixel_values",), "image_embedding", "last", 8, ("image/a",), "vision.onnx"),
    size=224,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    steps=({"op": "pooling", "mode": "cls"},),
    normalized=True,
    golden=Golden(1e-4, ("sample-0",), ((0.5, -0.5),), kind="images"),
)


@pytest.mark.parametrize(
    "section",
    [
        HUB,
        LOCAL,
        GRAPH,
        IMAGE.graph,
        TokenizerSettings(512, "left", "right"),
        Golden(1e-4, ("a", "b"), ((1.0, 0.0), (0.0, 1.0))),
        IMAGE.golden,
        GATE,
        Precision(),
        Precision("int8", {"scheme": "qdq"}, GATE),
        IMAGE,
    ],
    ids=lambda s: type(s).__name__,
)
def test_every_section_round_trips_through_json(section: object) -> None:
    kind = type(section)
    raw = json.loads(json.dumps(section.to_dict()))  # type: ignore[attr-defined]
    args = (raw, "images") if isinstance(section, Golden) and section.kind == "images" else (raw,)
    assert kind.from_dict(*args) == section  # type: ignore[attr-defined]


def manifest(**overrides: object) -> Manifest:
    fields: dict = dict(
        name="m",
        version="1",
        dimension=512,
        dimensions=(256, 128),
        normalized=True,
        files={"model.onnx": "0" * 64, "tokenizer.json": "1" * 64},
        model=HUB,
        graph=GRAPH,
        steps=({"op": "pooling", "mode": "mean"}, {"op": "normalize", "norm": "l2"}),
        prompts={"q": "query: "},
        default_prompt="q",
        tokenizer=TokenizerSettings(128),
        tools={"encoderfile": "0.1.0"},
        golden=Golden(1e-4, ("a",), ((1.0,),)),
        precision=Precision("int8", {"scheme": "qdq"}, GATE),
        image=IMAGE,
    )
    fields.update(overrides)
    return Manifest(**fields)


def test_whole_manifest_round_trips_byte_for_byte() -> None:
    m = manifest()
    assert Manifest.from_dict(json.loads(m.to_json())) == m
    assert Manifest.from_dict(json.loads(m.to_json())).to_json() == m.to_json()
    image_only = manifest(
        model=None,
        graph=None,
        tokenizer=None,
        golden=None,
        steps=(),
        prompts={},
        default_prompt=None,
        files={"vision.onnx": "2" * 64},
    )
    assert Manifest.from_dict(image_only.to_dict()) == image_only
    assert not image_only.has_text and image_only.max_length == 0


def test_a_real_bundle_manifest_round_trips(tiny_bundle: Path) -> None:
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    assert Manifest.from_dict(raw).to_dict() == raw


def test_width_rule_is_any_width_up_to_the_built_one() -> None:
    """dimension 512, recommended [256, 128]: any width from 1 to 512 (prefix, re-normalised)."""
    m = manifest()
    assert [m.width(w) for w in (None, 512, 300, 128, 1)] == [512, 512, 300, 128, 1]
    for width in (0, -1, 513):
        with pytest.raises(InvalidFieldError, match=f"dim={width} is not offered by m") as e:
            m.width(width, "dim")
        assert e.value.param == "dim"
        assert "Use a width from 1 to 512 (recommended: 256, 128)" in str(e.value)


def test_width_rule_restricted_by_the_recipe() -> None:
    """restrict_dimensions: only the built width and the listed ones."""
    m = manifest(restrict_dimensions=True)
    assert m.width(None) == 512 and m.width(512) == 512 and m.width(128) == 128
    with pytest.raises(InvalidFieldError, match="dimensions=300 is not offered by m") as e:
        m.width(300)
    assert e.value.param == "dimensions"
    assert "512, 256, 128" in str(e.value)


def test_manifests_written_before_the_open_rule_and_pinned_still_load() -> None:
    raw = manifest().to_dict()
    del raw["restrict_dimensions"], raw["pinned"]
    old = Manifest.from_dict(raw)
    assert old.restrict_dimensions is False and old.pinned is True
    assert manifest(pinned=False).to_dict()["pinned"] is False


def test_width_rule_reaches_text_and_image_embedders(image_bundle: Path) -> None:
    import numpy as np

    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.embedder import Embedder
    from encoderfile.runtime.vision import ImageEmbedder

    bundle = open_bundle(image_bundle)
    full = bundle.manifest.dimension
    text, image = Embedder(bundle), ImageEmbedder(bundle)
    pixels = [np.zeros((image.size, image.size, 3), np.uint8)]
    assert text.embed(["a"], dimensions=full).vectors.shape == (1, full)
    assert image.embed(pixels, full).shape == (1, full)
    assert text.embed(["a"], dimensions=3).vectors.shape == (1, 3)  # off the recommended list
    assert image.embed(pixels, 3).shape == (1, 3)
    for call in (
        lambda: text.embed(["a"], dimensions=full + 1),
        lambda: image.embed(pixels, full + 1),
    ):
        with pytest.raises(InvalidFieldError, match="not offered"):
            call()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "format_version 2"),
        ({"dimension": "wide"}, "malformed"),
        ({"default_prompt": "nope"}, "default_prompt 'nope'"),
    ],
)
def test_bad_manifests_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_dict({**manifest().to_dict(), **change})
