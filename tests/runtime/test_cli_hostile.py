"""`embed` against careless use: hostile JSONL, a closed or full stdout, signals while writing
-o FILE, -o naming a symlink or FIFO, and one enormous line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from encoderfile.runtime import records

pytestmark = pytest.mark.slow  # integration: embed in a process, signals, closed pipes


def runtime(bundle: Path) -> list[str]:
    return [sys.executable, "-m", "encoderfile.runtime", "--threads", "1", "--bundle", str(bundle)]


def embed(bundle: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    argv = [*runtime(bundle), "embed", *args]
    return subprocess.run(argv, capture_output=True, timeout=120, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty directory for outputs (the tiny bundle sits in tmp_path)."""
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def one_error_line(result: subprocess.CompletedProcess[bytes], *expected: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("encoderfile: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err


def test_deeply_nested_jsonl_line_is_one_error(tiny_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "deep.jsonl"
    data.write_text('{"text": "ok"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    one_error_line(embed(tiny_bundle, "--input", str(data)), "line 2", "nested too deeply")


def test_closed_stdout_is_one_error(tiny_bundle: Path) -> None:
    argv = [*runtime(tiny_bundle), "embed", "hello"]
    result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *argv], stderr=subprocess.PIPE)
    one_error_line(result, "stdout is closed")


def test_full_stdout_is_one_error(tiny_bundle: Path) -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [*runtime(tiny_bundle), "embed", "hello"], stdout=full, stderr=subprocess.PIPE
        )
    one_error_line(result, "No space left on device")


def test_search_to_a_closed_or_full_stdout_is_one_error(tiny_bundle: Path, out_dir: Path) -> None:
    index = out_dir / "index.npy"
    assert embed(tiny_bundle, "--format", "npy", "-o", str(index), "a", "b").returncode == 0
    argv = [*runtime(tiny_bundle), "search", "--index", str(index), "hello"]
    closed = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *argv], stderr=subprocess.PIPE)
    one_error_line(closed, "stdout is closed")
    with open("/dev/full", "wb") as full:
        result = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE)
    one_error_line(result, "No space left on device")


def _blocked_embed(bundle: Path, target: Path) -> subprocess.Popen[bytes]:
    """`embed -o target` reading stdin from a pipe that stays open: it waits mid-run, its temp
    file beside `target` already there."""
    proc = subprocess.Popen(
        [*runtime(bundle), "embed", "-o", str(target)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # SIGINT as an interactive shell leaves it: an ignored SIGINT (SIG_IGN) is inherited
        # through exec, and some test earlier in a full run leaves this process ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdin is not None
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not list(target.parent.glob(f".{target.name}.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.05)
    time.sleep(0.5)  # past the temp file's creation, into the read loop
    return proc


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_writing_output_leaves_nothing(
    tiny_bundle: Path, out_dir: Path, sig: signal.Signals, code: int
) -> None:
    target = out_dir / "out.jsonl"
    proc = _blocked_embed(tiny_bundle, target)
    proc.send_signal(sig)
    assert proc.wait(30) == code
    assert sorted(p.name for p in out_dir.iterdir()) == []


def test_stale_temp_of_a_killed_run_is_removed(tiny_bundle: Path, out_dir: Path) -> None:
    target = out_dir / "out.jsonl"
    proc = _blocked_embed(tiny_bundle, target)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(30)
    assert len(list(out_dir.glob(".out.jsonl.*.tmp"))) == 1
    assert embed(tiny_bundle, "-o", str(target), "hello").returncode == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.jsonl"]


def test_output_through_a_symlink_keeps_the_link(tiny_bundle: Path, out_dir: Path) -> None:
    real = out_dir / "real.jsonl"
    real.write_text("old\n")
    link = out_dir / "link.jsonl"
    link.symlink_to(real)
    assert embed(tiny_bundle, "-o", str(link), "hello").returncode == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text())["tokens"] > 0


def test_output_to_a_fifo_writes_through(tiny_bundle: Path, out_dir: Path) -> None:
    fifo = out_dir / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = embed(tiny_bundle, "-o", str(fifo), "hello", "world")
    reader.join(30)
    assert result.returncode == 0, result.stderr
    assert fifo.is_fifo()  # not replaced by a regular file
    assert len(received[0].decode().splitlines()) == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["pipe"]


def test_output_to_a_device_through_a_symlink_stays_a_device(
    tiny_bundle: Path, out_dir: Path
) -> None:
    link = out_dir / "stdout"
    link.symlink_to("/dev/null")  # as /dev/stdout is a link to a device
    assert embed(tiny_bundle, "-o", str(link), "hello").returncode == 0
    assert link.is_symlink() and Path("/dev/null").is_char_device()
    assert sorted(p.name for p in out_dir.iterdir()) == ["stdout"]


@pytest.mark.parametrize("name", ["/dev/stdout", "/proc/self/fd/1", "/dev/fd/1"])
def test_output_to_dev_stdout_writes_to_the_pipe_or_file(
    tiny_bundle: Path, out_dir: Path, name: str
) -> None:
    """realpath cannot follow /dev/stdout to a pipe; into `>> file` it appends, never replaces."""
    result = embed(tiny_bundle, "-o", name, "hello")  # stdout is a pipe
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] > 0
    log = out_dir / "log.jsonl"
    log.write_text('{"earlier": true}\n')
    for text in ("one", "two"):
        with log.open("ab") as appended:
            argv = [*runtime(tiny_bundle), "embed", "-o", name, text]
            assert subprocess.run(argv, stdout=appended, timeout=120).returncode == 0
    assert len(log.read_text().splitlines()) == 3
    assert sorted(p.name for p in out_dir.iterdir()) == ["log.jsonl"]


def test_enormous_line_is_cut_early_with_bounded_memory(tiny_bundle: Path, tmp_path: Path) -> None:
    """A 10 MB line is read no further than max_length x CHARS_PER_TOKEN characters (16 x 128
    for the tiny model): peak RSS stays about that of a short line, and it is reported truncated."""
    short, huge = tmp_path / "short.txt", tmp_path / "huge.txt"
    short.write_text("hello world\n")
    huge.write_text("hello world " * 900_000 + "\nfox\n")  # 10.8 MB, then a second line

    def run(path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
        with path.open("rb") as stdin:
            return embed(tiny_bundle, *args, stdin=stdin)

    result = run(huge)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["tokens"] for r in rows] == [16, 3]
    assert "truncated 1 input(s)" in result.stderr.decode()
    rejected = run(huge, "--no-truncate")
    one_error_line(rejected, "stdin line 1", "max_length=16")

    def peak_rss_mb(path: Path) -> float:
        with path.open("rb") as stdin:
            proc = subprocess.Popen(
                [*runtime(tiny_bundle), "embed"], stdin=stdin, stdout=subprocess.DEVNULL
            )
            _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return usage.ru_maxrss / 1024

    assert peak_rss_mb(huge) < peak_rss_mb(short) + 15
    assert records.char_limit(16) == 16 * records.CHARS_PER_TOKEN
