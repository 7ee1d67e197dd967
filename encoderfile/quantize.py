"""Lower-precision encoders: fp16 weight storage and static (calibrated) int8 QDQ quantization.

Both run on the model's own graph before the post-processing is spliced in, so pooling,
layer_norm, truncate and normalize always compute in fp32 on the (quantized) token states.

fp16   Weights of 256+ values are stored as float16 and cast back to float32 by a `fp16/…` Cast
       node; onnxruntime folds those casts when it loads the graph, so the file is half the size
       and the arithmetic stays fp32 (CPUs have few fp16 kernels, and fp32 maths keeps a text's
       vector bitwise independent of its batch).
int8   onnxruntime's quantize_static in QDQ format: per-channel 7-bit weights (int8 in
       [-64, 64]) and uint8 activations whose scales are fixed at build time from calibration
       texts. A fixed scale makes each row's arithmetic independent of the rest of the batch,
       unlike dynamic quantization, whose scale is computed over the whole (padded) batch tensor.
       7-bit weights make the integer GEMM exact on every CPU: onnxruntime's u8 x s8 kernels on
       AVX2 and AVX-512BW (vpmaddubsw) add two products in int16 before widening, VNNI and ARM64
       ones accumulate in int32; a pair is at most 2 * 255 * 64 = 32640 <= 32767, so none
       saturates, and a vector differs across CPUs only by fp32 rounding. A last-bit fp32
       difference next to a rounding boundary moves an activation by a step, though, so vectors
       are bitwise the same only on CPUs of one kind (up to ~0.01 apart across kinds). Full
       8-bit weights (up to 2 * 255 * 127 = 64770) saturated on AVX2 and moved MiniLM's
       vectors by 0.046.
       Only MatMuls with a weight are quantized; activation x activation MatMuls (attention)
       and the feed-forward down-projections, whose input follows GELU/SwiGLU and has outliers
       that one fixed per-tensor scale cannot hold, stay fp32. Before calibration each
       quantized MatMul's input is smoothed (SmoothQuant, Xiao et al. 2023): a `smooth/…` Mul
       divides input channel j by s_j = max|x_j|^a / max|W_j|^(1-a) and the weight's row j is
       multiplied by s_j, which moves the LayerNorm outlier channels into the per-channel
       weight scales. Measured on all-MiniLM-L6-v2, 24 held-out texts, cosine to fp32
       (mean / min): everything quantized 0.946 / 0.917; FFN-down kept fp32 0.990 / 0.978;
       FFN-down kept fp32 + smoothing 0.997 / 0.994. The weights left in float (embedding
       tables, the FFN-down MatMuls) are then stored in fp16 as above.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from encoderfile import verify
from encoderfile.errors import VerifyError
from encoderfile.recipe import Int8, Recipe
from encoderfile.runtime.manifest import ATTENTION_MASK

INT16_MAX = 32767
ACTIVATION_MAX = 255  # uint8 activations
WEIGHT_LIMIT = INT16_MAX // (
    2 * ACTIVATION_MAX
)  # 64: the largest |int8 weight| that cannot saturate
FP16_MIN_SIZE = 256  # smaller float initializers (scalars, masks' -inf stand-ins) stay fp32
# Ops whose output feeds a feed-forward down-projection (GELU written out ends in Mul; SwiGLU
# is a Mul of two branches): those MatMuls keep fp32.
HEAVY_TAILED_PRODUCERS = {"Mul", "Gelu", "FastGelu", "BiasGelu", "QuickGelu"}
CALIBRATION_BATCH = 8

CALIBRATION_TEXTS = [
    "A short sentence.",
    "What is the capital of France?",
    "Neural networks learn representations of data from examples.",
    "The patient was treated with 50 mg of aspirin daily for three weeks.",
    "I love this movie, it was fantastic!",
    "Stock markets fell sharply after the central bank's announcement.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "naïve café – 北京 – ñandú",
    "def add(x, y): return x + y",
    "search_document: The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "search_query: symptoms of vitamin D deficiency",
    "Ok",
    "yes",
    "Customers who bought this item also bought a phone case and a screen protector.",
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Error 404: the page you requested could not be found on this server.",
    "Die Katze schläft auf dem Sofa.",
    "La economía creció un tres por ciento el año pasado.",
    "Mix the flour, sugar and eggs, then bake at 180 degrees for forty minutes.",
    "SELECT name, price FROM products WHERE price > 100 ORDER BY price;",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong took the first steps.",
    "Please find attached the invoice for March; payment is due within 30 days.",
    "Gradient descent minimises a loss by following the negative gradient.",
    "Breaking: heavy rain floods several streets downtown, traffic diverted.",
    "Our results suggest that the protein binds DNA in a sequence-specific manner, "
    "regulating the expression of genes involved in cell division and apoptosis.",
    "The court ruled that the contract was void because one party lacked capacity.",
    "lol that was so funny 😂😂",
    "Tokyo, Paris, New York, Lagos, São Paulo and Mumbai are among the largest cities.",
    "The algorithm runs in O(n log n) time and uses linear extra memory.",
    " ".join(
        ["Calibration also needs long inputs, so this passage repeats until it is truncated."] * 20
    ),
    "Climate change increases the frequency of extreme heat waves and droughts.",
]


@dataclass(frozen=True)
class Lowered:
    """A graph in lower precision and a summary of what changed (for the manifest and inspect)."""

    model: onnx.ModelProto
    changes: dict[str, Any] = field(default_factory=dict)


def lower(
    model: onnx.ModelProto, spec: Recipe, tokenizer: Tokenizer, inputs: list[str], where: str
) -> Lowered | None:
    """The base graph in the recipe's precision (None for fp32), before splicing. A reranker
    calibrates on pairs: each calibration text as the query of the next one."""
    if spec.precision == "fp16":
        return fp16(model)
    if spec.precision == "int8":
        options = spec.int8 or Int8()
        texts = options.calibration_texts or CALIBRATION_TEXTS
        samples: list[str] | list[tuple[str, str]] = (
            list(zip(texts, texts[1:] + texts[:1], strict=True))
            if spec.kind == "reranker"
            else texts
        )
        feeds = [verify.encode(tokenizer, chunk, inputs).feeds for chunk in batches(samples)]
        return int8(model, feeds, where, options)
    return None


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


def fp16(model: onnx.ModelProto) -> Lowered:
    """Store every float32 weight of FP16_MIN_SIZE+ values as float16 behind a Cast to float32."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    # Scales and zero points of QDQ pairs keep their types (onnxruntime fuses those pairs).
    keep = {i.name for i in out.graph.input} | {
        x for n in out.graph.node if n.op_type.endswith("QuantizeLinear") for x in n.input
    }
    casts, converted, clipped = [], 0, 0
    for init in out.graph.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in keep:
            continue
        values = numpy_helper.to_array(init)
        if values.size < FP16_MIN_SIZE:
            continue
        limit = float(np.finfo(np.float16).max)
        clipped += int((np.abs(values) > limit).sum())
        half = np.clip(values, -limit, limit).astype(np.float16)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}/fp16"))
        casts.append(helper.make_node("Cast", [f"{name}/fp16"], [name], name=f"fp16/{name}", to=1))
        converted += 1
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(casts + nodes)
    return Lowered(
        out,
        {
            "scheme": "fp16 weight storage, fp32 compute (Cast folded at load)",
            "weights_converted": converted,
            "values_clipped": clipped,
            "weight_bytes": {"before": weight_bytes(model), "after": weight_bytes(out)},
        },
    )


