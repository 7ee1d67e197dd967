"""The builder's command line: build, inspect, pin, schema, sweep."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

_signalled: list[int] = []  # the signal that interrupted the command, once one has


def _record(signum: int, frame: Any) -> None:
    _signalled.append(signum)


if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "encoderfile":
    # The command's own process: note a signal that arrives while the imports below run
    # (raising here would be a traceback from the console script); main() then reports it.
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _record)

import typer  # noqa: E402

from encoderfile import __version__, recipe, resolve  # noqa: E402
from encoderfile.errors import EncoderfileError, EvaluationError, RecipeError, UsageError  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Compile an embedding-model recipe into a verified bundle and one offline executable.",
)

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", dir_okay=False)]
AllowUnpinned = Annotated[
    bool, typer.Option("--allow-unpinned", help="accept a Hub branch or tag instead of a commit")
]


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"encoderfile {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Compile an embedding-model recipe into a verified bundle and one offline executable."""


@app.command()
def build(
    recipe_path: RecipeArg,
    out: Annotated[Path, typer.Option(help="where bundle directories go")] = Path("build"),
    dist: Annotated[Path, typer.Option(help="where executables go")] = Path("dist"),
    bundle_only: Annotated[
        bool, typer.Option("--bundle-only", help="stop after the bundle directory")
    ] = False,
    allow_unpinned: AllowUnpinned = False,
    show_progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="each stage and its time on stderr (default: when stderr is a terminal)",
        ),
    ] = None,
) -> None:
    """Resolve, splice, verify and bundle a recipe, then freeze it into dist/<name>."""
    from encoderfile import progress

    for flag, path in (("--out", out), ("--dist", dist)):
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag} {path} is a file, not a directory. Name a directory.")
    from encoderfile.compiler import compile_bundle
    from encoderfile.runtime.artifact import read_manifest

    stages = progress.stderr(show_progress)
    bundle_dir = compile_bundle(recipe_path, out, allow_unpinned=allow_unpinned, stages=stages)
    manifest = read_manifest(bundle_dir)
    _say(f"bundle {bundle_dir} (dimension {manifest.dimension}, verified)")
    if not bundle_only:
        from encoderfile import freeze

        stages.next("freeze", "PyInstaller")
        artifact = freeze.build(bundle_dir, dist)
        _say(f"executable {artifact}")
    stages.done()


@app.command()
def inspect(
    path: Annotated[
        Path, typer.Argument(help="a recipe YAML file, a bundle directory or an artifact")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    allow_unpinned: AllowUnpinned = False,
    show_sbom: Annotated[
        bool, typer.Option("--sbom", help="print an artifact's CycloneDX SBOM (JSON) instead")
    ] = False,
) -> None:
    """Show what a recipe resolves to, or what a bundle or artifact contains."""
    if show_sbom:
        from encoderfile.runtime import sbom

        typer.echo(sbom.read(path).decode(), nl=False)
        return
    is_recipe = path.suffix in (".yaml", ".yml")
    info = _inspect_recipe(path, allow_unpinned) if is_recipe else _inspect_bundle(path)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        typer.echo(f"{key:<14} {shown}")


@app.command()
def image(
    artifact: Annotated[
        Path, typer.Argument(help="an artifact built by 'encoderfile build'", dir_okay=False)
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="where <name>.oci/ and <name>.oci.tar go (default: beside the artifact)"),
    ] = None,
    busybox: Annotated[
        Path, typer.Option(help="a statically linked busybox for the artifact's sh stub")
    ] = Path("/bin/busybox"),
) -> None:
    """Write a reproducible OCI image of ARTIFACT: an image layout and a docker-loadable tar."""
    from encoderfile import oci

    built = oci.build(artifact, out, busybox)
    _say(f"image {built.reference} {built.digest}")
    _say(f"layout {built.layout}")
    _say(f"archive {built.archive} (docker load -i / podman load -i / skopeo copy oci-archive:)")


def _graph_summary(graph: Path | bytes) -> dict[str, Any]:
    """Inputs, outputs and opset of an ONNX file (or its bytes, read from an artifact)."""
    from encoderfile.compiler import load_graph
    from encoderfile.splice import opset

    if isinstance(graph, Path):
        model = load_graph(graph, graph.name)
    else:
        import onnx

        model = onnx.load_from_string(graph)

    def shapes(values: Any) -> dict[str, list[str | int]]:
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values
        }

    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return {
        "inputs": shapes(inputs),
        "outputs": shapes(model.graph.output),
        "opset": opset(model),
    }


