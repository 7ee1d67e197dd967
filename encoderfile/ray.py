"""Embed a Ray Dataset with an encoderfile artifact: the executable is what workers run.

`pip install encoderfile[ray]` on the driver; workers need Ray (with ray[data]) and nothing of
encoderfile: the artifact's bytes travel through Ray's object store, each node caches them once,
and every actor of the pool keeps one artifact process running (`ARTIFACT stream`, the batch
protocol of encoderfile/runtime/stream.py), so every worker computes with exactly the runtime
frozen into the file. This module is pickled by value for the workers, so the code the actors
run imports only the standard library, numpy and pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# the artifact's stream protocol (encoderfile/runtime/stream.py); the actors cannot import it
# (and a struct.Struct cannot be pickled by value: a format string it is)
FRAME = "<4sII"
FRAME_SIZE = struct.calcsize(FRAME)
HELLO, VECTORS, REFUSED = b"EFHI", b"EFOK", b"EFER"
DEFAULT_BATCH_SIZE = 256
RESTARTS = 2  # artifact processes an actor restarts for one batch before the batch fails


class StreamError(RuntimeError):
    """The artifact process refused a batch or died."""


class ArtifactProcess:
    """One `ARTIFACT stream` process: batches of texts in, float32 rows out."""

    def __init__(self, command: list[str]):
        self.command = command
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - a full, unread pipe would block it
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr
        )
        kind, length, _ = self._frame()
        if kind != HELLO:
            raise StreamError(f"{command[0]} did not greet with {HELLO!r} (got {kind!r})")
        self.info: dict[str, Any] = json.loads(self._read(length))
        self.width = int(self.info["width"])

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        line = json.dumps({"texts": texts}, ensure_ascii=False).encode("utf-8") + b"\n"
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line)
            self.process.stdin.flush()
        except BrokenPipeError:
            raise StreamError(self._died()) from None
        kind, a, b = self._frame()
        if kind == REFUSED:
            raise ValueError(self._read(a).decode("utf-8", "replace"))
        if kind != VECTORS or b != self.width or a != len(texts):
            raise StreamError(f"unexpected frame {kind!r} ({a} x {b}) for {len(texts)} texts")
        return np.frombuffer(self._read(a * b * 4), dtype="<f4").reshape(a, b)

    def close(self) -> None:
        self.stderr.close()
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _frame(self) -> tuple[bytes, int, int]:
        kind, a, b = struct.unpack(FRAME, self._read(FRAME_SIZE))
        return kind, a, b

    def _read(self, n: int) -> bytes:
        assert self.process.stdout is not None
        data = self.process.stdout.read(n)
        if len(data) != n:
            raise StreamError(self._died())
        return data

    def _died(self) -> str:
        code = self.process.wait()
        self.stderr.seek(0)
        err = self.stderr.read().decode("utf-8", "replace")
        return f"{self.command[0]} exited with status {code}: {err.strip()[-2000:]}"


def local_copy(artifact: Any, sha256: str, name: str) -> str:
    """The artifact as an executable file on this node: a shared path as given, or its shipped
    bytes (an object reference) written once per node under $TMPDIR/encoderfile-ray/<sha256>/."""
    if isinstance(artifact, str):
        return artifact
    target = Path(tempfile.gettempdir()) / "encoderfile-ray" / sha256 / name
    if not target.exists():
        import ray

        data = ray.get(artifact)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StreamError(f"the shipped copy of {name} fails its sha256 check")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # concurrent actors on one node write the same bytes
    return str(target)


class EmbedBatches:
    """The map_batches callable: one artifact process per actor, restarted if it dies."""

    def __init__(
        self,
        artifact: Any,
        sha256: str,
        name: str,
        text_column: str,
        embedding_column: str,
        options: list[str],
    ):
        self.command = [local_copy(artifact, sha256, name), "stream", *options]
        self.text_column, self.embedding_column = text_column, embedding_column
        self.process: ArtifactProcess | None = None
        self.width = self._retry(lambda process: process.width)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        vectors = self._retry(lambda process: process.embed(texts))
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, self.width)
        return batch.append_column(self.embedding_column, column)

    def _retry(self, step: Any) -> Any:
        """`step(process)`; a process that dies is replaced and the step retried, RESTARTS times."""
        restarts = 0
        while True:
            try:
                if self.process is None:
                    self.process = ArtifactProcess(self.command)
                return step(self.process)
            except StreamError:
                if self.process is not None:
                    self.process.close()
                    self.process = None
                restarts += 1
                if restarts > RESTARTS:
                    raise

    def __del__(self) -> None:
        process = getattr(self, "process", None)
        if process is not None:
            process.close()


def embed(
    dataset: Any,
    artifact: str | os.PathLike[str],
    *,
    text_column: str = "text",
    embedding_column: str = "embedding",
    workers: int = 2,
    min_workers: int = 1,
    threads: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prompt: str | None = None,
    dimensions: int | None = None,
    shared_path: bool = False,
) -> Any:
    """`dataset` (a ray.data.Dataset with a string `text_column`) with `embedding_column` added:
    float32 vectors (a fixed-size list column) computed by an actor pool of `min_workers` to
    `workers` actors, each running the artifact with `threads` onnxruntime threads and reserving
    as many CPUs. The pool starts small and grows while CPUs are free: a pool that took every CPU
    up front would starve the tasks that list and read the input (min_workers=workers fixes it).

    The artifact's bytes go to the workers through the object store; with `shared_path=True`
    they run `artifact` at the same path instead (a file system every node mounts).
    """
    import ray
    import ray.cloudpickle

    from encoderfile.errors import UsageError

    path = Path(artifact)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UsageError(f"{path} is not an executable artifact file. Build one, or fix the path.")
    for name, value in (("workers", workers), ("threads", threads), ("batch_size", batch_size)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}.")
    if not 1 <= min_workers <= workers:
        raise UsageError(f"min_workers must be from 1 to workers={workers}, got {min_workers}.")
    options = ["--threads", str(threads)]
    if prompt is not None:
        options += ["--prompt", prompt]
    if dimensions is not None:
        options += ["--dimensions", str(dimensions)]
    if shared_path:
        shipped: Any = str(path.resolve())
        digest = ""
    else:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        shipped = ray.put(data)  # fetched by the first actor on each node
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return dataset.map_batches(
        EmbedBatches,
        fn_constructor_kwargs={
            "artifact": shipped,
            "sha256": digest,
            "name": path.name,
            "text_column": text_column,
            "embedding_column": embedding_column,
            "options": options,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=min_workers, max_size=workers),
        num_cpus=threads,
    )


# Reading and writing are I/O beside the artifact processes, which reserve the CPUs: tasks that
# reserved a CPU too would wait forever when the actors hold all of them (2 actors, 2 CPUs).
WRITE_TASKS = {"num_cpus": 0}


def read(paths: list[str]) -> Any:
    """A Ray Dataset from JSONL (.jsonl, .json, optionally .gz) or Parquet files."""
    import ray.data

    from encoderfile.errors import UsageError

    kinds = {_kind(p) for p in paths}
    if kinds == {"parquet"}:
        return ray.data.read_parquet(paths, num_cpus=0)
    if kinds == {"json"}:
        return ray.data.read_json(paths, lines=True, num_cpus=0)
    raise UsageError(
        f"--input must be all JSONL (.jsonl, .json[.gz]) or all Parquet (.parquet), got "
        f"{', '.join(paths)}."
    )


def _kind(path: str) -> str | None:
    name = path.rstrip("/").lower().removesuffix(".gz")
    if name.endswith(".parquet") or (os.path.isdir(path) and any(Path(path).glob("*.parquet"))):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "json"
    return None


def embed_files(
    artifact: Path,
    inputs: list[str],
    output: Path,
    *,
    address: str | None = None,
    text_column: str = "text",
    **options: Any,
) -> int:
    """`encoderfile ray-embed`: JSONL/Parquet files → a directory of Parquet files, written
    beside `output` and renamed into place once complete; returns the number of rows."""
    import shutil

    from encoderfile.errors import UsageError

    try:
        import ray
    except ModuleNotFoundError:
        raise UsageError(
            "ray-embed needs Ray on this machine. Run: pip install 'encoderfile[ray]'."
        ) from None
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f"--output {output} already exists. Name a new directory.")
    missing = [p for p in inputs if not os.path.exists(p)]
    if missing:
        raise UsageError(f"--input {missing[0]} does not exist. Check the path.")
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        dataset = read(inputs)
        if text_column not in dataset.columns():
            raise UsageError(
                f"the input has no column {text_column!r} (columns: "
                f"{', '.join(dataset.columns())}). Pick one with --text-column."
            )
        result = embed(dataset, artifact, text_column=text_column, **options)
        staging = output.with_name(f".{output.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        result.write_parquet(str(staging), ray_remote_args=WRITE_TASKS)
        rows = int(ray.data.read_parquet(str(staging)).count())
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
        return rows
    finally:
        ray.shutdown()
