"""onnxruntime's optimised copy of an artifact's model, kept in the user's cache.

The first start of an artifact on a machine optimises model.onnx as usual and keeps the result
beside the extracted runtime, in <cache>/models/<key>/: model.onnx (the optimised graph),
model.data (its weights, page-aligned, so onnxruntime memory-maps them instead of copying them
onto the heap) and digest.json (the onnxruntime version and the sha256 of both files). <key>
covers the model's sha256, the CPU's features and FORMAT: an optimised graph may use instructions
of the CPU it was made on, so model.onnx inside the artifact stays the portable one.

It also holds the weights onnxruntime pre-packs for its matrix kernels (packing a 547 MB model
takes longer than everything else at start-up), so later starts map them instead of packing again.

Later starts load the copy without optimising it again. The integrity promise holds: every byte of
the copy is hashed against digest.json at every start. The graph and the files' sizes are checked
before onnxruntime reads anything; the weights are hashed in pieces, two at a time, in threads that
run while the runtime imports onnxruntime and opens the session, and the session is handed out only
once they match. A
copy that fails (damaged, truncated, made by another onnxruntime) is made again from the
artifact's checked model.onnx. Bundle directories (development) do not use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encoderfile.errors import ArtifactError
from encoderfile.runtime.artifact import Bundle, read_entry
from encoderfile.runtime.manifest import MODEL_FILE

if TYPE_CHECKING:
    import onnxruntime as ort

FORMAT = 3  # bump when the layout or the session options that shape the copy change
DIGEST_FILE = "digest.json"
HASH_BLOCK = 1 << 22  # large reads: hashlib releases the GIL while it hashes each one
PIECE = 1 << 26  # each file is hashed in pieces of this size, HASHERS at a time
HASHERS = 2


def cache_root(environ: os._Environ[str] | dict[str, str] = os.environ) -> Path:
    """Where the sh stub extracts runtimes: $XDG_CACHE_HOME/encoderfile, ~/.cache/encoderfile."""
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "encoderfile"
    if environ.get("HOME"):
        return Path(environ["HOME"]) / ".cache" / "encoderfile"
    return Path(environ.get("TMPDIR") or "/tmp") / f"encoderfile-{os.getuid()}"


def cpu_features() -> str:
    """The CPU's feature flags (Linux /proc/cpuinfo), or its architecture elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return os.uname().machine


class ModelCache:
    """The cached optimised copy of one bundle's model; its check starts at construction."""

    def __init__(self, bundle: Bundle, root: Path | None = None):
        self.bundle = bundle
        self.what = f"{bundle.source}: {MODEL_FILE}"
        self.sha256 = bundle.hashes.get(MODEL_FILE, "")
        self.dir: Path | None = None
        if bundle.source.is_file() and self.sha256:  # artifacts only
            key = hashlib.sha256(f"{FORMAT}\0{self.sha256}\0{cpu_features()}".encode())
            self.dir = (root or cache_root()) / "models" / key.hexdigest()[:32]
        self._opened: bytes | Path | None = None  # the checked source of the first session
        self._digest = self._read_digest() if self.dir is not None else None
        self._weights_match = False
        self._check = threading.Thread(target=self._hash_weights, daemon=True)
        if self._digest is not None:
            self._check.start()

    def open(self, threads: int | None) -> ort.InferenceSession:
        """A session on the cached copy if it checks out, else on model.onnx (caching it).

        Later calls open more sessions on the source the first one checked."""
        import onnxruntime as ort

        from encoderfile.runtime.session import open_session

        if self._opened is not None:
            optimize = isinstance(self._opened, bytes)
            return open_session(self._opened, threads, self.what, optimize=optimize)
        if self.dir is not None and self._digest and self._digest["onnxruntime"] == ort.__version__:
            copy = self.dir / MODEL_FILE
            try:
                session = open_session(copy, threads, self.what, optimize=False)
            except ArtifactError:  # made by a build of onnxruntime that cannot read it back
                session = None
            self._check.join()
            if session is not None and self._weights_match:
                self._opened = copy
                return session
        model = self.bundle.model or read_entry(MODEL_FILE, self.bundle.source, self.sha256)
        if not model:
            raise ArtifactError(f"{self.what}: missing from the artifact. Rebuild it.")
        self._opened = model
        if self.dir is None:
            return open_session(model, threads, self.what)
        return self._make(model, threads, ort.__version__)

    def _read_digest(self) -> dict[str, Any] | None:
        """digest.json, if the copy holds exactly its files, at their sizes, and the graph's sha256."""
        assert self.dir is not None
        try:
            digest = json.loads((self.dir / DIGEST_FILE).read_text(encoding="utf-8"))
            files = digest["files"]
            sizes = {p.name: p.stat().st_size for p in self.dir.iterdir() if p.name != DIGEST_FILE}
            if (
                isinstance(digest["onnxruntime"], str)
                and sizes == {name: entry["size"] for name, entry in files.items()}
                and piece_sha256s(self.dir / MODEL_FILE) == files[MODEL_FILE]["sha256"]
            ):
                return digest  # type: ignore[no-any-return]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable or damaged: made again
        return None

    def _hash_weights(self) -> None:
        """Set _weights_match if every file beside the graph matches digest.json (a thread)."""
        assert self.dir is not None and self._digest is not None
        files = self._digest["files"]
        with contextlib.suppress(OSError):
            self._weights_match = all(
                piece_sha256s(self.dir / name) == entry["sha256"]
                for name, entry in files.items()
                if name != MODEL_FILE
            )

    def _make(self, model: bytes, threads: int | None, version: str) -> ort.InferenceSession:
        """Optimise `model`, keeping the copy (written atomically); the cache is best effort."""
        from encoderfile.runtime.session import open_session

        assert self.dir is not None
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=f".{self.dir.name}."))
        except OSError:  # read-only cache: run without it
            return open_session(model, threads, self.what)
        try:
            try:
                session = open_session(model, threads, self.what, save_to=tmp / MODEL_FILE)
            except ArtifactError:  # e.g. a full disk; a broken model fails again just below
                return open_session(model, threads, self.what)
            files = {
                p.name: {"sha256": piece_sha256s(p), "size": p.stat().st_size}
                for p in sorted(tmp.iterdir())
            }
            digest = {"onnxruntime": version, "files": files}
            (tmp / DIGEST_FILE).write_text(json.dumps(digest, indent=1), encoding="utf-8")
            _publish(tmp, self.dir)
        except OSError:
            pass  # not kept: the next start optimises again
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return session


def _publish(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`, setting a stale copy aside first; a concurrent winner stays."""
    if target.exists():
        stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.stale."))
        with contextlib.suppress(OSError):
            os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    with contextlib.suppress(OSError):  # another process published first: keep its copy
        os.rename(tmp, target)


def piece_sha256s(path: Path) -> list[str]:
    """The sha256 of each PIECE of the file, HASHERS pieces at a time."""
    size = path.stat().st_size
    if size <= PIECE:
        return [_sha256(path, 0, size)]
    with ThreadPoolExecutor(HASHERS) as pool:
        return list(pool.map(lambda start: _sha256(path, start, PIECE), range(0, size, PIECE)))


def _sha256(path: Path, start: int, length: int) -> str:
    """The sha256 of `length` bytes of the file from `start` (fewer at its end)."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        while length > 0 and (size := fh.readinto(view[: min(HASH_BLOCK, length)])):
            digest.update(view[:size])
            length -= size
    return digest.hexdigest()
