"""Opening bundles from directories and artifact files; every file is hash-checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from encoderfile.errors import ArtifactError
from encoderfile.freeze import pack, write_artifact
from encoderfile.runtime.artifact import (
    ARTIFACT_ENV,
    TRAILER,
    open_bundle,
    read_manifest,
)
from encoderfile.runtime.manifest import Manifest


def fake_artifact(bundle: Path, tmp_path: Path) -> Path:
    """An artifact with a placeholder runtime: the payload layout without PyInstaller."""
    runtime = tmp_path / "runtime.tar.gz"
    (tmp_path / "onedir").mkdir()
    pack(tmp_path / "onedir", runtime)  # an empty runtime archive
    return write_artifact(bundle, "tiny", runtime, tmp_path / "dist")


def test_directory_and_artifact_give_the_same_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from_dir = open_bundle(tiny_bundle)
    from_file = open_bundle(fake_artifact(tiny_bundle, tmp_path))
    assert from_file.model == from_dir.model == (tiny_bundle / "model.onnx").read_bytes()
    assert from_file.tokenizer == from_dir.tokenizer
    assert from_file.manifest == from_dir.manifest
    assert from_dir.hashes == {k: v for k, v in from_dir.manifest.files.items()}


def test_environment_names_the_artifact(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ARTIFACT_ENV, str(fake_artifact(tiny_bundle, tmp_path)))
    assert open_bundle().manifest.name == "tiny"
    monkeypatch.delenv(ARTIFACT_ENV)
    with pytest.raises(ArtifactError, match="--bundle"):
        open_bundle()


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_modified_file_in_directory_is_refused(tiny_bundle: Path, name: str) -> None:
    with open(tiny_bundle / name, "ab") as fh:
        fh.write(b" ")
    with pytest.raises(ArtifactError, match=f"{name} fails its sha256 check"):
        open_bundle(tiny_bundle)


def test_modified_model_in_artifact_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    artifact = fake_artifact(tiny_bundle, tmp_path)
    data = bytearray(artifact.read_bytes())
    model = (tiny_bundle / "model.onnx").read_bytes()
    data[data.index(model) + len(model) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.onnx fails its sha256 check"):
        open_bundle(artifact)


def test_truncated_artifact_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    artifact = fake_artifact(tiny_bundle, tmp_path)
    artifact.write_bytes(artifact.read_bytes()[: -TRAILER.size - 10])
    with pytest.raises(ArtifactError, match="not an encoderfile artifact"):
        open_bundle(artifact)


def test_missing_file_is_named(tiny_bundle: Path) -> None:
    (tiny_bundle / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="lacks tokenizer.json"):
        open_bundle(tiny_bundle)


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot open bundle"):
        open_bundle(tmp_path / "nope")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "format_version 2"),
        ({"dimension": "wide"}, "malformed"),
        ({"default_prompt": "nope"}, "default_prompt 'nope'"),
    ],
)
def test_bad_manifest_is_refused(tiny_bundle: Path, change: dict, message: str) -> None:
    path = tiny_bundle / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ArtifactError, match=message):
        open_bundle(tiny_bundle)


def test_manifest_alone_is_read_without_the_model(tiny_bundle: Path) -> None:
    (tiny_bundle / "model.onnx").write_bytes(b"corrupt")  # not read, so not checked
    manifest = read_manifest(tiny_bundle)
    assert isinstance(manifest, Manifest)
    assert (manifest.name, manifest.dimension, manifest.dimensions) == ("tiny", 8, (8, 4))
    assert manifest.max_length == 16 and manifest.normalized


def test_sha_prefixes_in_a_message_differ(tiny_bundle: Path) -> None:
    """A pin damaged past its 12th character still shows two different prefixes."""
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    pin = manifest["files"]["model.onnx"]
    manifest["files"]["model.onnx"] = pin[:20] + ("0" if pin[20] != "0" else "1") + pin[21:]
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as raised:
        open_bundle(tiny_bundle)
    want, found = re.search(r"\(manifest (\w+)…, found (\w+)…\)", str(raised.value)).groups()  # type: ignore[union-attr]
    assert want != found and len(want) == 24 and pin.startswith(found)
