"""The builder CLI as a user runs it: bad input exits 2 with one line and leaves no bundle."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.models import recipe_dict, write_recipe, write_tiny_model

REVISION = "0123456789abcdef0123456789abcdef01234567"


def cli(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "encoderfile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def fails_cleanly(result: subprocess.CompletedProcess, out: Path, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("encoderfile: ")
    for text in expected:
        assert text in lines[0]
    assert not out.exists() or not any(out.iterdir()), "a failed build left files behind"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "model")


def build(tmp_path: Path, data: dict) -> tuple[subprocess.CompletedProcess, Path]:
    recipe = write_recipe(tmp_path / "r.yaml", data)
    out = tmp_path / "build"
    return cli("build", recipe, "--bundle-only", "--out", out), out


@pytest.mark.slow  # runs the CLI in a process
def test_build_writes_a_bundle(tmp_path, model_dir) -> None:
    result, out = build(tmp_path, recipe_dict(model_dir))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "tiny").iterdir()) == [
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]


@pytest.mark.slow  # runs the CLI in a process
def test_malformed_yaml(tmp_path) -> None:
    (tmp_path / "r.yaml").write_text("name: [unclosed\n")
    result = cli("build", tmp_path / "r.yaml", "--bundle-only", "--out", tmp_path / "build")
    fails_cleanly(result, tmp_path / "build", "r.yaml", "malformed YAML at line")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.update(extra=1), ("unknown key 'extra'", "recipe.schema.json")),
        (lambda r: r.update(dimension="eight"), ("key 'dimension'",)),
        (lambda r: r.update(dimension=0), ("dimension=0", "hidden size 8", "from 1 to 8")),
        (lambda r: r.update(dimension=-1), ("dimension=-1", "hidden size 8", "from 1 to 8")),
        (
            lambda r: r.update(
                dimension=9, steps=[{"op": "pooling", "mode": "mean"}, {"op": "truncate"}]
            ),
            ("dimension=9", "hidden size 8", "from 1 to 8"),
        ),
        (
            lambda r: r["model"]["local"]["files"].update({"config.json": None}),
            ("'config.json' is missing",),
        ),
        (
            lambda r: r["model"]["local"]["files"].update({"model.onnx": "0" * 64}),
            ("model.onnx sha256 is", "encoderfile pin"),
        ),
        (lambda r: r["model"].update(output="nope"), ("no output 'nope'", "last_hidden_state")),
    ],
)
@pytest.mark.slow  # runs the CLI in a process
def test_recipe_and_model_errors(tmp_path, model_dir, change, expected) -> None:
    data = recipe_dict(model_dir)
    change(data)
    result, out = build(tmp_path, data)
    fails_cleanly(result, out, *expected)


def hub_model(repo: str, revision: str, files: dict[str, str | None], graph: str) -> dict:
    return {"hub": {"repo": repo, "revision": revision, "files": files}, "graph": graph}


@pytest.mark.slow  # runs the CLI in a process
def test_revision_not_a_commit(tmp_path) -> None:
    data = recipe_dict(tmp_path)
    data["model"] = hub_model(
        "o/m", "main", {"model.onnx": None, "tokenizer.json": None}, "model.onnx"
    )
    result, out = build(tmp_path, data)
    fails_cleanly(result, out, "'main' is not a 40-hex commit", "--allow-unpinned")


@pytest.mark.slow  # runs the CLI in a process
def test_graph_without_usable_output(tmp_path, model_dir) -> None:
    data = recipe_dict(model_dir)
    data["model"]["output"] = "last_hidden_state"
    write_tiny_model(model_dir, extra_outputs=True)
    data["model"]["output"] = "pooled"
    result, out = build(tmp_path, data)
    fails_cleanly(result, out, "not [batch, sequence, hidden]")


@pytest.mark.slow  # runs the CLI in a process
def test_missing_and_unreadable_tokenizer(tmp_path, model_dir) -> None:
    (model_dir / "tokenizer.json").unlink()
    fails_cleanly(*build(tmp_path, recipe_dict(model_dir)), "'tokenizer.json' is missing")
    (model_dir / "tokenizer.json").write_text("{not json")
    fails_cleanly(*build(tmp_path, recipe_dict(model_dir)), "not a readable tokenizer.json")


@pytest.mark.slow  # runs the CLI in a process
def test_corrupt_onnx(tmp_path, model_dir) -> None:
    data = (model_dir / "model.onnx").read_bytes()
    (model_dir / "model.onnx").write_bytes(data[: len(data) // 3])
    fails_cleanly(*build(tmp_path, recipe_dict(model_dir)), "not a readable ONNX model")


@pytest.mark.slow  # runs the CLI in a process
def test_pin_fills_hashes_then_detects_tampering(tmp_path, model_dir) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(model_dir))
    pinned = cli("pin", recipe)
    assert pinned.returncode == 0, pinned.stderr
    files = yaml.safe_load(recipe.read_text())["model"]["local"]["files"]
    assert all(len(v) == 64 for v in files.values())
    with (model_dir / "tokenizer.json").open("a") as f:
        f.write(" ")
    fails_cleanly(
        cli("build", recipe, "--bundle-only", "--out", tmp_path / "b"),
        tmp_path / "b",
        "tokenizer.json sha256 is",
        "the recipe pins",
    )


def fake_hub_cache(cache: Path, repo: str, source: Path, files: list[str]) -> None:
    """The layout huggingface_hub writes: models--o--n/{blobs,refs,snapshots/<commit>/<file>}."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / REVISION
    for name in files:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / Path(name).name, snapshot / name)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(REVISION)


