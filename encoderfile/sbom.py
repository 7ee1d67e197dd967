"""The artifact's CycloneDX 1.6 SBOM, derived from what PyInstaller froze and from the manifest.

Components come from the runtime archive itself: the modules in the bootloader's PYZ and the files
in the onedir are mapped to the installed distributions that own them (their RECORD). What no
distribution owns is the Python interpreter and its stdlib, or a native library PyInstaller
collected from the system (named with its Debian package when dpkg knows the file).

Deterministic: bom-refs are names, the serial number is a UUID derived from the content, and the
timestamp is SOURCE_DATE_EPOCH's or absent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata as metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyclonedx.contrib.hash.factories import HashTypeFactory
from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import ExternalReference, ExternalReferenceType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType, Pedigree
from cyclonedx.model.license import License
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

import encoderfile
from encoderfile.errors import BuildError
from encoderfile.resolve import sha256_file
from encoderfile.runtime.artifact import read_manifest
from encoderfile.runtime.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    VISION_FILE,
    Manifest,
    ModelSource,
)

INTERNAL = "_internal/"  # PyInstaller 6's onedir: everything but the executable lives here
EXECUTABLE = "encoderfile"  # the bootloader with the PKG archive (and its PYZ) appended
SERIAL_NAMESPACE = uuid.UUID("6f1d2c1e-5b0a-4f5e-9a47-0c3e8f1b2a90")
EXTENSION = re.compile(r"\.(cpython-\d+[^.]*|abi3)?\.?(so|pyd)$")
BUILD_TOOLS = ("onnx", "pyinstaller", "cyclonedx-python-lib")


@dataclass
class Inventory:
    """What the runtime archive ships: file sha256s and the frozen module names."""

    files: dict[str, str] = field(default_factory=dict)  # path in the onedir -> sha256
    modules: list[str] = field(default_factory=list)  # modules in the PYZ archive


def generate(bundle_dir: Path, runtime: Path) -> bytes:
    """The SBOM (CycloneDX 1.6 JSON bytes) of `runtime` frozen with the bundle in `bundle_dir`."""
    manifest = read_manifest(bundle_dir)
    shipped = {name: sha256_file(bundle_dir / name) for name in (*manifest.files, MANIFEST_FILE)}
    shipped["runtime.tar.gz"] = sha256_file(runtime)
    bom = _bom(manifest, shipped, inventory(runtime))
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    # the serial number names this content: a hash of the document with a fixed placeholder
    bom.serial_number = uuid.uuid5(SERIAL_NAMESPACE, hashlib.sha256(text.encode()).hexdigest())
    return (JsonV1Dot6(bom).output_as_string(indent=2) + "\n").encode()


def inventory(runtime: Path) -> Inventory:
    """Hash every regular file of the runtime archive and list the modules of its PYZ."""
    found = Inventory()
    if not tarfile.is_tarfile(runtime):
        raise BuildError(f"{runtime} is not a runtime archive (tar.gz). Delete it and build again.")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(runtime) as tar:
        for member in tar:
            if not member.isfile():
                continue  # directories, and symlinks to files hashed under their own name
            data = tar.extractfile(member)
            assert data is not None
            digest = hashlib.sha256()
            executable = Path(tmp) / EXECUTABLE if member.name == EXECUTABLE else None
            with open(executable or os.devnull, "wb") as copy:
                while block := data.read(1 << 20):
                    digest.update(block)
                    copy.write(block)
            found.files[member.name] = digest.hexdigest()
            if executable is not None:
                found.modules = _frozen_modules(executable)
    return found


def _frozen_modules(executable: Path) -> list[str]:
    from PyInstaller.archive.readers import ArchiveReadError, CArchiveReader

    try:
        pkg = CArchiveReader(str(executable))
    except ArchiveReadError:
        return []  # not a PyInstaller executable (tests freeze a shell script)
    modules = [name for name, entry in pkg.toc.items() if entry[-1] in "mMs"]
    for name, entry in pkg.toc.items():
        if entry[-1] == "z":
            modules += list(pkg.open_embedded_archive(name).toc)
    return sorted(set(modules))


# ---------------------------------------------------------------------------- the document


def _bom(manifest: Manifest, shipped: dict[str, str], found: Inventory) -> Bom:
    artifact = Component(
        type=ComponentType.APPLICATION,
        name=manifest.name,
        version=manifest.version,
        bom_ref="artifact",
        description="encoderfile artifact: an embedding model frozen with its runtime",
        components=[_file(name, sha, "artifact") for name, sha in sorted(shipped.items())],
    )
    owners = _owners()
    components = [*_models(manifest), *_runtime(found, owners)]
    unattributed = _unattributed(found, owners)
    bom = Bom(
        metadata=BomMetaData(
            component=artifact,
            tools=ToolRepository(components=_tools(manifest)),
            properties=[Property(name="encoderfile:unattributed-modules", value=unattributed)]
            if unattributed
            else [],
        ),
        components=components,
        serial_number=uuid.UUID(int=0),
    )
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    bom.metadata.timestamp = datetime.fromtimestamp(int(epoch), UTC) if epoch else None  # type: ignore[assignment]
    bom.register_dependency(artifact, components)
    return bom


def _tools(manifest: Manifest) -> list[Component]:
    versions = {"encoderfile": encoderfile.__version__}
    for name in BUILD_TOOLS:
        versions[name] = manifest.tools.get(name) or metadata.version(name)
    return [
        Component(
            type=ComponentType.APPLICATION if name == "pyinstaller" else ComponentType.LIBRARY,
            name=name,
            version=version,
            bom_ref=f"tool:{name}",
            purl=PackageURL("pypi", name=name, version=version),
        )
        for name, version in versions.items()
    ]


def _file(name: str, sha256: str, parent: str, **props: str) -> Component:
    return Component(
        type=ComponentType.FILE,
        name=name,
        bom_ref=f"{parent}:{name}",
        hashes=[HashTypeFactory().from_hashlib_alg("sha256", sha256)],
        properties=[Property(name=f"encoderfile:{k}", value=v) for k, v in sorted(props.items())],
    )


def _models(manifest: Manifest) -> list[Component]:
    """The text model (model + tokenizer) and the image model, if any."""
    files = manifest.files
    models = []
    if manifest.model is not None:
        models.append(
            _model(
                "model",
                manifest.name,
                manifest.version,
                {k: files[k] for k in (MODEL_FILE, TOKENIZER_FILE)},
                manifest.model,
                manifest.steps,
                {
                    "dimension": manifest.dimension,
                    "dimensions": list(manifest.dimensions),
                    "normalized": manifest.normalized,
                    "max_length": manifest.max_length,
                    "precision": manifest.precision.mode,
                    "kind": manifest.kind,
                    "score": manifest.score.to_dict() if manifest.score else None,
                },
            )
        )
    if image := manifest.image:
        models.append(
            _model(
                "image-model",
                f"{manifest.name}-vision",
                manifest.version,
                {VISION_FILE: files[VISION_FILE]},
                image.model,
                image.steps,
                {"dimension": manifest.dimension, "size": image.size},
            )
        )
    return models


def _model(
    ref: str,
    name: str,
    version: str,
    files: dict[str, str],
    source: ModelSource,
    steps: tuple[dict[str, Any], ...],
    shape: dict[str, Any],
) -> Component:
    """A compiled model, with the source it was compiled from as its pedigree."""
    hub = source.source == "hub"
    origin = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=(source.repo if hub else source.path) or "",
        version=source.revision,
        bom_ref=f"{ref}:source",
        components=[
            _file(path, sha, f"{ref}:source") for path, sha in sorted(source.files.items())
        ],
        external_references=[
            ExternalReference(
                type=ExternalReferenceType.DISTRIBUTION,
                url=XsUri(f"https://huggingface.co/{source.repo}/tree/{source.revision}"),
            )
        ]
        if hub
        else [],
        properties=[Property(name="encoderfile:source", value=source.source)],
    )
    described = {"steps": list(steps), **shape}
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=name,
        version=version,
        bom_ref=ref,
        description="the source model with the recipe's steps spliced into its ONNX graph",
        components=[_file(path, sha, ref) for path, sha in sorted(files.items())],
        pedigree=Pedigree(ancestors=[origin]),
        properties=[
            Property(name=f"encoderfile:{key}", value=_text(value))
            for key, value in sorted(described.items())
            if value is not None
        ],
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# ------------------------------------------------------------------------------ the runtime


def _runtime(found: Inventory, owners: _Owners) -> list[Component]:
    """One component per distribution PyInstaller collected, the interpreter, system libraries."""
    files: dict[str, dict[str, str]] = defaultdict(dict)
    modules: dict[str, int] = defaultdict(int)
    for module in found.modules:
        if dist := _module_owner(module, owners):
            modules[dist] += 1
    python: dict[str, str] = {}
    system: dict[str, str] = {}
    for path, sha in sorted(found.files.items()):
        inner = path.removeprefix(INTERNAL)
        if dist := owners.files.get(inner):
            files[dist][path] = sha
        elif path == EXECUTABLE:
            files["pyinstaller"][path] = sha  # bootloader + archive of the frozen modules
        elif inner.startswith(("python3", "base_library.zip", "libpython")):
            python[path] = sha
        elif (listed := _dist_of_metadata(inner)) in owners.dists:  # not in its RECORD
            files[listed][path] = sha
        else:
            system[path] = sha
    components = [
        _distribution(owners.dists[name], files[name], modules[name])
        for name in sorted(set(files) | set(modules))
    ]
    components.append(_interpreter(python))
    components += [_system_library(path, sha) for path, sha in sorted(system.items())]
    return components


@dataclass
class _Owners:
    dists: dict[str, metadata.Distribution]  # normalized name -> distribution
    files: dict[str, str]  # path relative to site-packages -> normalized name
    modules: dict[str, str]  # dotted module name -> normalized name


@functools.cache  # what is installed does not change while a process runs
def _owners() -> _Owners:
    """Who installed what, from every distribution's RECORD (first on sys.path wins)."""
    owners = _Owners({}, {}, {})
    for dist in metadata.distributions():
        name = _normalize(dist.metadata["Name"])
        if name in owners.dists:
            continue
        owners.dists[name] = dist
        for record in dist.files or []:
            path = record.as_posix()
            if path.startswith(".."):
                continue
            owners.files.setdefault(path, name)
            if module := _module_name(path):
                owners.modules.setdefault(module, name)
    # an editable install records a path hook, not its modules
    owners.modules.setdefault("encoderfile", "encoderfile")
    for module, name in list(owners.modules.items()):  # namespace packages such as google
        parts = module.split(".")
        for end in range(1, len(parts)):
            owners.modules.setdefault(".".join(parts[:end]), name)
    return owners


