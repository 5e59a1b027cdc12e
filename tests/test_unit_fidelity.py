"""Fast layer: edgeport/fidelity.py's embedding metrics on small arrays with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeport.errors import DataError
from edgeport.fidelity import fidelity_metrics, pairwise_cosine, rowwise_cosine


def _at(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane at these angles, shape (n, 2)."""
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_rowwise_cosine_is_scale_free_and_signed():
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    emb = np.array([[5.0, 0.0], [0.0, -1.0], [4.0, 3.0]])
    assert rowwise_cosine(emb, ref) == pytest.approx([1.0, -1.0, 24 / 25])


def test_pairwise_cosine_of_known_angles():
    sim = pairwise_cosine(_at(0, 60, 90))
    assert sim == pytest.approx(np.array([[1, 0.5, 0], [0.5, 1, math.sqrt(3) / 2], [0, math.sqrt(3) / 2, 1]]), abs=1e-12)


def test_identical_up_to_scale_is_perfect_fidelity():
    ref = np.random.default_rng(0).standard_normal((6, 5))
    metrics = fidelity_metrics(3.0 * ref, ref)
    assert metrics["cosine_mean"] == pytest.approx(1.0) and metrics["cosine_min"] == pytest.approx(1.0)
    assert metrics["nn_agreement"] == 1.0 and metrics["spearman"] == pytest.approx(1.0)
    assert metrics["num_samples"] == 6 and metrics["nonfinite"] == 0


def test_metrics_of_three_planar_embeddings():
    # Reference at 0, 30, 90 degrees; pair cosines (0,1)=cos30, (0,2)=cos90, (1,2)=cos60:
    # ranks 3, 1, 2. The variant at 0, 60, 70 degrees: cos60, cos70, cos10: ranks 2, 1, 3.
    # Spearman = 1 - 6 * (1 + 0 + 1) / (3 * (9 - 1)) = 0.5. Nearest neighbours: reference 1, 0, 1;
    # variant 1, 2, 1: two of three agree. Row cosines: cos0, cos30, cos20.
    metrics = fidelity_metrics(_at(0, 60, 70), _at(0, 30, 90))
    cosines = [1.0, math.cos(math.radians(30)), math.cos(math.radians(20))]
    assert metrics["cosine_mean"] == pytest.approx(sum(cosines) / 3)
    assert metrics["cosine_min"] == pytest.approx(min(cosines))
    assert metrics["spearman"] == pytest.approx(0.5)
    assert metrics["nn_agreement"] == pytest.approx(2 / 3)


def test_few_samples_leave_the_rank_measures_undefined():
    one = fidelity_metrics(_at(10), _at(0))
    assert one["cosine_mean"] == pytest.approx(math.cos(math.radians(10)))
    assert math.isnan(one["nn_agreement"]) and math.isnan(one["spearman"])
    two = fidelity_metrics(_at(0, 90), _at(0, 90))
    assert two["nn_agreement"] == 1.0 and math.isnan(two["spearman"])


def test_nonfinite_embeddings_make_every_measure_nan():
    emb = _at(0, 30, 90)
    emb[1, 0] = np.nan
    emb[2, 1] = np.inf
    metrics = fidelity_metrics(emb, _at(0, 30, 90))
    assert metrics["nonfinite"] == 2 and metrics["num_samples"] == 3
    assert all(math.isnan(metrics[k]) for k in ("cosine_mean", "cosine_min", "nn_agreement", "spearman"))


@pytest.mark.parametrize(
    ("emb", "ref", "message"),
    [
        (np.zeros((3, 2)), np.zeros((3, 4)), "do not match"),
        (np.zeros(3), np.zeros(3), "must be 2-D"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "no samples"),
    ],
)
def test_bad_shapes_are_data_errors(emb, ref, message):
    with pytest.raises(DataError, match=message):
        fidelity_metrics(emb, ref)
