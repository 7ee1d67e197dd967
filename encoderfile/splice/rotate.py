"""PCA rotation: y = x R, R [h, h] orthogonal, so a prefix of y keeps the most variance.

R's columns are the principal axes of the fit vectors X [n, h] (the pooled, pre-truncation vectors
of the recipe's pinned fit texts): the eigenvectors of the covariance
C = (X - mean)^T (X - mean) / (n - 1), ordered by descending eigenvalue (ties: original order),
each with its largest-magnitude entry made positive (eigenvectors are defined up to sign), so the
same X gives the same bytes. Only the rotation is applied, not the centring: R is orthogonal, so
full-width dot products and cosines are unchanged (R R^T = I, up to float32 rounding).
"""

from __future__ import annotations

import numpy as np

from encoderfile.errors import SpliceError
from encoderfile.splice.editor import GraphEditor


def fit(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R as float32 [h, h], and the fraction of the total variance along each axis."""
    if vectors.ndim != 2 or len(vectors) < 2:
        raise SpliceError(
            f"rotate needs at least 2 fit texts, got {len(vectors)}. Add texts to the fit file."
        )
    x = vectors.astype(np.float64)
    centred = x - x.mean(axis=0)
    covariance = centred.T @ centred / (len(x) - 1)
    values, axes = np.linalg.eigh(covariance)  # ascending, orthonormal columns
    order = np.argsort(-values, kind="stable")
    values, axes = np.clip(values[order], 0, None), axes[:, order]
    largest = np.argmax(np.abs(axes), axis=0)
    axes *= np.where(axes[largest, np.arange(axes.shape[1])] < 0, -1.0, 1.0)
    total = values.sum()
    return axes.astype(np.float32), values / total if total > 0 else values


def add(g: GraphEditor, x: str, matrix: np.ndarray) -> str:
    g.step("rotate")
    return g.op("MatMul", x, g.const(matrix, np.float32))
