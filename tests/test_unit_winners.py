"""A winner per target: the pure pick (edgeport.records.target_winners), the alias names, the
won-target tags, the providers / session options the logged MLflow model carries, and
summary.json's optional ``challengers``. Fast: no MLflow store, no Prefect."""

from __future__ import annotations

import json
import math

import onnxruntime as ort

from edgeport.promotion import (
    PromotionDecision,
    RollbackResult,
    VersionRecord,
    champion_alias,
    decide,
    previous_champion_alias,
    target_alias,
)
from edgeport.records import Challenger, RunSummary, primary_p50_ms, target_winners
from edgeport.registry import WON_TARGETS_TAG, won_tags
from edgeport.registry.signature import mlflow_providers, mlflow_session_options
from edgeport.spec import PipelineSpec, PromotionSpec, TargetSpec


def _spec(targets: list, primary: int = 1) -> PipelineSpec:
    return PipelineSpec(
        name="tiny",
        model={"checkpoint": "/nonexistent/tiny.pt", "factory": "m:f"},
        inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        outputs=["y"],
        quantization=[{"name": "int8-dynamic", "mode": "dynamic"}],
        benchmark={"batch_sizes": [1, 8], "primary_batch_size": primary},
        targets=targets,
        registry={"registered_model": "tiny"},
    )


def _variant(name: str, passed: bool, p50: dict[tuple[str, int], float | None], status: str = "ok") -> dict:
    return {
        "name": name,
        "passed": passed,
        "benchmarks": [
            {"target": t, "batch_size": b, "status": status, "p50_ms": v} for (t, b), v in p50.items()
        ],
    }


SPEC = _spec([{"name": "cpu"}, {"name": "cpu-1t"}])


def test_each_target_gets_its_own_fastest_passing_variant():
    variants = [
        _variant("fp32", True, {("cpu", 1): 2.0, ("cpu-1t", 1): 5.0}),
        _variant("int8-static", True, {("cpu", 1): 1.0, ("cpu-1t", 1): 6.0}),
        _variant("int8-dynamic", True, {("cpu", 1): 3.0, ("cpu-1t", 1): 4.0}),
        _variant("int4", False, {("cpu", 1): 0.1, ("cpu-1t", 1): 0.1}),  # failed its gates: never wins
    ]
    winners = target_winners(variants, SPEC)
    assert list(winners) == ["cpu", "cpu-1t"]
    assert winners["cpu"] == {"variant": "int8-static", "p50_ms": 1.0, "batch_size": 1}
    assert winners["cpu-1t"] == {"variant": "int8-dynamic", "p50_ms": 4.0, "batch_size": 1}
    # eligibility can be given explicitly (registration: the registered variants)
    assert target_winners(variants, SPEC, eligible=["fp32"])["cpu"]["variant"] == "fp32"


def test_primary_batch_size_decides_and_ties_go_to_the_earlier_variant():
    spec = _spec([{"name": "cpu"}], primary=8)
    variants = [
        _variant("a", True, {("cpu", 1): 1.0, ("cpu", 8): 9.0}),
        _variant("b", True, {("cpu", 1): 2.0, ("cpu", 8): 8.0}),
        _variant("c", True, {("cpu", 1): 2.0, ("cpu", 8): 8.0}),
    ]
    assert target_winners(variants, spec) == {"cpu": {"variant": "b", "p50_ms": 8.0, "batch_size": 8}}


def test_a_target_without_a_finite_ok_p50_has_no_winner():
    variants = [
        _variant("fp32", True, {("cpu", 1): 2.0, ("cpu-1t", 1): math.nan}),
        _variant("int8", True, {("cpu-1t", 1): 1.0}, status="fallback"),
        _variant("int8-b", True, {("cpu-1t", 1): None}),
    ]
    assert target_winners(variants, SPEC) == {"cpu": {"variant": "fp32", "p50_ms": 2.0, "batch_size": 1}}
    assert primary_p50_ms(variants[0], SPEC, target="cpu-1t") is None
    assert primary_p50_ms(variants[1], SPEC, target="cpu-1t") is None  # status not ok
    assert primary_p50_ms(variants[0], SPEC) == 2.0  # default: first target, primary batch size
    assert target_winners([], SPEC) == {}


