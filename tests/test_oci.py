"""`encoderfile image`: a reproducible OCI image layout and docker-loadable tar of an artifact.

Structure and reproducibility use an artifact with a fake runtime (fast); the slow test
validates the real tiny artifact's image with Debian's skopeo and umoci, unpacks it and runs its
root file system in a chroot as the image's non-root user.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from encoderfile import freeze, oci
from encoderfile.errors import BuildError
from encoderfile.runtime import sbom
from tests.fixtures.artifacts import run_artifact
from tests.test_freeze import fake_runtime

needs_busybox = pytest.mark.skipif(
    not oci.BUSYBOX.is_file(), reason="busybox-static is not installed (python3 build.py setup)"
)


@pytest.fixture
def fake_artifact(tiny_bundle: Path, tmp_path: Path) -> Path:
    return freeze.write_artifact(tiny_bundle, "tiny", fake_runtime(tmp_path), tmp_path / "dist")


def blob(layout: Path, descriptor: dict) -> bytes:
    data = (layout / "blobs" / "sha256" / descriptor["digest"].removeprefix("sha256:")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == descriptor["digest"].removeprefix("sha256:")
    assert len(data) == descriptor["size"]
    return data


@needs_busybox
def test_the_image_is_reproducible_and_complete(fake_artifact: Path, tmp_path: Path) -> None:
    first = oci.build(fake_artifact, tmp_path / "a")
    second = oci.build(fake_artifact, tmp_path / "b")
    assert first.digest == second.digest and first.reference == "tiny:1.0.0"
    assert first.archive.read_bytes() == second.archive.read_bytes()
    layout = first.layout
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    image, referrer = json.loads((layout / "index.json").read_text())["manifests"]
    assert image["digest"] == first.digest
    assert image["annotations"]["org.opencontainers.image.ref.name"] == "1.0.0"
    manifest = json.loads(blob(layout, image))
    config = json.loads(blob(layout, manifest["config"]))["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/app/tiny"] and config["Cmd"][:3] == [
        "serve",
        "--host",
        "0.0.0.0",
    ]
    assert set(config["ExposedPorts"]) == {"8080/tcp", "50051/tcp"}
    labels = config["Labels"]
    assert (
        labels["dev.encoderfile.artifact.sha256"]
        == hashlib.sha256(fake_artifact.read_bytes()).hexdigest()
    )
    assert labels["org.opencontainers.image.version"] == "1.0.0"
    assert "dev.encoderfile.model" in labels
    # the layer: the artifact, a static busybox with the stub's applets, a private cache
    (layer,) = manifest["layers"]
    with tarfile.open(layout / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("app/tiny").read() == fake_artifact.read_bytes()  # type: ignore[union-attr]
    assert members["cache"].uid == 65532 and members["cache"].mode == 0o700
    assert members["bin/sh"].issym() and members["tmp"].mode == 0o1777
    assert {m.mtime for m in members.values()} == {0}
    # the SBOM, attached as a referrer of the image
    assert referrer["artifactType"] == "application/vnd.cyclonedx+json"
    attached = json.loads(blob(layout, referrer))
    assert attached["subject"]["digest"] == first.digest
    assert blob(layout, attached["layers"][0]) == sbom.read(fake_artifact)
    # the tar is the layout plus Docker's manifest.json
    with tarfile.open(first.archive) as tar:
        names = set(tar.getnames())
        docker = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "manifest.json"} <= names
    assert docker[0]["RepoTags"] == ["tiny:1.0.0"]


def test_a_dynamic_or_missing_busybox_is_refused(fake_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="busybox-static"):
        oci.build(fake_artifact, tmp_path, busybox=tmp_path / "no-busybox")
    with pytest.raises(BuildError, match="not a statically linked"):
        oci.build(fake_artifact, tmp_path, busybox=Path(shutil.which("ls") or "/bin/ls"))


@pytest.mark.slow
@needs_busybox
def test_the_image_validates_and_its_rootfs_runs(
    tiny_artifact: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    built = oci.build(tiny_artifact, tmp_path / "image")
    tag = built.reference.split(":")[1]
    if shutil.which("skopeo"):
        for source in (f"oci:{built.layout}:{tag}", f"oci-archive:{built.archive}:{tag}"):
            shown = subprocess.run(
                ["skopeo", "inspect", source], capture_output=True, text=True, check=True
            )
            assert json.loads(shown.stdout)["Digest"] == built.digest
    if shutil.which("umoci") is None or os.geteuid() != 0:
        pytest.skip("unpacking and chrooting need umoci (apt-get install umoci) and root")
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{built.layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    rootfs = bundle / "rootfs"
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["user"]["uid"] == 65532
    (rootfs / "dev").mkdir(exist_ok=True)  # a container engine provides /dev
    os.mknod(rootfs / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    (rootfs / "dev" / "null").chmod(0o666)
    env = dict(e.split("=", 1) for e in process["env"])
    chroot = [shutil.which("chroot") or "/usr/sbin/chroot", "--userspec=65532:65532", str(rootfs)]
    texts = "hello\nnaïve café\n".encode()
    host = run_artifact(tiny_artifact, "embed", env=artifact_env, input=texts)
    for args in (["embed"], ["info"], ["verify"]):
        result = subprocess.run(
            [*chroot, process["args"][0], *args],
            input=texts,
            env=env,
            capture_output=True,
            timeout=300,
        )
        assert result.returncode == 0, (args, result.stderr.decode())
        if args == ["embed"]:
            assert result.stdout == host.stdout
    assert list((rootfs / "cache" / "encoderfile").glob("*/.complete"))  # the writable cache
