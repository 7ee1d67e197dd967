"""onnxruntime's optimised copy of an artifact's model, kept in the user's cache.

The first start of an artifact on a machine optimises model.onnx as usual and keeps the result
beside the extracted runtime, in <cache>/models/<key>/: model.onnx (the optimised graph),
model.data (its weights, page-aligned, so onnxruntime memory-maps them instead of copying them
onto the heap) and digest.json (the onnxruntime version and the sha256 of both files). <key>
covers the model's sha256, the CPU's features and FORMAT: an optimised graph may use instructions
of the CPU it was made on, so model.onnx inside the artifact stays the portable one.

Later starts load the copy without optimising it again. The integrity promise holds: the copy is
hashed against digest.json at every start, in a thread that runs while the runtime imports
onnxruntime, and a copy that fails (damaged, truncated, made by another onnxruntime) is made
again from the artifact's checked model.onnx. Bundle directories (development) do not use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encoderfile.errors import ArtifactError
from encoderfile.runtime.artifact import Bundle, read_entry
from encoderfile.runtime.manifest import MODEL_FILE

if TYPE_CHECKING:
    import onnxruntime as ort

FORMAT = 1  # bump when the layout or the session options that shape the copy change
DIGEST_FILE = "digest.json"
HASH_BLOCK = 1 << 22  # large reads: hashlib releases the GIL while it hashes each one


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
        self._digest: dict[str, Any] | None = None
        self._check = threading.Thread(target=self._verify, daemon=True)
        if self.dir is not None and (self.dir / DIGEST_FILE).is_file():
            self._check.start()

    def open(self, threads: int | None) -> ort.InferenceSession:
        """A session on the cached copy if it checks out, else on model.onnx (caching it)."""
        import onnxruntime as ort

        from encoderfile.runtime.session import open_session

        if self._check.ident is not None:
            self._check.join()
        digest = self._digest
        if self.dir is not None and digest and digest.get("onnxruntime") == ort.__version__:
            try:
                return open_session(self.dir / MODEL_FILE, threads, self.what, optimize=False)
            except ArtifactError:
                pass  # made by a build of onnxruntime that cannot read it back: make it again
        model = self.bundle.model or read_entry(MODEL_FILE, self.bundle.source, self.sha256)
        if not model:
            raise ArtifactError(f"{self.what}: missing from the artifact. Rebuild it.")
        if self.dir is None:
            return open_session(model, threads, self.what)
        return self._make(model, threads, ort.__version__)

    def _verify(self) -> None:
        """Set _digest if every file of the copy matches digest.json (run in a thread)."""
        assert self.dir is not None
        try:
            digest = json.loads((self.dir / DIGEST_FILE).read_text(encoding="utf-8"))
            files = digest["sha256"]
            present = {p.name for p in self.dir.iterdir()} - {DIGEST_FILE}
            if (
                MODEL_FILE in files
                and set(files) == present
                and all(file_sha256(self.dir / name) == want for name, want in files.items())
            ):
                self._digest = digest
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable or damaged: made again

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
            files = sorted(p.name for p in tmp.iterdir())
            digest = {"onnxruntime": version, "sha256": {n: file_sha256(tmp / n) for n in files}}
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buffer = bytearray(HASH_BLOCK)
        view = memoryview(buffer)
        while size := fh.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()