def _inspect_bundle(path: Path) -> dict[str, Any]:
    """The runtime's own description of a bundle directory or artifact, plus its graph."""
    from encoderfile.runtime import sbom
    from encoderfile.runtime.artifact import read_entry, read_manifest
    from encoderfile.runtime.describe import describe
    from encoderfile.runtime.manifest import MODEL_FILE

    manifest = read_manifest(path)
    shown = describe(manifest)
    model = read_entry(MODEL_FILE, path) if manifest.has_text else None
    if model is not None:
        shown.update(_graph_summary(model))
    shown["sbom"] = sbom.describe(path)
    return shown


def _inspect_recipe(path: Path, allow_unpinned: bool) -> dict[str, Any]:
    spec = recipe.load(path)
    if spec.model is None:
        image = resolve.resolve_image(spec, allow_unpinned=allow_unpinned)
        assert image is not None
        return {
            "name": spec.name,
            "version": spec.version,
            "image": {"model": image.source, "sha256": image.sha256, **_graph_summary(image.graph)},
            "dimension": spec.dimension,
            "dimensions": spec.allowed_dimensions,
        }
    resolved = resolve.resolve(spec, allow_unpinned=allow_unpinned)
    return {
        "name": spec.name,
        "version": spec.version,
        "model": resolved.source,
        "files": {key: str(file) for key, file in resolved.files.items()},
        "sha256": resolved.sha256,
        **_graph_summary(resolved.graph),
        "dimension": spec.dimension,
        "dimensions": spec.allowed_dimensions,
        "steps": [s.model_dump() for s in spec.steps],
        "precision": spec.precision,
    }


@app.command()
def pin(recipe_path: RecipeArg, allow_unpinned: AllowUnpinned = False) -> None:
    """Write the sha256 of every model file into the recipe."""
    spec = recipe.load(recipe_path)
    resolved = (
        resolve.resolve(spec, allow_unpinned=allow_unpinned, check_hashes=False)
        if spec.model is not None
        else None
    )
    image = resolve.resolve_image(spec, allow_unpinned=allow_unpinned, check_hashes=False)
    text = recipe_path.read_text(encoding="utf-8")
    # The image model's files sit under the top-level 'image:' key, after which its pins go.
    split = re.search(r"^image:", text, re.MULTILINE)
    at = split.start() if split else len(text)
    parts = [
        (text[:at], resolved.sha256 if resolved else {}),
        (text[at:], image.sha256 if image else {}),
    ]
    text = "".join(_pin_lines(recipe_path, part, pins) for part, pins in parts)
    recipe_path.write_text(text, encoding="utf-8")
    recipe.load(recipe_path)
    for _, pins in parts:
        for key, digest in pins.items():
            _say(f"pinned {key} {digest}")


def _pin_lines(recipe_path: Path, text: str, pins: dict[str, str]) -> str:
    for key, digest in pins.items():
        line = re.compile(rf"^(\s+['\"]?{re.escape(key)}['\"]?\s*:)[^\n#]*", re.MULTILINE)
        text, found = line.subn(rf"\g<1> {digest}", text, count=1)
        if not found:
            raise RecipeError(
                f"{recipe_path}: cannot find the line for {key!r} under files. "
                "Write it as '<path>: <sha256>' on its own line."
            )
    return text


@app.command()
def schema(
    out: Annotated[
        Path | None, typer.Option(help="file to write (default: print to stdout)")
    ] = None,
) -> None:
    """Print the recipe's JSON schema (generated from the code), or write it to --out."""
    text = recipe.json_schema()
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise EncoderfileError(
            f"cannot write {out} ({e.strerror}). Pass an --out path in a writable directory."
        ) from None
    _say(f"wrote {out}")


