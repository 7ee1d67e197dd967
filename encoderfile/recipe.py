"""The recipe: a YAML file that pins a model and the post-processing compiled into its graph."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from encoderfile.errors import RecipeError

SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSource(_Strict):
    """A Hugging Face repository at a pinned revision."""

    repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name")]
    revision: str = Field(description="40-hex commit; a branch or tag needs --allow-unpinned")
    files: dict[str, SHA256 | None] = Field(
        min_length=1, description="repo path -> sha256 ('encoderfile pin' fills these in)"
    )

    @property
    def pinned(self) -> bool:
        return bool(COMMIT.match(self.revision))


class LocalSource(_Strict):
    """A directory on disk; a relative path is relative to the recipe file."""

    path: str
    files: dict[str, SHA256 | None] = Field(
        min_length=1, description="path inside the directory -> sha256 (optional pin)"
    )


class GraphSpec(_Strict):
    """An ONNX graph from one source (hub or local)."""

    hub: HubSource | None = None
    local: LocalSource | None = None
    graph: str = Field(description="the ONNX file among `files`")
    output: str | None = Field(
        None, description="graph output holding token states; auto-detected when unambiguous"
    )

    _listed: ClassVar[tuple[str, ...]] = ("graph",)

    @model_validator(mode="after")
    def _one_source(self) -> GraphSpec:
        if (self.hub is None) == (self.local is None):
            raise ValueError("set exactly one of 'hub' or 'local'")
        files = self.source.files
        for key in self._listed:
            if getattr(self, key) not in files:
                raise ValueError(f"{key} {getattr(self, key)!r} is not listed in files")
        return self

    @property
    def source(self) -> HubSource | LocalSource:
        return self.hub or self.local  # type: ignore[return-value]


class ModelSpec(GraphSpec):
    tokenizer: str = Field("tokenizer.json", description="the tokenizer.json among `files`")

    _listed: ClassVar[tuple[str, ...]] = ("graph", "tokenizer")


class Pooling(_Strict):
    op: Literal["pooling"]
    mode: Literal["mean", "cls", "last_token"]


class LayerNorm(_Strict):
    op: Literal["layer_norm"]
    eps: Annotated[float, Field(gt=0, lt=1)] = 1e-5


class Truncate(_Strict):
    """Keep the first `dimension` values (Matryoshka)."""

    op: Literal["truncate"]


class Normalize(_Strict):
    op: Literal["normalize"]
    norm: Literal["l2"] = "l2"


class FitTexts(_Strict):
    """Texts pinned by sha256: a .txt file (one text a line) or BEIR-style JSONL (.gz ok)."""

    texts: str = Field(description="path relative to the recipe file")
    sha256: SHA256 = Field(description="sha256 of the file's bytes")


class Rotate(_Strict):
    """Rotate onto the principal axes of the fit texts' pooled vectors (before truncate)."""

    op: Literal["rotate"]
    fit: FitTexts


class Splade(_Strict):
    """kind: sparse — SPLADE pooling of a masked LM's logits (the maths: splice/splade.py)."""

    op: Literal["splade"]
    pooling: Literal["max", "sum"] = Field(
        "max", description="over the attended tokens: max (SPLADE v2 and later) or sum (SPLADE v1)"
    )


Step = Annotated[
    Pooling | LayerNorm | Rotate | Truncate | Normalize | Splade, Field(discriminator="op")
]


class TokenizerSpec(_Strict):
    max_length: Annotated[int, Field(ge=1, le=131072)] = 512
    truncation_side: Literal["right", "left"] = "right"
    padding_side: Literal["right", "left"] = "right"
    add_special_tokens: bool = True
    pad_token: str | None = Field(None, description="defaults to the tokenizer's own pad token")


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Triple = Annotated[list[float], Field(min_length=3, max_length=3)]