def _int8_plan(model: onnx.ModelProto, ffn_down: bool) -> tuple[list[str], list[str]]:
    """(MatMuls to quantize, weight MatMuls kept fp32): the rule in the module docstring."""
    weights = {i.name for i in model.graph.initializer}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    quantize, kept = [], []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in weights:
            continue
        if not ffn_down and producer.get(node.input[0]) in HEAVY_TAILED_PRODUCERS:
            kept.append(node.name)
        else:
            quantize.append(node.name)
    return quantize, kept


def int8(
    model: onnx.ModelProto,
    calibration: list[dict[str, np.ndarray]],
    where: str,
    options: Int8 | None = None,
) -> Lowered:
    """Static QDQ int8: per-channel weights, activation scales from the calibration feeds."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    options = options or Int8()
    quantize, kept = _int8_plan(model, options.ffn_down)
    if any(not n for n in quantize + kept):
        model = _named(model)
        quantize, kept = _int8_plan(model, options.ffn_down)
    if not quantize:
        raise VerifyError(
            f"{where} has no MatMul with a weight that int8 quantization could use. "
            "Use precision: fp16 or fp32 for this model."
        )

    smoothed = 0
    if options.smooth_alpha > 0:
        model, smoothed = _smooth(model, quantize, calibration, options.smooth_alpha)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds: Iterator[dict[str, np.ndarray]] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs advice (pre-processing) on the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="encoderfile-int8-") as tmp:
            source, target = Path(tmp) / "model.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, str(source))
            quantize_static(
                str(source),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,  # weights in [-WEIGHT_LIMIT, WEIGHT_LIMIT]
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=quantize,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
            )
            lowered = onnx.load(str(target))
    finally:
        root.setLevel(level)
    if unsafe := saturating_weights(lowered):
        raise VerifyError(
            f"int8 weights of {where} exceed |{WEIGHT_LIMIT}| ({', '.join(unsafe[:3])}), so "
            "AVX2 CPUs would saturate them. This is a bug in encoderfile; please report it."
        )
    # The weights left in float (embedding tables, FFN-down) are stored as fp16, as in fp16().
    halved = fp16(lowered)
    lowered = halved.model
    added = Counter(
        n.op_type for n in lowered.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    )
    return Lowered(
        lowered,
        {
            "scheme": f"static QDQ: 7-bit per-channel weights (|w| <= {WEIGHT_LIMIT}, exact on "
            "every CPU), uint8 activations with fixed "
            f"MinMax-calibrated scales, SmoothQuant alpha={options.smooth_alpha}; other float "
            "weights stored fp16",
            "calibration_texts": sum(len(next(iter(f.values()))) for f in calibration),
            "quantized": {"MatMul": len(quantize)},
            "smoothed_inputs": smoothed,
            "float_weights_stored_fp16": halved.changes["weights_converted"],
            "kept_fp32": {
                "weight MatMuls after GELU/SwiGLU": kept,
                "activation MatMuls (attention)": sum(
                    1 for n in model.graph.node if n.op_type == "MatMul"
                )
                - len(quantize)
                - len(kept),
            },
            "added_nodes": dict(sorted(added.items())),
            "weight_bytes": {"before": weight_bytes(model), "after": weight_bytes(lowered)},
        },
    )


def saturating_weights(model: onnx.ModelProto) -> list[str]:
    """The int8 weights a u8 x s8 kernel could saturate on (|w| > WEIGHT_LIMIT); [] = exact."""
    weights = {i.name: i for i in model.graph.initializer if i.data_type == TensorProto.INT8}
    return [
        node.input[0]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in weights
        and int(np.abs(numpy_helper.to_array(weights[node.input[0]]).astype(np.int16)).max())
        > WEIGHT_LIMIT
    ]


def _smooth(
    model: onnx.ModelProto,
    quantize: list[str],
    calibration: list[dict[str, np.ndarray]],
    alpha: float,
) -> tuple[onnx.ModelProto, int]:
    """SmoothQuant: one `smooth/…` Mul per quantized MatMul input, its inverse folded in W."""
    import onnxruntime as ort

    chosen = set(quantize)
    nodes = [n for n in model.graph.node if n.name in chosen]
    inputs = sorted({n.input[0] for n in nodes})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(
        helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in inputs
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    peak = {x: np.zeros(0, np.float32) for x in inputs}
    for feeds in calibration:
        real = feeds[ATTENTION_MASK].astype(bool)
        for x, values in zip(inputs, sess.run(inputs, feeds), strict=True):
            channel_max = np.abs(values[real]).max(0)
            peak[x] = channel_max if peak[x].size == 0 else np.maximum(peak[x], channel_max)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {i.name: i for i in out.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in out.graph.node:
        if node.name in chosen:
            consumers.setdefault(node.input[0], []).append(node)
    added = []
    for x, users in consumers.items():
        w_peak = np.max(
            [np.abs(numpy_helper.to_array(weights[n.input[1]])).max(1) for n in users], 0
        )
        scale = (
            np.maximum(peak[x], 1e-5) ** alpha / np.maximum(w_peak, 1e-5) ** (1 - alpha)
        ).astype(np.float32)
        for n in users:
            w = numpy_helper.to_array(weights[n.input[1]])
            weights[n.input[1]].CopyFrom(
                numpy_helper.from_array((w * scale[:, None]).astype(np.float32), n.input[1])
            )
        name = f"smooth/{x}"
        out.graph.initializer.append(
            numpy_helper.from_array((1 / scale).astype(np.float32), f"{name}/inv_scale")
        )
        added.append(helper.make_node("Mul", [x, f"{name}/inv_scale"], [name], name=name))
        for n in users:
            n.input[0] = name
    # Each Mul goes right before its first consumer, keeping the node list topologically sorted.
    first_user = {m.output[0]: m for m in added}
    ordered: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.input and node.input[0] in first_user:
            ordered.append(first_user.pop(node.input[0]))
        ordered.append(node)
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    return out, len(added)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose unnamed nodes get unique names (quantize_static selects nodes by name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, node in enumerate(out.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return out


def batches(texts: list[Any], size: int = CALIBRATION_BATCH) -> Iterator[list[Any]]:
    for start in range(0, len(texts), size):
        yield texts[start : start + size]
