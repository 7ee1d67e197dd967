"""The build pipeline: recipe -> resolve -> [quantize] -> splice -> verify -> [gate] -> bundle."""

from __future__ import annotations

from pathlib import Path

import onnx

from encoderfile import (
    bundle,
    gate,
    progress,
    quantize,
    recipe,
    rerank,
    resolve,
    rotation,
    splice,
    verify,
    vision,
)
from encoderfile.errors import SpliceError
from encoderfile.runtime.manifest import Precision


def load_graph(path: Path, where: str) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))  # also loads external-data weights beside the file
    except Exception as e:  # protobuf DecodeError, missing external data, …
        raise SpliceError(
            f"{where} is not a readable ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
            "Check the file is complete (re-download it) and that external-data files sit beside it."
        ) from e


def compile_bundle(
    recipe_path: Path,
    out_dir: Path,
    *,
    allow_unpinned: bool = False,
    stages: progress.Stages | None = None,
) -> Path:
    """Build `out_dir/<name>` from the recipe and return its path; `stages` reports progress."""
    stages = stages or progress.Stages()
    spec = recipe.load(recipe_path)
    unpinned = progress.unpinned(spec)
    if spec.model is None:  # an image model alone
        stages.next("image", spec.image.model.graph if spec.image else "")
        image_only = _compile_image(spec, allow_unpinned)
        stages.next("bundle")
        out = bundle.write_image_only(out_dir / spec.name, spec, image_only, pinned=not unpinned)
        _warn_unpinned(stages, spec, unpinned)
        return out
    stages.next("resolve", progress.where(spec.model))
    resolved = resolve.resolve(spec, allow_unpinned=allow_unpinned)
    where = spec.model.graph
    model = load_graph(resolved.graph, where)
    tokenizer = bundle.prepare_tokenizer(resolved.tokenizer, spec.tokenizer)
    if spec.kind == "reranker":
        out = rerank.compile_reranker(spec, resolved, model, tokenizer, out_dir, stages, unpinned)
        _warn_unpinned(stages, spec, unpinned)
        return out

    states_name = splice.contract.token_states(model, spec.model.output, where)
    inputs = splice.contract.check_inputs(model, where)
    fp32 = model
    if spec.precision != "fp32":
        stages.next("quantize", spec.precision)
    lowered = quantize.lower(model, spec, tokenizer, inputs, where)
    if lowered is not None:
        model = lowered.model
    stages.next("splice", " → ".join(s.op for s in spec.steps))
    batch = verify.encode(tokenizer, verify.SAMPLE_TEXTS, inputs)
    graph: bytes | Path = resolved.graph if lowered is None else model.SerializeToString()
    states = verify.run(verify.session(graph), batch, states_name, where)
    fitted = rotation.fit(fp32, spec, tokenizer, inputs, states.shape[-1], where)
    matrix = fitted.matrix if fitted else None
    expected = verify.reference(states, batch.mask, spec, matrix)

    spliced = splice.apply(model, spec, states.shape[-1], where, matrix)
    stages.next("verify", f"{len(verify.SAMPLE_TEXTS)} texts against the numpy reference")
    spliced_session = verify.session(spliced.model.SerializeToString())
    got = verify.run(
        spliced_session,
        verify.encode(tokenizer, verify.SAMPLE_TEXTS, spliced.inputs),
        splice.contract.OUTPUT,
        where,
    )
    golden = verify.check(got, expected, verify.SAMPLE_TEXTS)
    precision = Precision()
    if lowered is not None:
        stages.next("gate", f"{spec.precision} against fp32")
        reference = splice.apply(fp32, spec, states.shape[-1], where, matrix)
        result = gate.check(
            verify.session(reference.model.SerializeToString()),
            spliced_session,
            tokenizer,
            spliced.inputs,
            spec.precision,
            spec.gate,
        )
        precision = Precision(spec.precision, lowered.changes, result.to_manifest())
    if spec.image:
        stages.next("image", spec.image.model.graph)
    image = _compile_image(spec, allow_unpinned) if spec.image else None
    stages.next("bundle")
    out = bundle.write(
        out_dir / spec.name,
        spec,
        resolved,
        spliced,
        tokenizer,
        golden,
        image,
        precision=precision,
        pinned=not unpinned,
        rotation=fitted.to_manifest(spec.allowed_dimensions) if fitted else None,
    )
    _warn_unpinned(stages, spec, unpinned)
    return out


def _warn_unpinned(stages: progress.Stages, spec: recipe.Recipe, unpinned: list[str]) -> None:
    """After a successful build only, so that a failed one still prints one line."""
    if unpinned:
        stages.warn(progress.unpinned_warning(spec, unpinned))


def _compile_image(spec: recipe.Recipe, allow_unpinned: bool) -> vision.VisionBuild:
    resolved = resolve.resolve_image(spec, allow_unpinned=allow_unpinned)
    assert resolved is not None and spec.image is not None
    where = f"image model {spec.image.model.graph}"
    return vision.build(load_graph(resolved.graph, where), spec, resolved, where)