class ImageSpec(_Strict):
    """An image model in the text model's embedding space (e.g. nomic-embed-vision-v1.5).

    Preprocessing: RGB -> resize the shortest side to `size` (bicubic) -> centre-crop
    `size` x `size` -> x / 255 -> (x - mean) / std -> model -> steps.
    """

    model: GraphSpec
    size: Annotated[int, Field(ge=8, le=4096)] = Field(224, description="resize + crop size")
    mean: Triple = Field(default_factory=lambda: list(CLIP_MEAN), description="per RGB channel")
    std: Triple = Field(default_factory=lambda: list(CLIP_STD), description="per RGB channel")
    steps: list[Step] = Field(
        default_factory=lambda: _default_image_steps(),
        min_length=1,
        description="as the text steps; vectors have the recipe's dimension",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ImageSpec:
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        _check_steps(self.steps)
        if any(s.op == "rotate" for s in self.steps):
            raise ValueError("rotate applies to the text model's steps only. Remove it here")
        if any(s.op == "pooling" and s.mode != "cls" for s in self.steps):
            raise ValueError("image steps pool with mode 'cls' (there is no attention mask)")
        return self


def _default_image_steps() -> list[Step]:
    return [Pooling(op="pooling", mode="cls"), Normalize(op="normalize")]


def _check_steps(steps: list[Step]) -> None:
    ops = [s.op for s in steps]
    if "splade" in ops:
        raise ValueError("the splade step belongs to kind: sparse. Set kind: sparse or remove it")
    if ops[0] != "pooling" or ops.count("pooling") != 1:
        raise ValueError("steps must start with exactly one pooling step")
    for op in ("layer_norm", "rotate", "truncate", "normalize"):
        if ops.count(op) > 1:
            raise ValueError(f"step {op!r} appears more than once")
    if "rotate" in ops:
        at = ops.index("rotate")
        if "normalize" in ops[:at]:
            raise ValueError(
                "rotate after normalize cannot help: truncation must see the rotated vector "
                "before it is normalised. Order the steps pooling, [layer_norm,] rotate, truncate, "
                "normalize"
            )
        if "truncate" in ops[:at]:
            raise ValueError(
                "rotate after truncate cannot help: the dropped values are gone. Put rotate "
                "before truncate"
            )
        if "layer_norm" in ops[at:]:
            raise ValueError(
                "layer_norm after rotate would undo it (its per-vector centring is not rotation "
                "invariant). Put layer_norm before rotate"
            )
    if "normalize" in ops and ops[-1] != "normalize":
        raise ValueError("normalize must be the last step")


class Gate(_Strict):
    """Build-time quality gate for fp16/int8: held-out texts (pairs for a reranker) vs the fp32
    graph, and batch invariance. Embedders use the cosines, rerankers score and rank agreement."""

    mean_cosine: Annotated[float, Field(ge=0, le=1)] = Field(
        0.99, description="least mean cosine of a quantized vector to its fp32 vector"
    )
    min_cosine: Annotated[float, Field(ge=-1, le=1)] = Field(
        0.98, description="least cosine of any one held-out text"
    )
    batch_max_abs_diff: Annotated[float, Field(ge=0)] = Field(
        1e-5, description="largest |alone - inside a mixed padded batch| allowed"
    )
    score_rel_diff: Annotated[float, Field(ge=0)] = Field(
        0.05,
        description="kind reranker: largest |score - fp32 score| as a share of the fp32 scores' "
        "range over the held-out pairs",
    )
    rank_min_spearman: Annotated[float, Field(ge=-1, le=1)] = Field(
        0.95,
        description="kind reranker: least Spearman correlation of any held-out query's ranking "
        "of its documents with the fp32 ranking",
    )


class Int8(_Strict):
    """Options of precision: int8 (static QDQ calibration; see encoderfile/quantize.py)."""

    calibration_texts: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=4, description="calibration texts; default a built-in varied set"
    )
    ffn_down: bool = Field(
        False,
        description="also quantize the feed-forward down-projections (after GELU/SwiGLU): "
        "faster, lower cosine to fp32",
    )
    smooth_alpha: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="SmoothQuant migration strength (0 = off)"
    )


