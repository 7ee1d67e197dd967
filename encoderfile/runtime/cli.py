"""The artifact's command line: embed / info / verify / serve.

argparse, not typer, and heavy imports inside the commands: cold start is part of the product.
User errors print one line `encoderfile: <message>` on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from encoderfile import __version__
from encoderfile.errors import ArtifactError, EncoderfileError, RequestError

if TYPE_CHECKING:
    import numpy as np

    from encoderfile.runtime.embedder import Embedder

CHUNK = 1024  # inputs read, embedded and written at a time: memory stays bounded
EXIT_USER = 2
COMMANDS = ("embed", "search", "stats", "info", "verify", "serve")
VALUE_OPTIONS = ("--threads", "--bundle")  # top-level options that take a value


class UsageError(EncoderfileError):
    """Bad command line."""


class Record(NamedTuple):
    where: str  # "stdin line 3", "data.jsonl line 3", "argument 2": for error messages
    id: Any
    text: str


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line instead of usage + message
        raise UsageError(f"{message}. Run '{self.prog} --help' for usage.")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(with_serve=_command(argv) == "serve")
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):
            parser.print_help(sys.stderr)
            return EXIT_USER
        return int(args.run(args))
    except EncoderfileError as e:
        print(f"encoderfile: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("encoderfile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `| head`: stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def build_parser(with_serve: bool = False) -> argparse.ArgumentParser:
    prog = _prog()
    parser = _Parser(
        prog=prog,
        description="Embed text with the model compiled into this artifact; runs offline.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print versions and exit")
    _add_common(parser, None)
    common = _Parser(add_help=False)
    _add_common(common, argparse.SUPPRESS)  # also accepted after the command
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "embed",
        parents=[common],
        help="embed texts (arguments, stdin lines or JSONL) to JSONL / JSON / NPY",
        description="Embed TEXT arguments, else stdin (one text per line), else --input JSONL. "
        "Output order follows input order.",
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument(
        "--image",
        nargs="+",
        metavar="FILE",
        help="embed these image files instead of texts (needs an image model; see info)",
    )
    p.add_argument("--input", metavar="FILE", help="JSONL file, one object per line ('-': stdin)")
    p.add_argument("--text-field", default="text", metavar="KEY", help="JSONL text key (text)")
    p.add_argument("--id-field", metavar="KEY", help="JSONL key copied to the output as 'id'")
    p.add_argument(
        "--format",
        choices=("jsonl", "json", "npy"),
        default="jsonl",
        help="jsonl (default): {id?, embedding, tokens} per line; json: one array; "
        "npy: float32 [n, dimensions]",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write here (atomically: nothing partial on failure) instead of stdout",
    )
    p.add_argument("--prompt", metavar="NAME", help="prompt prefix from the manifest (see info)")
    p.add_argument(
        "--dimensions",
        type=positive_int,
        metavar="N",
        help="Matryoshka width: a prefix of the vector, re-normalised (see info)",
    )
    p.add_argument("--skip-empty", action="store_true", help="skip blank lines / empty texts")
    p.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="invalid UTF-8: fail naming the line (strict), or replace with U+FFFD",
    )
    p.add_argument(
        "--no-truncate",
        action="store_true",
        help="fail on texts longer than max_length instead of truncating them",
    )
    p.set_defaults(run=_embed)

    p = sub.add_parser(
        "search",
        parents=[common],
        help="search a .npy index written by 'embed --format npy' (exact or funnel)",
        description="Embed each QUERY (arguments, stdin lines or --input JSONL) and print its k "
        "best index rows as JSONL {query, hits: [{id, score}]}, scores being cosines. With "
        "--shortlist-dim D --shortlist K: score every row on its first D values, re-rank the K "
        "best at full width (funnel search).",
    )
    p.add_argument("texts", nargs="*", metavar="QUERY", help="queries")
    p.add_argument("--index", required=True, metavar="VECTORS.npy", help="float32 [rows, width]")
    p.add_argument("--ids", metavar="IDS.jsonl", help="one id per index row (default: row number)")
    p.add_argument("--shortlist-dim", type=positive_int, metavar="D", help="funnel prefix width")
    p.add_argument(
        "--shortlist", type=positive_int, metavar="K", help="rows re-ranked at full width"
    )
    p.add_argument("-k", type=positive_int, default=10, help="hits per query (default 10)")
    p.add_argument("--prompt", metavar="NAME", help="prompt prefix for the queries (see info)")
    p.add_argument(
        "--input", metavar="FILE", help="JSONL queries, one object per line ('-': stdin)"
    )
    p.add_argument("--text-field", default="text", metavar="KEY", help="JSONL text key (text)")
    p.add_argument("--skip-empty", action="store_true", help="skip blank lines / empty queries")
    p.add_argument(
        "--errors", choices=("strict", "replace"), default="strict", help="invalid UTF-8"
    )
    p.add_argument("--no-truncate", action="store_true", help="fail on over-long queries")
    p.set_defaults(run=_search, id_field=None)

    p = sub.add_parser(
        "stats",
        parents=[common],
        help="EXIF tags and average / dominant colour of an image, as JSON",
        description="Print an image's EXIF tags and colour statistics as one JSON object.",
    )
    p.add_argument("file", metavar="FILE", help="JPEG, PNG, GIF, WebP, BMP or TIFF file")
    p.add_argument(
        "--averaging-method",
        choices=("arithmetic", "geometric"),
        default="arithmetic",
        help="how avg_color is computed (default arithmetic)",
    )
    p.set_defaults(run=_stats)

    p = sub.add_parser(
        "info",
        parents=[common],
        help="describe the model, files and tools",
        description="Describe the embedded model, its files and build tools.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_info)

    p = sub.add_parser(
        "verify",
        parents=[common],
        help="recompute the golden vectors",
        description="Recompute the golden vectors stored at build time; exit 0 "
        "only if they match within the stored tolerance.",
    )
    p.set_defaults(run=_verify)

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the HTTP and gRPC server",
        description="Serve embeddings over HTTP and gRPC.",
    )
    p.set_defaults(run=_serve)
    if with_serve and (server := _server()) is not None:
        server.add_arguments(p)
    return parser


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=default,
        metavar="N",
        help="onnxruntime intra-op threads (default: the CPUs this process may use, cgroup quota included)",
    )
    # Development: run a bundle directory (or another artifact) instead of this artifact.
    parser.add_argument("--bundle", default=default, help=argparse.SUPPRESS)


class _Version(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        from encoderfile.runtime.payload import read_manifest

        try:
            m = read_manifest(namespace.bundle)
            fmt = m.raw["format_version"]
            print(f"{m.name} {m.version} (encoderfile {__version__}, format {fmt})")
        except ArtifactError:
            print(f"encoderfile runtime {__version__}")
        parser.exit()


def _prog() -> str:
    artifact = os.environ.get("ENCODERFILE_ARTIFACT")
    return os.path.basename(artifact) if artifact else "encoderfile-runtime"


def _command(argv: list[str]) -> str | None:
    """The subcommand named in argv, found without importing anything."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in VALUE_OPTIONS:
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


