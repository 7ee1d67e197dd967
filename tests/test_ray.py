"""encoderfile.ray and `encoderfile ray-embed` on a local Ray cluster (2 CPUs, 127.0.0.1) with a
frozen artifact: the CLI's vectors bitwise, workers that import no encoderfile, crashes retried."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from encoderfile import ray as on_ray
from tests.fixtures.artifacts import run_artifact
from tests.runtime.test_shards import write_corpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2-CPU Ray head on loopback; its workers extract artifacts under the returned cache. The
    copies of artifacts shipped to the node this module adds are removed when it ends."""
    cache = tmp_path_factory.mktemp("ray-xdg-cache")
    shipped = Path(tempfile.gettempdir()) / "encoderfile-ray"
    shipped_before = set(shipped.iterdir()) if shipped.is_dir() else set()
    for attempt in range(3):  # Ray gives its raylet 30 s to register: a loaded machine may miss it
        try:
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
                runtime_env={"env_vars": {"XDG_CACHE_HOME": str(cache)}},
            )
            break
        except Exception:  # Ray raises a bare Exception here
            ray.shutdown()
            if attempt == 2:
                raise
    yield cache
    ray.shutdown()
    if shipped.is_dir():
        for copy in set(shipped.iterdir()) - shipped_before:
            shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("ray-corpus") / "corpus.jsonl", 3000, seed=5)


@pytest.fixture(scope="module")
def cli_vectors(tiny_artifact: Path, corpus: Path, artifact_env: dict[str, str]) -> np.ndarray:
    """What `tiny embed --input corpus.jsonl --format npy` writes."""
    out = corpus.with_suffix(".npy")
    done = run_artifact(
        tiny_artifact, "embed", "--input", str(corpus), "--format", "npy", "-o", str(out),
        env=artifact_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return np.load(out)


def by_id(rows: list[dict]) -> np.ndarray:
    order = sorted(rows, key=lambda r: int(r["id"].removeprefix("doc-")))
    assert [r["id"] for r in order] == [f"doc-{i}" for i in range(len(rows))]  # exactly once
    return np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in order])


def test_dataset_vectors_equal_the_cli_bitwise(
    cluster: Path, tiny_artifact: Path, corpus: Path, cli_vectors: np.ndarray
) -> None:
    result = on_ray.embed(on_ray.read([str(corpus)]), tiny_artifact, workers=2, batch_size=100)
    rows = result.take_all()
    assert set(rows[0]) == {"id", "text", "embedding"}
    np.testing.assert_array_equal(by_id(rows), cli_vectors)


def test_workers_import_no_encoderfile_and_no_onnxruntime(
    cluster: Path, tiny_artifact: Path
) -> None:
    import pyarrow as pa

    ray.cloudpickle.register_pickle_by_value(on_ray)
    data = tiny_artifact.read_bytes()
    digest = __import__("hashlib").sha256(data).hexdigest()

    @ray.remote(runtime_env={"env_vars": {"ENCODERFILE_TEST_FRESH_WORKER": "1"}})
    def one_batch(artifact: object) -> tuple[list[str], list[float]]:
        embed = on_ray.EmbedBatches(artifact, digest, "tiny", "text", "embedding", [])
        table = embed(pa.table({"text": ["hello world"]}))
        loaded = [m for m in sys.modules if m.split(".")[0] in ("encoderfile", "onnxruntime")]
        return loaded, table.column("embedding")[0].as_py()

    loaded, vector = ray.get(one_batch.remote([ray.put(data)]))
    assert loaded == []
    assert len(vector) == 8


def _artifact_processes(cache: Path) -> list[int]:
    """pids of artifact processes run by this cluster's workers (their runtime is in `cache`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "exe").startswith(str(cache)):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("victim", ["artifact process", "actor"])
def test_a_crash_mid_job_is_retried_and_every_record_is_written_once(
    cluster: Path,
    tiny_artifact: Path,
    corpus: Path,
    cli_vectors: np.ndarray,
    victim: str,
) -> None:
    killed: list[int] = []
    earlier = set(_artifact_processes(cluster))  # of earlier jobs' actors, maybe still exiting
    job_done = threading.Event()

    def kill_one_once_running() -> None:
        while not job_done.is_set() and not killed:
            pids = sorted(set(_artifact_processes(cluster)) - earlier)
            if pids:
                # Starting or embedding: both must survive. On an idle machine the job can end
                # within a second of its first artifact process, so the kill comes soon.
                time.sleep(0.2)
                try:
                    pid = pids[0] if victim == "artifact process" else _parent(pids[0])
                    os.kill(pid, signal.SIGKILL)
                except (OSError, IndexError):  # it ended meanwhile: pick another
                    continue
                killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_once_running)
    killer.start()
    dataset = on_ray.read([str(corpus)])
    try:
        rows = on_ray.embed(dataset, tiny_artifact, workers=2, batch_size=5).take_all()
    finally:
        job_done.set()
        killer.join()
    assert killed, "nothing was killed: the job ended before any artifact process was seen"
    assert len(rows) == 3000
    np.testing.assert_array_equal(by_id(rows), cli_vectors)


def ray_embed(*args: str) -> subprocess.CompletedProcess[str]:
    """`encoderfile ray-embed ...` run by the builder's console script, as users run it."""
    script = Path(sys.executable).with_name("encoderfile")
    return subprocess.run(
        [str(script), "ray-embed", *args], capture_output=True, text=True, timeout=300
    )


def test_ray_embed_command_reads_jsonl_or_parquet_and_writes_parquet(
    cluster: Path, tiny_artifact: Path, corpus: Path, cli_vectors: np.ndarray, tmp_path: Path
) -> None:
    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "vectors"
    done = ray_embed(str(tiny_artifact), "--input", str(corpus), "--output", str(out),
                     "--address", address, "--workers", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"embedded 3000 rows into {out}" in done.stderr
    np.testing.assert_array_equal(by_id(pq.read_table(out).to_pylist()), cli_vectors)

    pq.write_table(pq.read_table(out).drop_columns(["embedding"]), tmp_path / "corpus.parquet")
    out2 = tmp_path / "from-parquet"
    done = ray_embed(str(tiny_artifact), "--input", str(tmp_path / "corpus.parquet"),
                     "--output", str(out2), "--address", address)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(by_id(pq.read_table(out2).to_pylist()), cli_vectors)

    refused = ray_embed(str(tiny_artifact), "--input", str(corpus), "--output", str(out))
    assert refused.returncode == 2
    assert refused.stderr == f"encoderfile: --output {out} already exists. Name a new directory.\n"
