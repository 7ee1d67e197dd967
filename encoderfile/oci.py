"""An OCI image from an artifact: the file, a static busybox for its sh stub, and nothing else.

`encoderfile image dist/<name>` writes `<name>.oci/` (an OCI image layout) and `<name>.oci.tar`
(the same layout as one tar, with a Docker `manifest.json` beside it, so `docker load` and
`podman load` take it). One uncompressed layer holds:

    /app/<name>            the artifact (entrypoint; `serve --host 0.0.0.0`)
    /bin/busybox + links   what the stub runs: sh, id, ls, mkdir, mktemp, tail, head, tar, ...
    /cache                 XDG_CACHE_HOME: the extracted runtime and the optimised model
    /home/encoderfile      HOME of the user (uid/gid 65532, never root)
    /etc/passwd, /etc/group, /tmp

The artifact carries its own loader and C library, so no distribution base is needed. The
artifact's CycloneDX SBOM is attached as an OCI 1.1 referrer (a manifest whose `subject` is the
image). Every byte is derived from the inputs — sorted tar members, fixed owners, mtimes from
SOURCE_DATE_EPOCH (else 0) — so two runs give the same digest. See docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import encoderfile
from encoderfile import elf
from encoderfile.errors import BuildError
from encoderfile.resolve import sha256_file
from encoderfile.runtime import sbom as runtime_sbom
from encoderfile.runtime.artifact import read_manifest
from encoderfile.runtime.manifest import Manifest

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
APPLETS = (
    *("sh", "cat", "cmp", "gzip", "head", "id", "ls", "mkdir", "mktemp", "mv", "rm"),
    *("sha256sum", "tail", "tar"),
)
UID = GID = 65532  # the usual "nonroot" id of distroless images
USER = "encoderfile"
HOME = f"/home/{USER}"
CACHE = "/cache"
HTTP_PORT, GRPC_PORT = 8080, 50051  # the runtime's defaults (encoderfile/runtime/cli.py)

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
EMPTY = "application/vnd.oci.empty.v1+json"
CYCLONEDX = "application/vnd.cyclonedx+json"


@dataclass(frozen=True)
class Image:
    layout: Path  # the OCI image layout directory
    archive: Path  # the same as one tar (+ Docker's manifest.json)
    digest: str  # sha256:… of the image manifest
    reference: str  # name:tag


def build(artifact: Path, out_dir: Path | None = None, busybox: Path = BUSYBOX) -> Image:
    """Write `<out_dir>/<name>.oci/` and `<name>.oci.tar` for `artifact`; return what was written."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    sbom = runtime_sbom.read(artifact)
    _check_static(busybox)
    out_dir = Path(out_dir) if out_dir is not None else artifact.parent
    name, tag = manifest.name, manifest.version
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.oci-"))
    try:
        blobs = work / "layout" / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_path = work / "layer.tar"
        _write_layer(layer_path, artifact, name, busybox, epoch)
        layer = _blob_file(blobs, layer_path, LAYER)
        artifact_sha = sha256_file(artifact)
        labels = _labels(manifest, artifact_sha, hashlib.sha256(sbom).hexdigest(), epoch)
        config = _blob(blobs, _json(_config(name, layer["digest"], labels, epoch)), CONFIG)
        image = _blob(
            blobs,
            _json(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST,
                    "config": config,
                    "layers": [layer],
                    "annotations": labels,
                }
            ),
            MANIFEST,
        )
        reference = f"{name}:{tag}"
        image["annotations"] = {
            "org.opencontainers.image.ref.name": tag,
            "io.containerd.image.name": f"docker.io/library/{reference}",
        }
        referrer = _sbom_referrer(blobs, sbom, image, name, epoch)
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [image, referrer]}
        layout = work / "layout"
        (layout / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
        (layout / "index.json").write_bytes(_json(index))
        docker = [
            {
                "Config": f"blobs/sha256/{_hex(config)}",
                "RepoTags": [reference],
                "Layers": [f"blobs/sha256/{_hex(layer)}"],
            }
        ]
        (layout / "manifest.json").write_bytes(_json(docker))  # for `docker load`
        tarball = work / "image.tar"
        _write_tar(tarball, layout, epoch)
        (layout / "manifest.json").unlink()  # not part of an OCI layout
        target_layout = out_dir / f"{name}.oci"
        target_tar = out_dir / f"{name}.oci.tar"
        if target_layout.exists():
            shutil.rmtree(target_layout)
        os.replace(layout, target_layout)
        os.replace(tarball, target_tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Image(target_layout, target_tar, image["digest"], reference)


def _check_static(busybox: Path) -> None:
    if not busybox.is_file():
        raise BuildError(
            f"{busybox} is missing: the image needs a static busybox for the artifact's sh stub. "
            "Install Debian's busybox-static, or pass --busybox PATH."
        )
    try:
        static = elf.read(busybox).interpreter is None and not elf.read(busybox).needed
    except ValueError:
        static = False
    if not static:
        raise BuildError(
            f"{busybox} is not a statically linked ELF file. Install busybox-static, or pass "
            "--busybox PATH to a static busybox."
        )


def _labels(manifest: Manifest, artifact_sha: str, sbom_sha: str, epoch: int) -> dict[str, str]:
    model = manifest.model
    labels = {
        "org.opencontainers.image.title": manifest.name,
        "org.opencontainers.image.version": manifest.version,
        "org.opencontainers.image.description": (
            f"{manifest.name}: text embeddings ({manifest.dimension} dimensions) over HTTP "
            f"(:{HTTP_PORT}) and gRPC (:{GRPC_PORT}), served by one encoderfile artifact"
        ),
        "dev.encoderfile.artifact.sha256": artifact_sha,
        "dev.encoderfile.sbom.sha256": sbom_sha,
        "dev.encoderfile.version": manifest.tools.get("encoderfile", encoderfile.__version__),
    }
    if model is not None:
        labels["dev.encoderfile.model"] = model.label
        if model.source == "hub" and model.repo:
            labels["org.opencontainers.image.source"] = f"https://huggingface.co/{model.repo}"
            labels["org.opencontainers.image.revision"] = model.revision or ""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        labels["org.opencontainers.image.created"] = _timestamp(epoch)
    return dict(sorted(labels.items()))


def _config(name: str, layer_digest: str, labels: dict[str, str], epoch: int) -> dict[str, Any]:
    return {
        "created": _timestamp(epoch),
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{UID}:{GID}",
            "Env": ["PATH=/bin", f"HOME={HOME}", f"XDG_CACHE_HOME={CACHE}"],
            "Entrypoint": [f"/app/{name}"],
            "Cmd": ["serve", "--host", "0.0.0.0"],
            "ExposedPorts": {f"{HTTP_PORT}/tcp": {}, f"{GRPC_PORT}/tcp": {}},
            "WorkingDir": HOME,
            "Labels": labels,
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},  # uncompressed: diff = digest
        "history": [{"created": _timestamp(epoch), "created_by": "encoderfile image"}],
    }


def _sbom_referrer(
    blobs: Path, sbom: bytes, image: dict[str, Any], name: str, epoch: int
) -> dict[str, Any]:
    """An OCI 1.1 artifact manifest carrying the SBOM, whose subject is the image."""
    empty = _blob(blobs, b"{}", EMPTY)
    empty["data"] = "e30="
    layer = _blob(blobs, sbom, CYCLONEDX)
    layer["annotations"] = {"org.opencontainers.image.title": f"{name}.cdx.json"}
    subject = {k: image[k] for k in ("mediaType", "digest", "size")}
    document = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": CYCLONEDX,
        "config": empty,
        "layers": [layer],
        "subject": subject,
        "annotations": {"org.opencontainers.image.created": _timestamp(epoch)},
    }
    referrer = _blob(blobs, _json(document), MANIFEST)
    referrer["artifactType"] = CYCLONEDX
    return referrer


