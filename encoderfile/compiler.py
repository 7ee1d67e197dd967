"""The build pipeline: recipe -> resolve -> [quantize] -> splice -> verify -> [gate] -> bundle."""

from __future__ import annotations

from pathlib import Path

import onnx
from tokenizers import Tokenizer

from encoderfile import bundle, gate, quantize, recipe, resolve, rotation, splice, verify, vision
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
    fp32 = model
    lowered = _lower(model, spec, tokenizer, inputs, where)
    if lowered is not None:
        model = lowered.model
    batch = verify.encode(tokenizer, verify.SAMPLE_TEXTS, inputs)
    graph: bytes | Path = resolved.graph if lowered is None else model.SerializeToString()
    states = verify.run(verify.session(graph), batch, states_name, where)
    fitted = rotation.fit(fp32, spec, recipe_path, tokenizer, inputs, states.shape[-1], where)
    matrix = fitted.matrix if fitted else None
    expected = verify.reference(states, batch.mask, spec, matrix)

    spliced = splice.apply(model, spec, states.shape[-1], where, matrix)
    spliced_session = verify.session(spliced.model.SerializeToString())
    got = verify.run(
        spliced_session,
        verify.encode(tokenizer, verify.SAMPLE_TEXTS, spliced.inputs),
        "sentence_embedding",
        where,
    )
    golden = verify.check(got, expected, verify.SAMPLE_TEXTS)
    precision = None
    if lowered is not None:
        reference = splice.apply(fp32, spec, states.shape[-1], where, matrix)
        result = gate.check(
            verify.session(reference.model.SerializeToString()),
            spliced_session,
            tokenizer,
            spliced.inputs,
            spec.precision,
            spec.gate,
        )
        precision = {"changes": lowered.changes, "gate": result.to_manifest()}
    image = _compile_image(spec, recipe_path, allow_unpinned) if spec.image else None
    return bundle.write(
        out_dir / spec.name,
        spec,
        resolved,
        spliced,
        tokenizer,
        golden,
        image,
        precision=precision,
        rotation=fitted.to_manifest(spec.allowed_dimensions) if fitted else None,
    )


def _compile_image(
    spec: recipe.Recipe, recipe_path: Path, allow_unpinned: bool
) -> vision.VisionBuild:
    resolved = resolve.resolve_image(spec, recipe_path, allow_unpinned=allow_unpinned)
    assert resolved is not None and spec.image is not None
    where = f"image model {spec.image.model.graph}"
    return vision.build(load_graph(resolved.graph, where), spec, resolved, where)


def _lower(
    model: onnx.ModelProto, spec: recipe.Recipe, tokenizer: Tokenizer, inputs: list[str], where: str
) -> quantize.Lowered | None:
    """The base encoder in the recipe's precision (None for fp32), before splicing."""
    if spec.precision == "fp16":
        return quantize.fp16(model)
    if spec.precision == "int8":
        options = spec.int8 or recipe.Int8()
        texts = options.calibration_texts or quantize.CALIBRATION_TEXTS
        feeds = [verify.encode(tokenizer, chunk, inputs).feeds for chunk in quantize.batches(texts)]
        return quantize.int8(model, feeds, where, options)
    return None