def _module_name(path: str) -> str | None:
    parts = path.split("/")
    stem = parts[-1]
    if stem.endswith(".py"):
        stem = stem[:-3]
    elif EXTENSION.search(stem):
        stem = stem.split(".")[0]
    else:
        return None
    parts = parts[:-1] if stem == "__init__" else [*parts[:-1], stem]
    return ".".join(parts) if all(p.isidentifier() for p in parts) else None


def _module_owner(module: str, owners: _Owners) -> str | None:
    """The distribution of `module` or of its closest package (e.g. encoderfile.runtime.cli)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if owner := owners.modules.get(".".join(parts[:end])):
            return owner
    return None


def _unattributed(found: Inventory, owners: _Owners) -> str:
    """Frozen modules outside the stdlib that no distribution claims (empty when all is known)."""
    stdlib = sys.stdlib_module_names
    loose = [
        m
        for m in found.modules
        if m.split(".")[0] not in stdlib
        and not m.startswith(("pyi", "_sysconfigdata"))  # PyInstaller's loader; Python's build
        and m != "entry"
        and _module_owner(m, owners) is None
    ]
    return " ".join(loose)


def _dist_of_metadata(path: str) -> str | None:
    """`name` for a path in a name-version.dist-info folder."""
    folder = path.split("/")[0]
    if not folder.endswith(".dist-info"):
        return None
    return _normalize(folder.removesuffix(".dist-info").rsplit("-", 1)[0])


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(dist: metadata.Distribution, files: dict[str, str], modules: int) -> Component:
    name = _normalize(dist.metadata["Name"])
    recorded = {
        record.as_posix(): record.hash.value
        for record in dist.files or []
        if record.hash and record.hash.mode == "sha256"
    }
    shipped = []
    for path, sha in sorted(files.items()):
        installed = recorded.get(path.removeprefix(INTERNAL))
        installed_hex = base64.urlsafe_b64decode(installed + "==").hex() if installed else None
        extra = {"installed-sha256": installed_hex} if installed_hex not in (None, sha) else {}
        shipped.append(_file(path, sha, f"pypi:{name}", **extra))  # type: ignore[arg-type]
    return Component(
        type=ComponentType.LIBRARY,
        name=name,
        version=dist.version,
        bom_ref=f"pypi:{name}",
        purl=PackageURL("pypi", name=name, version=dist.version),
        licenses=_licenses(dist),
        components=shipped,
        properties=[Property(name="encoderfile:frozen-modules", value=str(modules))],
    )


def _licenses(dist: metadata.Distribution) -> list[License]:
    meta: Any = dist.metadata  # an email.message.Message
    factory = LicenseFactory()
    if expression := meta.get("License-Expression"):
        return [factory.make_from_string(expression)]
    declared = (meta.get("License") or "").strip()
    if declared and "\n" not in declared and len(declared) <= 100:
        return [factory.make_from_string(declared)]
    classifiers = [
        c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
    ]
    return [factory.make_with_name(c) for c in classifiers if c != "OSI Approved"]


def _interpreter(files: dict[str, str]) -> Component:
    version = platform.python_version()
    return Component(
        type=ComponentType.PLATFORM,
        name=platform.python_implementation().lower(),
        version=version,
        bom_ref="python",
        purl=PackageURL("generic", name="cpython", version=version),
        licenses=[LicenseFactory().make_with_id("PSF-2.0")],
        description="the Python interpreter and the stdlib modules frozen with it",
        components=[_file(path, sha, "python") for path, sha in sorted(files.items())],
    )


def _system_library(path: str, sha256: str) -> Component:
    """A shared library PyInstaller took from the system, with its Debian package if known."""
    name = Path(path).name
    package = _debian_package(name)
    component = Component(
        type=ComponentType.LIBRARY,
        name=name,
        bom_ref=f"native:{name}",
        hashes=[HashTypeFactory().from_hashlib_alg("sha256", sha256)],
        properties=[Property(name="encoderfile:path", value=path)],
    )
    if package:
        deb, version, arch = package
        component.version = version
        component.purl = PackageURL(
            "deb", namespace="debian", name=deb, version=version, qualifiers={"arch": arch}
        )
        component.properties.add(Property(name="encoderfile:debian-package", value=deb))
    return component


def _debian_package(soname: str) -> tuple[str, str, str] | None:
    """(package, version, arch) that installed `soname`, via ldconfig and dpkg; None if unknown."""
    dpkg = shutil.which("dpkg-query")
    path = _ldconfig().get(soname)
    if dpkg is None or path is None:
        return None
    candidates = {path, os.path.realpath(path)}
    candidates |= {"/usr" + p for p in candidates if p.startswith("/lib/")}  # merged /usr
    for candidate in sorted(candidates):
        owner = subprocess.run([dpkg, "-S", candidate], capture_output=True, text=True)
        if owner.returncode != 0:
            continue
        package = owner.stdout.split(": ", 1)[0]  # e.g. libstdc++6:amd64
        fields = "${Package} ${Version} ${Architecture}"
        query = subprocess.run([dpkg, "-W", "-f", fields, package], capture_output=True, text=True)
        if query.returncode == 0 and len(query.stdout.split()) == 3:
            name, version, arch = query.stdout.split()
            return name, version, arch
    return None


@functools.cache
def _ldconfig() -> dict[str, str]:
    """soname -> path of the system's shared libraries (the first ldconfig lists)."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in listing.splitlines()[1:]:
        if " => " in line:
            name, path = line.strip().split(" (", 1)[0], line.rsplit(" => ", 1)[1]
            found.setdefault(name, path)
    return found
