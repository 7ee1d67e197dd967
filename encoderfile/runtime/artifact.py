"""The single-file layout: written by the builder, read in place by the runtime.

```
[ sh stub ][ runtime.tar.gz ][ entry ]…[ manifest.json ][ index json ][ trailer ]
trailer = MAGIC + uint64 LE index offset + uint64 LE index length   (24 bytes, end of file)
index   = {"runtime": [offset, length], "files": {name: [offset, length]}, "sha256": {name: hex}}
```
Every entry (manifest.json included) is checked against the index's sha256 when read, and the
bundle files also against manifest.json: a flipped byte anywhere in what shapes the output stops
the artifact. A bundle directory (development) is checked against manifest.json alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from encoderfile.errors import ArtifactError
from encoderfile.runtime.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    VISION_FILE,
    Manifest,
)

MAGIC = b"ENCFILE1"
TRAILER = struct.Struct("<8sQQ")  # magic, index offset, index length (24 bytes, end of file)
ARTIFACT_ENV = "ENCODERFILE_ARTIFACT"
BUNDLE_FILES = (MODEL_FILE, TOKENIZER_FILE, VISION_FILE)  # in artifact order, when present


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
    """Only the manifest (checked), without reading or hashing the model."""
    with _Reader.open(resolve_source(path)) as reader:
        return _manifest(reader)


def read_entry(
    name: str, path: str | os.PathLike[str] | None = None, expected: str | None = None
) -> bytes | None:
    """One checked entry of an artifact (e.g. an SBOM), or None if it has no such entry."""
    with _Reader.open(resolve_source(path)) as reader:
        return reader.read(name, expected) if reader.has(name) else None


def open_bundle(path: str | os.PathLike[str] | None = None, *, read_model: bool = True) -> Bundle:
    """Open a bundle directory or artifact file and check each file against the manifest.

    read_model=False leaves `model` empty (b""), for a caller that reads it only if it must
    (runtime/model_cache.py); the artifact's index must still agree with the manifest on it.
    """
    with _Reader.open(resolve_source(path)) as reader:
        where = str(reader.source)
        manifest = _manifest(reader)
        names = [n for n in BUNDLE_FILES if n in manifest.files]
        if manifest.has_text and TOKENIZER_FILE not in names:
            raise ArtifactError(f"{where}: manifest.json lists no sha256 for {TOKENIZER_FILE}.")
        if not read_model and MODEL_FILE in names:
            names.remove(MODEL_FILE)
            reader.agrees(MODEL_FILE, manifest.files[MODEL_FILE])
        data = {name: reader.read(name, manifest.files[name]) for name in names}
    try:
        tokenizer = data.get(TOKENIZER_FILE, b"").decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{where}: tokenizer.json is not UTF-8. Rebuild the bundle.") from None
    return Bundle(
        manifest,
        data.get(MODEL_FILE, b""),
        tokenizer,
        reader.source,
        {name: manifest.files[name] for name in (*data, MODEL_FILE) if name in manifest.files},
        data.get(VISION_FILE),
    )


def _manifest(reader: _Reader) -> Manifest:
    where = str(reader.source)
    try:
        raw = json.loads(reader.read(MANIFEST_FILE))
    except ValueError as e:
        raise ArtifactError(
            f"{where}: manifest.json is not valid JSON ({e}). Rebuild it."
        ) from None
    return Manifest.from_dict(raw, f"{where}: manifest.json")


def read_trailer(fh: IO[bytes], size: int) -> tuple[int, int]:
    """(index offset, index length) from the 24-byte trailer of an artifact file."""
    if size < TRAILER.size:
        raise ValueError("file too short")
    fh.seek(size - TRAILER.size)
    magic, offset, length = TRAILER.unpack(fh.read(TRAILER.size))
    if magic != MAGIC or offset + length > size - TRAILER.size:
        raise ValueError("no encoderfile trailer")
    return offset, length


def write(
    target: Path, stub: bytes, runtime: Path, entries: Sequence[tuple[str, Path | bytes]]
) -> Path:
    """Write an artifact atomically (chmod 755): stub, runtime archive, then `entries` in order.

    manifest.json must be among the entries; the index records each entry's sha256.
    """
    if MANIFEST_FILE not in {name for name, _ in entries}:
        raise ValueError("an artifact needs manifest.json")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(stub)
            index: dict[str, Any] = {"files": {}, "sha256": {}}
            index["runtime"] = _copy(runtime, out)[:2]
            for name, content in entries:
                offset, length, digest = _copy(content, out)
                index["files"][name] = [offset, length]
                index["sha256"][name] = digest
            index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
            index_offset = out.tell()
            out.write(index_bytes)
            out.write(TRAILER.pack(MAGIC, index_offset, len(index_bytes)))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _copy(content: Path | bytes, out: IO[bytes]) -> tuple[int, int, str]:
    """Append a file or bytes to `out`: (offset, length, sha256)."""
    start, digest = out.tell(), hashlib.sha256()
    if isinstance(content, bytes):
        out.write(content)
        digest.update(content)
    else:
        with open(content, "rb") as src:
            while block := src.read(1 << 20):
                out.write(block)
                digest.update(block)
    return start, out.tell() - start, digest.hexdigest()


class _Reader:
    """Reads named, hash-checked entries from a bundle directory or, in place, an artifact."""

    def __init__(self, source: Path, fh: IO[bytes] | None = None, index: Any = None):
        self.source, self.fh = source, fh
        self.offsets: dict[str, list[int]] = index["files"] if index else {}
        self.sha256: dict[str, str] = index.get("sha256", {}) if index else {}

    @classmethod
    def open(cls, source: Path) -> _Reader:
        if source.is_dir():
            return cls(source)
        try:
            fh = open(source, "rb")  # noqa: SIM115 - closed by __exit__
        except OSError as e:
            raise ArtifactError(
                f"cannot open bundle {source}: {e.strerror}. Pass a bundle directory or artifact."
            ) from None
        try:
            offset, length = read_trailer(fh, os.fstat(fh.fileno()).st_size)
            fh.seek(offset)
            index = json.loads(fh.read(length))
            if not isinstance(index.get("files"), dict) or not isinstance(index["sha256"], dict):
                raise ValueError("index without files")
        except (ValueError, KeyError, TypeError, AttributeError):
            fh.close()
            raise ArtifactError(
                f"{source} is not an encoderfile artifact (no valid trailer/index). "
                "Pass a bundle directory or a complete artifact; re-download it if truncated."
            ) from None
        return cls(source, fh, index)

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()

    def has(self, name: str) -> bool:
        return name in self.offsets if self.fh else (self.source / name).is_file()

    def agrees(self, name: str, expected: str) -> None:
        """The index (of an artifact) records `expected` as the entry's sha256."""
        if self.fh is not None and self.sha256.get(name) != expected:
            raise ArtifactError(
                f"{self.source}: the index and manifest.json disagree on {name}'s sha256. "
                "The file is damaged or was modified; rebuild it."
            )

    def read(self, name: str, expected: str | None = None) -> bytes:
        """The entry's bytes, checked against the index (artifact) and `expected` if given."""
        blob = self._read(name)
        actual = hashlib.sha256(blob).hexdigest()
        for wanted, by in ((self.sha256.get(name), "index"), (expected, "manifest")):
            if self.fh is not None and by == "index" and wanted is None:
                raise ArtifactError(
                    f"{self.source}: the index has no sha256 for {name}. Rebuild it."
                )
            if wanted is not None and actual != wanted:
                want, found = short_pair(wanted, actual)
                raise ArtifactError(
                    f"{self.source}: {name} fails its sha256 check ({by} {want}, "
                    f"found {found}). The file is damaged or was modified; rebuild it."
                )
        return blob

    def _read(self, name: str) -> bytes:
        if self.fh is None:
            try:
                return (self.source / name).read_bytes()
            except OSError as e:
                raise ArtifactError(
                    f"bundle {self.source} lacks {name} ({e.strerror}). Rebuild the bundle."
                ) from None
        if name not in self.offsets:
            raise ArtifactError(f"{self.source}: artifact index lacks {name}. Rebuild it.")
        offset, length = self.offsets[name]
        self.fh.seek(offset)
        blob = self.fh.read(length)
        if len(blob) != length:
            raise ArtifactError(f"{self.source}: {name} is truncated. Re-download or rebuild it.")
        return blob


def short_pair(a: str, b: str, length: int = 12) -> tuple[str, str]:
    """Two hex digests shortened for a message, but never to the same text: each keeps
    `length` characters, or 4 past the first one where they differ."""
    if a == b:
        return a[:length] + "…", b[:length] + "…"
    pairs = enumerate(zip(a, b, strict=False))
    keep = max(length, next((i for i, (x, y) in pairs if x != y), min(len(a), len(b))) + 4)

    def cut(h: str) -> str:
        return h if len(h) <= keep else h[:keep] + "…"

    return cut(a), cut(b)
