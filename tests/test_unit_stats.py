"""Fast layer: the benchmark statistics (edgeport/runner.py's distribution-free CI of the median
and summary) and the pooling of interleaved rounds (tasks/benchmark.combine_rounds)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeport import runner
from tasks.benchmark import combine_rounds


def _coverage(n: int, j: int, k: int) -> float:
    """P(X_(j) <= median < X_(k)) = P(j <= B <= k - 1), B ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(j, k)) / 2**n


@pytest.mark.parametrize("confidence", [0.90, 0.95, 0.99])
def test_median_ci_ranks_cover_and_are_the_narrowest_symmetric_pair(confidence):
    for n in range(2, 300):
        ranks = runner.median_ci_ranks(n, confidence)
        if ranks is None:  # too few observations: even (1, n) does not cover
            assert _coverage(n, 1, n) < confidence, n
            continue
        j, k = ranks
        assert 1 <= j < k <= n and k == n + 1 - j
        assert _coverage(n, j, k) >= confidence, n
        assert j + 1 >= k - 1 or _coverage(n, j + 1, k - 1) < confidence, n  # one rank narrower fails


def test_median_ci_needs_six_observations_at_95_percent():
    assert runner.median_ci_ranks(5) is None and runner.median_ci_ranks(6) == (1, 6)
    assert runner.median_ci_halfwidth_pct(np.arange(1.0, 6.0)) is None


def test_median_ci_halfwidth_is_half_the_interval_over_the_median():
    values = np.arange(1.0, 101.0)  # n=100: CI = [x_(40), x_(61)] = [40, 61], median 50.5
    assert runner.median_ci_halfwidth_pct(values) == pytest.approx(100 * 10.5 / 50.5)
    assert runner.median_ci_halfwidth_pct(np.full(20, 3.0)) == 0.0
    assert runner.median_ci_halfwidth_pct(np.zeros(20)) is None  # no relative width of a zero median


def test_summarize_latencies():
    stats = runner.summarize([1_000_000, 2_000_000, 3_000_000, 4_000_000], batch_size=8)  # ns
    assert stats["min_ms"] == 1.0 and stats["max_ms"] == 4.0
    assert stats["mean_ms"] == pytest.approx(2.5) and stats["p50_ms"] == pytest.approx(2.5)
    assert stats["p90_ms"] == pytest.approx(3.7)  # linear interpolation (numpy's default)
    assert stats["std_ms"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert stats["throughput"] == pytest.approx(8 * 4 / 0.010)  # samples/s over 10 ms of runs
    assert stats["runs"] == 4 and stats["ci_halfwidth_pct"] is None
    assert runner.summarize([5_000_000], batch_size=1)["std_ms"] == 0.0


# --------------------------------------------------------------------------- combine_rounds


def _round(tmp_path: Path, i: int, latencies_ms: np.ndarray | None, **fields) -> dict:
    path = None
    if latencies_ms is not None:
        path = tmp_path / f"round{i}.npz"
        np.savez(path, b4=latencies_ms)
    entry = {"batch_size": 4, "status": "ok", "error": None, "session_create_ms": 10.0 + i, "first_inference_ms": 1.0 + i,
             "peak_rss_mb": 40.0 + i, "latencies_path": None if path is None else str(path)}
    if latencies_ms is not None:
        entry["p50_ms"] = float(np.median(latencies_ms))
    entry.update(fields)
    return entry


def test_identical_rounds_pool_into_a_stable_entry(tmp_path: Path):
    rounds = [_round(tmp_path, i, np.full(100, 2.0)) for i in range(3)]
    combined = combine_rounds(rounds)
    assert combined["rounds"] == 3 and combined["runs"] == 300
    assert combined["drift_pct"] == 0.0 and combined["ci_halfwidth_pct"] == 0.0 and combined["stable"] is True
    assert combined["round_p50_ms"] == [2.0, 2.0, 2.0]
    assert combined["session_create_ms"] == 11.0 and combined["first_inference_ms"] == 2.0  # medians over rounds
    assert combined["peak_rss_mb"] == 42.0  # the max
    assert combined["latencies_path"] is None and len(combined["latencies_paths"]) == 3


def test_drift_beyond_twice_the_ci_target_is_unstable(tmp_path: Path):
    rounds = [_round(tmp_path, 0, np.full(100, 1.0)), _round(tmp_path, 1, np.full(100, 1.05))]
    combined = combine_rounds(rounds, target_ci_pct=2.0)
    assert combined["drift_pct"] == pytest.approx(100 * 0.05 / 1.025)  # 4.9% > 2 x 2%
    assert combined["stable"] is False
    assert combine_rounds(rounds, target_ci_pct=5.0)["stable"] is True  # the CI target sets the bar


def test_rounds_without_latencies_keep_the_worst_status_and_no_statistics(tmp_path: Path):
    rounds = [_round(tmp_path, 0, None, status="fallback", error="CUDA missing"),
              _round(tmp_path, 1, None, status="unsupported", error="ConvInteger")]
    combined = combine_rounds(rounds)
    assert combined["status"] == "unsupported" and combined["error"] == "ConvInteger"
    assert combined["rounds"] == 2 and combined["round_p50_ms"] == [] and combined["drift_pct"] is None
    assert "runs" not in combined


def test_a_round_that_did_not_measure_is_left_out_of_the_pool(tmp_path: Path):
    rounds = [_round(tmp_path, 0, np.full(10, 1.0)), _round(tmp_path, 1, None, status="failed", error="killed")]
    combined = combine_rounds(rounds)
    assert combined["status"] == "failed" and combined["runs"] == 10 and combined["round_p50_ms"] == [1.0]
    assert combined["drift_pct"] == 0.0
