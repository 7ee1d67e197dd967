"""The build pipeline: recipe -> resolve -> splice -> verify -> bundle."""

from __future__ import annotations

from pathlib import Path

import onnx

from encoderfile import bundle, recipe, resolve, splice, verify, vision
from encoderfile.errors import SpliceError


def load_graph(path: Path, where: str) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))  # also loads external-data weights beside the file
    except Exception as e:  # protobuf DecodeError, missing external data, …
        raise SpliceError(
            f"{where} is not a readable ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
            "Check the file is complete (re-download it) and that external-data files sit beside it."
        ) from e


def compile_bundle(recipe_path: Path, out_dir: Path, *, allow_unpinned: bool = False) -> Path:
    """Build `out_dir/<name>` from the recipe and return its path."""
    spec = recipe.load(recipe_path)
    if spec.model is None:  # an image model alone
        image_only = _compile_image(spec, recipe_path, allow_unpinned)
        return bundle.write_image_only(out_dir / spec.name, spec, image_only)
    resolved = resolve.resolve(spec, recipe_path, allow_unpinned=allow_unpinned)
    where = spec.model.graph
    model = load_graph(resolved.graph, where)
    tokenizer = bundle.prepare_tokenizer(resolved.tokenizer, spec.tokenizer)

    states_name = splice.contract.token_states(model, spec.model.output, where)
    inputs = splice.contract.check_inputs(model, where)
    batch = verify.encode(tokenizer, verify.SAMPLE_TEXTS, inputs)
    states = verify.run(verify.session(resolved.graph), batch, states_name, where)
    expected = verify.reference(states, batch.mask, spec)

    spliced = splice.apply(model, spec, states.shape[-1], where)
    got = verify.run(
        verify.session(spliced.model.SerializeToString()),
        verify.encode(tokenizer, verify.SAMPLE_TEXTS, spliced.inputs),
        "sentence_embedding",
        where,
    )
    golden = verify.check(got, expected, verify.SAMPLE_TEXTS)
    image = _compile_image(spec, recipe_path, allow_unpinned) if spec.image else None
    return bundle.write(out_dir / spec.name, spec, resolved, spliced, tokenizer, golden, image)


def _compile_image(
    spec: recipe.Recipe, recipe_path: Path, allow_unpinned: bool
) -> vision.VisionBuild:
    resolved = resolve.resolve_image(spec, recipe_path, allow_unpinned=allow_unpinned)
    assert resolved is not None and spec.image is not None
    where = f"image model {spec.image.model.graph}"
    return vision.build(load_graph(resolved.graph, where), spec, resolved, where)