# ---------------------------------------------------------------------------------------- embed


def _embed(args: argparse.Namespace) -> int:
    if args.image:
        return _embed_images(args)
    if args.texts and args.input:
        raise UsageError("pass texts as arguments or with --input, not both")
    if args.id_field and not args.input:
        raise UsageError("--id-field needs --input FILE.jsonl")
    if args.format == "npy" and not args.output and sys.stdout.isatty():
        raise UsageError("refusing to write binary .npy to a terminal; pass --output FILE.npy")
    if args.input not in (None, "-") and not os.path.isfile(args.input):
        raise UsageError(f"--input {args.input} does not exist or is not a file")

    from encoderfile.runtime.embedder import Embedder
    from encoderfile.runtime.payload import open_bundle

    with _output(args.output) as out:
        embedder = Embedder(open_bundle(args.bundle), args.threads)
        embedder.prefix(args.prompt)  # unknown prompt / dimensions fail before reading input
        width = embedder.check_dimensions(args.dimensions)
        writer = _WRITERS[args.format](out, width)
        progress = _Progress(enabled=not args.texts and sys.stderr.isatty())
        truncated = _Truncations()
        try:
            for chunk in _chunks(_records(args), CHUNK):
                vectors, tokens = _embed_chunk(embedder, chunk, args, width, truncated)
                writer.write(chunk, vectors, tokens)
                progress.update(len(chunk))
            writer.close()
        finally:
            progress.close()
    if truncated.count:
        shown = ", ".join(truncated.first) + (", …" if truncated.count > 3 else "")
        print(
            f"encoderfile: truncated {truncated.count} input(s) longer than "
            f"{embedder.manifest.max_length} tokens ({shown}). Pass --no-truncate to reject them.",
            file=sys.stderr,
        )
    return 0


