"""The HTTP API's own CPU per request, paired: this tree against another checkout (`--base`).

    python benchmarks/serve_api.py --base /tmp/base [--bundle B] [--requests 3000] [--rounds 5]
    python benchmarks/serve_api.py --libraries

`--libraries`: what chose the types' library (serve/wire.py). msgspec and pydantic each validate
a typical /embed and /v1/embeddings request (json.loads, then the library's strict check) and
encode its answer — with the library's own encoder (rows as lists) and with orjson (numpy rows as
they are) — against today's hand-written checks; CPU microseconds per request, the minimum of 5
runs. And the start-up cost `serve` would pay: a fresh interpreter importing the library,
defining one request type, validating once and generating its JSON Schema (median of 7).

Each round starts one fresh interpreter per tree (alternating A B, B A, ...), loads the same
bundle (default: the tests' tiny model, built here, so the model's share is small and the API's
large), and drives the Starlette app in process — the ASGI call, no socket and no client — with
`--requests` sequential POST /embed and POST /v1/embeddings (4 texts) requests. CPU per request is
the process CPU time (user + system) over the requests; a figure is the median over rounds (and
the minimum, the least disturbed on a shared machine), the ratio the median of the rounds'
paired ratios (and the ratio of the minima). Also printed: the median wall time of importing
the HTTP app in a fresh interpreter (what `serve` pays before it binds), and the CPU's ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import isa_line  # noqa: E402

BODIES = {
    "/embed": {"input": "what is the capital of France?", "dim": 8},
    "/v1/embeddings": {
        "model": "tiny",
        "input": ["hello world", "goodbye world", "a third text", "and a fourth one"],
        "encoding_format": "float",
    },
}

CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.serve.service import Limits, Service
from encoderfile.runtime.serve.http_app import create_app

bundle, n, bodies = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
service = Service(open_bundle(bundle), Limits())
service.load(1)
app = create_app(service)
if sys.argv[4] == "api":  # the model call answered from a cache: the API's own CPU only
    embed_now, cache = service.batcher.embed_now, {}
    def cached(encodings, dimensions=None):
        key = (len(encodings), dimensions)
        if cache.get(key) is None:
            cache[key] = embed_now(encodings, dimensions=dimensions)
        return cache[key]
    service.batcher.embed_now = cached

async def call(path, body):
    sent = [{"type": "http.request", "body": body, "more_body": False}]
    status = []
    async def receive():
        if sent:
            return sent.pop()
        await asyncio.sleep(3600)
    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"),
             (b"content-length", str(len(body)).encode())], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    assert status == [200], (path, status)

async def main():
    out = {}
    for path, body in bodies.items():
        data = json.dumps(body).encode()
        for _ in range(200):  # warm-up
            await call(path, data)
        started = time.process_time()
        for _ in range(n):
            await call(path, data)
        out[path] = (time.process_time() - started) / n * 1e6
    print(json.dumps(out))

asyncio.run(main())
"""

IMPORT = (
    "import time; t = time.perf_counter(); import encoderfile.runtime.serve.http_app; "
    "print((time.perf_counter() - t) * 1000)"
)


def run(tree: Path, code: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, *code], env=env, cwd=tree, capture_output=True, text=True, check=True
    ).stdout


LIBRARIES = r"""
import json, sys, time
from typing import Literal
import msgspec, numpy as np, orjson
from pydantic import BaseModel, ConfigDict

N = 20000
rng = np.random.default_rng(0)
vec = rng.standard_normal(768).astype(np.float32)
vecs = rng.standard_normal((4, 768)).astype(np.float32)
embed_req = json.dumps({"input": "search_query: what is the capital of France?", "dim": 256})
oai_req = json.dumps({"model": "nomic", "input": ["hello world", "goodbye world", "a third text",
                      "and a fourth"], "encoding_format": "float"})
NUMPY = orjson.OPT_SERIALIZE_NUMPY

def oai_body(rows):
    return {"object": "list", "model": "nomic", "usage": {"prompt_tokens": 20, "total_tokens": 20},
            "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)]}

def hand_embed():
    b = json.loads(embed_req)
    assert not set(b) - {"input", "dim", "prompt", "truncate"} and isinstance(b.get("input"), str)
    d = b.get("dim"); assert d is None or (isinstance(d, int) and not isinstance(d, bool))
    assert isinstance(b.get("truncate", True), bool)
    return orjson.dumps({"embedding": vec, "tokens": 12, "time_ms": 1.5}, option=NUMPY)

def hand_oai():
    b = json.loads(oai_req)
    assert isinstance(b.get("model"), str) and b.get("encoding_format", "float") in ("float", "base64")
    v = b.get("input"); assert isinstance(v, list) and all(isinstance(x, str) for x in v)
    return orjson.dumps(oai_body(list(vecs)), option=NUMPY)

class MEmbed(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    input: str
    dim: int | None = None
    prompt: str | None = None
    truncate: bool = True
class MEmbedOut(msgspec.Struct):
    embedding: list[float]
    tokens: int
    time_ms: float
class MOai(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[str | int | list[int]]  # msgspec: one array-like type per union
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
class MItem(msgspec.Struct):
    object: str
    index: int
    embedding: list[float]
class MUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int
class MOaiOut(msgspec.Struct):
    object: str
    data: list[MItem]
    model: str
    usage: MUsage
enc = msgspec.json.Encoder()

class PEmbed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str
    dim: int | None = None
    prompt: str | None = None
    truncate: bool = True
class PEmbedOut(BaseModel):
    embedding: list[float]
    tokens: int
    time_ms: float
class POai(BaseModel):
    model_config = ConfigDict(strict=True)
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
class PItem(BaseModel):
    object: str
    index: int
    embedding: list[float]
class PUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
class POaiOut(BaseModel):
    object: str
    data: list[PItem]
    model: str
    usage: PUsage

CASES = {
    "hand-written checks + orjson (before)": (hand_embed, hand_oai),
    "msgspec convert + orjson": (
        lambda: (msgspec.convert(json.loads(embed_req), MEmbed),
                 orjson.dumps({"embedding": vec, "tokens": 12, "time_ms": 1.5}, option=NUMPY)),
        lambda: (msgspec.convert(json.loads(oai_req), MOai),
                 orjson.dumps(oai_body(list(vecs)), option=NUMPY))),
    "msgspec convert + msgspec encode": (
        lambda: (msgspec.convert(json.loads(embed_req), MEmbed),
                 enc.encode(MEmbedOut(vec.tolist(), 12, 1.5))),
        lambda: (msgspec.convert(json.loads(oai_req), MOai),
                 enc.encode(MOaiOut("list", [MItem("embedding", i, r) for i, r in
                            enumerate(vecs.tolist())], "nomic", MUsage(20, 20))))),
    "pydantic validate + orjson": (
        lambda: (PEmbed.model_validate(json.loads(embed_req)),
                 orjson.dumps({"embedding": vec, "tokens": 12, "time_ms": 1.5}, option=NUMPY)),
        lambda: (POai.model_validate(json.loads(oai_req)),
                 orjson.dumps(oai_body(list(vecs)), option=NUMPY))),
    "pydantic validate + pydantic dump": (
        lambda: (PEmbed.model_validate(json.loads(embed_req)),
                 PEmbedOut(embedding=vec.tolist(), tokens=12, time_ms=1.5).model_dump_json()),
        lambda: (POai.model_validate(json.loads(oai_req)),
                 POaiOut(object="list", data=[PItem(object="embedding", index=i, embedding=r)
                         for i, r in enumerate(vecs.tolist())], model="nomic",
                         usage=PUsage(prompt_tokens=20, total_tokens=20)).model_dump_json())),
}

def cpu_us(fn):
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for _ in range(N):
            fn()
        best = min(best, (time.process_time() - t) / N * 1e6)
    return best

for name, (embed, oai) in CASES.items():
    print(f"  {name:40} /embed {cpu_us(embed):7.1f}   /v1/embeddings {cpu_us(oai):7.1f}")
"""

