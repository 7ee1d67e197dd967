"""Drop-in compatibility against a running server: nomic-serve's request shapes sent as curl
sends them (httpx), the official openai client, and the width rule over every transport."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest

from encoderfile.proto import embed_pb2, embed_pb2_grpc
from encoderfile.runtime.manifest import Manifest, ModelSource
from encoderfile.runtime.serve import compat
from tests.fixtures.tiny_bundle import make_tiny_bundle
from tests.runtime.serve.conftest import Server, serving

# nomic-serve's four prefix names, as the shipped nomic recipe names its prompts (there each
# prompt is "<name>: ", see test_shipped_nomic_recipe_prompts_are_nomic_serves); here words
# the tiny vocabulary knows, so that each prompt gives a different vector.
NOMIC_PROMPTS = {
    "search_query": "search query ",
    "search_document": "search document ",
    "clustering": "a ",
    "classification": "b ",
}


@pytest.fixture(scope="module")
def nomic_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny model with nomic's prompts, default search_query, widths open (1 to 8)."""
    bundle = make_tiny_bundle(
        tmp_path_factory.mktemp("nomic-like") / "bundle",
        prompts=NOMIC_PROMPTS,
        default_prompt="search_query",
        restrict_dimensions=False,
    )
    yield from serving(bundle, tmp_path_factory)


def post(server: Server, path: str, body: dict) -> httpx.Response:
    """What `curl -X POST URL -H 'content-type: application/json' -d BODY` sends."""
    return httpx.post(f"{server.url}{path}", json=body, timeout=10)


