"""Embed's records: texts read from arguments, stdin lines or JSONL, and vectors written as
JSONL / JSON / NPY in input order, to stdout or atomically to a file."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from encoderfile.errors import RequestError
from encoderfile.runtime import texts as text_rule

if TYPE_CHECKING:
    import numpy as np

CHUNK = 1024  # inputs read, embedded and written at a time: memory stays bounded
# Texts are cut to max_length x CHARS_PER_TOKEN characters before tokenizing, so one huge line
# costs no more than that: a token never spans more (WordPiece reads a word of up to 100
# characters as one [UNK]; BPE and Unigram tokens are far shorter).
CHARS_PER_TOKEN = 128


def char_limit(max_length: int) -> int:
    """Most characters of a text that max_length tokens can cover."""
    return max_length * CHARS_PER_TOKEN


@dataclass(frozen=True)
class ReadOptions:
    """Where the texts come from and how they are checked (embed's and search's options)."""

    texts: Sequence[str] = ()  # TEXT arguments; when empty, stdin lines or `input`
    input: str | None = None  # a JSONL file ('-': stdin; gzip read transparently)
    text_field: str = "text"  # JSONL key of the text
    id_field: str | None = None  # JSONL key copied to the output as 'id'
    errors: str = "strict"  # invalid UTF-8: "strict" fails naming the line, "replace": U+FFFD
    skip_empty: bool = False  # skip blank lines / empty texts instead of failing


class Record(NamedTuple):
    where: str  # "stdin line 3", "data.jsonl line 3", "argument 2": for error messages
    id: Any
    text: str
    cut: bool = False  # longer than char_limit(): the text is its prefix (truncated)


class Truncations:
    """How many inputs were truncated, and where the first three were (memory stays bounded)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(where)

    def report(self, max_length: int) -> None:
        """One line on stderr when anything was truncated."""
        if not self.count:
            return
        shown = ", ".join(self.first) + (", …" if self.count > 3 else "")
        print(
            f"encoderfile: truncated {self.count} input(s) longer than {max_length} tokens "
            f"({shown}). Pass --no-truncate to reject them.",
            file=sys.stderr,
        )


def read_records(options: ReadOptions, max_chars: int) -> Iterator[Record]:
    """Validated inputs in order, from arguments, stdin lines or a JSONL file, each cut to
    `max_chars` characters (the rest of a longer stdin line is skipped, not read into memory)."""
    for record in _read_records(options, max_chars):
        if len(record.text) > max_chars:
            record = record._replace(text=record.text[:max_chars], cut=True)
        yield record


def _read_records(options: ReadOptions, max_chars: int) -> Iterator[Record]:
    if options.texts:
        for i, text in enumerate(options.texts, 1):
            raw = text.encode("utf-8", "surrogateescape")  # argv keeps invalid bytes as escapes
            text = _decode(raw, options.errors, f"argument {i}")
            if _keep(text, f"argument {i}", options.skip_empty):
                yield Record(f"argument {i}", None, text)
    elif options.input is None:
        if sys.stdin.isatty():
            print(
                "encoderfile: reading texts from stdin, one per line; end with Ctrl-D",
                file=sys.stderr,
            )
        for n, (line, cut) in enumerate(_bounded_lines(sys.stdin.buffer, 4 * max_chars), 1):
            where = f"stdin line {n}"
            text = _decode(line.rstrip(b"\n").rstrip(b"\r"), options.errors, where, final=not cut)
            if _keep(text, where, options.skip_empty):
                yield Record(where, None, text, cut)
    else:
        yield from _jsonl(options, options.input)


