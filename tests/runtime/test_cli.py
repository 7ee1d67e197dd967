"""The artifact's command line, run in-process on a tiny bundle."""

from __future__ import annotations

import io
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from encoderfile.runtime import cli, cpu, records
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder


@dataclass
class Result:
    rc: int
    out: bytes
    err: str

    def jsonl(self) -> list[dict]:
        return [json.loads(line) for line in self.out.decode().splitlines()]

    def vectors(self) -> np.ndarray:
        return np.array([row["embedding"] for row in self.jsonl()], dtype=np.float32)

    def one_error_line(self) -> str:
        assert self.rc == 2, self
        assert self.err.startswith("encoderfile: ") and self.err.count("\n") == 1, self.err
        return self.err


Run = Callable[..., Result]


@pytest.fixture
def run(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """run(*args, stdin=b"") → Result; --bundle points at a fresh tiny bundle."""

    def call(*args: str, stdin: bytes = b"", bundle: Path = tiny_bundle) -> Result:
        out, err = io.BytesIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, write_through=True))
        monkeypatch.setattr(sys, "stderr", err)
        rc = cli.main(["--bundle", str(bundle), *args])
        return Result(rc, out.getvalue(), err.getvalue())

    return call


def reference(bundle: Path, texts: list[str], **kwargs: object) -> np.ndarray:
    return Embedder(open_bundle(bundle)).embed(texts, **kwargs).vectors  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ inputs


def test_arguments_embed_in_order(run: Run, tiny_bundle: Path) -> None:
    result = run("embed", "hello world", "fox", "the quick brown fox")
    assert result.rc == 0 and result.err == ""
    rows = result.jsonl()
    assert [set(r) for r in rows] == [{"embedding", "tokens"}] * 3
    assert [r["tokens"] for r in rows] == [4, 3, 6]
    texts = ["hello world", "fox", "the quick brown fox"]
    np.testing.assert_array_equal(result.vectors(), reference(tiny_bundle, texts))


def test_stdin_one_text_per_line(run: Run, tiny_bundle: Path) -> None:
    result = run("embed", stdin=b"hello world\r\nfox\nthe quick brown fox")
    assert result.rc == 0
    texts = ["hello world", "fox", "the quick brown fox"]
    np.testing.assert_array_equal(result.vectors(), reference(tiny_bundle, texts))


def test_streams_in_chunks_keeping_order(
    run: Run, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "CHUNK", 3)
    texts = [" ".join(["a"] * (1 + i % 7)) + f" {w}" for i, w in enumerate("b c fox dog " * 5)]
    texts = [t.strip() for t in texts if t.strip()]
    result = run("embed", stdin="\n".join(texts).encode())
    # chunks pad to other lengths: the sums may differ in the last bit
    np.testing.assert_allclose(result.vectors(), reference(tiny_bundle, texts), atol=1e-6)