@pytest.mark.slow  # runs the CLI in a process
def test_hub_mode_from_the_cache_offline(tmp_path, model_dir) -> None:
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "org/tiny", model_dir, ["onnx/model.onnx", "tokenizer.json"])
    data = recipe_dict(model_dir)
    data["model"] = hub_model(
        "org/tiny", REVISION, {"onnx/model.onnx": None, "tokenizer.json": None}, "onnx/model.onnx"
    )
    recipe = write_recipe(tmp_path / "r.yaml", data)
    env = {"HF_HUB_CACHE": str(cache)}
    fails_cleanly(
        cli("build", recipe, "--bundle-only", "--out", tmp_path / "b", env=env),
        tmp_path / "b",
        "onnx/model.onnx has no sha256 pin",
        "encoderfile pin",
    )
    assert cli("pin", recipe, env=env).returncode == 0
    result = cli("build", recipe, "--bundle-only", "--out", tmp_path / "b", env=env)
    assert result.returncode == 0, result.stderr
    model = json.loads((tmp_path / "b" / "tiny" / "manifest.json").read_text())["model"]
    assert (
        model["source"] == "hub" and model["repo"] == "org/tiny" and model["revision"] == REVISION
    )
    assert set(model["files"]) == {"onnx/model.onnx", "tokenizer.json"}


@pytest.mark.slow  # runs the CLI in a process
def test_hub_unpinned_branch_with_allow_unpinned(tmp_path, model_dir) -> None:
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "org/tiny", model_dir, ["model.onnx", "tokenizer.json"])
    data = recipe_dict(model_dir)
    data["model"] = hub_model(
        "org/tiny", "main", {"model.onnx": None, "tokenizer.json": None}, "model.onnx"
    )
    recipe = write_recipe(tmp_path / "r.yaml", data)
    env = {"HF_HUB_CACHE": str(cache)}
    assert cli("pin", recipe, "--allow-unpinned", env=env).returncode == 0
    result = cli(
        "build", recipe, "--bundle-only", "--allow-unpinned", "--out", tmp_path / "b", env=env
    )
    assert result.returncode == 0, result.stderr
    assert (
        json.loads((tmp_path / "b" / "tiny" / "manifest.json").read_text())["model"]["revision"]
        == REVISION
    )