def vector(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.float32(response.json()["embedding"])


def test_prefix_defaults_to_search_query_as_nomic_serve(nomic_like: Server) -> None:
    text = "the quick brown fox"
    default = vector(post(nomic_like, "/embed", {"input": text}))
    for path, body in [
        ("/embed", {"input": text, "prefix": "search_query"}),
        ("/txt/embed", {"input": text, "prefix": "search_query", "dim": 8}),
        ("/query", {"input": text}),
        ("/txt/query", {"input": text}),
        # The prompt is prepended to the text: the same text with no prompt matches.
        ("/embed", {"input": f"search query {text}", "prefix": "none"}),
        ("/embed", {"input": f"search query {text}", "prompt": ""}),
    ]:
        assert np.array_equal(vector(post(nomic_like, path, body)), default), (path, body)
    document = vector(post(nomic_like, "/embed", {"input": text, "prefix": "search_document"}))
    raw = vector(post(nomic_like, "/embed", {"input": text, "prefix": "none"}))
    assert not np.allclose(document, default) and not np.allclose(raw, default)


def test_batch_routes_take_prefix_and_the_input_alias(nomic_like: Server) -> None:
    texts = ["hello world", "the lazy dog"]
    shapes = [
        ("/batch", {"inputs": texts, "dim": 8}),
        ("/batch", {"input": texts}),
        ("/txt/batch", {"input": texts, "prefix": "search_query"}),
        ("/embed/batch", {"inputs": texts, "prompt": "search_query"}),
    ]
    answers = []
    for path, body in shapes:
        response = post(nomic_like, path, body)
        assert response.status_code == 200, response.text
        assert response.json()["tokens"] and len(response.json()["tokens"]) == 2
        answers.append(np.float32(response.json()["embeddings"]))
    assert all(np.array_equal(a, answers[0]) for a in answers)
    clustering = post(nomic_like, "/batch", {"inputs": texts, "prefix": "clustering"}).json()
    assert not np.allclose(np.float32(clustering["embeddings"]), answers[0])


def test_any_width_from_1_to_the_built_dimension(nomic_like: Server) -> None:
    full = vector(post(nomic_like, "/embed", {"input": "fox"}))
    for dim in (1, 3, 5, 7):  # the recipe recommends 8 and 4; nomic-serve takes any 1..768
        short = vector(post(nomic_like, "/embed", {"input": "fox", "dim": dim}))
        prefix = full[:dim] / np.linalg.norm(full[:dim])
        assert short.shape == (dim,) and np.allclose(short, prefix, atol=1e-6)
    client = openai.OpenAI(base_url=f"{nomic_like.url}/v1", api_key="x", max_retries=0)
    got = client.embeddings.create(model="tiny", input="fox", dimensions=3).data[0].embedding
    assert np.allclose(got, full[:3] / np.linalg.norm(full[:3]), atol=1e-6)
    with grpc.insecure_channel(nomic_like.grpc_target) as channel:
        api = embed_pb2_grpc.EmbedderStub(channel)
        reply = api.Embed(embed_pb2.EmbedRequest(inputs=["fox"], dimensions=5), timeout=10)
        assert reply.dimensions == 5
        with pytest.raises(grpc.RpcError) as e:
            api.Embed(embed_pb2.EmbedRequest(inputs=["fox"], dimensions=9), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Use a width from 1 to 8" in e.value.details()
    for dim in (0, 9):
        refused = post(nomic_like, "/embed", {"input": "fox", "dim": dim})
        assert refused.status_code == 422
        assert "Use a width from 1 to 8" in refused.json()["error"]["message"]


def test_bad_prefix_and_conflicts_are_one_clear_error(nomic_like: Server) -> None:
    cases = [
        ("/embed", {"input": "a", "prefix": "search_queries"}, "prefix 'search_queries'"),
        ("/embed", {"input": "a", "prefix": 3}, "'prefix' must be a string"),
        ("/embed", {"input": "a", "prefix": "clustering", "prompt": "search_query"}, "not both"),
        ("/embed", {"input": "a", "prefix": "clustering", "prompt": "clustering"}, "not both"),
        ("/batch", {"input": ["a"], "inputs": ["a"]}, "Send only 'inputs'"),
        ("/query", {"input": "a", "prefix": "clustering"}, "no field(s) prefix"),
        ("/query", {"input": ["a"]}, "'input' must be a string"),
    ]
    for path, body, words in cases:
        response = post(nomic_like, path, body)
        assert response.status_code == 422, (path, body, response.text)
        assert words in response.json()["error"]["message"], response.text


@pytest.mark.slow  # starts a server
def test_query_route_needs_a_query_prompt(tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("no-prompts") / "b", prompts={})
    for server in serving(bundle, tmp_path_factory):
        response = post(server, "/query", {"input": "a"})
        assert response.status_code == 404
        assert "has no query prompt" in response.json()["error"]["message"]


def test_health_info_and_openapi_in_nomic_serve_shapes(nomic_like: Server) -> None:
    health = httpx.get(f"{nomic_like.url}/health").json()
    assert health == {"status": "OK", "text_model": True, "vision_model": False,
                      "gpu_enabled": False}  # fmt: skip
    info = httpx.get(f"{nomic_like.url}/info").json()
    assert info["averaging"] in ("arithmetic", "geometric") and info["load_cuda"] is False
    assert info["txt_model"].endswith(":model.onnx") and info["img_model"] is None
    assert info["tokenizer"]["max_length"] == 16  # ours keeps the name (nomic-serve: a path)
    assert info["name"] == "tiny" and info["dimension"] == 8  # ours stay
    assert info["restrict_dimensions"] is False and info["min_dimension"] == 1
    spec = httpx.get(f"{nomic_like.url}/docs/openapi.json")
    assert spec.status_code == 200
    assert spec.json() == httpx.get(f"{nomic_like.url}/openapi.json").json()
    paths = spec.json()["paths"]
    for path in ("/query", "/txt/query", "/v1/models", "/v1/models/{model}", "/docs/openapi.json"):
        assert path in paths
    schemas = spec.json()["components"]["schemas"]
    assert "prefix" in schemas["EmbedRequest"]["properties"]
    assert "input" in schemas["BatchRequest"]["properties"]
    assert schemas["EmbedRequest"]["properties"]["dim"]["maximum"] == 8
    assert "400" in paths["/v1/embeddings"]["post"]["responses"]
    assert "422" not in paths["/v1/embeddings"]["post"]["responses"]


def test_openai_client_bad_request_models_and_errors(nomic_like: Server) -> None:
    client = openai.OpenAI(base_url=f"{nomic_like.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="tiny", input="a", dimensions=9)
    assert e.value.status_code == 400
    assert e.value.param == "dimensions" and "Use a width from 1 to 8" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="tiny", input=[])
    assert e.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert [m.id for m in client.models.list()] == ["tiny"]
    model = client.models.retrieve("tiny")
    assert (model.id, model.object, model.owned_by) == ("tiny", "model", "encoderfile")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("text-embedding-3-small")
    assert missing.value.code == "model_not_found"
    # The native routes keep 422 for an invalid field.
    assert post(nomic_like, "/embed", {"input": "a", "dim": 9}).status_code == 422


def test_shipped_nomic_recipe_prompts_are_nomic_serves() -> None:
    """nomic-serve embeds `"<prefix>: " + text`, prefix search_query unless told otherwise."""
    from encoderfile import recipe

    root = Path(__file__).parents[3]
    nomic = recipe.load(root / "recipes" / "nomic-embed-text-v1.5.yaml")
    assert nomic.default_prompt == "search_query"
    assert nomic.prompts == {name: f"{name}: " for name in NOMIC_PROMPTS}
    assert not nomic.restrict_dimensions


def test_model_ids_accept_the_repo_the_artifact_was_built_from(tmp_path: Path) -> None:
    hub = ModelSource("hub", {"onnx/model.onnx": "a" * 64}, repo="nomic-ai/x", revision="c" * 40)
    manifest = Manifest("x-512", "1", 512, (512,), True, {"model.onnx": "b" * 64}, model=hub)
    assert compat.model_ids(manifest) == ["x-512", "nomic-ai/x"]
    local = ModelSource("local", {"model.onnx": "a" * 64}, path="../models/x")
    assert compat.model_ids(Manifest("x", "1", 8, (8,), True, {}, model=local)) == ["x"]


def test_recipe_aliases_are_model_ids_and_no_local_path_is(tmp_path: Path) -> None:
    from encoderfile import recipe

    root = Path(__file__).parents[3]
    minilm = recipe.load(root / "recipes" / "all-minilm-l6-v2.yaml")
    assert minilm.aliases == ["sentence-transformers/all-MiniLM-L6-v2"]
    local = ModelSource("local", {"model.onnx": "a" * 64}, path="../models/all-minilm-l6-v2")
    manifest = Manifest(
        "all-minilm-l6-v2", "1", 384, (384,), True, {}, model=local, aliases=tuple(minilm.aliases)
    )
    assert compat.model_ids(manifest) == ["all-minilm-l6-v2", *minilm.aliases]
    assert Manifest.from_dict(manifest.to_dict()).aliases == manifest.aliases
    from encoderfile.runtime.describe import describe

    shown = describe(manifest)
    assert shown["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "../models" not in str(shown) and shown["model"]["path"] == "all-minilm-l6-v2"
    assert compat.nomic_info(manifest)["txt_model"] is None  # no model.onnx in files here
