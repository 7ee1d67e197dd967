"""The SPLADE pooling op alone, in a graph of its own, against the maths splice/splade.py states."""

from __future__ import annotations

import numpy as np
import pytest

from encoderfile.splice import splade
from tests.splice.test_ops import run_op, states_and_mask


def logits_and_mask(padding: str) -> tuple[np.ndarray, np.ndarray]:
    logits, mask = states_and_mask(padding)
    logits[0, 0, 0] = 1e-9  # log(1 + x) in float32 rounds this to 0; log1p does not
    logits[1, :, 1] = -1.0  # never active
    return logits * 3, mask


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("pooling", ["max", "sum"])
def test_splade_matches_reference_and_its_active_terms(
    opset: int, padding: str, pooling: str
) -> None:
    logits, mask = logits_and_mask(padding)
    got, added = run_op(splade.add, {"x": logits, "m": mask}, opset, pooling=pooling)
    expected = splade.reference(logits, mask, pooling)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got > 0, expected > 0)  # the same active terms
    assert got.min() >= 0 and got[1, 1] == 0
    assert added and all(name.startswith("splade/") for name in added)


def test_splade_ignores_padded_positions() -> None:
    logits, mask = logits_and_mask("right")
    logits[2, 1:] = 50.0  # row 2 attends to its first token only
    got, _ = run_op(splade.add, {"x": logits, "m": mask}, pooling="max")
    np.testing.assert_allclose(got[2], np.log1p(np.maximum(logits[2, 0], 0)), rtol=1e-6)


@pytest.mark.parametrize("pooling", ["max", "sum"])
def test_splade_row_is_the_same_alone_and_padded(pooling: str) -> None:
    logits, mask = logits_and_mask("right")
    together, _ = run_op(splade.add, {"x": logits, "m": mask}, pooling=pooling)
    for row in range(3):
        n = int(mask[row].sum())
        alone, _ = run_op(
            splade.add,
            {"x": logits[row : row + 1, :n], "m": mask[row : row + 1, :n]},
            pooling=pooling,
        )
        np.testing.assert_array_equal(alone[0], together[row])
