"""The artifact's command line: embed / info / verify / sbom / serve / mcp.

argparse, not typer, and heavy imports inside the commands: cold start is part of the product.
User errors print one line `encoderfile: <message>` on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from encoderfile import __version__
from encoderfile.errors import ArtifactError, EncoderfileError, RequestError, UsageError
from encoderfile.runtime import records

if TYPE_CHECKING:
    import numpy as np

    from encoderfile.runtime.embedder import Embedder
    from encoderfile.runtime.manifest import Manifest

EXIT_USER = 2
COMMANDS = (
    "embed",
    "rerank",
    "stream",
    "search",
    "stats",
    "info",
    "verify",
    "sbom",
    "serve",
    "mcp",
)
VALUE_OPTIONS = ("--threads", "--bundle")  # top-level options that take a value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line instead of usage + message
        raise UsageError(f"{message}. Run '{self.prog} --help' for usage.")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)  # unwind, so that no partial output is left
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


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


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
    reading, shaping, width = _shared_options()
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "embed",
        parents=[common, reading, shaping, width],
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
    p.add_argument(
        "--input",
        nargs="+",
        metavar="FILE",
        help="JSONL file, one object per line ('-': stdin; gzip read transparently); with "
        "--output-dir, several files or globs",
    )
    p.add_argument("--id-field", metavar="KEY", help="JSONL key copied to the output as 'id'")
    p.add_argument(
        "--format",
        choices=("jsonl", "json", "npy", "npz"),
        default="jsonl",
        help="jsonl (default): {id?, embedding, tokens} per line; json: one array; "
        "npy: float32 [n, dimensions]; a sparse artifact writes jsonl {id?, indices, values, "
        "tokens} or npz (a scipy.sparse CSR matrix)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write here (atomically: nothing partial on failure) instead of stdout",
    )
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        help="write resumable shards here (part-NNNNN.npy + .jsonl, journal.jsonl); see --resume",
    )
    p.add_argument(
        "--shard-size",
        type=positive_int,
        metavar="N",
        help="records per shard with --output-dir (default 100000)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the --output-dir run after its last complete shard",
    )
    p.set_defaults(run=_embed)

    p = sub.add_parser(
        "rerank",
        parents=[common, reading],
        help="score documents (JSONL on stdin or --input) against a query (reranker artifacts)",
        description="Score each document against QUERY with the cross-encoder and print JSONL "
        "{index, id?, score}, best first (or in input order with --input-order). Documents are "
        "JSONL objects on stdin or in --input FILE (their --text-field; --lines: plain lines).",
    )
    p.add_argument("query", metavar="QUERY", help="the query the documents are scored against")
    p.add_argument("--input", metavar="FILE", help="JSONL documents ('-': stdin, the default)")
    p.add_argument("--lines", action="store_true", help="stdin holds one document per line")
    p.add_argument("--id-field", metavar="KEY", help="JSONL key copied to the output as 'id'")
    p.add_argument("--top-n", type=positive_int, metavar="N", help="print only the N best")
    p.add_argument(
        "--input-order", action="store_true", help="print in input order instead of best first"
    )
    p.add_argument(
        "--raw-scores", action="store_true", help="the model's logit instead of its score"
    )
    p.add_argument(
        "--return-text", action="store_true", help="copy each document's text to the output"
    )
    p.add_argument(
        "--no-truncate",
        action="store_true",
        help="refuse a (query, document) pair longer than max_length instead of cutting it",
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write here (atomically) instead of stdout"
    )
    p.set_defaults(run=_rerank)

    p = sub.add_parser(
        "stream",
        parents=[common, shaping, width],
        help="embed batches over stdin/stdout for a long-lived worker (e.g. encoderfile.ray)",
        description='Read one JSON line per batch, {"texts": [...]}, from stdin and answer '
        "each with a frame of float32 vectors on stdout (protocol: encoderfile/runtime/stream.py).",
    )
    p.set_defaults(run=_stream)

    p = sub.add_parser(
        "search",
        parents=[common, reading, shaping],
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
    p.add_argument(
        "--dimensions",
        type=positive_int,
        metavar="N",
        help="the width the index was embedded at, when it is not one 'info' lists",
    )
    p.add_argument(
        "--input", metavar="FILE", help="JSONL queries, one object per line ('-': stdin)"
    )
    p.add_argument(
        "--rerank",
        metavar="RERANKER",
        help="re-score each query's hits with this reranker artifact (the funnel's last stage); "
        "hits then carry the cross-encoder's score and their dense_score",
    )
    p.add_argument(
        "--corpus", metavar="FILE.jsonl", help="with --rerank: {id, text} of every index row"
    )
    p.add_argument(
        "--rerank-shortlist",
        type=positive_int,
        default=100,
        metavar="K",
        help="with --rerank: dense hits per query the cross-encoder re-scores (default 100)",
    )
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
        "sbom",
        parents=[common],
        help="print the CycloneDX SBOM (JSON) of this artifact",
        description="Print the CycloneDX 1.6 SBOM embedded at build time, after checking its sha256.",
    )
    p.set_defaults(run=_sbom)

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the HTTP and gRPC server",
        description="Serve embeddings over HTTP and gRPC.",
    )
    p.set_defaults(run=_serve)
    if with_serve and (server := _server()) is not None:
        _add_serve_options(p, server)

    p = sub.add_parser(
        "mcp",
        parents=[common],
        help="serve MCP tools over stdio (for desktop MCP clients)",
        description="Answer the Model Context Protocol on stdin/stdout: tools embed, "
        "similarity, rank and info. For MCP over HTTP use 'serve --mcp'.",
    )
    p.set_defaults(run=_mcp)
    return parser


def _shared_options() -> tuple[_Parser, _Parser, _Parser]:
    """Parent parsers of the options that several commands share, each written once:
    reading (embed, search): how JSONL / lines are read; shaping (embed, search, stream): the
    prompt and truncation; width (embed, stream): the Matryoshka width of the vectors written
    (search's --dimensions means the index's width, so it has its own)."""
    reading = _Parser(add_help=False)
    reading.add_argument(
        "--text-field", default="text", metavar="KEY", help="JSONL text key (text)"
    )
    reading.add_argument(
        "--skip-empty", action="store_true", help="skip blank lines / empty texts or queries"
    )
    reading.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="invalid UTF-8: fail naming the line (strict), or replace with U+FFFD",
    )
    shaping = _Parser(add_help=False)
    shaping.add_argument(
        "--prompt",
        metavar="NAME",
        help="prompt prefix from the manifest (see info); 'none' for no prefix over a default",
    )
    shaping.add_argument(
        "--no-truncate",
        action="store_true",
        help="refuse texts longer than max_length instead of truncating them (embed and "
        "search fail; stream refuses the batch)",
    )
    width = _Parser(add_help=False)
    width.add_argument(
        "--dimensions",
        type=positive_int,
        metavar="N",
        help="Matryoshka width: a prefix of the vector, re-normalised (see info)",
    )
    return reading, shaping, width


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


def _add_serve_options(parser: argparse.ArgumentParser, server: Any) -> None:
    """The `serve` command's options (--threads is global); defaults from server.ServeOptions."""
    from encoderfile.runtime.serve import logs

    defaults = server.ServeOptions()
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host", default=defaults.host, help=f"address to bind (default {defaults.host})"
    )
    net.add_argument(
        "--port", type=_port, default=defaults.port, help=f"HTTP port (default {defaults.port})"
    )
    net.add_argument(
        "--grpc-port",
        type=_port,
        default=defaults.grpc_port,
        help=f"gRPC port (default {defaults.grpc_port})",
    )
    net.add_argument("--no-http", action="store_true", help="serve gRPC only")
    net.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
    net.add_argument(
        "--mcp", action="store_true", help="also serve MCP (streamable HTTP) at /mcp on --port"
    )
    net.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require 'Authorization: Bearer KEY' (gRPC metadata 'authorization') with a key "
        f"from FILE, one per line; open without a key: {', '.join(server.open_routes())}",
    )
    net.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="URL",
        help="allow browser calls from this origin (repeatable; '*' for any)",
    )
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=defaults.log_format,
        help="text (default, for terminals) or json: one object per line with time, level, "
        "route, status, inputs, tokens, ms and request_id",
    )
    ops.add_argument(
        "--shutdown-delay",
        type=float,
        default=defaults.shutdown_delay,
        metavar="SECONDS",
        help="on SIGTERM, answer /ready with 503 (gRPC health NOT_SERVING) for SECONDS while "
        f"still serving requests, so a load balancer stops routing first (default {defaults.shutdown_delay:g})",
    )
    net.add_argument(
        "--read-timeout",
        type=positive_float,
        default=defaults.read_timeout,
        metavar="S",
        help="close an HTTP connection whose request head takes longer than S seconds, or "
        f"whose body stalls for S seconds (default {defaults.read_timeout:g})",
    )
    lim = parser.add_argument_group("limits")
    for name, help_text in (
        ("max_body_bytes", "largest request body; larger answers 413"),
        ("max_inputs", "most texts in one request"),
        ("max_chars", "longest text, in characters"),
        ("max_inflight", "texts accepted and not yet answered; over it, 429 at once"),
    ):
        default = getattr(defaults.limits, name)
        lim.add_argument(
            "--" + name.replace("_", "-"),
            type=positive_int,
            default=default,
            metavar="N",
            help=f"{help_text} (default {default})",
        )


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def _port(value: str) -> int:
    number = positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {value!r}")
    return number


