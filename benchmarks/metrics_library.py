"""What adopting prometheus_client would cost the server: import time on top of what `serve`
already imports (fresh processes, alternating, side by side in one run) and bytes of compiled
code (what PyInstaller would add to the artifact), against encoderfile's own metrics module.

    python -m benchmarks.metrics_library [--runs 15] [--out benchmarks/results/metrics_library.md]

prometheus_client must be importable (pip install prometheus_client, or PYTHONPATH=<target>).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import platform
import py_compile
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ALREADY = "import uvicorn, starlette.applications, grpc, encoderfile.errors"
PROBE = (
    "import sys, time\n"
    "{already}\n"
    "t = time.perf_counter()\n"
    "import {module}\n"
    "print((time.perf_counter() - t) * 1000)\n"
)
CANDIDATES = {
    "prometheus_client": "prometheus_client",
    "encoderfile metrics.py": "encoderfile.runtime.serve.metrics",
}


def import_ms(module: str) -> float:
    code = PROBE.format(already=ALREADY, module=module)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def compiled_bytes(module: str) -> tuple[int, int]:
    """(bytes of .pyc, bytes zip-deflated) of the package or module's files."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    root = Path(spec.origin)
    files = sorted(root.parent.rglob("*.py")) if root.name == "__init__.py" else [root]
    raw = 0
    packed = io.BytesIO()
    with (
        tempfile.TemporaryDirectory() as tmp,
        zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z,
    ):
        for i, source in enumerate(files):
            target = Path(tmp) / f"{i}.pyc"
            py_compile.compile(str(source), cfile=str(target), doraise=True)
            data = target.read_bytes()
            raw += len(data)
            z.writestr(f"{i}.pyc", data)
    return raw, len(packed.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metrics_library.md"))
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for module in CANDIDATES.values():  # warm the .pyc caches
        import_ms(module)
    for _ in range(args.runs):
        for name, module in CANDIDATES.items():
            times[name].append(import_ms(module))
    rows = []
    for name, module in CANDIDATES.items():
        raw, packed = compiled_bytes(module)
        median = statistics.median(times[name])
        rows.append(f"| {name} | {median:.1f} | {min(times[name]):.1f} | {raw} | {packed} |")
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    text = "\n".join(
        [
            "# Metrics library: import time and size",
            "",
            f"`python -m benchmarks.metrics_library --runs {args.runs}` on {platform.machine()}, "
            f"Python {platform.python_version()}, load average {load} at the end. Import time is "
            "measured in a fresh process after the modules `serve` already imports "
            f"({ALREADY.removeprefix('import ')}), alternating the two candidates.",
            "",
            "| module | import ms (median) | import ms (min) | .pyc bytes | deflated bytes |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
