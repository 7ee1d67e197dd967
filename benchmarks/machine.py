"""The line every benchmark result prints about its CPU: model, and the ISA that picks kernels."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from encoderfile.runtime import cpu  # noqa: E402

FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni")  # as lscpu and /proc/cpuinfo spell them


def isa_line() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    flags = set(
        next(
            (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
        )
    )
    shown = ", ".join(f if f in flags else f"no {f}" for f in FLAGS)
    return f"CPU: {model}, {os.cpu_count()} CPUs; lscpu flags: {shown}; kernel ISA: {cpu.describe(cpu.isa())}"


if __name__ == "__main__":
    print(isa_line())
