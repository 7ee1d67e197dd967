"""onnxruntime sessions over the bundle's graphs, and the request-time Matryoshka cut."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from encoderfile.errors import ArtifactError

DATA_FILE = "model.data"  # an optimised graph's weights, beside it (see open_session's save_to)
# onnxruntime fuses a residual Add and LayerNormalization into SkipLayerNormalization (it did so in
# MiniLM's int8 graph only); its CPU kernel took 7x the two ops' time there (164 vs 24 ms a layer
# over 105 short calls, 1 thread): bulk int8 ran at 1.55x fp32 with it, 1.66x without.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def open_session(
    model: bytes | Path,
    threads: int | None,
    what: str,
    *,
    optimize: bool = True,
    save_to: Path | None = None,
) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads (default: available_cpus()).

    optimize=False for a graph onnxruntime already optimised; save_to writes the optimised graph
    there, its weights beside it in DATA_FILE, pre-packed ones included (page-aligned, so later
    sessions memory-map them instead of packing them again).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; warnings would pollute stderr
    # The intra-op threads keep onnxruntime's default spin (~50 ms after a call). Stopping it when
    # a call returns (session.force_spinning_stop, or spin_duration_us 500-2000) gave a lone
    # back-to-back client 2-8% more, but at one request every 20-300 ms p50 went from 7-8 to
    # 12-13 ms (docs/benchmarks.md, issue 31).
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Weight pre-packing stays on everywhere: without it MLAS sums in another order, and the CLI
    # would drift from the servers in the last bits (the transports must agree bitwise).
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", DATA_FILE
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        options.add_session_config_entry(
            "session.save_external_prepacked_constant_initializers", "1"
        )
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(
            source,
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=DISABLED_OPTIMIZERS,
        )
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


def all_finite(values: np.ndarray) -> bool:
    """No NaN or infinity in `values`. A sum of squares is NaN or infinite when any term is, and
    costs one BLAS call: 29 us against isfinite().all()'s 59-76 right after a model call, when
    numpy runs cold. Only when that sum overflows (values past ~1e19) does the exact check run."""
    return math.isfinite(np.vdot(values, values)) or bool(np.isfinite(values).all())


def shorten(vectors: np.ndarray, width: int, normalized: bool) -> np.ndarray:
    """The first `width` columns, re-normalised when the graph's output is L2-normalised."""
    if width == vectors.shape[1]:
        return vectors
    vectors = np.ascontiguousarray(vectors[:, :width])
    if normalized:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))
    return vectors
