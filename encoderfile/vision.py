"""The image half of a build: splice the vision graph and verify it like the text graph.

Golden images are deterministic synthetic pictures of several sizes, preprocessed by the
runtime's own code (resize + crop), so `verify` on the artifact repeats exactly this check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from encoderfile import splice, verify
from encoderfile.errors import VerifyError
from encoderfile.recipe import ImageSpec, Recipe
from encoderfile.resolve import ResolvedGraph
from encoderfile.runtime import image as pictures
from encoderfile.runtime.manifest import (
    IMAGE_OUTPUT,
    VISION_FILE,
    Golden,
    GraphInfo,
    ImageSection,
)
from encoderfile.splice import image as image_splice


@dataclass(frozen=True)
class VisionBuild:
    spec: ImageSpec
    resolved: ResolvedGraph
    spliced: splice.Spliced
    golden: Golden


def golden_pixels(size: int) -> tuple[list[str], np.ndarray]:
    """Names and uint8 pixels [n, size, size, 3] of the golden images, as the runtime makes them."""
    names, pixels = [], []
    for i, array in enumerate(pictures.sample_images(size)):
        names.append(f"sample-{i}-{array.shape[1]}x{array.shape[0]}")
        pixels.append(pictures.preprocess(pictures.Image.fromarray(array), size))
    return names, np.stack(pixels)


def build(
    model: onnx.ModelProto, recipe: Recipe, resolved: ResolvedGraph, where: str
) -> VisionBuild:
    """Splice the image steps into `model` and check it against the numpy reference."""
    spec = recipe.image
    assert spec is not None
    original = image_splice.pixel_input(model, where)
    states_name = splice.contract.token_states(model, spec.model.output, where)
    names, pixels = golden_pixels(spec.size)
    feeds = {original: image_splice.normalized_pixels(pixels, spec.mean, spec.std)}
    states = _run(verify.session(resolved.graph), states_name, feeds, where)
    if states.ndim != 3:
        raise VerifyError(
            f"{where}: output {states_name!r} has shape {list(states.shape)}, not "
            "[batch, tokens, hidden]. Set image.model.output to the token states."
        )
    mask = np.ones(states.shape[:2], dtype=np.int64)
    expected = verify.reference_steps(states, mask, spec.steps, recipe.dimension)
    spliced = image_splice.apply(model, spec, recipe.dimension, states.shape[-1], where)
    got = _run(
        verify.session(spliced.model.SerializeToString()),
        image_splice.OUTPUT,
        {image_splice.PIXELS: pixels},
        where,
    )
    return VisionBuild(spec, resolved, spliced, verify.check(got, expected, names, "images"))


def _run(session: Any, output: str, feeds: dict[str, np.ndarray], where: str) -> np.ndarray:
    try:
        result: np.ndarray = session.run([output], feeds)[0]
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise VerifyError(
            f"{where}: onnxruntime failed to run the image graph ({str(e).splitlines()[0]}). "
            "Check image.size matches the model's input size."
        ) from e
    return result


def manifest_section(build: VisionBuild, steps: tuple[dict[str, Any], ...]) -> ImageSection:
    """What the manifest records under "image"."""
    spec, spliced = build.spec, build.spliced
    return ImageSection(
        model=build.resolved.model_source,
        graph=GraphInfo(
            inputs=tuple(spliced.inputs),
            output=IMAGE_OUTPUT,
            token_states=spliced.token_states,
            hidden_size=spliced.hidden_size,
            added_nodes=tuple(spliced.added_nodes),
            file=VISION_FILE,
        ),
        size=spec.size,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        steps=steps,
        normalized=spec.steps[-1].op == "normalize",
        golden=build.golden,
    )
