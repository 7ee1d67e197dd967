"""Open a bundle from a directory or from an artifact file, checking every file's sha256."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoderfile.errors import ArtifactError

FORMAT_VERSION = 1
MAGIC = b"ENCFILE1"
TRAILER = struct.Struct("<8sQQ")  # magic, index offset, index length (24 bytes, end of file)
FILES = ("model.onnx", "tokenizer.json", "manifest.json")
OPTIONAL_FILES = ("vision.onnx",)  # present when the manifest lists them
ARTIFACT_ENV = "ENCODERFILE_ARTIFACT"


@dataclass(frozen=True)
class Manifest:
    """The typed view of manifest.json that the runtime needs; `raw` keeps every key."""

    name: str
    version: str
    dimension: int
    dimensions: tuple[int, ...]
    normalized: bool
    prompts: dict[str, str]
    default_prompt: str | None
    max_length: int
    padding_side: str
    files: dict[str, str]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "manifest.json") -> Manifest:
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
            found = raw.get("format_version") if isinstance(raw, dict) else type(raw).__name__
            raise ArtifactError(
                f"{source} has format_version {found!r}; this runtime reads {FORMAT_VERSION}. "
                "Rebuild the bundle with a matching encoderfile."
            )
        try:
            tok = raw["tokenizer"] or {}  # null in an image-only bundle
            manifest = cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                dimension=int(raw["dimension"]),
                dimensions=tuple(int(d) for d in raw.get("dimensions") or [raw["dimension"]]),
                normalized=bool(raw["normalized"]),
                prompts={str(k): str(v) for k, v in (raw.get("prompts") or {}).items()},
                default_prompt=raw.get("default_prompt"),
                max_length=int(tok["max_length"]) if raw["tokenizer"] else 0,
                padding_side=str(tok.get("padding_side", "right")),
                files={str(k): str(v) for k, v in raw["files"].items()},
                raw=raw,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(
                f"{source} is malformed ({type(e).__name__}: {e}). Rebuild the bundle."
            ) from None
        if manifest.default_prompt is not None and manifest.default_prompt not in manifest.prompts:
            raise ArtifactError(
                f"{source}: default_prompt {manifest.default_prompt!r} is not among the prompts "
                f"({', '.join(manifest.prompts) or 'none'}). Rebuild the bundle."
            )
        return manifest

    @property
    def golden(self) -> dict[str, Any] | None:
        return self.raw.get("golden")

    @property
    def has_text(self) -> bool:
        """False for a bundle holding an image model alone."""
        return "model.onnx" in self.files

    @property
    def image(self) -> dict[str, Any] | None:
        """The image model's section (size, mean/std, steps, golden), or None without one."""
        return self.raw.get("image")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: manifest, model bytes and tokenizer JSON, read from `source`."""

    manifest: Manifest
    model: bytes = field(repr=False)
    tokenizer: str = field(repr=False)
    source: Path
    hashes: dict[str, str]  # sha256 of each embedded file as found (equal to manifest.files)
    vision: bytes | None = field(default=None, repr=False)  # vision.onnx, when there is one


def resolve_source(path: str | os.PathLike[str] | None = None) -> Path:
    """The bundle to run: `path` if given, else the artifact named by $ENCODERFILE_ARTIFACT."""
    if path is None:
        env = os.environ.get(ARTIFACT_ENV)
        if not env:
            raise ArtifactError(
                f"no bundle to run: ${ARTIFACT_ENV} is unset. Run the artifact itself, "
                "or pass --bundle DIR to run a bundle directory."
            )
        path = env
    return Path(path)


def read_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Only the manifest, without reading or hashing the model (for --version)."""
    reader = _Reader.open(resolve_source(path))
    try:
        return Manifest.from_dict(_parse_json(reader.read("manifest.json"), reader.describe()))
    finally:
        reader.close()


def open_bundle(path: str | os.PathLike[str] | None = None) -> Bundle:
    """Open a bundle directory or artifact file and check each file against the manifest."""
    source = resolve_source(path)
    reader = _Reader.open(source)
    try:
        where = reader.describe()
        manifest = Manifest.from_dict(_parse_json(reader.read("manifest.json"), where), where)
        text = ["model.onnx", "tokenizer.json"] if manifest.has_text else []
        names = text + [f for f in OPTIONAL_FILES if f in manifest.files]
        data = {name: reader.read(name) for name in names}
    finally:
        reader.close()
    hashes = {}
    for name, blob in data.items():
        expected = manifest.files.get(name)
        if expected is None:
            raise ArtifactError(
                f"{where}: manifest.json lists no sha256 for {name}. Rebuild the bundle."
            )
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected:
            raise ArtifactError(
                f"{where}: {name} fails its sha256 check (manifest {expected[:12]}…, "
                f"found {actual[:12]}…). The file is damaged or was modified; rebuild it."
            )
        hashes[name] = actual
    try:
        tokenizer = data.get("tokenizer.json", b"").decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{where}: tokenizer.json is not UTF-8. Rebuild the bundle.") from None
    return Bundle(
        manifest,
        data.get("model.onnx", b""),
        tokenizer,
        source,
        hashes,
        data.get(OPTIONAL_FILES[0]),
    )


def read_trailer(fh: Any, size: int) -> tuple[int, int]:
    """(index offset, index length) from the 24-byte trailer of an artifact file."""
    if size < TRAILER.size:
        raise ValueError("file too short")
    fh.seek(size - TRAILER.size)
    magic, offset, length = TRAILER.unpack(fh.read(TRAILER.size))
    if magic != MAGIC or offset + length > size - TRAILER.size:
        raise ValueError("no encoderfile trailer")
    return offset, length


def _parse_json(blob: bytes, where: str) -> Any:
    try:
        return json.loads(blob)
    except ValueError as e:
        raise ArtifactError(
            f"{where}: manifest.json is not valid JSON ({e}). Rebuild it."
        ) from None


class _Reader:
    """Reads named files from a bundle directory or, in place, from an artifact file."""

    def __init__(self, source: Path, fh: Any = None, index: dict[str, list[int]] | None = None):
        self.source, self.fh, self.index = source, fh, index

    @classmethod
    def open(cls, source: Path) -> _Reader:
        if source.is_dir():
            return cls(source)
        try:
            fh = open(source, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise ArtifactError(
                f"cannot open bundle {source}: {e.strerror}. Pass a bundle directory or artifact."
            ) from None
        try:
            offset, length = read_trailer(fh, os.fstat(fh.fileno()).st_size)
            fh.seek(offset)
            index = json.loads(fh.read(length))["files"]
        except (ValueError, KeyError, TypeError):
            fh.close()
            raise ArtifactError(
                f"{source} is not an encoderfile artifact (no valid trailer/index). "
                "Pass a bundle directory or a complete artifact; re-download it if truncated."
            ) from None
        return cls(source, fh, index)

    def describe(self) -> str:
        return str(self.source)

    def read(self, name: str) -> bytes:
        if self.fh is None:
            try:
                return (self.source / name).read_bytes()
            except OSError as e:
                raise ArtifactError(
                    f"bundle {self.source} lacks {name} ({e.strerror}). Rebuild the bundle."
                ) from None
        assert self.index is not None
        if name not in self.index:
            raise ArtifactError(f"{self.source}: artifact index lacks {name}. Rebuild it.")
        offset, length = self.index[name]
        self.fh.seek(offset)
        blob: bytes = self.fh.read(length)
        if len(blob) != length:
            raise ArtifactError(f"{self.source}: {name} is truncated. Re-download or rebuild it.")
        return blob

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
