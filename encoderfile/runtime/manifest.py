"""The build→run contract: file and tensor names, the format version, manifest.json's typed
sections and the one request-width rule. The builder writes a Manifest, the runtime reads it;
nothing else spells these names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

from encoderfile.errors import ArtifactError, InvalidFieldError

FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
VISION_FILE = "vision.onnx"
SBOM_FILE = "sbom.json"  # written by freeze (what PyInstaller collected), not in a bundle

INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"
TEXT_INPUTS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)  # token_type_ids is optional
TEXT_OUTPUT = "sentence_embedding"  # float32 [batch, dimension]
SCORE_OUTPUT = "score"  # kind reranker: float32 [batch], the activation applied
LOGIT_OUTPUT = "logit"  # kind reranker: float32 [batch], the positive label's raw logit
IMAGE_INPUT = "pixel_values"  # uint8 [batch, size, size, 3]
IMAGE_OUTPUT = "image_embedding"  # float32 [batch, dimension]
IMAGE_RESIZE = "shortest side, bicubic (PIL), then centre crop"
NO_PROMPT = ("none", "")  # prompt names that ask for no prefix, even over a default_prompt
KINDS = ("embedder", "reranker", "sparse")  # what a bundle's model gives; see serve/routes.py
Kind = Literal["embedder", "reranker", "sparse"]
MIN_DIMENSION = 1  # the narrowest width a request may ask for (as nomic-serve, TEI and OpenAI)


def text_columns(encoding: Any) -> dict[str, list[int]]:
    """Each text input's values from a tokenizers.Encoding (ids, attention mask, type ids)."""
    return {
        INPUT_IDS: encoding.ids,
        ATTENTION_MASK: encoding.attention_mask,
        TOKEN_TYPE_IDS: encoding.type_ids,
    }


def _plain(section: Any) -> dict[str, Any]:
    """A section as JSON-ready dict: nested sections converted, tuples as lists."""
    out: dict[str, Any] = {}
    for f in fields(section):
        value = getattr(section, f.name)
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


@dataclass(frozen=True)
class ModelSource:
    """Where the model came from: a Hub repo at a revision, or a local directory."""

    source: str  # "hub" | "local"
    files: dict[str, str]  # every source file used, with its sha256
    repo: str | None = None
    revision: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        where = {"repo": self.repo, "revision": self.revision}
        if self.source == "local":
            where = {"path": self.path}
        return {"source": self.source, **where, "files": dict(self.files)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelSource:
        return cls(
            source=str(raw["source"]),
            files={str(k): str(v) for k, v in raw["files"].items()},
            repo=raw.get("repo"),
            revision=raw.get("revision"),
            path=raw.get("path"),
        )

    @property
    def label(self) -> str:
        """`repo@revision` or `local <path>`."""
        return f"{self.repo}@{self.revision}" if self.source == "hub" else f"local {self.path}"


@dataclass(frozen=True)
class GraphInfo:
    """What the builder learnt about a graph and what it added (node names)."""

    inputs: tuple[str, ...]
    output: str
    token_states: str
    hidden_size: int
    added_nodes: tuple[str, ...]
    file: str | None = None  # the image graph names its file; the text graph is MODEL_FILE
    removed_nodes: tuple[str, ...] = ()  # the model's own nodes the builder dropped (nan_guard/)

    def to_dict(self) -> dict[str, Any]:
        out = _plain(self)
        if self.file is None:
            del out["file"]
        if not self.removed_nodes:
            del out["removed_nodes"]
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GraphInfo:
        return cls(
            inputs=tuple(raw["inputs"]),
            output=str(raw["output"]),
            token_states=str(raw["token_states"]),
            hidden_size=int(raw["hidden_size"]),
            added_nodes=tuple(raw["added_nodes"]),
            file=raw.get("file"),
            removed_nodes=tuple(raw.get("removed_nodes", ())),
        )


@dataclass(frozen=True)
class TokenizerSettings:
    max_length: int
    truncation_side: str = "right"
    padding_side: str = "right"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TokenizerSettings:
        return cls(
            max_length=int(raw["max_length"]),
            truncation_side=str(raw.get("truncation_side", "right")),
            padding_side=str(raw.get("padding_side", "right")),
        )


@dataclass(frozen=True)
class Golden:
    """Vectors the build computed for fixed inputs; `verify` recomputes them.

    `inputs` are texts (embedded raw: no prompt, full width, one padded batch), for a reranker
    (query, document) pairs whose rows are [score, logit], or, for the image model, names of
    runtime.image.sample_images pictures. JSON key: "texts", "pairs" or "images".
    """

    tolerance: float
    inputs: tuple[Any, ...]  # str, or (query, document) for "pairs"
    vectors: tuple[tuple[float, ...], ...]
    kind: str = "texts"  # "texts" | "pairs" | "images"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance,
            self.kind: [list(i) if isinstance(i, tuple) else i for i in self.inputs],
            "vectors": [list(row) for row in self.vectors],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], kind: str = "texts") -> Golden:
        if kind == "texts" and "pairs" in raw:
            kind = "pairs"
        return cls(
            tolerance=float(raw["tolerance"]),
            inputs=tuple((str(t[0]), str(t[1])) if kind == "pairs" else str(t) for t in raw[kind]),
            vectors=tuple(tuple(float(v) for v in row) for row in raw["vectors"]),
            kind=kind,
        )