@app.command("ray-embed")
def ray_embed(
    artifact: Annotated[Path, typer.Argument(help="the artifact file workers run", dir_okay=False)],
    inputs: Annotated[
        list[str], typer.Option("--input", help="JSONL (.jsonl[.gz]) or Parquet files / dirs")
    ],
    output: Annotated[Path, typer.Option("--output", help="new directory of Parquet files")],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster ('auto', ray://host:10001); default: local")
    ] = None,
    workers: Annotated[int, typer.Option(help="actors, each running the artifact")] = 2,
    threads: Annotated[int, typer.Option(help="onnxruntime threads (= CPUs) per actor")] = 1,
    text_column: Annotated[str, typer.Option(help="column holding the texts")] = "text",
    batch_size: Annotated[int, typer.Option(help="texts per batch sent to an actor")] = 256,
    prompt: Annotated[str | None, typer.Option(help="prompt name from the manifest")] = None,
    dimensions: Annotated[int | None, typer.Option(help="Matryoshka width")] = None,
    shared_path: Annotated[
        bool, typer.Option("--shared-path", help="workers run ARTIFACT at this same path")
    ] = False,
) -> None:
    """Embed JSONL/Parquet into Parquet (an 'embedding' column) on a Ray cluster."""
    from encoderfile import ray as on_ray

    rows = on_ray.embed_files(
        artifact, inputs, output, address=address, text_column=text_column, workers=workers,
        threads=threads, batch_size=batch_size, prompt=prompt, dimensions=dimensions,
        shared_path=shared_path,
    )  # fmt: skip
    _say(f"embedded {rows} rows into {output}")


@app.command()
def sweep(
    path: Annotated[
        Path, typer.Argument(help="a recipe YAML file (built first) or a bundle directory")
    ],
    queries: Annotated[Path, typer.Option(help="BEIR queries JSONL ({_id, text})")],
    corpus: Annotated[Path, typer.Option(help="BEIR corpus JSONL, optionally .gz")],
    qrels: Annotated[Path, typer.Option(help="BEIR qrels TSV (header line first)")],
    dims: Annotated[
        str | None,
        typer.Option(
            help="widths to evaluate, e.g. 384,256,128 (default: the recipe's dimensions)"
        ),
    ] = None,
    funnel: Annotated[
        str | None,
        typer.Option(help="funnel searches D:K,... (first D dims, K re-ranked at full width)"),
    ] = None,
    rescore: Annotated[
        int, typer.Option(min=1, help="int8/binary: candidates re-ranked at full-width float32")
    ] = 100,
    query_prompt: Annotated[str | None, typer.Option(help="prompt name for queries")] = None,
    doc_prompt: Annotated[str | None, typer.Option(help="prompt name for documents")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print JSON instead of the table")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="write a PNG: nDCG@10 against bytes per vector")
    ] = None,
    compare: Annotated[
        list[Path] | None,
        typer.Option(help="another sweep's --json output to draw beside this one"),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="where a recipe's bundle is built and vectors are cached")
    ] = Path("build"),
    allow_unpinned: AllowUnpinned = False,
    dense: Annotated[
        Path | None,
        typer.Option(help="sparse artifacts: a dense recipe or bundle to compare and fuse with"),
    ] = None,
    bm25: Annotated[
        bool, typer.Option(help="sparse artifacts: a BM25 baseline (bm25s) in the same run")
    ] = True,
    rerank: Annotated[
        Path | None,
        typer.Option(help="a reranker recipe, bundle or artifact re-scoring the dense hits"),
    ] = None,
    rerank_depth: Annotated[
        int, typer.Option(min=1, help="with --rerank: dense hits per query it re-scores")
    ] = 100,
) -> None:
    """Retrieval quality (nDCG@10, recall@100) against width and precision, on BEIR-format data;
    on a sparse artifact, beside BM25, a dense artifact (--dense) and their hybrid."""
    from encoderfile import retrieval
    from encoderfile import sweep as sweeping
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.embedder import Embedder

    widths = [int(d) for d in dims.split(",")] if dims and _is_int_list(dims) else None
    if dims and widths is None:
        raise EvaluationError(
            f"--dims {dims!r} is not a list of integers. Write e.g. --dims 384,128,64."
        )
    funnels = sweeping.parse_funnels(funnel)
    others = [sweeping.load_result(p) for p in compare or []]
    judged = retrieval.load_qrels(qrels)
    query_set = retrieval.load_collection(queries, only=set(judged), only_from=qrels)
    documents = retrieval.load_collection(corpus)
    if path.is_dir():
        bundle_dir = path
    else:
        from encoderfile.compiler import compile_bundle

        bundle_dir = compile_bundle(path, out, allow_unpinned=allow_unpinned)
    embedder = Embedder(open_bundle(bundle_dir))
    if embedder.manifest.kind == "sparse":
        from encoderfile import sparse_sweep

        other = None
        if dense is not None:
            from encoderfile.compiler import compile_bundle

            dense_dir = dense if dense.is_dir() else compile_bundle(dense, out)
            other = Embedder(open_bundle(dense_dir))
        sparse_result = sparse_sweep.run(
            embedder, query_set, documents, judged, dense=other, bm25=bm25,
            cache=out / "sweep-cache",
        )  # fmt: skip
        _print(
            json.dumps(sparse_result, indent=2) if as_json else sparse_sweep.table(sparse_result)
        )
        return
    result = sweeping.run(
        embedder,
        query_set,
        documents,
        judged,
        dims=widths,
        funnels=funnels,
        rescore=rescore,
        query_prompt=query_prompt,
        doc_prompt=doc_prompt,
        cache=out / "sweep-cache",
        reranker=_reranker(rerank, out, allow_unpinned) if rerank else None,
        rerank_depth=rerank_depth,
    )
    _print(json.dumps(result, indent=2) if as_json else sweeping.table(result))
    if plot is not None:
        labelled = [(r["model"] if others else "", r) for r in [result, *others]]
        sweeping.plot(labelled, plot)
        _say(f"wrote {plot}")


