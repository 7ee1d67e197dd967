"""Build a reranker (kind: reranker): a cross-encoder's sequence-classification graph, lowered to
fp16/int8 if the recipe says so, with its activation spliced in, verified on (query, document)
pairs against a numpy reference, and gated on score and rank agreement with fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from tokenizers import Tokenizer

from encoderfile import bundle, gate, progress, quantize, recipe, resolve, verify
from encoderfile.errors import RecipeError, SpliceError
from encoderfile.runtime.manifest import LOGIT_OUTPUT, SCORE_OUTPUT, Precision, ScoreSettings
from encoderfile.splice import Spliced, contract, score

# Golden pairs: short ones, a pair past any small max_length (longest-first truncation cuts the
# document), and one whose query alone is past it (both sides are cut, the query included).
SAMPLE_PAIRS = [
    ("what is a cross-encoder?", "A cross-encoder reads the query and the document together."),
    ("hello", "Hello!"),
    ("capital of france", "Paris is the capital and largest city of France."),
    ("naïve café", "東京 – 😀"),
    ("long document", " ".join(["A passage repeated past the maximum length."] * 12)),
    (" ".join(["a query repeated past the maximum length"] * 12), "short document"),
]

# sentence-transformers' config.json `sentence_transformers.activation_fn` -> recipe name
CONFIG_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Softmax": "softmax",
}


def activation(spec: recipe.Recipe, resolved: resolve.ResolvedModel, labels: int) -> ScoreSettings:
    """The recipe's score.activation, else the model config's, else CrossEncoder's default
    (sigmoid for one label, identity for several); the label must be named for several."""
    chosen: str | None = spec.score.activation if spec.score else None
    label = spec.score.label if spec.score else None
    if chosen is None:
        named = _config_activation(resolved)
        if named is not None and named not in CONFIG_ACTIVATIONS:
            raise RecipeError(
                f"{spec.path}: the model's config.json names the activation {named!r}, which "
                "encoderfile cannot compile. Set score.activation to sigmoid, identity or softmax."
            )
        chosen = CONFIG_ACTIVATIONS[named] if named else ("sigmoid" if labels == 1 else "identity")
    if label is None:
        if labels != 1:
            raise RecipeError(
                f"{spec.path}: the model gives {labels} logits per pair. Set score.label to the "
                "positive label's index."
            )
        label = 0
    return ScoreSettings(activation=chosen, label=label, labels=labels)


def _config_activation(resolved: resolve.ResolvedModel) -> str | None:
    path = resolved.files.get("config.json")
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    named = (config.get("sentence_transformers") or {}).get("activation_fn")
    return str(named) if named else config.get("sbert_ce_default_activation_function")


def compile_reranker(
    spec: recipe.Recipe,
    resolved: resolve.ResolvedModel,
    model: onnx.ModelProto,
    tokenizer: Tokenizer,
    out_dir: Path,
    stages: progress.Stages,
    unpinned: list[str],
) -> Path:
    """[Quantize,] splice the score, verify it on SAMPLE_PAIRS, [gate,] write the bundle; return
    its path."""
    assert spec.model is not None
    where = spec.model.graph
    logits_name = contract.logits(model, spec.model.output, where)
    inputs = contract.check_inputs(model, where)
    if spec.precision != "fp32":
        stages.next("quantize", spec.precision)
    lowered = quantize.lower(model, spec, tokenizer, inputs, where)
    base = model if lowered is None else lowered.model
    batch = verify.encode(tokenizer, SAMPLE_PAIRS, inputs)
    logits = verify.run(verify.session(base.SerializeToString()), batch, logits_name, where)
    if logits.ndim != 2:
        raise SpliceError(
            f"{where}: output {logits_name!r} has shape {list(logits.shape)}, not [batch, labels]. "
            "Export the model for sequence classification, or set model.output to its logits."
        )
    settings = activation(spec, resolved, int(logits.shape[1]))
    stages.next("splice", f"score ({settings.activation} of label {settings.label})")

    def spliced_from(graph: onnx.ModelProto) -> Spliced:
        return score.apply(
            graph, logits_name, settings.labels, settings.activation, settings.label, where
        )

    spliced = spliced_from(base)
    stages.next("verify", f"{len(SAMPLE_PAIRS)} pairs against the numpy reference")
    session = verify.session(spliced.model.SerializeToString())
    feeds = verify.encode(tokenizer, SAMPLE_PAIRS, spliced.inputs).feeds
    got = session.run([SCORE_OUTPUT, LOGIT_OUTPUT], feeds)
    expected = score.reference(logits, settings.activation, settings.label)
    golden = verify.check(np.stack(got, axis=1), expected, SAMPLE_PAIRS, kind="pairs")
    precision = Precision()
    if lowered is not None:
        stages.next("gate", f"{spec.precision} against fp32: score and rank agreement")
        figures = gate.check_scores(
            verify.session(spliced_from(model).model.SerializeToString()),
            session,
            tokenizer,
            spliced.inputs,
            spec.precision,
            spec.gate,
        )
        precision = Precision(spec.precision, lowered.changes, figures)
    stages.next("bundle")
    return bundle.write(
        out_dir / spec.name,
        spec,
        resolved,
        spliced,
        tokenizer,
        golden,
        precision=precision,
        pinned=not unpinned,
        score=settings,
    )