def _search(args: argparse.Namespace) -> int:
    if args.texts and args.input:
        raise UsageError("pass queries as arguments or with --input, not both")
    from encoderfile.runtime import search

    return search.command(args, _records(args))


class _Truncations:
    """How many inputs were truncated, and where the first three were (memory stays bounded)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(where)


def _embed_chunk(
    embedder: Embedder,
    chunk: list[Record],
    args: argparse.Namespace,
    width: int,
    truncated: _Truncations,
) -> tuple[np.ndarray, list[int]]:
    encodings = embedder.tokenize([r.text for r in chunk], prompt=args.prompt)
    for record, encoding in zip(chunk, encodings, strict=True):
        if encoding.overflowing:
            if args.no_truncate:
                raise RequestError(
                    f"{record.where} is longer than max_length="
                    f"{embedder.manifest.max_length} tokens. Shorten it, or drop --no-truncate "
                    "to truncate it."
                )
            truncated.add(record.where)
    result = embedder.embed_encodings(encodings, dimensions=width)
    return result.vectors, result.tokens


def _records(args: argparse.Namespace) -> Iterator[Record]:
    """Validated inputs in order, from arguments, stdin lines or a JSONL file."""
    if args.texts:
        for i, text in enumerate(args.texts, 1):
            raw = text.encode("utf-8", "surrogateescape")  # argv keeps invalid bytes as escapes
            text = _decode(raw, args.errors, f"argument {i}")
            if _keep(text, f"argument {i}", args.skip_empty):
                yield Record(f"argument {i}", None, text)
    elif args.input is None:
        if sys.stdin.isatty():
            print(
                "encoderfile: reading texts from stdin, one per line; end with Ctrl-D",
                file=sys.stderr,
            )
        for n, line in enumerate(sys.stdin.buffer, 1):
            where = f"stdin line {n}"
            text = _decode(line.rstrip(b"\n").rstrip(b"\r"), args.errors, where)
            if _keep(text, where, args.skip_empty):
                yield Record(where, None, text)
    else:
        yield from _jsonl(args)


def _jsonl(args: argparse.Namespace) -> Iterator[Record]:
    name = "stdin" if args.input == "-" else args.input
    with _open_input(args.input) as fh:
        for n, line in enumerate(fh, 1):
            where = f"{name} line {n}"
            raw = _decode(line, args.errors, where)
            if not raw.strip():
                if args.skip_empty:
                    continue
                raise RequestError(f"{where} is blank. Remove it or pass --skip-empty.")
            try:
                obj = json.loads(raw)
            except ValueError as e:
                raise RequestError(f"{where} is not valid JSON ({e}). Fix the line.") from None
            if not isinstance(obj, dict):
                raise RequestError(
                    f"{where} is a JSON {type(obj).__name__}, not an object. Write one object "
                    f'per line, e.g. {{"{args.text_field}": "…"}}.'
                )
            text = obj.get(args.text_field)
            if not isinstance(text, str):
                keys = ", ".join(obj) or "none"
                problem = "has no" if text is None else "has a non-string"
                raise RequestError(
                    f"{where} {problem} field {args.text_field!r} (keys: {keys}). "
                    "Pick the field with --text-field."
                )
            record_id = None
            if args.id_field:
                if args.id_field not in obj:
                    raise RequestError(
                        f"{where} has no id field {args.id_field!r}. Add it or drop --id-field."
                    )
                record_id = obj[args.id_field]
            if _valid_unicode(text, where) and _keep(text, where, args.skip_empty):
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
        yield fh


def _decode(raw: bytes, errors: str, where: str) -> str:
    try:
        return raw.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise RequestError(
            f"{where} is not valid UTF-8 (byte {e.start + 1}). Fix the encoding or pass "
            "--errors replace."
        ) from None


def _valid_unicode(text: str, where: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where} contains a lone surrogate escape. Fix the text.") from None
    return True


def _keep(text: str, where: str, skip_empty: bool) -> bool:
    if text.strip():
        return True
    if skip_empty:
        return False
    raise RequestError(f"{where} is empty. Remove it or pass --skip-empty.")


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or a temp file beside `path` renamed over it only when everything succeeded."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise RequestError(f"--output {path} is a directory. Name a file.")
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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


class _JsonlWriter:
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


class _JsonWriter(_JsonlWriter):
    def __init__(self, out: IO[bytes], width: int):
        super().__init__(out, width)
        self.first = True

    def write(self, chunk: list[Record], vectors: np.ndarray, tokens: list[int]) -> None:
        lines = [self.line(r, v, t) for r, v, t in zip(chunk, vectors, tokens, strict=True)]
        self.out.write(("[\n" if self.first else ",\n").encode() + ",\n".join(lines).encode())
        self.first = False

    def close(self) -> None:
        self.out.write(b"[]\n" if self.first else b"\n]\n")


class _NpyWriter:
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


_WRITERS: dict[str, Any] = {"jsonl": _JsonlWriter, "json": _JsonWriter, "npy": _NpyWriter}


class _Progress:
    """`\\r<n> texts <rate>/s` on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled, self.done = enabled, 0
        self.start = self.shown = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.shown >= 0.2:
            rate = self.done / max(now - self.start, 1e-9)
            sys.stderr.write(f"\r{self.done} texts embedded, {rate:.0f}/s")
            sys.stderr.flush()
            self.shown = now

    def close(self) -> None:
        if self.enabled and self.shown != self.start:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------- info/verify


