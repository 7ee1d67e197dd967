"""precision: fp16 / int8 through the real builder, the quality gate, batch invariance, info/inspect."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from encoderfile import gate, quantize, recipe
from encoderfile.compiler import compile_bundle
from encoderfile.errors import RecipeError, VerifyError
from encoderfile.runtime import cpu
from tests.fixtures.models import manifest, real_recipe, tiny_tokenizer
from tests.test_cli import cli, fails_cleanly
from tests.test_compiler import embed

QUOTED_GATE_SLACK = 1e-4  # the fourth decimal quoted, give or take the build CPU's rounding

MIXED = [
    "Hello!",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors so that similar meanings lie close together.",
    "naïve café – 東京 – 😀",
    " ".join(["A long passage repeated to exceed the maximum length."] * 40),
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------------------ recipe


def test_precision_defaults_to_fp32_and_validates(tiny_recipe) -> None:
    path = tiny_recipe()
    spec = recipe.load(path)
    assert spec.precision == "fp32" and spec.int8 is None
    assert (spec.gate.mean_cosine, spec.gate.min_cosine, spec.gate.batch_max_abs_diff) == (
        0.99,
        0.98,
        1e-5,
    )
    cases = {
        "int8-dynamic": ({"precision": "int8-dynamic"}, "one activation scale per batch"),
        "int8 section without int8": ({"int8": {"ffn_down": True}}, "only applies to"),
        "cosine above 1": ({"precision": "int8", "gate": {"mean_cosine": 1.5}}, "gate.mean_cosine"),
        "unknown gate key": ({"gate": {"cosine": 0.9}}, "unknown key 'gate.cosine'"),
        "too few calibration texts": (
            {"precision": "int8", "int8": {"calibration_texts": ["a"]}},
            "int8.calibration_texts",
        ),
    }
    for overrides, expected in cases.values():
        with pytest.raises(RecipeError, match=expected.replace(".", r"\.")):
            recipe.load(tiny_recipe(**overrides))


# ------------------------------------------------------------------------------ tiny models


def test_fp16_tiny_keeps_the_contract_and_records_the_gate(tiny_recipe, tmp_path) -> None:
    bundle = compile_bundle(tiny_recipe(precision="fp16"), tmp_path / "build")
    model = onnx.load(str(bundle / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    halves = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert halves and all(i.name.endswith("/fp16") for i in halves)
    assert any(n.name.startswith("fp16/") and n.op_type == "Cast" for n in model.graph.node)
    precision = manifest(bundle)["precision"]
    assert precision["mode"] == "fp16"
    assert precision["gate"]["passed"] and precision["gate"]["min_cosine"] > 0.999
    assert precision["gate"]["batch_max_abs_diff"] <= 1e-5


def test_fp32_manifest_says_fp32(tiny_recipe, tmp_path) -> None:
    bundle = compile_bundle(tiny_recipe(), tmp_path / "build")
    assert manifest(bundle)["precision"] == {"mode": "fp32"}


def test_int8_on_a_graph_without_weight_matmuls_fails_clearly(tiny_recipe, tmp_path) -> None:
    with pytest.raises(VerifyError, match="no MatMul with a weight.*precision: fp16"):
        compile_bundle(tiny_recipe(precision="int8"), tmp_path / "build")
    assert not (tmp_path / "build" / "tiny").exists()


def bag_of_words(batch_dependent: bool) -> ort.InferenceSession:
    """sum_t E[ids_t] (padding id 0 has a zero row); optionally minus 1% of the batch mean."""
    table = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    table[0] = 0
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["tok"]),
        helper.make_node("ReduceSum", ["tok", "axis1"], ["pooled"], keepdims=0),
    ]
    out = "pooled"
    if batch_dependent:
        nodes += [
            helper.make_node("ReduceMean", ["pooled"], ["batch_mean"], axes=[0], keepdims=1),
            helper.make_node("Mul", ["batch_mean", "tiny"], ["shift"]),
            helper.make_node("Sub", ["pooled", "shift"], ["shifted"]),
        ]
        out = "shifted"
    nodes.append(helper.make_node("Identity", [out], ["sentence_embedding"]))
    graph = helper.make_graph(
        nodes,
        "bow",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in ("input_ids",)],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["b", 6])],
        [
            numpy_helper.from_array(table, "E"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ]
        + (
            [numpy_helper.from_array(np.array(0.01, np.float32), "tiny")] if batch_dependent else []
        ),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_gate_catches_a_batch_dependent_graph() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    texts = ["hello world", "fox", "the quick brown fox", "hello", "world fox"]
    reference, leaky = bag_of_words(False), bag_of_words(True)
    same = gate.check(reference, reference, tokenizer, ["input_ids"], "int8", recipe.Gate(), texts)
    assert same.batch_max_abs_diff <= 1e-6 and same.min_cosine > 0.999999
    with pytest.raises(VerifyError) as failed:
        gate.check(reference, leaky, tokenizer, ["input_ids"], "int8", recipe.Gate(), texts)
    message = str(failed.value)
    assert "batch invariance" in message and "Worst cosines to fp32" in message
    relaxed = recipe.Gate(mean_cosine=0, min_cosine=-1, batch_max_abs_diff=1)
    result = gate.check(reference, leaky, tokenizer, ["input_ids"], "int8", relaxed, texts)
    assert result.batch_max_abs_diff > 1e-5


def one_matmul(rows: int = 32, cols: int = 16) -> onnx.ModelProto:
    """x [batch, rows] @ W [rows, cols] with W ~ N(0, 1): the smallest graph int8 quantizes."""
    weight = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", cols])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_int8_weights_cannot_saturate_a_16_bit_pair_sum(tmp_path: Path) -> None:
    """AVX2's u8 x s8 kernel adds two products in int16: 2 * 255 * |w| must stay <= 32767."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    assert 2 * quantize.ACTIVATION_MAX * quantize.WEIGHT_LIMIT <= quantize.INT16_MAX
    assert 2 * quantize.ACTIVATION_MAX * (quantize.WEIGHT_LIMIT + 1) > quantize.INT16_MAX
    feeds = [
        {"x": np.random.default_rng(i).standard_normal((4, 32)).astype(np.float32)}
        for i in range(4)
    ]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    # onnxruntime's defaults (full 8-bit weights, the scheme before 7-bit): the check catches it
    onnx.save(one_matmul(), str(tmp_path / "fp32.onnx"))
    quantize_static(
        str(tmp_path / "fp32.onnx"),
        str(tmp_path / "s8.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
    )
    assert quantize.saturating_weights(onnx.load(str(tmp_path / "s8.onnx"))) == ["W_quantized"]
    lowered = quantize.int8(one_matmul(), feeds, "mm.onnx", recipe.Int8(smooth_alpha=0))
    assert quantize.saturating_weights(lowered.model) == []
    weights = [
        numpy_helper.to_array(i)
        for i in lowered.model.graph.initializer
        if i.data_type == TensorProto.INT8
    ]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == 64
    assert "7-bit per-channel weights" in lowered.changes["scheme"]


def test_held_out_texts_are_not_calibration_texts() -> None:
    assert not set(gate.HELD_OUT_TEXTS) & set(quantize.CALIBRATION_TEXTS)
    assert len(gate.HELD_OUT_TEXTS) >= 20 and len(quantize.CALIBRATION_TEXTS) >= 20


# ------------------------------------------------------------------- all-MiniLM-L6-v2 (real)


@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """recipes/all-minilm-l6-v2-int8.yaml, compiled by the real builder."""
    tmp = tmp_path_factory.mktemp("int8")
    return compile_bundle(real_recipe(tmp, "all-minilm-l6-v2-int8.yaml", minilm_dir), tmp / "b")


@pytest.fixture(scope="module")
def minilm_fp16(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("fp16")
    return compile_bundle(real_recipe(tmp, "all-minilm-l6-v2-fp16.yaml", minilm_dir), tmp / "b")


@pytest.mark.slow  # quantizes the real MiniLM
def test_minilm_int8_passes_the_default_gate(minilm_int8: Path, minilm_bundle: Path) -> None:
    precision = manifest(minilm_int8)["precision"]
    assert precision["mode"] == "int8"
    g = precision["gate"]
    assert g["passed"] and g["thresholds"] == recipe.Gate().model_dump()
    assert g["mean_cosine"] >= 0.99 and g["min_cosine"] >= 0.98
    assert g["batch_max_abs_diff"] <= 1e-5 and g["held_out_texts"] == len(gate.HELD_OUT_TEXTS)
    assert len(g["worst"]) == gate.WORST_SHOWN
    changes = precision["changes"]
    # the recipe sets ffn_down: 6 layers x (q, k, v, attention out, FFN in, FFN out)
    assert changes["quantized"]["MatMul"] == 36
    assert changes["kept_fp32"]["weight MatMuls after GELU/SwiGLU"] == []
    fp32_size = (minilm_bundle / "model.onnx").stat().st_size
    assert (minilm_int8 / "model.onnx").stat().st_size < 0.5 * fp32_size
    cos = cosines(embed(minilm_int8, MIXED), embed(minilm_bundle, MIXED))
    assert cos.min() >= 0.98


@pytest.mark.slow  # quantizes the real MiniLM
def test_quoted_gate_figures_are_the_shipped_recipes(minilm_int8: Path) -> None:
    """The recipe's comment and docs/precision.md quote what building the recipe measures, to
    QUOTED_GATE_SLACK: calibration runs in fp32, so the build CPU's rounding reaches the fifth
    decimal (mean 0.994452 built on emulated Haswell, 0.994445 on an AVX-512 VNNI EPYC)."""
    measured = manifest(minilm_int8)["precision"]["gate"]
    root = Path(__file__).parents[1]
    comment = (root / "recipes" / "all-minilm-l6-v2-int8.yaml").read_text()
    doc = (root / "docs" / "precision.md").read_text().splitlines()
    row = next(line for line in doc if "7-bit weights (shipped)" in line)
    for where, pattern in (
        (comment, r"mean (0\.\d{4}) / min (0\.\d{4})"),
        (row, r"\| \*\*(0\.\d{4}) / (0\.\d{4})\*\* · "),
    ):
        found = re.search(pattern, where)
        assert found, where
        quoted = {"mean_cosine": float(found[1]), "min_cosine": float(found[2])}
        for figure, value in quoted.items():
            assert abs(value - measured[figure]) <= QUOTED_GATE_SLACK, (figure, value, measured)


@pytest.mark.slow  # quantizes the real MiniLM
def test_minilm_int8_is_batch_invariant(minilm_int8: Path) -> None:
    """A text's vector alone == inside padded batches of other compositions (static scales)."""
    alone = np.concatenate([embed(minilm_int8, [t]) for t in MIXED])
    together = embed(minilm_int8, MIXED)
    reversed_pairs = np.concatenate(
        [embed(minilm_int8, MIXED[::-1][i : i + 2]) for i in range(0, len(MIXED), 2)]
    )[::-1]
    assert np.abs(alone - together).max() <= 1e-5
    assert np.abs(alone - reversed_pairs).max() <= 1e-5
    model = onnx.load(str(minilm_int8 / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    assert not any(n.op_type == "DynamicQuantizeLinear" for n in model.graph.node)


@pytest.mark.slow  # quantizes the real MiniLM
def test_minilm_fp16_halves_the_size(minilm_fp16: Path, minilm_bundle: Path) -> None:
    g = manifest(minilm_fp16)["precision"]["gate"]
    assert g["passed"] and g["min_cosine"] > 0.9999 and g["batch_max_abs_diff"] == 0.0
    fp32_size = (minilm_bundle / "model.onnx").stat().st_size
    assert (minilm_fp16 / "model.onnx").stat().st_size < 0.55 * fp32_size
    cos = cosines(embed(minilm_fp16, MIXED), embed(minilm_bundle, MIXED))
    assert cos.min() > 0.9999


@pytest.mark.slow  # quantizes the real MiniLM
def test_info_and_inspect_show_precision(minilm_int8: Path) -> None:
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    run = [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(minilm_int8)]
    text = subprocess.run([*run, "info"], capture_output=True, text=True, env=env, check=True)
    assert "int8 (gate passed on 24 held-out texts" in text.stdout
    info = json.loads(
        subprocess.run(
            [*run, "info", "--json"], capture_output=True, text=True, env=env, check=True
        ).stdout
    )
    assert info["precision"]["mode"] == "int8" and info["precision"]["gate"]["passed"]
    verified = subprocess.run([*run, "verify"], capture_output=True, text=True, env=env)
    assert verified.returncode == 0, verified.stderr
    shown = json.loads(cli("inspect", minilm_int8, "--json").stdout)
    assert shown["precision"]["mode"] == "int8"
    assert shown["precision"]["changes"]["quantized"] == {"MatMul": 36}
    # one smoothed input per distinct MatMul input (q, k and v share one)
    assert shown["precision"]["changes"]["smoothed_inputs"] == 24
    assert shown["precision"]["gate"]["min_cosine"] >= 0.98


@pytest.mark.slow  # quantizes the real MiniLM
def test_gate_failure_stops_the_build_with_a_report(tmp_path: Path, minilm_dir: Path) -> None:
    recipe_path = real_recipe(
        tmp_path,
        "all-minilm-l6-v2-int8.yaml",
        minilm_dir,
        gate={"mean_cosine": 1.0, "min_cosine": 1.0},
    )
    out = tmp_path / "build"
    result = cli("build", recipe_path, "--bundle-only", "--out", out)
    fails_cleanly(
        result,
        out,
        "the int8 graph failed the quality gate on 24 held-out texts",
        "mean cosine 0.99",
        "< 1.0",
        "Worst cosines to fp32: 0.9",
    )


@pytest.mark.slow  # quantizes the real MiniLM
def test_shipped_int8_graph_cannot_saturate(minilm_int8: Path) -> None:
    model = onnx.load(str(minilm_int8 / "model.onnx"))
    assert quantize.saturating_weights(model) == []
    int8_weights = [
        i for i in model.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 2
    ]
    assert len(int8_weights) == 36  # every quantized MatMul's weight matrix was inspected


# ------------------------------------------------ the same vectors on another CPU (QEMU user mode)

# Haswell: AVX2 + FMA, no AVX-512 (the u8 x s8 kernel with 16-bit pair sums); Nehalem: SSE4.2 only
# (other int8 and fp32 kernels again). On an AVX2 machine Nehalem is the other ISA, on an AVX-512
# or VNNI machine both are.
EMULATED_CPUS = ("Haswell-noTSX", "Nehalem")
# What runtime.cpu.isa() reports on each. fp32 and fp16 vectors agree everywhere; int8 ones bit
# for bit only between CPUs of one kind: its fp32 parts (LayerNorm, softmax, scales) round by the
# CPU's kernels, and a last-bit difference next to a quantization step moves an activation by a
# step (docs/precision.md: up to 0.009 on 100 texts; 8-bit weights' saturation moved 0.04-0.08).
EMULATED_ISA = {
    "Haswell-noTSX": ("x86_64", "SSE41", "AVX", "AVX2", "FMA3"),
    "Nehalem": ("x86_64", "SSE41"),
}
INT8_STEP_MOVES = 0.02


def emulated(cpu_model: str) -> list[str]:
    """This venv's Python on an emulated CPU (Debian's qemu-user; build.py setup installs it)."""
    if platform.machine() != "x86_64":
        pytest.skip("the emulated CPUs are x86-64 ones")
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-x86_64 is missing: run `python3 build.py setup` (apt-get install qemu-user)"
    return [qemu, "-cpu", cpu_model, sys.executable]


def runtime(prefix: list[str], bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    command = [*prefix, "-m", "encoderfile.runtime", "--bundle", str(bundle), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow  # runs onnxruntime under CPU emulation
@pytest.mark.parametrize("cpu_model", EMULATED_CPUS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_vectors_are_the_same_on_an_emulated_cpu(
    precision: str, cpu_model: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bundle = request.getfixturevalue(
        {"fp32": "minilm_bundle"}.get(precision, f"minilm_{precision}")
    )
    texts = [
        "Hello!",
        "東京は日本の首都です。",
        "search_query: how do vaccines train the immune system?",
    ]
    vectors = {}
    for where, prefix in (("native", [sys.executable]), (cpu_model, emulated(cpu_model))):
        out = tmp_path / f"{where}.npy"
        done = runtime(
            prefix, bundle, "--threads", "1", "embed", *texts, "--format", "npy", "-o", str(out)
        )
        assert done.returncode == 0, done.stderr
        vectors[where] = np.load(out)
    moved = np.abs(vectors["native"] - vectors[cpu_model]).max()
    same_kind = cpu.isa() == EMULATED_ISA[cpu_model]
    assert moved <= (INT8_STEP_MOVES if precision == "int8" and not same_kind else 1e-5)


@pytest.mark.slow  # runs onnxruntime under CPU emulation
def test_int8_golden_vectors_verify_on_an_emulated_avx2_cpu(minilm_int8: Path) -> None:
    """Built on this CPU; verified on AVX2 without AVX-512 or VNNI, the kernel that saturated.
    Built on another kind of CPU, a golden text may move by a step, and verify says why."""
    done = runtime(emulated("Haswell-noTSX"), minilm_int8, "verify")
    assert "max |diff| " in done.stdout, done.stderr
    moved = float(done.stdout.split("max |diff| ")[1].split()[0])
    if cpu.isa() == EMULATED_ISA["Haswell-noTSX"]:
        assert done.returncode == 0 and moved <= 1e-5, done.stdout + done.stderr
    else:
        assert moved <= INT8_STEP_MOVES, done.stdout
        assert done.returncode == 0 or "with precision fp32 or fp16" in done.stderr, done.stderr
    assert manifest(minilm_int8)["build_cpu"] == list(cpu.isa())
