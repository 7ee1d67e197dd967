"""`embed --output-dir`: shards, journal, resume after SIGKILL, fingerprints, bounded memory.

Processes are started as users start them (`python -m encoderfile.runtime --bundle DIR embed`);
the frozen artifact runs the same code (tests/test_ray.py runs one).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from encoderfile.runtime import shards
from tests.fixtures.tiny_bundle import WORDS, make_tiny_bundle

pytestmark = pytest.mark.slow  # integration: embed in a process, SIGKILL and resume

ROOT = Path(__file__).resolve().parents[2]


def write_corpus(path: Path, n: int, seed: int = 0, start: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(start, start + n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        lines.append(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    data = "".join(lines).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def command(bundle: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(bundle), "embed", *args]


def embed(bundle: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command(bundle, *args), cwd=ROOT, capture_output=True, timeout=300)


def union(out: Path) -> tuple[np.ndarray, list[dict]]:
    """Every shard's vectors and row records, in shard order."""
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    parts = [e for e in journal[1:] if "shard" in e]
    vectors = [np.load(out / shards.shard_name(e["shard"], ".npy")) for e in parts]
    rows = []
    for e in parts:
        lines = (out / shards.shard_name(e["shard"], ".jsonl")).read_text().splitlines()
        rows += [json.loads(line) for line in lines]
    return np.concatenate(vectors), rows


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    """1,300 records over a plain and a gzip file."""
    (tmp_path / "in").mkdir()
    return [
        write_corpus(tmp_path / "in" / "a.jsonl", 700, seed=1),
        write_corpus(tmp_path / "in" / "b.jsonl.gz", 600, seed=2, start=700),
    ]


def test_shards_hold_every_record_in_order(tiny_bundle: Path, corpus: list[Path], tmp_path: Path):
    out = tmp_path / "out"
    done = embed(
        tiny_bundle, "--input", str(tmp_path / "in" / "*"), "--id-field", "id",
        "--output-dir", str(out), "--shard-size", "500",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""  # progress and summary go to stderr only
    assert "1300 records in 3 shards" in done.stderr.decode()
    names = sorted(p.name for p in out.iterdir())
    assert names == [".lock", "journal.jsonl"] + [
        f"part-0000{i}{s}" for i in range(3) for s in (".jsonl", ".npy")
    ]
    vectors, rows = union(out)
    assert [r["row"] for r in rows] == list(range(1300))
    assert [r["id"] for r in rows] == [f"doc-{i}" for i in range(1300)]
    assert [len(np.load(out / f"part-0000{i}.npy")) for i in range(3)] == [500, 500, 300]
    # the same vectors as a plain embed of the same records, read back from the gzip file too
    texts = [json.loads(line)["text"] for line in corpus[0].read_text().splitlines()]
    texts += [
        json.loads(line)["text"] for line in gzip.decompress(corpus[1].read_bytes()).splitlines()
    ]
    plain = embed(
        tiny_bundle, "--input", str(corpus[1]), "--format", "npy", "-o", str(tmp_path / "b.npy")
    )
    assert plain.returncode == 0, plain.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), vectors[700:])
    assert len(texts) == len(vectors) and vectors.dtype == np.float32


