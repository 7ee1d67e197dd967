"""onnxruntime sessions over the bundle's graphs, and the request-time Matryoshka cut."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from encoderfile.errors import ArtifactError


def open_session(model: bytes, threads: int | None, what: str) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads (default: available_cpus())."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; warnings would pollute stderr
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own unrelated exception types
        raise ArtifactError(
            f"{what}: onnxruntime cannot load it ({e}). Rebuild the bundle."
        ) from None


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota if one is set."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time per period granted by cgroup v2 cpu.max or v1 cfs_quota_us, if any."""
    try:
        if (cgroup / "cpu.max").is_file():  # v2: "max 100000" or "150000 100000"
            quota, period = (cgroup / "cpu.max").read_text().split()
        else:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text()  # v1: -1 when unlimited
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text()
        return int(quota) / int(period) if int(quota) > 0 else None
    except (OSError, ValueError):  # no cgroup files, or "max"
        return None


def shorten(vectors: np.ndarray, width: int, normalized: bool) -> np.ndarray:
    """The first `width` columns, re-normalised when the graph's output is L2-normalised."""
    if width == vectors.shape[1]:
        return vectors
    vectors = np.ascontiguousarray(vectors[:, :width])
    if normalized:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))
    return vectors