@pytest.mark.slow  # runs the CLI in a process
def test_hub_file_not_cached_offline(tmp_path) -> None:
    data = recipe_dict(tmp_path)
    data["model"] = hub_model(
        "org/absent", REVISION, {"model.onnx": "a" * 64, "tokenizer.json": "b" * 64}, "model.onnx"
    )
    result, out = build(tmp_path, data)
    fails_cleanly(result, out, "not in the local cache")


@pytest.mark.slow  # runs the CLI in a process
def test_inspect_recipe_and_bundle(tmp_path, model_dir) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(model_dir))
    shown = json.loads(cli("inspect", recipe, "--json").stdout)
    assert shown["outputs"] == {"last_hidden_state": ["batch", "sequence", 8]}
    assert set(shown["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert len(shown["sha256"]["model.onnx"]) == 64
    assert cli("build", recipe, "--bundle-only", "--out", tmp_path / "b").returncode == 0
    bundle = json.loads(cli("inspect", tmp_path / "b" / "tiny", "--json").stdout)
    assert bundle["outputs"] == {"sentence_embedding": ["batch", 8]}
    assert bundle["graph"]["added_nodes"][0].startswith("pooling/")
    assert cli("inspect", tmp_path / "b" / "tiny").returncode == 0


@pytest.mark.slow  # runs the CLI in a process
def test_inspect_bundle_matches_info(tiny_bundle) -> None:
    """One description: `inspect` on a bundle shows what the runtime's `info --json` does."""
    shown = json.loads(cli("inspect", tiny_bundle, "--json").stdout)
    info = subprocess.run(
        [
            sys.executable,
            "-m",
            "encoderfile.runtime",
            "--bundle",
            str(tiny_bundle),
            "info",
            "--json",
        ],
        capture_output=True,
        check=True,
    )
    described = json.loads(info.stdout)
    for key in ("name", "model", "steps", "dimensions", "files", "precision", "graph"):
        assert shown[key] == described[key], key


@pytest.mark.slow  # runs the CLI in a process
def test_version_and_help() -> None:
    assert cli("--version").stdout.startswith("encoderfile ")
    for command in ("build", "inspect", "pin", "schema"):
        result = cli(command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


@pytest.mark.slow
def test_build_the_shipped_minilm_recipe_into_one_executable(tmp_path, minilm_dir) -> None:
    """The README's main job: `encoderfile build recipes/all-minilm-l6-v2.yaml`, then embed."""
    recipe = Path(__file__).parent.parent / "recipes" / "all-minilm-l6-v2.yaml"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = cli("build", recipe, "--out", tmp_path / "build", "--dist", tmp_path / "dist", env=env)
    assert result.returncode == 0, result.stderr
    artifact = tmp_path / "dist" / "all-minilm-l6-v2"
    assert artifact.is_file() and os.access(artifact, os.X_OK)
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["all-minilm-l6-v2"]
    embedded = subprocess.run(
        [artifact, "embed", "hello"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert embedded.returncode == 0, embedded.stderr
    row = json.loads(embedded.stdout)
    assert len(row["embedding"]) == 384 and row["tokens"] == 3


def test_architecture_doc_names_only_modules_that_exist() -> None:
    """docs/architecture.md names modules by path and dotted name: each must exist."""
    root = Path(__file__).parent.parent
    text = (root / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"(encoderfile/[\w/]+\.py)", text))
    dotted = set(re.findall(r"\b(encoderfile(?:\.\w+)+)", text))
    assert len(paths) > 15 and len(dotted) > 10
    missing = [p for p in paths if not (root / p).is_file()]
    for name in dotted:
        parts = name.split(".")
        # a module, or an attribute of one (encoderfile.freeze.builder_modules)
        if not any(
            (root / Path(*parts[:n])).with_suffix(".py").is_file()
            or (root / Path(*parts[:n]) / "__init__.py").is_file()
            for n in (len(parts), len(parts) - 1)
        ):
            missing.append(name)
    assert missing == []
