"""Fast layer: the search's pure planning and selection (tasks/search.py) and the pareto front
(tasks/report.py), on in-memory records and a PipelineSpec built in memory."""

from __future__ import annotations

import pytest

from edgeport.spec import PipelineSpec
from tasks.report import pareto_front
from tasks.search import configurations, exclusions, plan_trials, select_winner


def _spec(**space) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "tiny",
            "model": {"checkpoint": "m.pt", "factory": "m:f"},
            "inputs": [{"name": "x", "shape": ["batch", 4]}],
            "outputs": ["y"],
            "calibration": {"dataset": "cal.npz"},
            "evaluation": {"dataset": "eval.npz"},
            "registry": {"registered_model": "tiny"},
            "search": {"space": space},
        }
    )


# --------------------------------------------------------------------------- pareto_front


def test_pareto_front_drops_dominated_points_and_sorts_by_latency():
    points = [(5.0, 0.99), (1.0, 0.90), (3.0, 0.95), (4.0, 0.94), (2.0, 0.80)]
    # (4.0, 0.94) is dominated by (3.0, 0.95); (2.0, 0.80) by (1.0, 0.90)
    assert pareto_front(points) == [1, 2, 0]


def test_pareto_front_keeps_exact_ties_and_drops_a_point_worse_in_one_coordinate_only():
    assert pareto_front([(1.0, 0.9), (1.0, 0.9)]) == [0, 1]  # neither strictly better
    assert pareto_front([(1.0, 0.9), (1.0, 0.8)]) == [0]  # same latency, lower quality
    assert pareto_front([(1.0, 0.9), (2.0, 0.9)]) == [0]  # same quality, slower
    assert pareto_front([]) == []


# --------------------------------------------------------------------------- plan_trials


def test_plan_trials_phase_one_tries_every_k_ascending():
    assert plan_trials({}, [4, 0, 1, 2], None) == [0, 1, 2, 4]


def test_plan_trials_phase_two_starts_one_below_the_smallest_passing_k():
    assert plan_trials({}, [0, 1, 2, 4, 8], 4) == [2, 4, 8]
    assert plan_trials({}, [0, 1, 2, 4, 8], 0) == [0, 1, 2, 4, 8]  # nothing below the first
    assert plan_trials({}, [8, 0, 2], 2) == [0, 2, 8]


def test_plan_trials_with_a_k_min_not_in_the_list_tries_everything():
    assert plan_trials({}, [0, 2, 4], 3) == [0, 2, 4]


# --------------------------------------------------------------------------- exclusions


RANKING = [
    {"node": "/l2/MatMul", "op_type": "MatMul"},
    {"node": "/l1/Conv", "op_type": "Conv"},
    {"node": "/l3/MatMul", "op_type": "MatMul"},
    {"node": "/l0/Conv", "op_type": "Conv"},
]


def test_exclusions_take_the_k_most_sensitive_nodes():
    assert exclusions(RANKING, {"op_types_to_quantize": None}, 3) == ["/l2/MatMul", "/l1/Conv", "/l3/MatMul"]
    assert exclusions(RANKING, {"op_types_to_quantize": None}, 0) == []
    assert exclusions(RANKING, {"op_types_to_quantize": None}, 10) == [r["node"] for r in RANKING]


def test_exclusions_skip_op_types_the_configuration_does_not_quantize():
    assert exclusions(RANKING, {"op_types_to_quantize": ["Conv"]}, 2) == ["/l1/Conv", "/l0/Conv"]
    assert exclusions(RANKING, {"op_types_to_quantize": ["Gemm"]}, 2) == []


# --------------------------------------------------------------------------- configurations


def test_configurations_of_the_default_space_is_one_base_configuration():
    assert configurations(_spec()) == [
        {
            "calibration_method": "MinMax",
            "per_channel": True,
            "activation_type": "QUInt8",
            "weight_type": "QInt8",
            "format": "QDQ",
            "reduce_range": False,
            "op_types_to_quantize": None,
        }
    ]


def test_configurations_are_the_product_in_order_without_exclude_top_k():
    configs = configurations(
        _spec(calibration_methods=["MinMax", "Percentile"], formats=["QDQ", "QOperator"], op_types_to_quantize=[None, ["Conv"]], exclude_top_k=[0, 4])
    )
    assert len(configs) == 8
    assert all("exclude_top_k" not in c for c in configs)
    # base first (the first value of every field), the last field varies fastest
    assert [(c["calibration_method"], c["format"], c["op_types_to_quantize"]) for c in configs[:3]] == [
        ("MinMax", "QDQ", None),
        ("MinMax", "QDQ", ["Conv"]),
        ("MinMax", "QOperator", None),
    ]
    assert configs[-1]["calibration_method"] == "Percentile" and configs[-1]["format"] == "QOperator"
    assert len({tuple(map(str, c.values())) for c in configs}) == 8


# --------------------------------------------------------------------------- select_winner


def _trial(trial_id: str, passed: bool, p50: float | None, value: float | None) -> dict:
    return {"trial_id": trial_id, "passed_quality": passed, "p50_ms": p50, "evaluation": None if value is None else {"value": value}}


def test_select_winner_is_the_fastest_passing_trial_even_when_a_failing_one_is_faster():
    trials = [
        _trial("pass-slow", True, 3.0, 0.99),
        _trial("fail-fastest", False, 0.5, 0.60),
        _trial("pass-fast", True, 1.0, 0.98),
    ]
    winner, pareto = select_winner(trials)
    assert winner["trial_id"] == "pass-fast"
    assert pareto == ["fail-fastest", "pass-fast", "pass-slow"]  # all non-dominated, fastest first


def test_select_winner_ignores_trials_without_a_benchmark_or_an_evaluation():
    trials = [
        _trial("not-benchmarked", True, None, 0.99),
        _trial("not-evaluated", True, 0.1, None),
        _trial("measured", True, 2.0, 0.97),
    ]
    winner, pareto = select_winner(trials)
    assert winner["trial_id"] == "measured" and pareto == ["measured"]


@pytest.mark.parametrize("trials", [[], [_trial("fails", False, 1.0, 0.5)], [_trial("unmeasured", True, None, 0.99)]])
def test_select_winner_returns_none_when_nothing_passed_and_was_measured(trials):
    winner, _ = select_winner(trials)
    assert winner is None
