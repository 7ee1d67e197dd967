"""The CPU features that choose onnxruntime's kernels, and so the last bits of a vector.

numpy reads them with CPUID at import (so an emulated CPU reports what it emulates); AVX-VNNI,
which numpy does not name, comes from /proc/cpuinfo.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# Each one switches some onnxruntime (MLAS) GEMM kernel: SSE4.1 / AVX2 / AVX-512 int8 and fp32
# kernels, the VNNI dot products, and on ARM64 the NEON and dot-product ones.
KERNEL_FEATURES = (
    "SSE41",
    "AVX",
    "AVX2",
    "FMA3",
    "AVX512F",
    "AVX512BW",
    "AVX512VNNI",
    "AVX_VNNI",
    "ASIMD",
    "ASIMDDP",
    "SVE",
)


@functools.cache
def isa() -> tuple[str, ...]:
    """("x86_64", "SSE41", "AVX", "AVX2", "FMA3", …): the architecture, then its kernel features."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        features = {}
    found = {name for name, present in features.items() if present}
    try:
        if " avx_vnni " in Path("/proc/cpuinfo").read_text().replace("\n", " "):
            found.add("AVX_VNNI")
    except OSError:
        pass
    return (platform.machine(), *[f for f in KERNEL_FEATURES if f in found])


def describe(features: tuple[str, ...]) -> str:
    return " ".join(features) if features else "not recorded"