def _reranker(path: Path, out: Path, allow_unpinned: bool) -> Any:
    """sweep --rerank: a reranker from a recipe (built first), a bundle or an artifact."""
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.reranker import Reranker

    if path.suffix in (".yaml", ".yml"):
        from encoderfile.compiler import compile_bundle

        path = compile_bundle(path, out, allow_unpinned=allow_unpinned)
    return Reranker(open_bundle(path))


def _print(text: str) -> None:
    """`text` on stdout; a closed or full stdout is a user error, not a traceback."""
    if sys.stdout is None:
        raise UsageError("stdout is closed. Redirect it to a file.")
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # a quiet exit flush
        raise UsageError(
            f"cannot write the result to stdout: {e.strerror}. Free space, or redirect it."
        ) from None


def _is_int_list(text: str) -> bool:
    return all(part.strip().isdigit() for part in text.split(","))


def main() -> None:
    """Run the command; SIGINT or SIGTERM at any moment, even inside an import, ends with one
    line and 130 or 143 (the atomic writers have removed their partial outputs)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if _signalled:  # arrived while this module was importing
            raise KeyboardInterrupt
        _run()
    except BaseException:
        if not _signalled:
            raise
    finally:
        for sig, handler in previous.items():  # as they were (main() may run in a test)
            signal.signal(sig, handler)
    _say("encoderfile: interrupted; nothing was written")
    sys.exit(128 + _signalled[0])


def _run() -> None:
    try:
        code = app(standalone_mode=False)  # Ctrl-C: typer returns 130
    except EncoderfileError as e:
        _say(f"encoderfile: {e}")
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:  # EOF at a prompt
        sys.exit(1)
    except Exception as e:
        if not _is_usage_error(e):
            raise
        message = " ".join(e.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
        _say(f"encoderfile: {message}. Run 'encoderfile --help' for usage.")
        sys.exit(2)
    if code == 130:  # typer saw a Ctrl-C our handler did not (it always records one)
        _signalled.append(signal.SIGINT)
        raise KeyboardInterrupt
    sys.exit(code if isinstance(code, int) else 0)


def _interrupt(signum: int, frame: Any) -> None:
    """Record the first signal and unwind. Whatever the unwinding turns into (an ImportError
    when it lands inside an extension module's import), main() reports the signal."""
    if not _signalled:
        _signalled.append(signum)
    raise KeyboardInterrupt


def _is_usage_error(error: Exception) -> bool:
    """A click usage error: typer >= 0.29 raises them from its vendored click, older from click."""
    from typer import exceptions

    kinds: list[type] = [exceptions.TyperException]
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return isinstance(error, tuple(kinds))


if __name__ == "__main__":
    main()