def _jsonl(options: ReadOptions, path: str) -> Iterator[Record]:
    name = "stdin" if path == "-" else path
    with _open_input(path) as fh:
        for n, line in enumerate(fh, 1):
            where = f"{name} line {n}"
            raw = _decode(line, options.errors, where)
            if not raw.strip():
                if options.skip_empty:
                    continue
                raise RequestError(f"{where} is blank. Remove it or pass --skip-empty.")
            try:
                obj = json.loads(raw)
            except RecursionError:
                raise RequestError(
                    f"{where} is JSON nested too deeply. Write flat objects."
                ) from None
            except ValueError as e:
                raise RequestError(f"{where} is not valid JSON ({e}). Fix the line.") from None
            if not isinstance(obj, dict):
                raise RequestError(
                    f"{where} is a JSON {type(obj).__name__}, not an object. Write one object "
                    f'per line, e.g. {{"{options.text_field}": "…"}}.'
                )
            text = obj.get(options.text_field)
            if not isinstance(text, str):
                keys = ", ".join(obj) or "none"
                problem = "has no" if text is None else "has a non-string"
                raise RequestError(
                    f"{where} {problem} field {options.text_field!r} (keys: {keys}). "
                    "Pick the field with --text-field."
                )
            record_id = None
            if options.id_field:
                if options.id_field not in obj:
                    raise RequestError(
                        f"{where} has no id field {options.id_field!r}. Add it or drop --id-field."
                    )
                record_id = obj[options.id_field]
            if _valid_unicode(text, where) and _keep(text, where, options.skip_empty):
                yield Record(where, record_id, text)


@contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise RequestError(f"cannot read --input {path}: {e.strerror}. Check the path.") from None
    with fh:
        if fh.peek(2)[:2] == b"\x1f\x8b":  # gzip: read transparently
            import gzip

            with gzip.GzipFile(fileobj=fh) as unzipped:
                yield unzipped  # type: ignore[misc]
            return
        yield fh