def test_sigkill_at_random_points_then_resume_is_exactly_once(tiny_bundle: Path, tmp_path: Path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6000, seed=3)
    args = ["--input", str(corpus), "--id-field", "id", "--shard-size", "150"]
    reference = tmp_path / "reference"
    assert embed(tiny_bundle, *args, "--output-dir", str(reference)).returncode == 0
    ref_vectors, ref_rows = union(reference)
    kills = []
    for seed in range(4):
        rng = random.Random(seed)
        out = tmp_path / f"killed-{seed}"
        for attempt in range(60):
            process = subprocess.Popen(
                command(tiny_bundle, *args, "--output-dir", str(out), "--resume"),
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            journal = out / "journal.jsonl"
            target = rng.randint(0, 8)  # shards published by this run before the kill
            before = _lines(journal)
            while process.poll() is None and _lines(journal) < before + target:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))  # before, during or after writing the next shard
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills.append((seed, attempt, _lines(journal) - 1))
            _, err = process.communicate(timeout=60)
            if process.returncode == 0:
                break
            assert process.returncode == -signal.SIGKILL, err
        else:
            pytest.fail("never finished")
        vectors, rows = union(out)
        assert [r["row"] for r in rows] == list(range(6000))  # each record exactly once
        assert rows == ref_rows
        np.testing.assert_array_equal(vectors, ref_vectors)  # bitwise
        for part in sorted(reference.glob("part-*")):
            assert (out / part.name).read_bytes() == part.read_bytes()
        assert not list(out.glob(".part-*"))
    assert len(kills) >= 12, kills  # the processes really were killed, several times per run
    print("kills (seed, attempt, journal shards at kill):", kills)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_resume_refuses_another_input_artifact_or_options(tiny_bundle: Path, tmp_path: Path):
    corpus = write_corpus(tmp_path / "c.jsonl", 300)
    out = tmp_path / "out"
    args = ["--input", str(corpus), "--output-dir", str(out), "--shard-size", "100"]
    assert embed(tiny_bundle, *args).returncode == 0
    journal = out / "journal.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + "\n")  # as if it stopped after shard 0

    again = embed(tiny_bundle, *args)
    assert again.returncode == 2
    assert "already holds a run (journal.jsonl). Pass --resume" in again.stderr.decode()

    write_corpus(corpus, 300, seed=9)  # same name, other content
    changed = embed(tiny_bundle, *args, "--resume")
    assert changed.returncode == 2 and changed.stderr.count(b"\n") == 1
    assert f"--input {corpus} changed since {out} was started" in changed.stderr.decode()
    write_corpus(corpus, 300)

    other = make_tiny_bundle(tmp_path / "other", seed=1)
    refused = embed(other, *args, "--resume").stderr.decode()
    assert f"{out} was started by tiny 1.0.0 (manifest sha256" in refused
    assert "Resume with what started it" in refused

    wider = embed(tiny_bundle, *args[:-1], "200", "--resume").stderr.decode()
    assert "--shard-size is 200 but" in wider and "started with 100" in wider

    resumed = embed(tiny_bundle, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "300 records in 3 shards" in resumed.stderr.decode()
    assert "200 embedded by this run" in resumed.stderr.decode()  # shard 0 was not redone
    complete = embed(tiny_bundle, *args, "--resume")
    assert (
        complete.returncode == 0
        and "already complete (300 records in 3 shards)" in complete.stderr.decode()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{c}", "-o", "x.npy"], "pass --output FILE or --output-dir DIR, not both"),
        (["hello"], "--output-dir embeds --input files, not TEXT arguments"),
        (["--input", "{d}/*.nothing"], "matches no file"),
        (["--input", "{c}", "{c}"], "names"),
        (["--input", "{d}/broken.jsonl.gz"], "is not a complete gzip file"),
    ],
)
def test_bad_arguments_give_one_line(
    tiny_bundle: Path, tmp_path: Path, args: list[str], message: str
):
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    (tmp_path / "broken.jsonl.gz").write_bytes(gzip.compress(corpus.read_bytes())[:-12])
    args = [a.format(c=corpus, d=tmp_path) for a in args]
    result = embed(tiny_bundle, *args, "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.startswith("encoderfile: ") and err.count("\n") == 1 and message in err, err
    assert not list((tmp_path / "out").glob("part-*")) if (tmp_path / "out").exists() else True


def test_resume_and_shard_size_need_output_dir(tiny_bundle: Path):
    result = embed(tiny_bundle, "--resume", "hello")
    assert result.returncode == 2
    assert b"--shard-size and --resume need --output-dir DIR" in result.stderr


def _peak_rss_mib(cmd: list[str]) -> float:
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read() if process.stderr else ""
    return usage.ru_maxrss / 1024  # KiB on Linux


def test_memory_stays_flat_as_the_corpus_grows(tiny_bundle: Path, tmp_path: Path):
    small = write_corpus(tmp_path / "small.jsonl", 3_000)
    large = write_corpus(tmp_path / "large.jsonl", 60_000)
    peaks = []
    for corpus in (small, large):
        out = tmp_path / f"out-{corpus.stem}"
        args = ["--input", str(corpus), "--output-dir", str(out), "--shard-size", "2000"]
        peaks.append(_peak_rss_mib(command(tiny_bundle, *args)))
    assert len(list((tmp_path / "out-large").glob("*.npy"))) == 30
    # 20x the records: peak RSS within a few MiB (what grows is the output, on disk)
    print(f"peak RSS: {peaks[0]:.1f} MiB (3,000 records), {peaks[1]:.1f} MiB (60,000 records)")
    assert peaks[1] - peaks[0] < 8, peaks


def test_progress_bar_on_a_terminal_and_never_on_stdout(tiny_bundle: Path, tmp_path: Path):
    import pty

    corpus = write_corpus(tmp_path / "c.jsonl", 30_000)
    args = ["--input", str(corpus), "--output-dir", str(tmp_path / "out"), "--shard-size", "5000"]
    parent, child = pty.openpty()
    process = subprocess.Popen(
        command(tiny_bundle, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=child
    )
    os.close(child)
    shown = b""
    while True:
        try:
            block = os.read(parent, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not block:
            break
        shown += block
    os.close(parent)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and stdout == b""
    text = shown.decode()
    assert "\r[#" in text and "/30000 " in text and "/s ETA 00:00:" in text, text[-500:]
    assert "\x1b[K" in text and "encoderfile: 30000 records in 6 shards in" in text