@dataclass(frozen=True)
class GateFigures:
    """The quantization gate's measurements (fp16/int8): cosine to fp32 and batch invariance."""

    held_out_texts: int
    mean_cosine: float
    min_cosine: float
    worst: tuple[dict[str, Any], ...]  # {"text", "cosine"}, worst first
    batch_max_abs_diff: float
    thresholds: dict[str, float]
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GateFigures:
        return cls(
            held_out_texts=int(raw["held_out_texts"]),
            mean_cosine=float(raw["mean_cosine"]),
            min_cosine=float(raw["min_cosine"]),
            worst=tuple(dict(w) for w in raw["worst"]),
            batch_max_abs_diff=float(raw["batch_max_abs_diff"]),
            thresholds=dict(raw["thresholds"]),
            passed=bool(raw.get("passed", True)),
        )


@dataclass(frozen=True)
class ScoreGateFigures:
    """A reranker's gate (fp16/int8): score and rank agreement with fp32, batch invariance."""

    held_out_pairs: int
    queries: int
    score_max_abs_diff: float
    score_range: float  # max - min of the fp32 scores over the held-out pairs
    score_rel_diff: float  # score_max_abs_diff / score_range
    spearman_mean: float
    spearman_min: float
    top1_agreement: str  # "k/n": queries whose best document is fp32's
    worst: tuple[dict[str, Any], ...]  # {"query", "document", "fp32", <precision>}, worst first
    batch_max_abs_diff: float
    thresholds: dict[str, float]
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ScoreGateFigures:
        fields = {**raw, "worst": tuple(dict(w) for w in raw["worst"])}
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Precision:
    mode: str = "fp32"  # fp32 | fp16 | int8
    changes: dict[str, Any] | None = None  # what the quantizer did
    gate: GateFigures | ScoreGateFigures | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in _plain(self).items() if v is not None}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Precision:
        if not raw:  # bundles from before precision existed are fp32
            return cls()
        gate = raw.get("gate")
        return cls(
            mode=str(raw.get("mode", "fp32")),
            changes=raw.get("changes"),
            gate=(ScoreGateFigures if "spearman_min" in gate else GateFigures).from_dict(gate)
            if gate
            else None,
        )


@dataclass(frozen=True)
class ScoreSettings:
    """kind reranker: the activation the graph applies to the positive label's logit."""

    activation: str  # sigmoid | identity | softmax (over `labels`)
    label: int  # the positive label's index among the graph's logits
    labels: int  # how many logits the base graph gives

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ScoreSettings:
        return cls(str(raw["activation"]), int(raw["label"]), int(raw["labels"]))


@dataclass(frozen=True)
class ImageSection:
    """The image model: its graph, preprocessing, steps and golden images."""

    model: ModelSource
    graph: GraphInfo
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    steps: tuple[dict[str, Any], ...]
    normalized: bool
    golden: Golden
    resize: str = IMAGE_RESIZE

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ImageSection:
        return cls(
            model=ModelSource.from_dict(raw["model"]),
            graph=GraphInfo.from_dict(raw["graph"]),
            size=int(raw["size"]),
            mean=tuple(float(v) for v in raw["mean"]),
            std=tuple(float(v) for v in raw["std"]),
            steps=tuple(dict(s) for s in raw["steps"]),
            normalized=bool(raw.get("normalized", True)),
            golden=Golden.from_dict(raw["golden"], "images"),
            resize=str(raw.get("resize", IMAGE_RESIZE)),
        )


