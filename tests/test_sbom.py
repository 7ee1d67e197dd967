"""The artifact's CycloneDX SBOM: schema, contents, determinism, integrity, and the commands."""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from encoderfile import freeze, sbom
from encoderfile.errors import ArtifactError, BuildError
from encoderfile.runtime import cli as runtime_cli
from encoderfile.runtime import sbom as embedded
from encoderfile.runtime.artifact import TRAILER
from tests.fixtures.artifacts import run_artifact
from tests.runtime.serve.conftest import Server
from tests.test_freeze import fake_runtime


def validate(blob: bytes) -> dict[str, Any]:
    """The parsed SBOM, after checking it against the CycloneDX 1.6 JSON schema."""
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(blob.decode())
    assert error is None, error
    return json.loads(blob)


def walk(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component, nested ones and pedigree ancestors included."""
    for component in components:
        yield component
        yield from walk(component.get("components", []))
        yield from walk(component.get("pedigree", {}).get("ancestors", []))


def file_hashes(bom: dict[str, Any]) -> dict[str, str]:
    """bom-ref -> sha256 of every file component."""
    every = walk([*bom["components"], bom["metadata"]["component"]])
    return {c["bom-ref"]: c["hashes"][0]["content"] for c in every if c["type"] == "file"}


def pypi(bom: dict[str, Any]) -> dict[str, str]:
    """name -> version of the Python distributions listed."""
    return {
        c["name"]: c["version"]
        for c in bom["components"]
        if c.get("purl", "").startswith("pkg:pypi/")
    }


def numpy_library() -> tuple[str, bytes]:
    """A shared library numpy's wheel installed: its path in site-packages and its bytes."""
    files = [f for f in metadata.files("numpy") or [] if ".so" in f.name]
    first = sorted(files, key=lambda f: f.as_posix())[0]
    return first.as_posix(), Path(first.locate()).read_bytes()


@pytest.fixture
def runtime_with_numpy(tmp_path: Path) -> Path:
    """A fake runtime whose onedir also ships one of numpy's installed shared libraries."""
    archive = fake_runtime(tmp_path)
    onedir = tmp_path / "onedir"
    path, data = numpy_library()
    (onedir / "_internal" / path).parent.mkdir(parents=True)
    (onedir / "_internal" / path).write_bytes(data)
    freeze.pack(onedir, archive)
    return archive


def test_sbom_validates_and_describes_the_bundle(
    tiny_bundle: Path, runtime_with_numpy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    bom = validate(sbom.generate(tiny_bundle, runtime_with_numpy))
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert bom["specVersion"] == "1.6" and "timestamp" not in bom["metadata"]
    hashes = file_hashes(bom)
    for name, sha in manifest["files"].items():
        assert hashes[f"model:{name}"] == hashes[f"artifact:{name}"] == sha
    for name, sha in manifest["model"]["files"].items():
        assert hashes[f"model:source:{name}"] == sha
    assert (
        hashes["artifact:runtime.tar.gz"]
        == hashlib.sha256(runtime_with_numpy.read_bytes()).hexdigest()
    )
    model = next(c for c in bom["components"] if c["bom-ref"] == "model")
    assert model["type"] == "machine-learning-model"
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert json.loads(props["encoderfile:steps"]) == manifest["steps"]
    assert props["encoderfile:dimension"] == str(manifest["dimension"])
    assert props["encoderfile:precision"] == "fp32"
    source = model["pedigree"]["ancestors"][0]
    assert source["name"] == manifest["model"]["path"]
    # the numpy library is attributed to numpy, with the hash of the bytes shipped
    path, data = numpy_library()
    assert pypi(bom)["numpy"] == metadata.version("numpy")
    assert hashes[f"pypi:numpy:_internal/{path}"] == hashlib.sha256(data).hexdigest()
    tools = {t["name"]: t["version"] for t in bom["metadata"]["tools"]["components"]}
    assert tools["pyinstaller"] == metadata.version("pyinstaller")
    assert {"encoderfile", "onnx"} <= set(tools)


@pytest.mark.parametrize("fixture", ["image_bundle", "image_only_bundle"])
def test_sbom_describes_an_image_model(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bundle: Path = request.getfixturevalue(fixture)
    manifest = json.loads((bundle / "manifest.json").read_text())
    bom = validate(sbom.generate(bundle, fake_runtime(tmp_path)))
    models = {c["bom-ref"] for c in bom["components"] if c["type"] == "machine-learning-model"}
    assert models == ({"image-model"} if manifest["model"] is None else {"model", "image-model"})
    hashes = file_hashes(bom)
    assert hashes["image-model:vision.onnx"] == manifest["files"]["vision.onnx"]
    for name, sha in manifest["image"]["model"]["files"].items():
        assert hashes[f"image-model:source:{name}"] == sha


def test_a_hub_model_is_named_by_repo_and_revision(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    revision = "0123456789abcdef0123456789abcdef01234567"
    files = manifest["model"]["files"]
    manifest["model"] = {"source": "hub", "repo": "org/tiny", "revision": revision, "files": files}
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    bom = validate(sbom.generate(tiny_bundle, fake_runtime(tmp_path)))
    model = next(c for c in bom["components"] if c["bom-ref"] == "model")
    source = model["pedigree"]["ancestors"][0]
    assert (source["name"], source["version"]) == ("org/tiny", revision)
    assert source["externalReferences"][0]["url"].endswith(f"org/tiny/tree/{revision}")


def test_sbom_is_deterministic_and_named_by_its_content(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    runtime = fake_runtime(tmp_path)
    first, second = (sbom.generate(tiny_bundle, runtime) for _ in range(2))
    assert first == second
    other = fake_runtime(tmp_path / "other", script="#!/bin/sh\necho other\n")
    assert (
        json.loads(sbom.generate(tiny_bundle, other))["serialNumber"]
        != json.loads(first)["serialNumber"]
    )
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    stamped = validate(sbom.generate(tiny_bundle, runtime))
    assert stamped["metadata"]["timestamp"] == "2023-11-14T22:13:20+00:00"


def test_a_runtime_that_is_not_an_archive_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime.tar.gz"
    runtime.write_bytes(b"not a tar")
    with pytest.raises(BuildError, match="is not a runtime archive"):
        freeze.write_artifact(tiny_bundle, "tiny", runtime, tmp_path / "dist")
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_artifact_embeds_the_sbom_and_the_runtime_prints_it(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = fake_runtime(tmp_path)
    artifact = freeze.write_artifact(tiny_bundle, "tiny", runtime, tmp_path / "dist")
    assert embedded.read(artifact) == sbom.generate(tiny_bundle, runtime)
    out = io.BytesIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", io.TextIOWrapper(out, write_through=True))
        assert runtime_cli.main(["--bundle", str(artifact), "sbom"]) == 0
        printed = out.getvalue()
    validate(printed)
    assert runtime_cli.main(["--bundle", str(artifact), "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sbom"]["format"] == "CycloneDX 1.6 JSON"
    assert info["sbom"]["components"]["machine-learning-model"] == 1


def test_sbom_refuses_a_tampered_copy_and_a_bundle_directory(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = freeze.write_artifact(tiny_bundle, "tiny", fake_runtime(tmp_path), tmp_path / "d")
    data = bytearray(artifact.read_bytes())
    _, offset, length = TRAILER.unpack(data[-TRAILER.size :])
    start, size = json.loads(data[offset : offset + length])["files"]["sbom.json"]
    data[start + size // 2] ^= 0x01
    tampered = tmp_path / "tampered"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sbom.json fails its sha256 check"):
        embedded.read(tampered)
    for path in (tampered, tiny_bundle):
        assert runtime_cli.main(["--bundle", str(path), "sbom"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("encoderfile: ") and err.count("\n") == 1
    assert "bundle directory" in err and "encoderfile build" in err


def builder(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "encoderfile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # runs the CLI in a process
def test_inspect_shows_the_sbom_of_an_artifact_and_none_for_a_bundle(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    artifact = freeze.write_artifact(tiny_bundle, "tiny", fake_runtime(tmp_path), tmp_path / "d")
    shown = json.loads(builder("inspect", artifact, "--json").stdout)
    assert shown["name"] == "tiny" and shown["sbom"] == embedded.summary(embedded.read(artifact))
    assert builder("inspect", artifact, "--sbom").stdout.encode() == embedded.read(artifact)
    bundle = json.loads(builder("inspect", tiny_bundle, "--json").stdout)
    assert bundle["sbom"] is None  # as in the runtime's info --json
    refused = builder("inspect", tiny_bundle, "--sbom")
    assert refused.returncode == 2 and "bundle directory" in refused.stderr


# ------------------------------------------------------------------ frozen (PyInstaller)

DUMP_MODULES = (  # the modules the runtime imports, not those site imported before it
    "import atexit, json, sys\n"
    "out, before = sys.argv.pop(1), set(sys.modules)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(set(sys.modules) - before))))\n"
    "from encoderfile.runtime.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def imported_distributions(bundle: Path, tmp_path: Path) -> set[str]:
    """Distributions whose modules the runtime imports to embed (CLI) and to serve (HTTP).

    Found in the venv, independently of the SBOM code; less the modules the freeze leaves out
    on purpose (freeze.EXCLUDES: optional imports such as grpc's runtime proto compiler).
    """
    base = [sys.executable, "-c", DUMP_MODULES]
    common = ["--threads", "1", "--bundle", str(bundle)]
    cli_dump, serve_dump = tmp_path / "cli.json", tmp_path / "serve.json"
    embed = subprocess.run([*base, str(cli_dump), *common, "embed", "hi"], capture_output=True)
    assert embed.returncode == 0, embed.stderr
    server = Server([*base, str(serve_dump), *common], tmp_path / "server.log").wait_ready()
    try:
        body = {"model": "tiny", "input": ["hi"]}
        reply = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
    finally:
        assert server.stop() == 0, server.log()
    modules = set(json.loads(cli_dump.read_text())) | set(json.loads(serve_dump.read_text()))
    excluded = set(freeze.EXCLUDES)
    kept = {
        m
        for m in modules
        if not any(".".join(m.split(".")[:end]) in excluded for end in range(1, m.count(".") + 2))
    }
    owners = metadata.packages_distributions()
    top = {m.split(".")[0] for m in kept} - set(sys.stdlib_module_names)
    assert {"numpy", "onnxruntime", "tokenizers", "uvicorn", "starlette"} <= top
    return {sbom._normalize(d) for name in top for d in owners.get(name, [])}


@pytest.mark.slow
def test_frozen_sbom_covers_what_pyinstaller_collected_and_the_runtime_imports(
    tiny_artifact: Path, tiny_bundle: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_artifact(tiny_artifact, "sbom", env=artifact_env)
    assert result.returncode == 0, result.stderr
    bom = validate(result.stdout)
    assert "properties" not in bom["metadata"], "frozen modules no distribution claims"
    listed = pypi(bom)
    # every distribution the runtime imports at run time, found independently of the SBOM code
    missing = imported_distributions(tiny_bundle, tmp_path) - set(listed)
    assert not missing, f"imported at run time but absent from the SBOM: {missing}"
    for name, version in listed.items():
        assert metadata.version(name) == version
    # every shared library and metadata folder PyInstaller put in the runtime is described
    data = tiny_artifact.read_bytes()
    _, offset, length = TRAILER.unpack(data[-TRAILER.size :])
    start, size = json.loads(data[offset : offset + length])["runtime"]
    shipped: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data[start : start + size])) as tar:
        for member in tar:
            if member.isfile():
                blob = tar.extractfile(member).read()  # type: ignore[union-attr]
                shipped[member.name] = hashlib.sha256(blob).hexdigest()
    described = {ref.split(":", 2)[-1]: sha for ref, sha in file_hashes(bom).items()}
    for native in (c for c in bom["components"] if c["bom-ref"].startswith("native:")):
        path = next(p["value"] for p in native["properties"] if p["name"] == "encoderfile:path")
        described[path] = native["hashes"][0]["content"]
    libraries = {p: sha for p, sha in shipped.items() if ".so" in Path(p).name}
    assert libraries and {p: described.get(p) for p in libraries} == libraries
    assert any("libonnxruntime" in p for p in libraries) and "onnxruntime" in listed
    natives = [c for c in bom["components"] if c["bom-ref"].startswith("native:")]
    libstdcxx = next(c for c in natives if c["name"].startswith("libstdc++"))
    assert shutil.which("dpkg-query") is None or libstdcxx["purl"].startswith("pkg:deb/")
    dist_infos = {p.split("/")[1] for p in shipped if ".dist-info/" in p}
    for folder in dist_infos:
        assert sbom._normalize(folder.removesuffix(".dist-info").rsplit("-", 1)[0]) in listed