Kind = Literal["embedder", "reranker", "sparse"]
NOT_BUILT_YET: tuple[str, ...] = ()  # kinds whose build is not implemented yet


class Score(_Strict):
    """kind: reranker — how a sequence-classification graph's logits [batch, labels] become the
    one `score` per (query, document) pair."""

    activation: Literal["sigmoid", "identity", "softmax"] | None = Field(
        None,
        description="sigmoid, identity or softmax over labels; default: the model config's "
        "sentence_transformers.activation_fn (config.json among the files), else sigmoid for one "
        "label and identity for several, as sentence-transformers' CrossEncoder",
    )
    label: Annotated[int, Field(ge=0)] | None = Field(
        None, description="the positive label's index (required with several labels)"
    )


Precision = Literal["fp32", "fp16", "int8"]
REFUSED_PRECISIONS = {
    "int8-dynamic": "dynamic int8 quantization computes one activation scale per batch (padding "
    "included), so a text's vector changes with its batch neighbours. Use precision: int8 "
    "(static, calibrated scales)",
}


class Recipe(_Strict):
    _path: Path = PrivateAttr(default_factory=lambda: Path("recipe.yaml"))  # set by load()

    @property
    def path(self) -> Path:
        """The file this recipe was read from: errors name it, relative paths start beside it."""
        return self._path

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)]
    version: Annotated[str, Field(min_length=1, max_length=50)]
    kind: Kind = Field(
        "embedder",
        description="embedder (vectors), reranker (a cross-encoder's score per query-document "
        "pair) or sparse",
    )
    model: ModelSpec | None = Field(
        None, description="the text model; may be left out when `image` is set (image only)"
    )
    steps: list[Step] = Field(
        default_factory=list, description="the text model's steps (required with `model`)"
    )
    # Range-checked against the model's hidden size when splicing, where both numbers are known.
    dimension: int = Field(description="width of the output vectors, 1 to the hidden size")
    dimensions: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        description="recommended request widths (each <= dimension; default [dimension]); a "
        "request may ask for any width from 1 to dimension unless restrict_dimensions is true",
    )
    restrict_dimensions: bool = Field(
        False, description="true: a request may ask only for dimension or a width in dimensions"
    )
    tokenizer: TokenizerSpec = TokenizerSpec()
    prompts: dict[str, str] = Field(default_factory=dict, description="task name -> prefix")
    default_prompt: str | None = None
    aliases: list[Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s]+$")]] = Field(
        default_factory=list,
        description="other names the OpenAI routes accept as `model` and GET /v1/models "
        "lists, e.g. the Hub repo id of a model built from a local directory",
    )
    image: ImageSpec | None = Field(
        None, description="an image model in the same embedding space (optional)"
    )

    precision: Precision = Field(
        "fp32", description="fp32, fp16 (weights stored in fp16) or int8 (static QDQ calibration)"
    )
    int8: Int8 | None = Field(None, description="options of precision: int8")
    gate: Gate = Gate()
    score: Score | None = Field(None, description="kind: reranker only: the score's activation")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsafe_precision(cls, data: object) -> object:
        if isinstance(data, dict) and str(data.get("precision")) in REFUSED_PRECISIONS:
            raise ValueError(REFUSED_PRECISIONS[data["precision"]])
        if isinstance(data, dict) and data.get("kind") == "reranker":
            data = {"dimension": 1, **data}  # one score per pair
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.kind in NOT_BUILT_YET:
            raise ValueError(
                f"kind: {self.kind} is not built by this version yet. Use kind: embedder or reranker"
            )
        if self.score is not None and self.kind != "reranker":
            raise ValueError("'score' belongs to kind: reranker. Remove it or set kind: reranker")
        if self.kind == "reranker":
            return self._reranker()
        if self.kind == "sparse":
            return self._sparse()
        if self.model is None:
            if self.image is None:
                raise ValueError("set 'model' (text), 'image', or both")
            if self.steps or self.prompts:
                raise ValueError("'steps' and 'prompts' belong to a text model; add 'model'")
            if self.precision != "fp32":
                raise ValueError("'precision' applies to the text model; add 'model' or drop it")
        else:
            if not self.steps:
                raise ValueError("'steps' is required with a text model")
            _check_steps(self.steps)
            if any(s.op == "rotate" for s in self.steps) and not (
                "truncate" in [s.op for s in self.steps] or len(self.allowed_dimensions) > 1
            ):
                raise ValueError(
                    "rotate only helps when vectors are truncated. Add '- op: truncate' with a "
                    "smaller dimension, or request-time dimensions, or remove rotate"
                )
        for d in self.allowed_dimensions:
            if d > self.dimension:
                raise ValueError(f"dimensions value {d} exceeds dimension {self.dimension}")
        if self.default_prompt is not None and self.default_prompt not in self.prompts:
            raise ValueError(f"default_prompt {self.default_prompt!r} is not a key of prompts")
        if self.int8 is not None and self.precision != "int8":
            raise ValueError("the int8 section only applies to precision: int8")
        return self

    def _reranker(self) -> Recipe:
        """A cross-encoder: a text model, its score and nothing an embedder adds."""
        if self.model is None:
            raise ValueError("kind: reranker needs 'model' (a sequence-classification graph)")
        extra = [
            k for k in ("steps", "prompts", "image", "dimensions", "aliases") if getattr(self, k)
        ]
        if extra:
            raise ValueError(
                f"{', '.join(extra)} belong to an embedder, not kind: reranker. Remove them (the "
                "score's activation is set under 'score')"
            )
        if self.dimension != 1:
            raise ValueError("a reranker gives one score per pair: leave 'dimension' out")
        if self.score and self.score.activation == "softmax" and self.score.label is None:
            raise ValueError("softmax needs the positive label: set score.label")
        return self

    def _sparse(self) -> Recipe:
        """SPLADE: a masked LM whose logits one splade step pools to the vocabulary's width."""
        if self.model is None:
            raise ValueError("kind: sparse needs 'model' (a masked-LM graph with logits)")
        if [s.op for s in self.steps] != ["splade"]:
            raise ValueError(
                "kind: sparse takes exactly one step, '- op: splade' (pooling: max or sum). "
                "Set steps to that"
            )
        extra = [k for k in ("image", "dimensions", "restrict_dimensions") if getattr(self, k)]
        if extra:
            raise ValueError(
                f"{', '.join(extra)} belong to an embedder, not kind: sparse. Remove them (a "
                "sparse vector has the vocabulary's width)"
            )
        return self

    @property
    def allowed_dimensions(self) -> list[int]:
        return sorted(set(self.dimensions or [self.dimension]), reverse=True)