def test_alias_names():
    assert target_alias("challenger", "cpu-1t") == "challenger-cpu-1t"
    assert target_alias("challenger", "jetson.orin") == "challenger-jetson-orin"  # MLflow: [\w-] only
    assert (champion_alias(), previous_champion_alias()) == ("champion", "previous-champion")
    assert (champion_alias("cpu-1t"), previous_champion_alias("cpu-1t")) == ("champion-cpu-1t", "previous-champion-cpu-1t")


def test_won_tags():
    tags = won_tags({"cpu": (1, 0.5), "cpu-1t": (1, 0.9)}, {"cpu": '["CPUExecutionProvider"]'})
    assert tags[WON_TARGETS_TAG] == "cpu,cpu-1t"
    assert tags["edgeport.won.cpu-1t.p50_ms"] == "0.9" and tags["edgeport.won.cpu.batch_size"] == "1"
    assert tags["edgeport.won.cpu.providers"] == '["CPUExecutionProvider"]' and "edgeport.won.cpu-1t.providers" not in tags


def test_logged_providers_and_session_options_follow_the_target():
    ov = _spec([{"name": "cpu"}, {"name": "openvino-cpu"}]).targets[1]
    assert mlflow_providers(ov) == [["OpenVINOExecutionProvider", {"device_type": "CPU"}], "CPUExecutionProvider"]
    one = TargetSpec(name="cpu-1t")
    assert mlflow_providers(one) == ["CPUExecutionProvider"]
    options = mlflow_session_options(one)
    assert options["intra_op_num_threads"] == 1 and options["inter_op_num_threads"] == 1
    assert options["graph_optimization_level"] == 99 and options["execution_mode"] == "sequential"
    assert options["extra_session_config"]["session.intra_op.allow_spinning"] == "0"
    for key in options:  # every key is one MLflow's ONNX flavour accepts
        assert key == "extra_session_config" or hasattr(ort.SessionOptions, key)
    json.dumps(mlflow_providers(ov))  # recorded as a tag


def test_summary_writes_challengers_only_when_set():
    base = {"spec": "s.yaml", "name": "n", "registration": "done", "tracking_uri": "sqlite:///x", "registered_model": "m"}
    summary = RunSummary.model_validate(base)
    assert "challengers" not in summary.model_dump()
    summary.challengers = {"cpu": Challenger(variant="int8", version="2", p50_ms=1.0)}  # as flows.pipeline sets it
    assert summary.model_dump()["challengers"] == {"cpu": {"variant": "int8", "version": "2", "p50_ms": 1.0}}
    assert RunSummary.model_validate(summary.model_dump()).model_dump() == summary.model_dump()


def _rec(version: str, p50: float) -> VersionRecord:
    return VersionRecord(version, "run", "v", p50, 1.0, True, True, "top1", 0.97)


def test_decision_names_the_aliases_it_moves():
    policy = PromotionSpec()
    plain = decide("m", _rec("2", 0.5), _rec("1", 1.0), "1", "cpu", 1, policy)
    assert (plain.champion_alias, plain.previous_champion_alias) == ("champion", "previous-champion")
    per = decide("m", _rec("2", 0.5), _rec("1", 1.0), "1", "cpu-1t", 1, policy, per_target=True)
    assert per.accepted and (per.champion_alias, per.previous_champion_alias) == ("champion-cpu-1t", "previous-champion-cpu-1t")
    assert "promoted** to `champion-cpu-1t`" in per.markdown() and "`previous-champion-cpu-1t` -> version 1" in per.markdown()
    assert isinstance(per, PromotionDecision) and per.to_dict()["champion_alias"] == "champion-cpu-1t"
    back = RollbackResult("m", "2", "1", "now", champion_alias="champion-cpu-1t", previous_champion_alias="previous-champion-cpu-1t")
    assert "`champion-cpu-1t`: version 2 -> version 1" in back.markdown()
