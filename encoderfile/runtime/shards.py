"""`embed --output-dir OUT`: a corpus embedded into fixed-size shards, each published atomically
and recorded in a journal, so that `--resume` continues after the last complete shard.

```
OUT/journal.jsonl     line 1: what is embedded (artifact, input files, options), fingerprinted;
                      then one line per published shard; last, {"done": ...} once finished
OUT/part-00000.npy    float32 [rows, width], the shard's vectors in input order
OUT/part-00000.jsonl  one line per row: {"row": <0-based record number>, "id"?: ..., "tokens": n}
```
A sparse artifact (kind sparse) writes part-00000.npz instead: a CSR matrix [rows, vocabulary] in
scipy.sparse's layout (runtime/sparse.py).
Shard k always holds records k*N .. k*N+N-1 (N = --shard-size), chunked the same way on every
run, so a resumed run writes exactly the bytes an uninterrupted one would. A shard is written to
dot-files, fsynced, renamed into place, then journaled; a shard not in the journal is redone.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import gzip
import hashlib
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from encoderfile import __version__
from encoderfile.errors import RequestError, UsageError
from encoderfile.runtime import records, sparse
from encoderfile.runtime.artifact import short_pair
from encoderfile.runtime.manifest import MANIFEST_FILE, MODEL_FILE

if TYPE_CHECKING:
    import numpy as np

    from encoderfile.runtime.embedder import Embedder

JOURNAL = "journal.jsonl"
JOURNAL_FORMAT = 1
LOCK = ".lock"
DEFAULT_SHARD_SIZE = 100_000
PROGRESS_SECONDS = 10.0  # how often the plain progress line is printed when stderr is no terminal
# Options that change which records are read or the vectors written: a resume must match them.
SHAPING_OPTIONS = (
    "text_field",
    "id_field",
    "skip_empty",
    "errors",
    "no_truncate",
    "prompt",
    "dimensions",
    "shard_size",
)

# Embeds one chunk at `width`, noting truncated records: the same code as embed without shards.
EmbedChunk = Callable[
    ["Embedder", list[records.Record], int, records.Truncations],
    "tuple[np.ndarray, list[int]]",
]


@dataclasses.dataclass(frozen=True)
class ShardOptions:
    """What `embed --output-dir` needs: where to read and write, and what shapes the vectors."""

    output_dir: str
    inputs: Sequence[str]  # --input files or globs, in order
    read: records.ReadOptions  # its texts and input are ignored: each file is read in turn
    shard_size: int = DEFAULT_SHARD_SIZE
    resume: bool = False
    prompt: str | None = None
    dimensions: int | None = None
    no_truncate: bool = False
    threads: int | None = None
    bundle: str | None = None

    def shaping(self) -> dict[str, Any]:
        """The SHAPING_OPTIONS' values, as the journal records them."""
        read = self.read
        return {
            "text_field": read.text_field,
            "id_field": read.id_field,
            "skip_empty": read.skip_empty,
            "errors": read.errors,
            "no_truncate": self.no_truncate,
            "prompt": self.prompt,
            "dimensions": self.dimensions,
            "shard_size": self.shard_size,
        }


def shard_name(index: int, suffix: str) -> str:
    return f"part-{index:05d}{suffix}"