def load(path: Path) -> Recipe:
    """Read and validate a recipe; every problem names the file, the key and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read the recipe ({e}). Check the path.") from e
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise RecipeError(
            f"{path}: the YAML is nested too deeply to read. Write a flat recipe (see recipes/)."
        ) from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise RecipeError(
            f"{path}: malformed YAML{line}: {getattr(e, 'problem', e)}. Fix the YAML syntax."
        ) from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: the recipe must be a YAML mapping. See recipes/*.yaml.")
    try:
        spec = Recipe.model_validate(data)
    except RecursionError:
        raise RecipeError(
            f"{path}: a value is nested too deeply to check. Write a flat recipe (see recipes/)."
        ) from None
    except ValidationError as e:
        raise RecipeError(f"{path}: {_describe(e)}") from e
    spec._path = path
    return spec


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}'. Remove it or check its spelling against recipes/recipe.schema.json."
    if kind == "missing":
        return f"missing key '{key}'. Add it (see recipes/recipe.schema.json)."
    where = f"key '{key}'" if key else "recipe"
    value = first.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return f"{where}: {msg.removeprefix('Value error, ')}{shown}. Fix the value."


def json_schema() -> str:
    """The recipe's JSON schema, as checked in at recipes/recipe.schema.json."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "encoderfile recipe"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
