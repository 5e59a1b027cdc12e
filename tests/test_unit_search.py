"""Fast layer: the search's pure planning and selection (tasks/search.py) and the pareto front
(tasks/report.py), on in-memory records and a PipelineSpec built in memory."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from edgeport.errors import SpecError
from edgeport.spec import AccuracyControlSpec, PipelineSpec, load_spec
from flows.search import _run_trials
from tasks.report import pareto_front
from tasks.search import (
    base_configuration,
    configurations,
    exclusions,
    needs_sensitivity,
    plan_trials,
    select_winner,
    trial_rows,
    trial_variant,
    uses_exclusions,
    winner_names,
)
from tests.conftest import TINY_SPEC


def _spec(**space) -> PipelineSpec:
    return PipelineSpec.model_validate({**TINY_SPEC, "search": {"space": space}})


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
            "backend": "onnxruntime",
            "mode": "static",
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


# --------------------------------------------------------------------------- backends and modes


def test_configurations_across_backends_drop_inapplicable_settings_and_dedupe():
    configs = configurations(
        _spec(
            backends=["onnxruntime", "nncf"], modes=["static", "dynamic"], calibration_methods=["MinMax", "Percentile"],
            activation_types=["QUInt8", "QInt8"], per_channel=[True, False], nncf_presets=[None, "mixed"],
            nncf_accuracy_control=[False, True],
        )
    )
    by_pair = {}
    for c in configs:
        by_pair.setdefault((c["backend"], c["mode"]), []).append(c)
    assert list(by_pair) == [("onnxruntime", "static"), ("onnxruntime", "dynamic"), ("nncf", "static")]
    # ORT static: 2 methods x 2 per-channel x 2 activation types, no NNCF setting
    assert len(by_pair["onnxruntime", "static"]) == 8
    assert set(by_pair["onnxruntime", "static"][0]) == {
        "backend", "mode", "calibration_method", "per_channel", "activation_type", "weight_type", "format", "reduce_range", "op_types_to_quantize",
    }
    # ORT dynamic: no calibration method, activation type or format, so only per-channel varies (deduplicated)
    dynamic = by_pair["onnxruntime", "dynamic"]
    assert [c["per_channel"] for c in dynamic] == [True, False]
    assert set(dynamic[0]) == {"backend", "mode", "per_channel", "weight_type", "reduce_range", "op_types_to_quantize"}
    # NNCF: only its own settings
    nncf = by_pair["nncf", "static"]
    assert len(nncf) == 4 and set(nncf[0]) == {"backend", "mode", "preset", "model_type", "fast_bias_correction", "accuracy_control"}
    assert [(c["preset"], c["accuracy_control"]) for c in nncf] == [(None, False), (None, True), ("mixed", False), ("mixed", True)]
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == len(configs) == 14


def test_nncf_has_no_dynamic_mode_and_the_base_is_ort_static_whatever_comes_first():
    spec = _spec(backends=["nncf", "onnxruntime"], modes=["dynamic", "static"])
    configs = configurations(spec)
    assert [(c["backend"], c["mode"]) for c in configs] == [("nncf", "static"), ("onnxruntime", "dynamic"), ("onnxruntime", "static")]
    assert base_configuration(spec) == {**next(c for c in configs if c["mode"] == "static" and c["backend"] == "onnxruntime")}
    assert base_configuration(spec)["backend"] == "onnxruntime" and base_configuration(spec)["mode"] == "static"


def test_trial_variant_builds_valid_specs_for_every_backend_and_mode():
    configs = configurations(_spec(backends=["onnxruntime", "nncf"], modes=["static", "dynamic"], nncf_accuracy_control=[False, True]))
    ort_static, ort_dynamic, nncf, nncf_ac = configs
    v = trial_variant(ort_static, "t1", ["/a/MatMul"])
    assert (v.backend, v.mode, v.kind, v.nodes_to_exclude, v.calibration_method) == ("onnxruntime", "static", "static_int8", ["/a/MatMul"], "MinMax")
    v = trial_variant(ort_dynamic, "t2", ["/a/MatMul"])
    assert (v.backend, v.mode, v.kind, v.nodes_to_exclude) == ("onnxruntime", "dynamic", "dynamic_int8", ["/a/MatMul"])
    assert v.calibration_method is None and "format" not in v.model_fields_set and not v.needs_calibration
    v = trial_variant(nncf, "t3", ["/a/MatMul", "/b/Conv"])
    assert (v.backend, v.mode, v.accuracy_control) == ("nncf", "static", None)
    assert v.ignored_scope.names == ["/a/MatMul", "/b/Conv"] and v.nodes_to_exclude == [] and v.fast_bias_correction
    assert trial_variant(nncf, "t3", []).ignored_scope is None
    v = trial_variant(nncf_ac, "t4", [])
    assert v.accuracy_control == AccuracyControlSpec() and v.accuracy_control.max_drop is None  # the evaluation gate's budget
    # a configuration of an earlier version (no backend / mode) is ONNX Runtime static
    old = {k: v for k, v in ort_static.items() if k not in ("backend", "mode")}
    assert trial_variant(old, "t5", []).backend == "onnxruntime" and trial_variant(old, "t5", []).mode == "static"


def test_accuracy_control_is_tried_once_without_exclusions():
    configs = configurations(_spec(backends=["nncf"], nncf_accuracy_control=[False, True]))
    assert [uses_exclusions(c) for c in configs] == [True, False]
    assert plan_trials(configs[1], [1, 2, 4], None) == [0] and plan_trials(configs[0], [1, 2, 4], 2) == [1, 2, 4]
    assert needs_sensitivity(_spec(backends=["nncf"], nncf_accuracy_control=[True], exclude_top_k=[0, 2])) is False
    assert needs_sensitivity(_spec(exclude_top_k=[0])) is False
    assert needs_sensitivity(_spec(exclude_top_k=[0, 2])) is True


def test_exclusions_for_nncf_keep_only_names_the_parent_has():
    config = {"backend": "nncf", "mode": "static"}  # no op-type set: every ranked op type
    present = {"/l1/Conv", "/l0/Conv", "/l3/MatMul"}
    assert exclusions(RANKING, config, 2, present) == ["/l1/Conv", "/l3/MatMul"]
    assert exclusions(RANKING, config, 10, present) == ["/l1/Conv", "/l3/MatMul", "/l0/Conv"]


def test_winner_names_first_target_plain_others_suffixed_and_one_name_per_trial():
    targets = ["cpu", "cpu-1t", "openvino-cpu"]
    assert winner_names("s", targets, {"cpu": "a", "cpu-1t": "b", "openvino-cpu": "a"}) == {"a": "s", "b": "s-cpu-1t"}
    assert winner_names("s", targets, {"cpu-1t": "b", "openvino-cpu": "c"}) == {"b": "s-cpu-1t", "c": "s-openvino-cpu"}
    assert winner_names("s", targets, {}) == {}


def test_select_winner_per_target_reads_that_targets_p50():
    trials = [
        {"trial_id": "ort", "passed_quality": True, "p50_ms": 1.0, "p50_ms_by_target": {"cpu": 1.0, "ov": 3.0}, "evaluation": {"value": 0.99}},
        {"trial_id": "nncf", "passed_quality": True, "p50_ms": 2.0, "p50_ms_by_target": {"cpu": 2.0, "ov": 0.5}, "evaluation": {"value": 0.995}},
        {"trial_id": "bad", "passed_quality": False, "p50_ms": None, "p50_ms_by_target": {"cpu": None, "ov": None}, "evaluation": {"value": 0.5}},
    ]
    assert select_winner(trials, "cpu")[0]["trial_id"] == "ort"
    assert select_winner(trials, "ov") == (trials[1], ["nncf"])  # faster and better: dominates there
    assert select_winner(trials)[0]["trial_id"] == "ort"  # p50_ms: the first target's


def test_trial_rows_show_backend_mode_and_every_targets_p50():
    summary = {
        "metric": "top1",
        "objective": {"target": "cpu", "targets": ["cpu", "ov"]},
        "trials": [
            {"trial_id": "t1", "phase": 1, "settings": {**configurations(_spec())[0], "exclude_top_k": 0}, "evaluation": {"value": 0.9},
             "passed_quality": True, "p50_ms": 1.0, "p50_ms_by_target": {"cpu": 1.0, "ov": 2.0}, "cached": False, "status": "passed"},
            {"trial_id": "t2", "phase": 2, "settings": {"backend": "nncf", "mode": "static", "preset": "mixed", "model_type": None,
             "fast_bias_correction": False, "accuracy_control": True, "exclude_top_k": 0}, "evaluation": None,
             "passed_quality": False, "p50_ms": None, "p50_ms_by_target": {"cpu": None, "ov": None}, "cached": False, "status": "error"},
        ],
    }
    rows = trial_rows(summary)
    assert rows[0]["backend"] == "onnxruntime" and rows[0]["p50_ms@ov"] == 2.0 and rows[0]["nncf"] is None
    assert rows[1]["calibration"] is None and rows[1]["format"] is None and rows[1]["op_types"] is None
    assert rows[1]["nncf"] == "preset=mixed,bias_correction=full,accuracy_control"


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({"space": {"backends": ["onnxruntime", "tflite"]}}, "search.space.backends.1"),
        ({"space": {"modes": ["weight_only_int4"]}}, "search.space.modes.0"),
        ({"space": {"backends": ["nncf"], "modes": ["dynamic"]}}, "search.space.modes: no (backend, mode) pair to search"),
        ({"space": {"nncf_presets": ["mixed"]}}, "search.space.nncf_presets: applies to nncf static"),
        ({"space": {"backends": ["nncf"], "formats": ["QOperator"]}}, "search.space.formats: applies to onnxruntime static"),
        ({"space": {"nncf_model_types": ["transformer", "transformer"]}}, "search.space.nncf_model_types: values must be unique"),
        ({"objective": {"targets": ["cpu", "gpu"]}}, "search.objective.targets: ['gpu'] are not among the targets ['cpu']"),
        ({"objective": {"targets": []}}, "search.objective.targets"),
        ({"objective": {"targets": ["cpu", "cpu"]}}, "search.objective.targets: names must be unique"),
        ({"objective": {"targets": ["cpu"], "target": "cpu"}}, "search.objective.target: give `targets` or its shorthand"),
        ({"nncf_parent": "fp32-optimized"}, "search.nncf_parent is fp32-optimized, but the spec has no `optimization` section"),
        ({"nncf_parent": "fp16"}, "search.nncf_parent"),
    ],
)
def test_search_space_and_objective_errors_name_the_field(tmp_path, search, expected):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPEC, "search": search}))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert expected in str(info.value)


def test_objective_target_is_shorthand_for_a_one_target_list_and_the_default_is_every_target():
    def spec(objective):
        data = _spec().model_dump(mode="json", exclude_unset=True)
        data["targets"] = [{"name": "cpu"}, {"name": "cpu-1t"}]
        data["search"] = {"objective": objective}
        return PipelineSpec.model_validate(data).search.objective.target_names(["cpu", "cpu-1t"])

    assert spec({"target": "cpu-1t"}) == ["cpu-1t"]
    assert spec({"targets": ["cpu-1t", "cpu"]}) == ["cpu-1t", "cpu"]
    assert spec({}) == ["cpu", "cpu-1t"]


def test_a_per_target_winner_name_taken_by_a_variant_is_a_spec_error():
    data = _spec().model_dump(mode="json", exclude_unset=True)
    data["targets"] = [{"name": "cpu"}, {"name": "cpu-1t"}]
    data["quantization"] = [{"name": "int8-search-cpu-1t", "mode": "dynamic"}]
    data["search"] = {}
    with pytest.raises(ValueError, match="int8-search-cpu-1t"):
        PipelineSpec.model_validate(data)


def test_each_backend_and_mode_finds_its_own_k_min():
    """Phase 2 starts one step below the smallest passing k of the same (backend, mode) only: ONNX
    Runtime needing 6 nodes in float says nothing about NNCF, which is tried from k=0."""
    spec = _spec(backends=["onnxruntime", "nncf"], calibration_methods=["MinMax", "Percentile"], exclude_top_k=[0, 2, 4, 6])
    ranking = [{"node": f"n{i}", "op_type": "MatMul"} for i in range(8)]
    tried: list[tuple[str, str | None, int]] = []

    def run_trial(trial, config):
        k = trial["settings"]["exclude_top_k"]
        tried.append((config["backend"], config.get("calibration_method"), k))
        passed = k >= 6 if config["backend"] == "onnxruntime" else True
        return {"passed_quality": passed, "status": "passed" if passed else "failed_quality", "error": None,
                "cached": False, "evaluation": {"value": 0.99 if passed else 0.9, "passed": passed}}

    trials, stopped = _run_trials(spec, ranking, lambda: {f"n{i}" for i in range(8)}, run_trial, t0=time.perf_counter())
    assert stopped == "space exhausted"
    assert tried == [
        ("onnxruntime", "MinMax", 0), ("onnxruntime", "MinMax", 2), ("onnxruntime", "MinMax", 4), ("onnxruntime", "MinMax", 6),
        ("onnxruntime", "Percentile", 4), ("onnxruntime", "Percentile", 6),  # one below ORT's k_min
        ("nncf", None, 0),  # NNCF from the smallest k: it passes there
    ]
    assert [t["passed_quality"] for t in trials] == [False, False, False, True, False, True, True]