# -------------------------------------------------------------------------------------- inputs


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by --input, in the order given; a glob expands to its matches, sorted."""
    files: list[Path] = []
    for pattern in patterns:
        if pattern == "-":
            raise UsageError("--output-dir cannot read stdin (it could not be resumed); pass files")
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise UsageError(f"--input {pattern} matches no file. Check the pattern.")
            files += [Path(m) for m in matches if os.path.isfile(m)]
        elif os.path.isfile(pattern):
            files.append(Path(pattern))
        else:
            raise UsageError(f"--input {pattern} does not exist or is not a file")
    seen: set[Path] = set()
    for path in files:
        if path.resolve() in seen:
            raise UsageError(f"--input names {path} twice. Name each file once.")
        seen.add(path.resolve())
    return files


def fingerprint(path: Path) -> dict[str, Any]:
    """Size and sha256 of the file's bytes as stored (compressed, for gzip), and its line count.

    The whole file is hashed (about 1 s per GB): a resume must never mix two versions of an input.
    """
    digest, size, lines = hashlib.sha256(), 0, 0
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
                lines += block.count(b"\n")
            fh.seek(0)
            if fh.read(2) == b"\x1f\x8b":  # gzip: count the decompressed lines
                lines = 0
                with gzip.open(path, "rb") as text:
                    while block := text.read(1 << 20):
                        lines += block.count(b"\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise RequestError(f"{path} is not a complete gzip file ({e}). Re-create it.") from None
    except OSError as e:
        raise RequestError(f"cannot read --input {path}: {e.strerror}. Check the path.") from None
    return {"path": str(path.resolve()), "size": size, "sha256": digest.hexdigest(), "lines": lines}


def read_all(
    files: list[Path], options: records.ReadOptions, max_chars: int
) -> Iterator[records.Record]:
    """Records of every file in order, read by records.py (gzip read transparently)."""
    for path in files:
        one = dataclasses.replace(options, input=str(path), texts=())
        try:
            yield from records.read_records(one, max_chars)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise RequestError(
                f"{path} is not a complete gzip file ({e}). Re-create or re-download it."
            ) from None


# ------------------------------------------------------------------------------------- journal


class Journal:
    """OUT/journal.jsonl: a header line, then one line per published shard, each fsynced."""

    def __init__(self, directory: Path):
        self.path = directory / JOURNAL
        self.header: dict[str, Any] = {}
        self.shards: list[dict[str, Any]] = []
        self.done: dict[str, Any] | None = None

    def create(self, header: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{JOURNAL}.tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(header, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self.header = header

    def load(self) -> None:
        """Read the journal; a last line torn by a crash is dropped (its shard gets redone)."""
        raw = self.path.read_bytes()
        good = raw[: raw.rfind(b"\n") + 1]  # a line without its newline was never committed
        if len(good) != len(raw):
            with open(self.path, "r+b") as fh:
                fh.truncate(len(good))
        lines = good.decode("utf-8").splitlines()
        try:
            self.header = json.loads(lines[0])
            entries = [json.loads(line) for line in lines[1:]]
        except (IndexError, ValueError):
            raise UsageError(
                f"{self.path} is not an encoderfile journal. Use a new --output-dir."
            ) from None
        if self.header.get("encoderfile_journal") != JOURNAL_FORMAT:
            raise UsageError(
                f"{self.path} has journal format {self.header.get('encoderfile_journal')!r}, "
                f"this artifact writes {JOURNAL_FORMAT}. Use a new --output-dir."
            )
        for entry in entries:
            if "done" in entry:
                self.done = entry
            else:
                if entry.get("shard") != len(self.shards):
                    raise UsageError(
                        f"{self.path} lists shards out of order. Use a new --output-dir."
                    )
                self.shards.append(entry)

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @property
    def rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_same_run(journal: Journal, header: dict[str, Any], out: Path) -> None:
    """Refuse to resume with another artifact, changed inputs or different options."""
    fix = f"Resume with what started it, or embed into a new --output-dir instead of {out}."
    old, new = journal.header["artifact"], header["artifact"]
    if old != new:
        raise UsageError(
            f"{out} was started by {old['name']} {old['version']} (manifest sha256 "
            f"{old['manifest_sha256'][:12]}…, model {old['model_sha256'][:12]}…, encoderfile "
            f"{old['encoderfile']}); this is {new['name']} {new['version']} (manifest "
            f"{new['manifest_sha256'][:12]}…, model {new['model_sha256'][:12]}…, encoderfile "
            f"{new['encoderfile']}). {fix}"
        )
    old_paths = [i["path"] for i in journal.header["inputs"]]
    new_paths = [i["path"] for i in header["inputs"]]
    if old_paths != new_paths:
        raise UsageError(
            f"{out} was started on --input {' '.join(old_paths)}, not {' '.join(new_paths)}. {fix}"
        )
    for was, now in zip(journal.header["inputs"], header["inputs"], strict=True):
        if (was["size"], was["sha256"]) != (now["size"], now["sha256"]):
            before, after = short_pair(was["sha256"], now["sha256"])
            raise UsageError(
                f"--input {now['path']} changed since {out} was started (size {was['size']} → "
                f"{now['size']}, sha256 {before} → {after}). "
                f"Restore the original file, or embed into a new --output-dir."
            )
    for name in SHAPING_OPTIONS:
        if journal.header["options"].get(name) != header["options"].get(name):
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} is {header['options'].get(name)!r} but {out} was started with "
                f"{journal.header['options'].get(name)!r}. {fix}"
            )


def _check_shards(journal: Journal, out: Path) -> None:
    for entry in journal.shards:
        vectors = sparse.NPZ_SUFFIX if "npz_bytes" in entry else ".npy"
        for suffix in (vectors, ".jsonl"):
            path = out / shard_name(entry["shard"], suffix)
            if not path.is_file() or path.stat().st_size != entry[f"{suffix[1:]}_bytes"]:
                raise UsageError(
                    f"{path} is missing or has the wrong size ({JOURNAL} lists shard "
                    f"{entry['shard']} as complete). Restore it, or use a new --output-dir."
                )


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    with open(out / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"another embed is writing {out}. Wait for it, or use another --output-dir."
            ) from None
        yield


# ------------------------------------------------------------------------------------- writing


class ShardWriter:
    """One shard in dot-files beside its final names, published with fsync + rename."""

    def __init__(self, out: Path, index: int, width: int, vectors: str = ".npy"):
        self.out, self.index, self.rows = out, index, 0
        self.final = [out / shard_name(index, s) for s in (vectors, ".jsonl")]
        self.tmp = [p.with_name(f".{p.name}.tmp") for p in self.final]
        self.npy_file: IO[bytes] = open(self.tmp[0], "wb")  # noqa: SIM115 - closed in publish
        self.ids_file: IO[bytes] = open(self.tmp[1], "wb")  # noqa: SIM115 - closed in publish
        writer = sparse.NpzWriter if vectors == sparse.NPZ_SUFFIX else records.NpyWriter
        self.npy: records.NpyWriter | sparse.NpzWriter = writer(self.npy_file, width)

    def write(
        self, first_row: int, chunk: list[records.Record], vectors: np.ndarray, tokens: list[int]
    ) -> None:
        self.npy.write(chunk, vectors, tokens)
        lines = []
        for n, (record, count) in enumerate(zip(chunk, tokens, strict=True)):
            row: dict[str, Any] = {"row": first_row + n}
            if record.id is not None:
                row["id"] = record.id
            row["tokens"] = count
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        self.ids_file.write("".join(lines).encode("utf-8"))
        self.rows += len(chunk)

    def discard(self) -> None:
        if isinstance(self.npy, records.NpyWriter):
            self.npy.spool.close()
        for fh, tmp in zip((self.npy_file, self.ids_file), self.tmp, strict=True):
            fh.close()
            tmp.unlink(missing_ok=True)

    def publish(self) -> dict[str, Any]:
        self.npy.close()
        for fh in (self.npy_file, self.ids_file):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        for tmp, final in zip(self.tmp, self.final, strict=True):
            os.replace(tmp, final)
        _fsync_dir(self.out)
        return {
            "shard": self.index,
            "rows": self.rows,
            f"{self.final[0].suffix[1:]}_bytes": self.final[0].stat().st_size,
            "jsonl_bytes": self.final[1].stat().st_size,
        }


def _remove_leftovers(out: Path) -> None:
    """Dot-files of a shard that was being written when a run died."""
    for path in out.glob(".part-*.tmp"):
        path.unlink()


# ------------------------------------------------------------------------------------ progress


class Progress:
    """A bar (records/s, ETA) on a terminal; otherwise a plain line every PROGRESS_SECONDS."""

    def __init__(self, total: int, done: int, tty: bool):
        self.total, self.done, self.tty = total, done, tty
        self.start = self.shown = time.monotonic()
        self.new = 0  # records embedded by this run (the rate ignores resumed ones)

    def update(self, rows: int) -> None:
        self.done += rows
        self.new += rows
        now = time.monotonic()
        if now - self.shown >= (0.2 if self.tty else PROGRESS_SECONDS):
            self.shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        rate = self.new / max(now - self.start, 1e-9)
        total = max(self.total, self.done)
        left = (total - self.done) / rate if rate > 0 else 0.0
        eta = time.strftime("%H:%M:%S", time.gmtime(left))
        share = self.done / total if total else 1.0
        if self.tty:
            bar = "#" * int(share * 30)
            sys.stderr.write(
                f"\r[{bar:<30}] {share:4.0%} {self.done}/{total} {rate:.0f}/s ETA {eta}\x1b[K"
            )
        else:
            sys.stderr.write(
                f"encoderfile: {self.done}/{total} records ({share:.0%}), {rate:.0f}/s, ETA {eta}\n"
            )
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ----------------------------------------------------------------------------------------- run


def run(options: ShardOptions, embed_chunk: EmbedChunk) -> int:
    """Embed --input files into --output-dir shards; with --resume, continue a previous run."""
    from encoderfile.runtime.artifact import open_bundle, read_entry
    from encoderfile.runtime.embedder import for_bulk

    out = Path(options.output_dir)
    files = expand_inputs(list(options.inputs))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --output-dir {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--output-dir {out} is not writable. Choose a writable directory.")

    with _locked(out):
        journal = Journal(out)
        if journal.path.exists():
            if not options.resume:
                raise UsageError(
                    f"{out} already holds a run ({JOURNAL}). Pass --resume to continue it, or "
                    "choose an empty --output-dir."
                )
            journal.load()
        elif any(out.glob("part-*")):
            raise UsageError(f"{out} holds part-* files but no {JOURNAL}. Use an empty directory.")

        bundle = open_bundle(options.bundle, read_model=False)
        manifest_bytes = read_entry(MANIFEST_FILE, options.bundle) or b""
        header: dict[str, Any] = {
            "encoderfile_journal": JOURNAL_FORMAT,
            "artifact": {
                "name": bundle.manifest.name,
                "version": bundle.manifest.version,
                "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
                "model_sha256": bundle.hashes.get(MODEL_FILE, ""),
                "encoderfile": __version__,
            },
            "inputs": [fingerprint(path) for path in files],
            "options": options.shaping(),
        }
        if journal.header:
            _check_same_run(journal, header, out)
            _check_shards(journal, out)
            if journal.done is not None:
                print(
                    f"encoderfile: {out} is already complete ({journal.done['rows']} records in "
                    f"{len(journal.shards)} shards)",
                    file=sys.stderr,
                )
                return 0
        else:
            journal.create(header)
        _remove_leftovers(out)

        embedder = for_bulk(bundle, options.threads)
        embedder.prefix(options.prompt)  # unknown prompt / dimensions fail before reading input
        width = embedder.manifest.width(options.dimensions)
        total = sum(int(i["lines"]) for i in header["inputs"])
        progress = Progress(total, journal.rows, sys.stderr.isatty())
        truncated = records.Truncations()
        started = time.monotonic()
        try:
            _embed_shards(
                options, embedder, embed_chunk, files, journal, out, width, progress, truncated
            )
        finally:
            progress.close()
        journal.append({"done": True, "rows": journal.rows, "shards": len(journal.shards)})

    seconds = time.monotonic() - started
    print(
        f"encoderfile: {journal.rows} records in {len(journal.shards)} shards in {out} "
        f"({progress.new} embedded by this run in {seconds:.1f} s)",
        file=sys.stderr,
    )
    truncated.report(embedder.manifest.max_length)
    return 0


def _embed_shards(
    options: ShardOptions,
    embedder: Embedder,
    embed_chunk: EmbedChunk,
    files: list[Path],
    journal: Journal,
    out: Path,
    width: int,
    progress: Progress,
    truncated: records.Truncations,
) -> None:
    row = journal.rows
    suffix = sparse.NPZ_SUFFIX if embedder.manifest.kind == "sparse" else ".npy"
    max_chars = records.char_limit(embedder.manifest.max_length)
    # Records before `row` are re-read, not re-embedded.
    remaining = islice(read_all(files, options.read, max_chars), row, None)
    while True:
        shard_records = islice(remaining, options.shard_size)
        writer: ShardWriter | None = None
        try:
            for chunk in records.chunks(shard_records, records.CHUNK):
                if writer is None:
                    writer = ShardWriter(out, len(journal.shards), width, suffix)
                vectors, tokens = embed_chunk(embedder, chunk, width, truncated)
                writer.write(row, chunk, vectors, tokens)
                row += len(chunk)
                progress.update(len(chunk))
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        if writer is None:
            return
        entry = writer.publish()
        journal.append(entry)
        journal.shards.append(entry)
