"""The optimised-model cache: made on the first start, checked at every start, remade if damaged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoderfile.runtime import artifact, model_cache
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from encoderfile.runtime.model_cache import DIGEST_FILE, ModelCache
from tests.fixtures.tiny_bundle import make_tiny_bundle
from tests.runtime.test_artifact import fake_artifact

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["alpha beta", "gamma", "beta beta delta"]


def embed(bundle_path: Path, root: Path) -> np.ndarray:
    bundle = open_bundle(bundle_path, read_model=False)
    session = ModelCache(bundle, root).open(1)
    return Embedder(bundle, 1, session).embed(TEXTS).vectors


def only_entry(root: Path) -> Path:
    (entry,) = (root / "models").iterdir()
    return entry


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """Large enough that its weights go to model.data, with a matrix onnxruntime pre-packs."""
    return make_tiny_bundle(tmp_path / "tiny", hidden_size=32, dense=True)


@pytest.fixture
def tiny_file(tiny_bundle: Path, tmp_path: Path) -> Path:
    return fake_artifact(tiny_bundle, tmp_path)


def test_first_start_keeps_a_checked_copy_that_later_starts_use(
    tiny_bundle: Path, tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = Embedder(open_bundle(tiny_bundle), 1).embed(TEXTS).vectors
    root = tmp_path / "cache"
    np.testing.assert_allclose(embed(tiny_file, root), expected, atol=1e-6)

    entry = only_entry(root)
    digest = json.loads((entry / DIGEST_FILE).read_text())
    assert set(digest["files"]) == {p.name for p in entry.iterdir()} - {DIGEST_FILE}
    assert "model.data" in digest["files"]  # the weights, memory-mapped by later starts
    assert not [p for p in (root / "models").iterdir() if p.name.startswith(".")]  # no leftovers

    def unread(*args: object) -> None:
        raise AssertionError("a start with a good cached copy must not read model.onnx")

    monkeypatch.setattr(model_cache, "read_entry", unread)
    # bitwise: the servers open model.onnx itself, and the transports must agree exactly
    np.testing.assert_array_equal(embed(tiny_file, root), expected)


@pytest.mark.parametrize(
    "damage",
    [
        "flip graph",
        "truncate graph",
        "flip weights",
        "truncate weights",
        "other onnxruntime",
        "no digest",
        "unlisted file",
    ],
)
def test_damaged_copy_is_never_run_and_is_made_again(
    tiny_bundle: Path, tiny_file: Path, tmp_path: Path, damage: str
) -> None:
    expected = Embedder(open_bundle(tiny_bundle), 1).embed(TEXTS).vectors
    root = tmp_path / "cache"
    embed(tiny_file, root)
    entry = only_entry(root)
    good = {p.name: p.read_bytes() for p in entry.iterdir()}
    name = "model.data" if damage.endswith("weights") else "model.onnx"
    if damage.startswith("flip"):  # still loads and runs, to different vectors
        data = bytearray(good[name])
        data[len(data) // 2] ^= 0x40
        (entry / name).write_bytes(bytes(data))
    elif damage.startswith("truncate"):  # mapping a cut weights file would crash the process
        (entry / name).write_bytes(good[name][:100])
    elif damage == "other onnxruntime":
        digest = json.loads(good[DIGEST_FILE])
        (entry / DIGEST_FILE).write_text(json.dumps({**digest, "onnxruntime": "0.0.1"}))
    elif damage == "no digest":
        (entry / DIGEST_FILE).unlink()
    else:  # a file the digest does not vouch for (e.g. external data onnxruntime would read)
        (entry / "weights.bin").write_bytes(b"\0" * 64)

    np.testing.assert_allclose(embed(tiny_file, root), expected, atol=1e-6)
    assert {p.name: p.read_bytes() for p in only_entry(root).iterdir()} == good


def test_bundle_directories_and_unwritable_caches_run_without_a_copy(
    tiny_bundle: Path, tiny_file: Path, tmp_path: Path
) -> None:
    expected = Embedder(open_bundle(tiny_bundle), 1).embed(TEXTS).vectors
    root = tmp_path / "cache"
    np.testing.assert_allclose(embed(tiny_bundle, root), expected, atol=1e-6)
    assert not root.exists()

    root.write_text("a file where the cache directory should be")  # unwritable, even for root
    np.testing.assert_allclose(embed(tiny_file, root), expected, atol=1e-6)


def test_damaged_model_in_the_artifact_fails_when_it_must_be_read(
    tiny_bundle: Path, tiny_file: Path, tmp_path: Path
) -> None:
    data = bytearray(tiny_file.read_bytes())
    model = (tiny_bundle / "model.onnx").read_bytes()
    data[data.index(model) + len(model) // 2] ^= 0xFF
    tiny_file.write_bytes(bytes(data))
    with pytest.raises(artifact.ArtifactError, match="model.onnx fails its sha256 check"):
        embed(tiny_file, tmp_path / "cache")


def test_cache_root_follows_the_stub() -> None:
    assert model_cache.cache_root({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/encoderfile")
    assert model_cache.cache_root({"HOME": "/h"}) == Path("/h/.cache/encoderfile")
    assert model_cache.cache_root({"TMPDIR": "/t"}) == Path(f"/t/encoderfile-{os.getuid()}")


@pytest.mark.slow  # runs embed in a process
def test_embed_command_uses_the_cache(tiny_bundle: Path, tiny_file: Path, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(ROOT)}

    def run(source: Path) -> bytes:
        command = [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(source)]
        result = subprocess.run(
            [*command, "embed", *TEXTS], env=env, capture_output=True, check=True
        )
        return result.stdout

    first = run(tiny_file)
    assert (only_entry(tmp_path / "xdg" / "encoderfile") / DIGEST_FILE).is_file()
    assert run(tiny_file) == first == run(tiny_bundle)


def test_files_are_hashed_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(2500)
    (tmp_path / "weights").write_bytes(data)
    monkeypatch.setattr(model_cache, "PIECE", 1000)
    pieces = [data[:1000], data[1000:2000], data[2000:]]
    assert model_cache.piece_sha256s(tmp_path / "weights") == [
        hashlib.sha256(p).hexdigest() for p in pieces
    ]
    (tmp_path / "empty").write_bytes(b"")
    assert model_cache.piece_sha256s(tmp_path / "empty") == [hashlib.sha256().hexdigest()]