def _write_layer(target: Path, artifact: Path, name: str, busybox: Path, epoch: int) -> None:
    entries: list[tuple[tarfile.TarInfo, Path | bytes | None]] = []

    def add(path: str, kind: bytes, mode: int, content: Path | bytes | None = None, **kw: Any):
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime = kind, mode, epoch
        info.uid, info.gid = kw.get("uid", 0), kw.get("gid", 0)
        info.uname = info.gname = ""
        info.linkname = kw.get("link", "")
        if isinstance(content, bytes):
            info.size = len(content)
        elif isinstance(content, Path):
            info.size = content.stat().st_size
        entries.append((info, content))

    for directory in ("app", "bin", "etc", "home"):
        add(directory, tarfile.DIRTYPE, 0o755)
    add(f"app/{name}", tarfile.REGTYPE, 0o755, artifact)
    add("bin/busybox", tarfile.REGTYPE, 0o755, busybox)
    for applet in APPLETS:
        add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    add(CACHE.lstrip("/"), tarfile.DIRTYPE, 0o700, uid=UID, gid=GID)
    passwd = f"root:x:0:0:root:/root:/bin/sh\n{USER}:x:{UID}:{GID}::{HOME}:/bin/sh\n"
    add("etc/passwd", tarfile.REGTYPE, 0o644, passwd.encode())
    add("etc/group", tarfile.REGTYPE, 0o644, f"root:x:0:\n{USER}:x:{GID}:\n".encode())
    add(HOME.lstrip("/"), tarfile.DIRTYPE, 0o700, uid=UID, gid=GID)
    add("tmp", tarfile.DIRTYPE, 0o1777)
    entries.sort(key=lambda e: e[0].name)
    with (
        open(target, "wb") as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info, content in entries:
            if isinstance(content, Path):
                with open(content, "rb") as fh:
                    tar.addfile(info, fh)
            elif isinstance(content, bytes):
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)


def _write_tar(target: Path, layout: Path, epoch: int) -> None:
    """The layout directory as one deterministic tar (sorted members, fixed owner and mtime)."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(layout.rglob("*"), key=lambda p: p.relative_to(layout).as_posix()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(layout).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def _blob(blobs: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _blob_file(blobs: Path, path: Path, media_type: str) -> dict[str, Any]:
    digest = sha256_file(path)
    size = path.stat().st_size
    os.replace(path, blobs / digest)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size}


def _hex(descriptor: dict[str, Any]) -> str:
    return str(descriptor["digest"]).removeprefix("sha256:")


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _timestamp(epoch: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
