"""Ray Data throughput of one artifact with 1 vs 2 single-threaded actors, side by side.

    python benchmarks/ray_scaling.py --artifact dist/all-minilm-l6-v2 [--texts 2000]
        [--rounds 2] [--batch-size 64] [--output benchmarks/results/ray_scaling.md]

A local Ray cluster (2 CPUs, 127.0.0.1) embeds the first --texts SciFact abstracts with
encoderfile.ray.embed(workers=N, threads=1), N = 1 and 2 interleaved (1, 2, 2, 1, ...) so that
machine drift hits both alike. The dataset is materialized in the object store first; each timed
run includes starting the actors (each starts its artifact process and loads the model once), and
its result is materialized. The load average before and after is reported: on a shared machine
the other processes take CPU from the two actors.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = Path("/work/shared/data/scifact/corpus.jsonl.gz")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, default=SCIFACT, help="JSONL(.gz): title, text")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="timed runs per actor count")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/ray_scaling.md")
    args = parser.parse_args()

    import ray

    from encoderfile import ray as on_ray

    texts = _texts(args.corpus, args.texts)
    for attempt in range(3):  # Ray gives its raylet 30 s to register: a loaded machine may miss it
        try:
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
            )
            break
        except Exception as e:  # Ray raises a bare Exception here
            print(f"ray.init failed ({e}); retrying", file=sys.stderr)
            ray.shutdown()
            if attempt == 2:
                raise
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    dataset = dataset.repartition(40).materialize()
    load_before = os.getloadavg()
    on_ray.embed(dataset.limit(16), args.artifact, workers=1).materialize()  # extraction, caches
    seconds: dict[int, list[float]] = {1: [], 2: []}
    order = [1, 2, 2, 1] * ((args.rounds + 1) // 2)
    for workers in order[: 2 * args.rounds]:
        start = time.perf_counter()
        result = on_ray.embed(
            dataset,
            args.artifact,
            workers=workers,
            min_workers=workers,
            threads=1,
            batch_size=args.batch_size,
        ).materialize()
        seconds[workers].append(time.perf_counter() - start)
        assert result.count() == len(texts)
        print(f"{workers} actor(s): {seconds[workers][-1]:.1f} s", file=sys.stderr)
    load_after = os.getloadavg()
    ray.shutdown()

    rate = {w: len(texts) / statistics.median(s) for w, s in seconds.items()}
    lines = [
        "# Ray Data scaling: 1 vs 2 single-threaded actors",
        "",
        f"`python {' '.join(sys.argv)}`",
        "",
        f"{len(texts)} SciFact abstracts, artifact {args.artifact.name}, batch size "
        f"{args.batch_size}, local Ray {ray.__version__} cluster with 2 CPUs on "
        f"{platform.machine()} ({os.cpu_count()} cores visible), Python {platform.python_version()}.",
        f"Load average (1, 5, 15 min) before: {_load(load_before)}; after: {_load(load_after)}.",
        "",
        "| actors | runs (s) | median (s) | texts/s |",
        "|---:|---|---:|---:|",
    ]
    for workers, runs in seconds.items():
        times = ", ".join(f"{s:.1f}" for s in runs)
        median = statistics.median(runs)
        lines.append(f"| {workers} | {times} | {median:.1f} | {rate[workers]:.1f} |")
    lines += ["", f"**2 actors / 1 actor: {rate[2] / rate[1]:.2f}x**", ""]
    if max(load_before[0], load_after[0]) > (os.cpu_count() or 1):
        lines += [
            "The load average exceeded the core count: every process got a share of the CPU "
            "and two actors got two shares, so this ratio is not idle-core scaling.",
            "",
        ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _texts(corpus: Path, n: int) -> list[str]:
    texts = []
    with gzip.open(corpus, "rt") if corpus.suffix == ".gz" else open(corpus) as fh:
        for line in fh:
            doc = json.loads(line)
            texts.append(f"{doc.get('title', '')}. {doc['text']}".strip(". "))
            if len(texts) == n:
                break
    return texts


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    raise SystemExit(main())