@dataclass(frozen=True)
class Manifest:
    """manifest.json. A bundle of an image model alone has model, graph, tokenizer and golden
    None and no steps or prompts."""

    name: str
    version: str
    dimension: int  # width of the graphs' output
    dimensions: tuple[int, ...]  # recommended request widths (prefix, re-normalised)
    normalized: bool  # the last step is L2
    files: dict[str, str]  # sha256 of each bundle file
    model: ModelSource | None = None
    graph: GraphInfo | None = None
    steps: tuple[dict[str, Any], ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt: str | None = None
    tokenizer: TokenizerSettings | None = None
    tools: dict[str, str] = field(default_factory=dict)
    built_at: str | None = None  # from SOURCE_DATE_EPOCH; None keeps bundles deterministic
    build_cpu: tuple[str, ...] = ()  # runtime.cpu.isa() where the golden vectors and gate ran
    golden: Golden | None = None
    precision: Precision = field(default_factory=Precision)
    image: ImageSection | None = None
    restrict_dimensions: bool = False  # True: requests may ask only for `dimensions`
    pinned: bool = True  # False: some source file had no sha256 pin in the recipe
    aliases: tuple[str, ...] = ()  # other names the OpenAI routes accept as `model`
    kind: Kind = "embedder"  # embedder | reranker | sparse: which routes serve it
    score: ScoreSettings | None = None  # kind reranker
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = _plain(self)
        for key in ("image", "score"):
            if out[key] is None:
                del out[key]
        if self.kind == "embedder":  # embedders' manifests stay as they were before kinds
            del out["kind"]
        if not self.aliases:  # manifests of recipes without aliases stay as they were
            del out["aliases"]
        return out

    def to_json(self) -> bytes:
        """The bytes of manifest.json: sorted keys, 2-space indent, trailing newline."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, raw: Any, source: str = MANIFEST_FILE) -> Manifest:
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
            found = raw.get("format_version") if isinstance(raw, dict) else type(raw).__name__
            raise ArtifactError(
                f"{source} has format_version {found!r}; this runtime reads {FORMAT_VERSION}. "
                "Rebuild the bundle with a matching encoderfile."
            )
        try:
            manifest = cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                dimension=int(raw["dimension"]),
                dimensions=tuple(int(d) for d in raw.get("dimensions") or [raw["dimension"]]),
                normalized=bool(raw["normalized"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
                model=ModelSource.from_dict(raw["model"]) if raw.get("model") else None,
                graph=GraphInfo.from_dict(raw["graph"]) if raw.get("graph") else None,
                steps=tuple(dict(s) for s in raw.get("steps") or ()),
                prompts={str(k): str(v) for k, v in (raw.get("prompts") or {}).items()},
                default_prompt=raw.get("default_prompt"),
                tokenizer=(
                    TokenizerSettings.from_dict(raw["tokenizer"]) if raw.get("tokenizer") else None
                ),
                tools={str(k): str(v) for k, v in (raw.get("tools") or {}).items()},
                built_at=raw.get("built_at"),
                build_cpu=tuple(str(f) for f in raw.get("build_cpu") or ()),
                golden=Golden.from_dict(raw["golden"]) if raw.get("golden") else None,
                precision=Precision.from_dict(raw.get("precision")),
                image=ImageSection.from_dict(raw["image"]) if raw.get("image") else None,
                restrict_dimensions=bool(raw.get("restrict_dimensions", False)),
                pinned=bool(raw.get("pinned", True)),
                aliases=tuple(str(a) for a in raw.get("aliases") or ()),
                kind=cast(Kind, str(raw.get("kind", "embedder"))),
                score=ScoreSettings.from_dict(raw["score"]) if raw.get("score") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(
                f"{source} is malformed ({type(e).__name__}: {e}). Rebuild the bundle."
            ) from None
        if manifest.kind not in KINDS:
            raise ArtifactError(
                f"{source} has kind {manifest.kind!r}; this runtime serves {', '.join(KINDS)}. "
                "Run it with a newer encoderfile, or rebuild the bundle."
            )
        if manifest.default_prompt is not None and manifest.default_prompt not in manifest.prompts:
            raise ArtifactError(
                f"{source}: default_prompt {manifest.default_prompt!r} is not among the prompts "
                f"({', '.join(manifest.prompts) or 'none'}). Rebuild the bundle."
            )
        return manifest

    @property
    def has_text(self) -> bool:
        """False for a bundle holding an image model alone."""
        return MODEL_FILE in self.files

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length if self.tokenizer else 0

    def width(self, dimensions: int | None, param: str = "dimensions") -> int:
        """The one request-width rule (text and image, CLI, HTTP and gRPC): None means the
        built dimension; otherwise any width from MIN_DIMENSION to it, or, when the recipe
        set `restrict_dimensions`, only the built dimension and the listed `dimensions`."""
        if dimensions is None or dimensions == self.dimension:
            return self.dimension
        if self.restrict_dimensions:
            if dimensions not in self.dimensions:
                allowed = ", ".join(
                    map(str, sorted({self.dimension, *self.dimensions}, reverse=True))
                )
                raise InvalidFieldError(
                    f"{param}={dimensions} is not offered by {self.name}. Use one of: {allowed}.",
                    param=param,
                )
        elif not MIN_DIMENSION <= dimensions <= self.dimension:
            raise InvalidFieldError(
                f"{param}={dimensions} is not offered by {self.name}. Use a width from "
                f"{MIN_DIMENSION} to {self.dimension} (recommended: "
                f"{', '.join(map(str, self.dimensions))}).",
                param=param,
            )
        return dimensions