def _info(args: argparse.Namespace) -> int:
    import platform

    from encoderfile.runtime.payload import open_bundle

    bundle = open_bundle(args.bundle)
    m = bundle.manifest.raw
    golden = m.get("golden") or {}
    info: dict[str, Any] = {
        key: m.get(key)
        for key in (
            "name",
            "version",
            "format_version",
            "model",
            "graph",
            "steps",
            "dimension",
            "dimensions",
            "normalized",
            "prompts",
            "default_prompt",
            "tokenizer",
            "tools",
            "built_at",
        )
    }
    info["max_length"] = bundle.manifest.max_length
    info["files"] = bundle.hashes
    info["golden"] = {"tolerance": golden.get("tolerance"), "texts": len(golden.get("texts", []))}
    info["precision"] = _precision(m)
    info["artifact"] = {"path": str(bundle.source.resolve())}
    if bundle.source.is_file():
        info["artifact"]["size"] = bundle.source.stat().st_size
    info["runtime"] = {"encoderfile": __version__, "python": platform.python_version()}
    info["image"] = _image_info(m.get("image"))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    model = m.get("model") or {}
    source = (
        f"{model.get('repo')}@{model.get('revision')}"
        if model.get("source") == "hub"
        else f"local {model.get('path')}"
        if model
        else "none (image model only)"
    )
    steps = " → ".join(
        s.get("op", "?") + "(" + ", ".join(f"{k}={v}" for k, v in s.items() if k != "op") + ")"
        for s in m.get("steps", [])
    )
    prompts = "; ".join(f"{k}: {v!r}" for k, v in info["prompts"].items()) or "none"
    rows = [
        ("name", f"{info['name']} {info['version']}"),
        ("model", source),
        (
            "dimension",
            f"{info['dimension']} (request: {', '.join(map(str, info['dimensions']))}"
            f"; normalized: {'yes' if info['normalized'] else 'no'})",
        ),
        ("max_length", f"{info['max_length']} tokens"),
        ("steps", steps),
        ("precision", _precision_line(info["precision"])),
        (
            "prompts",
            prompts + (f" (default: {m['default_prompt']})" if m.get("default_prompt") else ""),
        ),
        *[(f"sha256 {k}", v) for k, v in sorted(bundle.hashes.items())],
        *[(f"source {k}", v) for k, v in sorted((model.get("files") or {}).items())],
        ("tools", ", ".join(f"{k} {v}" for k, v in sorted((m.get("tools") or {}).items()))),
        ("built_at", str(m.get("built_at"))),
        ("artifact", info["artifact"]["path"]),
        ("image", _image_summary(info["image"])),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0


def _precision(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's precision and gate figures (bundles from before precision read as fp32)."""
    precision = manifest.get("precision") or {"mode": "fp32"}
    shown: dict[str, Any] = {"mode": precision.get("mode", "fp32")}
    if "gate" in precision:
        shown["gate"] = precision["gate"]
    if "changes" in precision:
        shown["scheme"] = precision["changes"].get("scheme")
    return shown


def _precision_line(precision: dict[str, Any]) -> str:
    gate = precision.get("gate")
    if not gate:
        return str(precision["mode"])
    limits = gate.get("thresholds", {})
    return (
        f"{precision['mode']} (gate passed on {gate.get('held_out_texts')} held-out texts: "
        f"cosine to fp32 mean {gate.get('mean_cosine'):.4f} >= {limits.get('mean_cosine')}, "
        f"min {gate.get('min_cosine'):.4f} >= {limits.get('min_cosine')}; "
        f"batch invariance max |diff| {gate.get('batch_max_abs_diff'):.3g} "
        f"<= {limits.get('batch_max_abs_diff')})"
    )


def _verify(args: argparse.Namespace) -> int:
    import numpy as np

    from encoderfile.runtime.embedder import Embedder
    from encoderfile.runtime.payload import open_bundle

    bundle = open_bundle(args.bundle)
    if not bundle.manifest.has_text:  # an image model alone
        return 0 if _verify_images(bundle, args.threads) else 1
    golden = bundle.manifest.golden
    if not golden or not golden.get("texts"):
        raise ArtifactError("manifest.json has no golden vectors. Rebuild the bundle.")
    expected = np.asarray(golden["vectors"], dtype=np.float32)
    got = Embedder(bundle, args.threads).embed_raw(golden["texts"])
    if got.shape != expected.shape:
        raise ArtifactError(
            f"golden vectors have shape {expected.shape}, the model gives {got.shape}. "
            "Rebuild the bundle."
        )
    diff = float(np.abs(got - expected).max())
    tolerance = float(golden["tolerance"])
    ok = diff <= tolerance
    print(
        f"{'ok' if ok else 'FAILED'}: max |diff| {diff:.3g} over {len(expected)} golden texts "
        f"(tolerance {tolerance:g})"
    )
    if bundle.vision is not None:
        ok = _verify_images(bundle, args.threads) and ok
    if not ok:
        print(
            "encoderfile: this machine computes embeddings that differ from the build's. "
            "Report it with the output of 'info --json'.",
            file=sys.stderr,
        )
    return 0 if ok else 1


def _server() -> Any:
    """encoderfile.runtime.server, or None if this build lacks it (its own imports must work)."""
    try:
        import encoderfile.runtime.server as server
    except ModuleNotFoundError as e:
        if e.name != "encoderfile.runtime.server":
            raise
        return None
    return server


def _serve(args: argparse.Namespace) -> int:
    from encoderfile.runtime.payload import open_bundle

    server = _server()
    if server is None:
        raise UsageError("this build has no server (encoderfile.runtime.server is missing)")

    return int(server.run(args, open_bundle(args.bundle)))


# ---------------------------------------------------------------------------------------- images


def _embed_images(args: argparse.Namespace) -> int:
    if args.texts or args.input:
        raise UsageError("pass texts or --image files, not both")
    if args.prompt:
        raise UsageError("--prompt applies to texts, not images")
    if args.format == "npy" and not args.output and sys.stdout.isatty():
        raise UsageError("refusing to write binary .npy to a terminal; pass --output FILE.npy")
    from encoderfile.runtime.payload import open_bundle
    from encoderfile.runtime.vision import ImageEmbedder

    bundle = open_bundle(args.bundle)
    embedder = ImageEmbedder(bundle, args.threads)
    width = args.dimensions or bundle.manifest.dimension
    embedder.embed([], width)  # an unknown width fails before any file is read
    with _output(args.output) as out:
        writer = _WRITERS[args.format](out, width)
        for start in range(0, len(args.image), 64):
            files = args.image[start : start + 64]
            pixels = [embedder.pixels(_read_image(path), path) for path in files]
            records = [Record(path, path, "") for path in files]
            writer.write(records, embedder.embed(pixels, width), [0] * len(files))
        writer.close()
    return 0


def _read_image(path: str) -> Any:
    from encoderfile.runtime import image as pictures

    try:
        with open(path, "rb") as fh:
            data = fh.read(pictures.MAX_BYTES + 1)
    except OSError as e:
        raise RequestError(f"cannot read image {path}: {e.strerror}. Check the path.") from None
    return pictures.decode(data, path)


def _stats(args: argparse.Namespace) -> int:
    from encoderfile.runtime import image as pictures

    result = pictures.stats(_read_image(args.file), args.averaging_method)
    print(json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False))
    return 0


def _image_info(section: dict[str, Any] | None) -> dict[str, Any] | None:
    if not section:
        return None
    golden = section.get("golden") or {}
    return {
        "model": {k: v for k, v in (section.get("model") or {}).items()},
        "size": section.get("size"),
        "mean": section.get("mean"),
        "std": section.get("std"),
        "steps": section.get("steps"),
        "graph": section.get("graph"),
        "golden": {"tolerance": golden.get("tolerance"), "images": len(golden.get("images", []))},
    }


def _image_summary(info: dict[str, Any] | None) -> str:
    if info is None:
        return "none (text only)"
    model = info["model"]
    source = (
        f"{model.get('repo')}@{model.get('revision')}"
        if model.get("source") == "hub"
        else f"local {model.get('path')}"
        if model
        else "none (image model only)"
    )
    steps = " → ".join(s.get("op", "?") for s in info.get("steps") or [])
    return f"{source}; {info['size']} px, bicubic + centre crop; steps {steps}"


def _verify_images(bundle: Any, threads: int | None) -> bool:
    import numpy as np

    from encoderfile.runtime.vision import ImageEmbedder

    expected, got, tolerance = ImageEmbedder(bundle, threads).golden()
    if got.shape != expected.shape:
        raise ArtifactError(
            f"image golden vectors have shape {expected.shape}, the model gives {got.shape}. "
            "Rebuild the bundle."
        )
    diff = float(np.abs(got - expected).max())
    ok = diff <= tolerance
    print(
        f"{'ok' if ok else 'FAILED'}: max |diff| {diff:.3g} over {len(expected)} golden images "
        f"(tolerance {tolerance:g})"
    )
    return ok
