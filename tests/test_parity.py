"""Real models: the compiled bundle equals each model's reference implementation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from encoderfile.compiler import compile_bundle
from encoderfile.errors import SpliceError
from tests.fixtures.models import manifest, real_recipe
from tests.test_compiler import embed
from tools import models

pytestmark = pytest.mark.slow  # real models and their reference implementations

TEXTS = [
    "A man is eating food.",
    "Embeddings turn sentences into vectors.",
    "The new movie is awesome, I loved every minute of it, especially the long chase scene at the end",
    "short",
    "naïve café in 東京",
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(models.minilm_source()), device="cpu")


def test_minilm_equals_sentence_transformers(minilm_bundle, sentence_transformer) -> None:
    ours = embed(minilm_bundle, TEXTS)
    reference = sentence_transformer.encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == reference.shape == (len(TEXTS), 384)
    assert cosine(ours, reference).min() >= 0.99999
    print(
        f"MiniLM-384 vs sentence-transformers: min cos {cosine(ours, reference).min():.7f}, "
        f"max abs diff {np.abs(ours - reference).max():.2e}"
    )


def test_minilm_truncated_to_128(tmp_path, minilm_dir, sentence_transformer) -> None:
    recipe = real_recipe(
        tmp_path,
        "all-minilm-l6-v2.yaml",
        minilm_dir,
        name="minilm-128",
        dimension=128,
        dimensions=[128, 64],
        steps=[{"op": "pooling", "mode": "mean"}, {"op": "truncate"}, {"op": "normalize"}],
    )
    ours = embed(compile_bundle(recipe, tmp_path / "build"), TEXTS)
    reference = sentence_transformer.encode(TEXTS, truncate_dim=128)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert ours.shape == (len(TEXTS), 128)
    assert cosine(ours, reference).min() >= 0.99999
    print(
        f"MiniLM-128 vs sentence-transformers truncate_dim=128: min cos {cosine(ours, reference).min():.7f}"
    )


@pytest.mark.parametrize("bundle_fixture", ["minilm_bundle", "nomic_full_bundle"])
def test_vectors_do_not_depend_on_batch_neighbours(request, bundle_fixture) -> None:
    """Bitwise: alone, in a padded batch, and among other neighbours (nomic-serve's bug)."""
    bundle = request.getfixturevalue(bundle_fixture)
    batched = embed(bundle, TEXTS)
    alone = np.stack([embed(bundle, [t])[0] for t in TEXTS])
    reversed_batch = embed(bundle, TEXTS[::-1])[::-1]
    assert np.array_equal(batched, alone) and np.array_equal(batched, reversed_batch)


def test_wordllama_64_equals_the_library(tmp_path) -> None:
    from wordllama import WordLlama

    package = models.package_dir("wordllama")
    (tmp_path / "cache" / "tokenizers").mkdir(parents=True)
    shutil.copy(
        package / "tokenizers" / "l2_supercat_tokenizer_config.json",
        tmp_path / "cache" / "tokenizers",
    )
    library = WordLlama.load(trunc_dim=64, cache_dir=tmp_path / "cache", disable_download=True)

    recipe = real_recipe(tmp_path, "wordllama-64.yaml", models.wordllama())
    ours = embed(compile_bundle(recipe, tmp_path / "build"), TEXTS)
    reference = library.embed(TEXTS, norm=True)
    assert ours.shape == reference.shape == (len(TEXTS), 64)
    assert np.abs(ours - reference).max() <= 1e-5
    print(f"WordLlama-64 vs wordllama: max abs diff {np.abs(ours - reference).max():.2e}")


def test_nomic_recipe_equals_torch(tmp_path) -> None:
    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer

    recipe = real_recipe(
        tmp_path,
        "nomic-embed-text-v1.5.yaml",
        models.nomic_random(),
        dimension=64,
        dimensions=[64, 32],
    )
    bundle = compile_bundle(recipe, tmp_path / "build")
    info = manifest(bundle)
    assert [s["op"] for s in info["steps"]] == ["pooling", "layer_norm", "truncate", "normalize"]
    ours = embed(bundle, TEXTS)

    model = models.nomic_random_torch()
    encoded = Tokenizer.from_file(str(bundle / "tokenizer.json")).encode_batch(TEXTS)
    ids = torch.tensor([e.ids for e in encoded])
    mask = torch.tensor([e.attention_mask for e in encoded])
    with torch.no_grad():
        states = model(
            input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
        ).last_hidden_state
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    normed = F.layer_norm(pooled, (pooled.shape[1],), eps=1e-5)
    reference = F.normalize(normed[:, :64], p=2, dim=1).numpy()
    assert np.abs(ours - reference).max() <= 1e-5
    print(
        f"NomicBERT(random) nomic recipe vs torch: max abs diff {np.abs(ours - reference).max():.2e}"
    )


def test_paraphrase_minilm_needs_its_token_output_named(tmp_path) -> None:
    directory = models.paraphrase_minilm_l3()
    unnamed = real_recipe(tmp_path, "all-minilm-l6-v2.yaml", directory, name="paraphrase")
    with pytest.raises(SpliceError) as info:
        compile_bundle(unnamed, tmp_path / "build")
    assert "onnx::Shape_422" in str(info.value) and "461" in str(info.value)
    assert "Set model.output" in str(info.value)
    assert not (tmp_path / "build" / "paraphrase").exists()

    named = real_recipe(tmp_path, "all-minilm-l6-v2.yaml", directory, name="paraphrase")
    text = named.read_text().replace(
        "graph: model.onnx", "graph: model.onnx\n  output: onnx::Shape_422"
    )
    named.write_text(text)
    bundle = compile_bundle(named, tmp_path / "build")
    assert manifest(bundle)["graph"]["token_states"] == "onnx::Shape_422"
    assert embed(bundle, TEXTS).shape == (len(TEXTS), 384)


def test_shipped_nomic_recipe_builds_from_a_full_size_export(nomic_full_bundle) -> None:
    info = manifest(nomic_full_bundle)
    assert info["name"] == "nomic-embed-text-v1.5-512"
    assert info["graph"]["hidden_size"] == 768 and info["dimension"] == 512
    assert info["dimensions"] == [512, 256, 128, 64]
    vectors = embed(nomic_full_bundle, ["search_query: what is nomic?", "search_document: a text"])
    assert vectors.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