class _Version(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        from encoderfile.runtime.artifact import read_manifest

        try:
            m = read_manifest(namespace.bundle)
            fmt = m.format_version
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


# ---------------------------------------------------------------------------------------- embed


def _read_options(args: argparse.Namespace, source: str | None) -> records.ReadOptions:
    """Where embed's or search's texts come from (`source`: the one --input file, if any)."""
    return records.ReadOptions(
        texts=tuple(args.texts),
        input=source,
        text_field=args.text_field,
        id_field=args.id_field,
        errors=args.errors,
        skip_empty=args.skip_empty,
    )


def _chunk_embedder(
    args: argparse.Namespace,
) -> Callable[
    [Embedder, list[records.Record], int, records.Truncations], tuple[np.ndarray, list[int]]
]:
    """_embed_chunk with embed's --prompt and --no-truncate bound."""
    return functools.partial(_embed_chunk, prompt=args.prompt, no_truncate=args.no_truncate)


def _embed(args: argparse.Namespace) -> int:
    if args.image:
        return _embed_images(args)
    if args.output_dir is not None:
        return _embed_shards(args)
    if args.shard_size or args.resume:
        raise UsageError("--shard-size and --resume need --output-dir DIR")
    if args.input and len(args.input) > 1:
        raise UsageError("several --input files need --output-dir DIR")
    source = args.input[0] if args.input else None
    if args.texts and source:
        raise UsageError("pass texts as arguments or with --input, not both")
    if args.id_field and not source:
        raise UsageError("--id-field needs --input FILE.jsonl")
    if args.format in ("npy", "npz") and not args.output and sys.stdout.isatty():
        raise UsageError(
            f"refusing to write binary .{args.format} to a terminal; pass --output FILE.{args.format}"
        )
    if source not in (None, "-") and not os.path.isfile(source):
        raise UsageError(f"--input {source} does not exist or is not a file")
    options = _read_options(args, source)
    embed_chunk = _chunk_embedder(args)

    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.model_cache import ModelCache

    bundle = open_bundle(args.bundle, read_model=False)
    if bundle.manifest.kind == "reranker":
        _require_kind(bundle.manifest, "embedder")
    model = ModelCache(bundle)  # checks the cached optimised model while the imports below run
    from encoderfile.runtime.embedder import for_bulk

    with records.output(args.output) as out:
        embedder = for_bulk(bundle, args.threads, model)
        embedder.prefix(args.prompt)  # unknown prompt / dimensions fail before reading input
        width = embedder.manifest.width(args.dimensions)
        writer = _writer(embedder.manifest, args.format)(out, width)
        progress = records.Progress(enabled=not args.texts and sys.stderr.isatty())
        truncated = records.Truncations()
        try:
            max_chars = records.char_limit(embedder.manifest.max_length)
            inputs = records.read_records(options, max_chars)
            for chunk in records.chunks(inputs, records.CHUNK):
                vectors, tokens = embed_chunk(embedder, chunk, width, truncated)
                writer.write(chunk, vectors, tokens)
                progress.update(len(chunk))
            writer.close()
        finally:
            progress.close()
    truncated.report(embedder.manifest.max_length)
    return 0


def _rerank(args: argparse.Namespace) -> int:
    if args.lines and args.input:
        raise UsageError("pass --lines (stdin lines) or --input FILE.jsonl, not both")
    if args.id_field and args.lines:
        raise UsageError("--id-field needs JSONL documents, not --lines")
    import numpy as np

    from encoderfile.runtime import reranker
    from encoderfile.runtime import texts as text_rule
    from encoderfile.runtime.artifact import open_bundle

    bundle = open_bundle(args.bundle)
    _require_kind(bundle.manifest, "reranker")
    model = reranker.Reranker(bundle, args.threads)
    text_rule.check(args.query, "QUERY", fix="Pass the query to score the documents against")
    options = records.ReadOptions(
        input=None if args.lines else (args.input or "-"),
        text_field=args.text_field,
        id_field=args.id_field,
        errors=args.errors,
        skip_empty=args.skip_empty,
    )
    max_chars = records.char_limit(model.manifest.max_length)
    kept: list[records.Record] = []
    parts: list[np.ndarray] = []
    truncated = records.Truncations()
    progress = records.Progress(sys.stderr.isatty(), "documents scored")
    try:
        for chunk in records.chunks(records.read_records(options, max_chars), records.CHUNK):
            encodings = model.tokenize_pairs(args.query, [r.text for r in chunk])
            for record, encoding in zip(chunk, encodings, strict=True):
                if encoding.overflowing or record.cut:
                    if args.no_truncate:
                        raise RequestError(
                            f"{record.where} with the query is longer than max_length="
                            f"{model.manifest.max_length} tokens. Shorten it, or drop "
                            "--no-truncate to cut it."
                        )
                    truncated.add(record.where)
            rows = model.embed_encodings(encodings).vectors
            parts.append(reranker.pick(rows, args.raw_scores))
            kept.extend(chunk if args.return_text else (r._replace(text="") for r in chunk))
            progress.update(len(chunk))
    finally:
        progress.close()
    scores = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    with records.output(args.output) as out:
        for i in reranker.order(scores, args.top_n, sort=not args.input_order):
            row: dict[str, Any] = {"index": i}
            if args.id_field:
                row["id"] = kept[i].id
            row["score"] = float(scores[i])
            if args.return_text:
                row["text"] = kept[i].text
            out.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    truncated.report(model.manifest.max_length)
    return 0


def _require_kind(manifest: Manifest, kind: str) -> None:
    """UsageError naming the artifact's kind and its command, unless it is `kind`."""
    if manifest.kind == kind:
        return
    use = {"reranker": "rerank QUERY < documents.jsonl", "embedder": "embed TEXT..."}
    raise UsageError(
        f"{manifest.name} is a{'n' if manifest.kind[0] in 'aeiou' else ''} {manifest.kind} "
        f"artifact, and this command needs a{'n' if kind[0] in 'aeiou' else ''} {kind}. Use "
        f"'{_prog()} {use.get(manifest.kind, 'info')}'"
    )


def _writer(manifest: Manifest, fmt: str) -> Any:
    """The --format writer for this artifact's kind: dense vectors, or sparse terms."""
    from encoderfile.runtime import sparse

    writers = sparse.WRITERS if manifest.kind == "sparse" else records.WRITERS
    if fmt not in writers:
        raise UsageError(
            f"--format {fmt} does not apply to {manifest.name}, a {manifest.kind} artifact. "
            f"Use --format {' or '.join(writers)}"
        )
    return writers[fmt]


def _embed_shards(args: argparse.Namespace) -> int:
    if args.output:
        raise UsageError("pass --output FILE or --output-dir DIR, not both")
    if args.texts:
        raise UsageError("--output-dir embeds --input files, not TEXT arguments")
    if not args.input:
        raise UsageError("--output-dir needs --input FILE... (JSONL, gzip allowed, globs allowed)")
    if args.format != "jsonl":
        raise UsageError(
            "--format does not apply to --output-dir (shards are .npy, or .npz for a sparse "
            "artifact, + .jsonl)"
        )
    from encoderfile.runtime import shards

    options = shards.ShardOptions(
        output_dir=args.output_dir,
        inputs=tuple(args.input),
        read=_read_options(args, None),
        shard_size=args.shard_size or shards.DEFAULT_SHARD_SIZE,
        resume=args.resume,
        prompt=args.prompt,
        dimensions=args.dimensions,
        no_truncate=args.no_truncate,
        threads=args.threads,
        bundle=args.bundle,
    )
    return shards.run(options, _chunk_embedder(args))


def _search(args: argparse.Namespace) -> int:
    if args.texts and args.input:
        raise UsageError("pass queries as arguments or with --input, not both")
    from encoderfile.runtime import search
    from encoderfile.runtime.artifact import read_manifest

    options = search.SearchOptions(
        index=args.index,
        ids=args.ids,
        k=args.k,
        shortlist_dim=args.shortlist_dim,
        shortlist=args.shortlist,
        dimensions=args.dimensions,
        prompt=args.prompt,
        no_truncate=args.no_truncate,
        threads=args.threads,
        bundle=args.bundle,
        rerank=args.rerank,
        corpus=args.corpus,
        rerank_shortlist=args.rerank_shortlist,
    )
    manifest = read_manifest(args.bundle)
    if manifest.kind == "reranker":
        _require_kind(manifest, "embedder")
    max_chars = records.char_limit(manifest.max_length)
    return search.command(options, records.read_records(_read_options(args, args.input), max_chars))


def _embed_chunk(
    embedder: Embedder,
    chunk: list[records.Record],
    width: int,
    truncated: records.Truncations,
    *,
    prompt: str | None,
    no_truncate: bool,
) -> tuple[np.ndarray, list[int]]:
    encodings = embedder.tokenize([r.text for r in chunk], prompt=prompt)
    for record, encoding in zip(chunk, encodings, strict=True):
        if encoding.overflowing or record.cut:
            if no_truncate:
                raise RequestError(
                    f"{record.where} is longer than max_length="
                    f"{embedder.manifest.max_length} tokens. Shorten it, or drop --no-truncate "
                    "to truncate it."
                )
            truncated.add(record.where)
    result = embedder.embed_encodings(encodings, dimensions=width)
    return result.vectors, result.tokens


def _stream(args: argparse.Namespace) -> int:
    from encoderfile.runtime import stream

    options = stream.StreamOptions(
        prompt=args.prompt,
        dimensions=args.dimensions,
        no_truncate=args.no_truncate,
        threads=args.threads,
        bundle=args.bundle,
    )
    return stream.run(options)


# ---------------------------------------------------------------------------------- info/verify


def _info(args: argparse.Namespace) -> int:
    import platform

    from encoderfile.runtime import sbom
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.describe import describe, rows

    bundle = open_bundle(args.bundle)
    info = describe(bundle.manifest)
    info["artifact"] = {"path": str(bundle.source.resolve())}
    if bundle.source.is_file():
        info["artifact"]["size"] = bundle.source.stat().st_size
    info["runtime"] = {"encoderfile": __version__, "python": platform.python_version()}
    info["sbom"] = sbom.describe(bundle.source)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    lines = rows(info) + [
        ("artifact", info["artifact"]["path"]),
        ("sbom", sbom.summary_line(info["sbom"])),
    ]
    width = max(len(k) for k, _ in lines)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in lines))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from encoderfile.runtime import cpu, golden
    from encoderfile.runtime.artifact import open_bundle

    bundle = open_bundle(args.bundle)
    results = golden.check(bundle, args.threads)
    for result in results:
        print(result.line())
    if all(r.ok for r in results):
        return 0
    advice = (
        "int8 rounds activations to 256 steps, so where this CPU's fp32 kernels differ from the "
        "build's in the last bit some vectors move by a step: for the same vectors here, build "
        "the recipe with precision fp32 or fp16, or build it on a CPU of this kind."
        if bundle.manifest.precision.mode == "int8"
        else "Report it with the output of 'info --json'."
    )
    print(
        "encoderfile: this machine computes embeddings that differ from the build's (built on "
        f"{cpu.describe(bundle.manifest.build_cpu)}; this CPU {cpu.describe(cpu.isa())}). "
        + advice,
        file=sys.stderr,
    )
    return 1


