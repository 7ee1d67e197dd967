"""The builder's command line: build, inspect, pin, schema, sweep."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from encoderfile import __version__, recipe, resolve
from encoderfile.errors import EncoderfileError, EvaluationError, RecipeError

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
) -> None:
    """Resolve, splice, verify and bundle a recipe, then freeze it into dist/<name>."""
    from encoderfile.compiler import compile_bundle

    bundle_dir = compile_bundle(recipe_path, out, allow_unpinned=allow_unpinned)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    _say(f"bundle {bundle_dir} (dimension {manifest['dimension']}, verified)")
    if bundle_only:
        return
    from encoderfile import freeze

    artifact = freeze.build(bundle_dir, dist)
    _say(f"executable {artifact}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="a recipe YAML file or a bundle directory")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    allow_unpinned: AllowUnpinned = False,
) -> None:
    """Show what a recipe resolves to, or what a bundle contains."""
    info = _inspect_bundle(path) if path.is_dir() else _inspect_recipe(path, allow_unpinned)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        typer.echo(f"{key:<14} {shown}")


def _graph_summary(graph_path: Path) -> dict[str, Any]:
    from encoderfile.compiler import load_graph
    from encoderfile.splice import opset

    model = load_graph(graph_path, graph_path.name)

    def describe(values: Any) -> dict[str, list[str | int]]:
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values
        }

    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return {
        "inputs": describe(inputs),
        "outputs": describe(model.graph.output),
        "opset": opset(model),
    }


def _inspect_bundle(path: Path) -> dict[str, Any]:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise EncoderfileError(
            f"{path} is not a bundle (no manifest.json). Pass a bundle directory or a recipe."
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("model") is None:  # an image model alone
        return {
            "name": manifest["name"],
            "version": manifest["version"],
            "dimension": manifest["dimension"],
            "dimensions": manifest["dimensions"],
            "files": manifest["files"],
            "image": _image_summary(manifest.get("image")),
        }
    return {
        "name": manifest["name"],
        "version": manifest["version"],
        "model": {k: v for k, v in manifest["model"].items() if k != "files"},
        **_graph_summary(path / "model.onnx"),
        "dimension": manifest["dimension"],
        "dimensions": manifest["dimensions"],
        "steps": manifest["steps"],
        "token_states": manifest["graph"]["token_states"],
        "added_nodes": manifest["graph"]["added_nodes"],
        "files": manifest["files"],
        "source_files": manifest["model"]["files"],
        "image": _image_summary(manifest.get("image")),
        **_precision_summary(manifest.get("precision") or {"mode": "fp32"}),
    }


def _image_summary(image: dict[str, Any] | None) -> dict[str, Any] | None:
    if image is None:
        return None
    keep = ("inputs", "output", "token_states", "hidden_size", "added_nodes")
    return {
        "model": {k: v for k, v in image["model"].items() if k != "files"},
        "size": image["size"],
        "steps": image["steps"],
        **{k: image["graph"][k] for k in keep},
        "source_files": image["model"]["files"],
    }


def _precision_summary(precision: dict[str, Any]) -> dict[str, Any]:
    """precision, and for fp16/int8 what the quantizer changed and the gate's figures."""
    summary: dict[str, Any] = {"precision": precision.get("mode", "fp32")}
    if "changes" in precision:
        summary["quantizer"] = precision["changes"]
    if "gate" in precision:
        summary["gate"] = precision["gate"]
    return summary


def _inspect_recipe(path: Path, allow_unpinned: bool) -> dict[str, Any]:
    spec = recipe.load(path)
    if spec.model is None:
        image = resolve.resolve_image(spec, path, allow_unpinned=allow_unpinned)
        assert image is not None
        return {
            "name": spec.name,
            "version": spec.version,
            "image": {"model": image.source, "sha256": image.sha256, **_graph_summary(image.graph)},
            "dimension": spec.dimension,
            "dimensions": spec.allowed_dimensions,
        }
    resolved = resolve.resolve(spec, path, allow_unpinned=allow_unpinned)
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
        resolve.resolve(spec, recipe_path, allow_unpinned=allow_unpinned, check_hashes=False)
        if spec.model is not None
        else None
    )
    image = resolve.resolve_image(
        spec, recipe_path, allow_unpinned=allow_unpinned, check_hashes=False
    )
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
    out: Annotated[Path, typer.Option(help="where to write it")] = Path(
        "recipes/recipe.schema.json"
    ),
) -> None:
    """Write the recipe's JSON schema (generated from the code)."""
    out.write_text(recipe.json_schema(), encoding="utf-8")
    _say(f"wrote {out}")


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
) -> None:
    """Retrieval quality (nDCG@10, recall@100) against width and precision, on BEIR-format data."""
    from encoderfile import retrieval
    from encoderfile import sweep as sweeping
    from encoderfile.runtime.embedder import Embedder
    from encoderfile.runtime.payload import open_bundle

    widths = [int(d) for d in dims.split(",")] if dims and _is_int_list(dims) else None
    if dims and widths is None:
        raise EvaluationError(
            f"--dims {dims!r} is not a list of integers. Write e.g. --dims 384,128,64."
        )
    funnels = sweeping.parse_funnels(funnel)
    others = [json.loads(p.read_text()) for p in compare or []]
    judged = retrieval.load_qrels(qrels)
    query_set = retrieval.load_collection(queries, only=set(judged))
    documents = retrieval.load_collection(corpus)
    if path.is_dir():
        bundle_dir = path
    else:
        from encoderfile.compiler import compile_bundle

        bundle_dir = compile_bundle(path, out, allow_unpinned=allow_unpinned)
    result = sweeping.run(
        Embedder(open_bundle(bundle_dir)),
        query_set,
        documents,
        judged,
        dims=widths,
        funnels=funnels,
        rescore=rescore,
        query_prompt=query_prompt,
        doc_prompt=doc_prompt,
        cache=out / "sweep-cache",
    )
    typer.echo(json.dumps(result, indent=2) if as_json else sweeping.table(result))
    if plot is not None:
        labelled = [(r["model"] if others else "", r) for r in [result, *others]]
        sweeping.plot(labelled, plot)
        _say(f"wrote {plot}")


def _is_int_list(text: str) -> bool:
    return all(part.strip().isdigit() for part in text.split(","))


def main() -> None:
    try:
        app(standalone_mode=False)
    except EncoderfileError as e:
        _say(f"encoderfile: {e}")
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
