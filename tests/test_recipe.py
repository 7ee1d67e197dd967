"""Recipe loading: every rejection names the file, the key and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoderfile import recipe
from encoderfile.errors import RecipeError
from tests.fixtures.models import recipe_dict, write_recipe

ROOT = Path(__file__).parent.parent


def load_with(tmp_path: Path, **overrides: object) -> recipe.Recipe:
    return recipe.load(write_recipe(tmp_path / "r.yaml", recipe_dict(tmp_path, **overrides)))


def test_shipped_recipes_load() -> None:
    for path in (ROOT / "recipes").glob("*.yaml"):
        assert recipe.load(path).name


def test_nomic_recipe_is_pinned_and_matryoshka() -> None:
    nomic = recipe.load(ROOT / "recipes" / "nomic-embed-text-v1.5.yaml")
    assert nomic.model.hub is not None and nomic.model.hub.pinned
    assert [s.op for s in nomic.steps] == ["pooling", "layer_norm", "truncate", "normalize"]
    assert nomic.dimension == 512 and nomic.allowed_dimensions == [512, 256, 128, 64]
    assert nomic.prompts["search_query"] == "search_query: "
    assert nomic.prompts["search_document"] == "search_document: "


def test_checked_in_schema_is_current() -> None:
    checked_in = (ROOT / "recipes" / "recipe.schema.json").read_text()
    assert checked_in == recipe.json_schema(), "run: python3 build.py schema"
    assert json.loads(checked_in)["additionalProperties"] is False  # unknown keys are refused


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"dimension": "big"}, "key 'dimension'"),
        ({"steps": [{"op": "pooling", "mode": "max"}]}, "key 'steps.0.pooling.mode'"),
        ({"steps": [{"op": "normalize"}]}, "must start with exactly one pooling step"),
        ({"dimensions": [16]}, "dimensions value 16 exceeds dimension 8"),
        ({"default_prompt": "nope"}, "default_prompt 'nope' is not a key of prompts"),
        ({"name": "Bad Name"}, "key 'name'"),
        ({"tokenizer": {"max_length": 0}}, "key 'tokenizer.max_length'"),
    ],
)
def test_rejections_name_file_key_and_fix(tmp_path: Path, overrides: dict, expected: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_with(tmp_path, **overrides)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "r.yaml")) and expected in message
    assert message.endswith(".") and "\n" not in message


def test_hub_revision_must_name_a_source(tmp_path: Path) -> None:
    data = recipe_dict(tmp_path)
    data["model"]["hub"] = {"repo": "a/b", "revision": "main", "files": {"model.onnx": None}}
    with pytest.raises(RecipeError, match="exactly one of 'hub' or 'local'"):
        recipe.load(write_recipe(tmp_path / "r.yaml", data))


def test_malformed_yaml_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nsteps: [\n")
    with pytest.raises(RecipeError, match=r"malformed YAML at line \d"):
        recipe.load(path)


@pytest.mark.slow  # exports the models from their PyPI wheels (tools/models.py)
@pytest.mark.parametrize(
    "shipped",
    [
        "all-minilm-l6-v2.yaml",
        "all-minilm-l6-v2-fp16.yaml",
        "all-minilm-l6-v2-int8.yaml",
        "wordllama-64.yaml",
        "splade-tiny.yaml",
    ],
)
def test_shipped_local_recipes_pin_what_the_export_gives(shipped: str) -> None:
    """tools.models' exports are byte-deterministic, so the shipped local recipes are pinned."""
    from encoderfile import resolve
    from tools import models

    models.minilm(), models.wordllama(), models.splade_tiny()
    spec = recipe.load(Path(__file__).parents[1] / "recipes" / shipped)
    assert spec.model is not None and spec.model.local is not None
    assert all(pin for pin in spec.model.local.files.values()), "every file carries its sha256"
    resolved = resolve.resolve(spec)  # raises ResolveError on any hash that differs
    assert resolved.sha256 == spec.model.local.files