STARTUP = {
    "msgspec": "import msgspec\nclass A(msgspec.Struct, forbid_unknown_fields=True):\n"
    "  input: str\n  dim: int | None = None\n"
    "msgspec.convert({'input': 'x'}, A); msgspec.json.schema(A)",
    "pydantic": "from pydantic import BaseModel, ConfigDict\nclass A(BaseModel):\n"
    "  model_config = ConfigDict(extra='forbid', strict=True)\n"
    "  input: str\n  dim: int | None = None\n"
    "A.model_validate({'input': 'x'}); A.model_json_schema()",
}


def libraries() -> None:
    print(isa_line())
    print("CPU us per request (min of 5 x 20000): json.loads + validate + encode the answer")
    print(run(ROOT, ["-c", LIBRARIES]), end="")
    print("start-up: fresh interpreter, import + one type + validate + JSON Schema (median of 7)")
    for name, code in STARTUP.items():
        timed = f"import time; t = time.perf_counter(); exec({code!r}); "
        timed += "print((time.perf_counter() - t) * 1000)"
        ms = statistics.median(float(run(ROOT, ["-c", timed])) for _ in range(7))
        print(f"  {name:10} {ms:6.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="the other checkout")
    parser.add_argument("--libraries", action="store_true", help="msgspec against pydantic")
    parser.add_argument("--bundle", type=Path, help="a bundle directory (default: tiny)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--model",
        choices=("run", "api"),
        default="run",
        help="api: answer the model call from a cache, so only the API's own CPU is measured",
    )
    args = parser.parse_args()
    if args.libraries:
        libraries()
        return 0
    if args.base is None:
        parser.error("--base is required (or --libraries)")
    trees = {"base": args.base.resolve(), "this": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from tests.fixtures.tiny_bundle import make_tiny_bundle

            bundle = make_tiny_bundle(Path(tmp) / "tiny")
        bodies = json.dumps(BODIES)
        cpu: dict[str, dict[str, list[float]]] = {t: {p: [] for p in BODIES} for t in trees}
        imports: dict[str, list[float]] = {t: [] for t in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                child = ["-c", CHILD, str(bundle), str(args.requests), bodies, args.model]
                for path, us in json.loads(run(trees[name], child)).items():
                    cpu[name][path].append(us)
                imports[name].append(float(run(trees[name], ["-c", IMPORT])))
    print(isa_line())
    model = "model call cached (API only)" if args.model == "api" else "model run"
    print(
        f"in-process ASGI, {model}, {args.requests} sequential requests x {args.rounds} rounds, "
        "paired"
    )
    print("us/req: median (min) over rounds; this/base: median of paired ratios (ratio of mins)")
    print(f"{'route':16} {'base us/req':>16} {'this us/req':>16} {'this/base':>16}")
    for path in BODIES:
        base, this = cpu["base"][path], cpu["this"][path]
        ratio = statistics.median(t / b for t, b in zip(this, base, strict=True))
        print(
            f"{path:16} {statistics.median(base):9.1f} ({min(base):5.1f}) "
            f"{statistics.median(this):9.1f} ({min(this):5.1f}) "
            f"{ratio:9.3f} ({min(this) / min(base):5.3f})"
        )
    base_ms, this_ms = statistics.median(imports["base"]), statistics.median(imports["this"])
    print(f"import http_app (ms, median): base {base_ms:.0f}, this {this_ms:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