@pytest.mark.slow  # runs embed in a process
def test_bulk_embed_memory_stays_bounded(tiny_bundle: Path, tmp_path: Path) -> None:
    """Peak RSS of `embed` over 12 MB of input is about that over 1 MB: it reads a window ahead,
    not the whole input, and writes each window's rows before reading the next. (Held at once,
    the 12,000 encodings of 200 tokens would take over 100 MB.)"""
    line = " ".join(["the quick brown fox jumps over the lazy dog"] * 22) + "\n"  # 200 tokens

    def peak_rss_mb(lines: int) -> float:
        data = tmp_path / f"{lines}.txt"
        data.write_text(line * lines)
        out = tmp_path / f"{lines}.npy"
        argv = [sys.executable, "-m", "encoderfile.runtime", "--threads", "1"]
        argv += ["--bundle", str(tiny_bundle), "embed", "--format", "npy", "--output", str(out)]
        with data.open("rb") as stdin:
            proc = subprocess.Popen(argv, stdin=stdin, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read() if proc.stderr else ""
        assert np.load(out).shape == (lines, 8)
        return usage.ru_maxrss / 1024

    small, large = peak_rss_mb(1_000), peak_rss_mb(12_000)
    assert large < small + 30, (
        f"peak RSS {small:.0f} MB for 1 MB of input, {large:.0f} MB for 12 MB"
    )


def test_jsonl_input_carries_ids(run: Run, tmp_path: Path, tiny_bundle: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": 7, "body": "fox"}\n{"id": "x-1", "body": "hello world"}\n')
    result = run("embed", "--input", str(data), "--text-field", "body", "--id-field", "id")
    rows = result.jsonl()
    assert [r["id"] for r in rows] == [7, "x-1"]
    np.testing.assert_array_equal(result.vectors(), reference(tiny_bundle, ["fox", "hello world"]))


def test_jsonl_from_stdin(run: Run) -> None:
    result = run("embed", "--input", "-", stdin=b'{"text": "fox"}\n')
    assert result.rc == 0 and len(result.jsonl()) == 1 and "id" not in result.jsonl()[0]


# ----------------------------------------------------------------------------------- formats


def test_json_format_is_one_array(run: Run) -> None:
    rows = json.loads(run("embed", "--format", "json", "fox", "dog").out)
    assert len(rows) == 2 and rows[0]["tokens"] == 3
    assert json.loads(run("embed", "--format", "json", "--skip-empty", stdin=b"\n").out) == []


def test_npy_format_to_stdout_and_file(run: Run, tmp_path: Path, tiny_bundle: Path) -> None:
    expected = reference(tiny_bundle, ["fox", "dog"], dimensions=4)
    out = run("embed", "--format", "npy", "--dimensions", "4", "fox", "dog").out
    np.testing.assert_array_equal(np.load(io.BytesIO(out)), expected)
    target = tmp_path / "v.npy"
    assert run("embed", "--format", "npy", "-o", str(target), "fox", "dog").rc == 0
    np.testing.assert_array_equal(np.load(target), reference(tiny_bundle, ["fox", "dog"]))


def test_float32_values_round_trip_exactly(run: Run, tiny_bundle: Path) -> None:
    result = run("embed", "the quick brown fox")
    assert result.vectors().tobytes() == reference(tiny_bundle, ["the quick brown fox"]).tobytes()


def test_output_file_is_written_atomically(run: Run, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "out.jsonl"
    assert run("embed", "-o", str(target), "fox").rc == 0
    assert len(target.read_text().splitlines()) == 1
    before = target.read_bytes()
    failed = run("embed", "-o", str(target), stdin=b"fox\n\ndog\n")
    assert "stdin line 2 is empty" in failed.one_error_line()
    assert target.read_bytes() == before  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"]  # no temp left
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # normal permissions, not mkstemp's


@pytest.mark.parametrize("where", ["file/out.jsonl", "missing/out.jsonl", "."])
def test_unwritable_output_fails_cleanly(run: Run, tmp_path: Path, where: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "file").write_text("")
    result = run("embed", "-o", str(out / where), "fox")
    assert "--output" in result.one_error_line()
    assert result.out == b""
    assert sorted(p.name for p in out.iterdir()) == ["file"]


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("stdin", [b"fox\n\ndog\n", b"fox\n   \ndog\n"])
def test_blank_line_is_an_error_unless_skipped(run: Run, stdin: bytes) -> None:
    assert "stdin line 2 is empty" in run("embed", stdin=stdin).one_error_line()
    assert len(run("embed", "--skip-empty", stdin=stdin).jsonl()) == 2


def test_empty_argument_is_an_error(run: Run) -> None:
    assert "argument 2 is empty" in run("embed", "fox", "").one_error_line()


def test_invalid_utf8_names_the_line_unless_replaced(run: Run) -> None:
    stdin = b"fox\ncaf\xe9 dog\n"
    message = run("embed", stdin=stdin).one_error_line()
    assert "stdin line 2 is not valid UTF-8" in message and "--errors replace" in message
    result = run("embed", "--errors", "replace", stdin=stdin)
    assert result.rc == 0 and [r["tokens"] for r in result.jsonl()] == [3, 5]  # caf, U+FFFD, dog


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[1, 2]", "line 2 is a JSON list, not an object"),
        (b'"fox"', "line 2 is a JSON str, not an object"),
        (b'{"title": "fox"}', "line 2 has no field 'text' (keys: title)"),
        (b'{"text": 3}', "line 2 has a non-string field 'text'"),
        (b'{"text": "fox"', "line 2 is not valid JSON"),
        (b'{"text": ""}', "line 2 is empty"),
        (b"", "line 2 is blank"),
        (b'{"text": "\\ud800"}', "line 2 has a lone UTF-16 surrogate"),
    ],
)
def test_bad_jsonl_line_is_named(run: Run, line: bytes, message: str) -> None:
    stdin = b'{"text": "dog"}\n' + line + b'\n{"text": "fox"}\n'
    assert message in run("embed", "--input", "-", stdin=stdin).one_error_line()


def test_missing_id_field_is_named(run: Run) -> None:
    result = run("embed", "--input", "-", "--id-field", "id", stdin=b'{"text": "fox"}\n')
    assert "stdin line 1 has no id field 'id'" in result.one_error_line()


def test_long_text_is_truncated_with_a_count(run: Run) -> None:
    long = " ".join(["fox"] * 30)
    result = run("embed", "dog", long, long)
    assert result.rc == 0 and [r["tokens"] for r in result.jsonl()] == [3, 16, 16]
    assert result.err.count("\n") == 1
    assert "truncated 2 input(s) longer than 16 tokens (argument 2, argument 3)" in result.err
    refused = run("embed", "--no-truncate", stdin=f"dog\n{long}\n".encode())
    assert "stdin line 2 is longer than max_length=16" in refused.one_error_line()


def test_unknown_prompt_lists_names(run: Run) -> None:
    message = run("embed", "--prompt", "nope", "fox").one_error_line()
    assert "unknown prompt 'nope'. Use one of: document, query; or 'none'." in message


def test_prompt_and_dimensions(run: Run, tiny_bundle: Path) -> None:
    result = run("embed", "--prompt", "query", "--dimensions", "4", "fox")
    expected = reference(tiny_bundle, ["fox"], prompt="query", dimensions=4)
    np.testing.assert_array_equal(result.vectors(), expected)
    assert "Use one of: 8, 4" in run("embed", "--dimensions", "3", "fox").one_error_line()


@pytest.mark.parametrize(
    "args",
    [
        ["embed", "--threads", "0", "fox"],
        ["embed", "--format", "csv", "fox"],
        ["embed", "--input", "x.jsonl", "fox"],
        ["embed", "--id-field", "id", "fox"],
        ["embed", "--input", "/nonexistent.jsonl"],
        ["frobnicate"],
    ],
)
def test_usage_errors_are_one_line(run: Run, args: list[str]) -> None:
    run(*args).one_error_line()


def test_tampered_bundle_refuses_to_run(run: Run, tiny_bundle: Path) -> None:
    with open(tiny_bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    for command in (["embed", "fox"], ["info"], ["verify"]):
        assert "model.onnx fails its sha256 check" in run(*command).one_error_line()


# ----------------------------------------------------------------------- info / verify / help


def test_info_text_and_json(run: Run, tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    text = run("info").out.decode()
    for expected in ("tiny 1.0.0", "max_length", "16 tokens", manifest["files"]["model.onnx"]):
        assert expected in text
    info = json.loads(run("info", "--json").out)
    assert info["files"] == manifest["files"]
    assert (info["name"], info["dimension"], info["max_length"]) == ("tiny", 8, 16)
    assert info["steps"] == manifest["steps"] and info["prompts"] == manifest["prompts"]
    assert set(info) >= {"version", "model", "tools", "built_at", "dimensions", "runtime"}
    # the CPU the golden vectors (and a gate) were measured on: arch, then kernel features
    assert info["build_cpu"] == manifest["build_cpu"] == list(cpu.isa())
    assert info["build_cpu"][0] == platform.machine() and len(info["build_cpu"]) > 1
    assert re.search(rf"build_cpu +{' '.join(cpu.isa())} \(golden vectors and gate measured", text)


def test_verify_passes_and_fails(run: Run, tiny_bundle: Path) -> None:
    ok = run("verify", "--threads", "1")
    assert ok.rc == 0 and ok.out.startswith(b"ok: max |diff|") and b"tolerance 0.0001" in ok.out
    path = tiny_bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["golden"]["vectors"][0][0] += 0.01
    path.write_text(json.dumps(manifest))
    manifest["build_cpu"] = ["x86_64", "SSE41", "AVX512VNNI"]
    path.write_text(json.dumps(manifest))
    bad = run("verify")
    # which vector, by how much, and the two CPUs
    assert bad.rc == 1 and bad.out.startswith(b"FAILED: max |diff| 0.01")
    assert f"worst {manifest['golden']['texts'][0]!r}" in bad.out.decode()
    assert ("(built on x86_64 SSE41 AVX512VNNI; this CPU " + " ".join(cpu.isa()) + ")") in bad.err
    assert "Report it with the output of 'info --json'." in bad.err
    # an int8 bundle's vectors may differ by a quantization step: the advice says what to build
    manifest["precision"] = {"mode": "int8"}
    path.write_text(json.dumps(manifest))
    int8 = run("verify")
    assert int8.rc == 1 and "build the recipe with precision fp32 or fp16" in int8.err
    assert len(int8.err.splitlines()) == 1


def test_version(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        run("--version")
    assert exit.value.code == 0
    assert sys.stdout.buffer.getvalue().decode() == "tiny 1.0.0 (encoderfile 0.1.0, format 1)\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", [[], ["embed"], ["info"], ["verify"], ["serve"]])
def test_help(run: Run, command: list[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        run(*command, "--help")
    assert exit.value.code == 0
    assert "usage:" in sys.stdout.buffer.getvalue().decode()  # type: ignore[attr-defined]


def test_command_is_found_without_parsing() -> None:
    assert cli._command(["--threads", "2", "--bundle", "serve", "embed", "x"]) == "embed"
    assert cli._command(["--threads=2", "serve"]) == "serve"
    assert cli._command(["--help"]) is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(
    run: Run, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "CHUNK", 2)
    stdin = b"fox\ndog\nhello\nworld\na\n"
    assert run("embed", stdin=stdin).err == ""  # stderr is not a terminal
    clock = iter(range(100))
    monkeypatch.setattr(records.time, "monotonic", lambda: float(next(clock)))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), write_through=True))
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["--bundle", str(tiny_bundle), "embed"]) == 0
    shown = terminal.getvalue()
    assert "\r2 texts embedded" in shown and "\r4 texts embedded" in shown
    assert shown.endswith("\r\x1b[K")  # the line is cleared at the end