def _bounded_lines(fh: IO[bytes], max_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """Lines of at most `max_bytes` bytes, and whether the line was longer (its rest is read
    in pieces and dropped)."""
    while line := fh.readline(max_bytes):
        cut = len(line) == max_bytes and not line.endswith(b"\n")
        if cut:
            while (rest := fh.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
        yield line, cut


def _decode(raw: bytes, errors: str, where: str, final: bool = True) -> str:
    """UTF-8 text; `final=False` drops a character split at the end of a cut line."""
    import codecs

    try:
        if final:
            return raw.decode("utf-8", errors)
        return codecs.getincrementaldecoder("utf-8")(errors).decode(raw, False)
    except UnicodeDecodeError as e:
        raise RequestError(
            f"{where} is not valid UTF-8 (byte {e.start + 1}). Fix the encoding or pass "
            "--errors replace."
        ) from None


def _valid_unicode(text: str, where: str) -> bool:
    text_rule.check_unicode(text, where)  # the one text rule's message
    return True


def _keep(text: str, where: str, skip_empty: bool) -> bool:
    if text.strip():
        return True
    if skip_empty:
        return False
    text_rule.check(text, where, fix="Remove it or pass --skip-empty")  # the one rule's message
    return True


def chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextmanager
def output(path: str | None, elsewhere: str = "pass --output FILE") -> Iterator[IO[bytes]]:
    """stdout; or a file: a regular file (or a symlink to one) is written to a temp file beside
    it and renamed over it only when everything succeeded, while a FIFO, device or socket is
    written through, never replaced."""
    if path is None:
        if sys.stdout is None:
            raise RequestError(f"stdout is closed. Redirect it{_or(elsewhere)}.")
        sink = _Stdout(sys.stdout.buffer, elsewhere)
        yield sink  # type: ignore[misc]
        sink.flush()
        return
    target = Path(os.path.realpath(path))  # write through symlinks: they stay links
    try:
        mode: int | None = os.stat(path).st_mode  # the kernel follows /proc's fd links too
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise RequestError(f"--output {path} is a directory. Name a file.")
    if mode is not None and (not stat.S_ISREG(mode) or _names_a_descriptor(path)):
        # A pipe, device or socket (/dev/stdout into `| wc`), or a file a shell opened for us
        # (/dev/stdout into `> file` or `>> file`): write into it, never replace it.
        with _open_through(path, "wb" if not stat.S_ISREG(mode) else "ab") as fh:
            yield fh
        return
    import tempfile

    _remove_stale_temps(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp")
    except OSError as e:
        raise RequestError(
            f"cannot write --output {path}: {e.strerror}. Choose a writable location."
        ) from None
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
            yield fh
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, target)
    except OSError as e:
        os.unlink(tmp)
        raise RequestError(f"cannot write --output {path}: {e.strerror}. Check the disk.") from None
    except BaseException:
        os.unlink(tmp)
        raise


def _names_a_descriptor(path: str) -> bool:
    """Whether `path` is one of an open descriptor's names (/dev/stdout, /dev/fd/N,
    /proc/self/fd/N): realpath cannot follow those to a pipe, and renaming onto them would
    detach the file from the descriptor."""
    where = os.path.abspath(path)
    return where in ("/dev/stdout", "/dev/stderr") or where.startswith(("/dev/fd/", "/proc/"))


@contextmanager
def _open_through(path: str, mode: str) -> Iterator[IO[bytes]]:
    try:
        with open(path, mode, buffering=1 << 20) as fh:
            yield fh
    except BrokenPipeError:
        raise
    except OSError as e:
        raise RequestError(f"cannot write --output {path}: {e.strerror}.") from None


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."  # the pid tells a stale temp from a live one


def _remove_stale_temps(target: Path) -> None:
    """Temp files of this target left by a process that is gone (killed with SIGKILL)."""
    import glob

    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = stale.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _or(alternative: str) -> str:
    return f", or {alternative}" if alternative else ""


class _Stdout:
    """stdout for the writers: a write error (a full disk, /dev/full) is one user error, and
    what is still buffered goes to /dev/null so that Python's exit flush stays quiet."""

    def __init__(self, raw: IO[bytes], elsewhere: str = "pass --output FILE"):
        self.raw = raw
        self.elsewhere = elsewhere

    def write(self, data: bytes) -> int:
        written: int = self._guard(self.raw.write, data)
        return written

    def flush(self) -> None:
        self._guard(self.raw.flush)

    def _guard(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.raw.fileno())
            raise RequestError(
                f"cannot write the output to stdout: {e.strerror}. Free space{_or(self.elsewhere)}."
            ) from None


class JsonlWriter:
    def __init__(self, out: IO[bytes], width: int):
        self.out = out

    def line(self, record: Record, vector: np.ndarray, tokens: int) -> str:
        # %.9g round-trips float32 exactly and is ~3x shorter than float64 repr
        values = ",".join([f"{x:.9g}" for x in vector.tolist()])
        prefix = "" if record.id is None else f'"id":{json.dumps(record.id)},'
        return f'{{{prefix}"embedding":[{values}],"tokens":{tokens}}}'

    def write(self, chunk: list[Record], vectors: np.ndarray, tokens: list[int]) -> None:
        lines = [self.line(r, v, t) for r, v, t in zip(chunk, vectors, tokens, strict=True)]
        self.out.write(("\n".join(lines) + "\n").encode())

    def close(self) -> None:
        pass


class JsonWriter(JsonlWriter):
    def __init__(self, out: IO[bytes], width: int):
        super().__init__(out, width)
        self.first = True

    def write(self, chunk: list[Record], vectors: np.ndarray, tokens: list[int]) -> None:
        lines = [self.line(r, v, t) for r, v, t in zip(chunk, vectors, tokens, strict=True)]
        self.out.write(("[\n" if self.first else ",\n").encode() + ",\n".join(lines).encode())
        self.first = False

    def close(self) -> None:
        self.out.write(b"[]\n" if self.first else b"\n]\n")


class NpyWriter:
    """Rows are spooled to a temp file: the .npy header needs the row count up front."""

    def __init__(self, out: IO[bytes], width: int):
        import tempfile

        self.out, self.width, self.rows = out, width, 0
        self.spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()

    def write(self, chunk: list[Record], vectors: np.ndarray, tokens: list[int]) -> None:
        self.spool.write(vectors.astype("<f4", copy=False).tobytes())
        self.rows += len(vectors)

    def close(self) -> None:
        from numpy.lib import format as npy

        header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.width)}
        npy.write_array_header_1_0(self.out, header)
        self.spool.seek(0)
        while block := self.spool.read(1 << 20):
            self.out.write(block)
        self.spool.close()


WRITERS: dict[str, Any] = {"jsonl": JsonlWriter, "json": JsonWriter, "npy": NpyWriter}


class Progress:
    """`\\r<n> texts <rate>/s` on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool, done: str = "texts embedded"):
        self.enabled, self.done, self.what = enabled, 0, done
        self.start = self.shown = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.shown >= 0.2:
            rate = self.done / max(now - self.start, 1e-9)
            sys.stderr.write(f"\r{self.done} {self.what}, {rate:.0f}/s")
            sys.stderr.flush()
            self.shown = now

    def close(self) -> None:
        if self.enabled and self.shown != self.start:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