def _sbom(args: argparse.Namespace) -> int:
    from encoderfile.runtime import sbom

    sys.stdout.buffer.write(sbom.read(args.bundle))
    sys.stdout.buffer.flush()
    return 0


def _server() -> Any:
    """encoderfile.runtime.serve.server, or None if this build lacks it (its own imports must work)."""
    try:
        import encoderfile.runtime.serve.server as server
    except ModuleNotFoundError as e:
        if e.name != "encoderfile.runtime.serve.server":
            raise
        return None
    return server


def _serve(args: argparse.Namespace) -> int:
    from encoderfile.runtime.artifact import open_bundle

    server = _server()
    if server is None:
        raise UsageError("this build has no server (encoderfile.runtime.serve.server is missing)")

    from encoderfile.runtime.serve.service import Limits

    options = server.ServeOptions(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        no_http=args.no_http,
        no_grpc=args.no_grpc,
        mcp=args.mcp,
        api_key_file=args.api_key_file,
        cors_origins=tuple(args.cors_origin),
        log_format=args.log_format,
        shutdown_delay=args.shutdown_delay,
        read_timeout=args.read_timeout,
        limits=Limits(args.max_body_bytes, args.max_inputs, args.max_chars, args.max_inflight),
        threads=args.threads,
    )
    return int(server.run(options, open_bundle(args.bundle, read_model=False)))


def _mcp(args: argparse.Namespace) -> int:
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.serve import mcp

    return mcp.run_stdio(open_bundle(args.bundle, read_model=False), args.threads)


# ---------------------------------------------------------------------------------------- images


def _embed_images(args: argparse.Namespace) -> int:
    if args.texts or args.input:
        raise UsageError("pass texts or --image files, not both")
    if args.prompt:
        raise UsageError("--prompt applies to texts, not images")
    if args.format == "npy" and not args.output and sys.stdout.isatty():
        raise UsageError("refusing to write binary .npy to a terminal; pass --output FILE.npy")
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.vision import ImageEmbedder

    bundle = open_bundle(args.bundle)
    embedder = ImageEmbedder(bundle, args.threads)
    width = bundle.manifest.width(args.dimensions)  # fails before any file is read
    with records.output(args.output) as out:
        writer = records.WRITERS[args.format](out, width)
        for start in range(0, len(args.image), 64):
            files = args.image[start : start + 64]
            pixels = [embedder.pixels(_read_image(path), path) for path in files]
            rows = [records.Record(path, path, "") for path in files]
            writer.write(rows, embedder.embed(pixels, width), [0] * len(files))
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
