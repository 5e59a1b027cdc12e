"""Promotion and rollback (tasks/promote.py, flows/promote.py, `edgeport promote|rollback`) against a
real sqlite MLflow store and Prefect's test harness, no mocks.

The digits pipeline runs once (real export, quantization, benchmarks, registration); further
versions are registered with :func:`tasks.register.register_pipeline` from that run's own
variant records, edited (e.g. a "slower" copy whose benchmark p50s are 2x, or one whose
evaluation gate failed). Each test uses its own registered model, so alias state never leaks.
"""

from __future__ import annotations

import copy
import socket
import threading

import pytest
from typer.testing import CliRunner

from edgeport.errors import (
    PromotionError,
    PromotionRejected,
    RegistryUnavailable,
    SpecError,
)
from edgeport.spec import PipelineSpec, PromotionSpec, load_spec
from mlflow import MlflowClient
from tasks.promote import (
    CHAMPION,
    PREVIOUS_CHAMPION,
    VersionRecord,
    latency_check,
    promote,
    rollback,
)
from tasks.register import register_pipeline
from tests.conftest import digits_spec_dict, wait_until, write_spec

MODEL = "digits-promote"


@pytest.fixture(scope="module")
def digits_run(prefect_harness, digits_artifacts, tmp_path_factory):
    """One real pipeline run of the digits example (fp32 + int8-static) into a sqlite store."""
    root = tmp_path_factory.mktemp("promote")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPORT_HOME", str(root / "home"))
    from flows.pipeline import pipeline

    data = digits_spec_dict(digits_artifacts)
    data["quantization"] = [q for q in data["quantization"] if q["name"] == "int8-static"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data["registry"] = {"tracking_uri": uri, "experiment": "promote-tests", "registered_model": MODEL}
    spec_path = write_spec(root / "spec", data)
    summary = pipeline(str(spec_path), output_dir=str(root / "out"))
    yield {"summary": summary, "uri": uri, "root": root, "data": data, "spec_path": spec_path}
    mp.undo()


def _scaled(record: dict, name: str, p50_scale: float, evaluation_passed: bool | None = None, ci_pct: float = 2.0) -> dict:
    """A copy of a pipeline variant record named ``name`` with every latency x ``p50_scale`` and the
    CI half-width of every median set to ``ci_pct`` (so the gate's outcome does not depend on how
    noisy this machine was during the one real benchmark)."""
    out = copy.deepcopy(record)
    out["name"] = name
    out["passed"] = True
    for entry in out["benchmarks"]:
        for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
            if entry.get(key) is not None:
                entry[key] *= p50_scale
        if entry.get("throughput"):
            entry["throughput"] /= p50_scale
        entry["ci_halfwidth_pct"] = ci_pct
    if evaluation_passed is not None:
        out["evaluation"]["passed"] = evaluation_passed
    return out


def register_versions(run: dict, model: str, edits: dict[str, dict]) -> dict[str, str]:
    """Register one version per entry of ``edits`` (variant name -> kwargs of :func:`_scaled`) of
    ``model``, built from the pipeline's int8-static record; returns variant name -> version."""
    data = copy.deepcopy(run["data"])
    data["registry"]["registered_model"] = model
    spec = PipelineSpec.model_validate(data, context={"base_dir": run["spec_path"].parent})
    base = next(v for v in run["summary"]["variants"] if v["name"] == "int8-static")
    variants = [_scaled(base, name, **kwargs) for name, kwargs in edits.items()]
    result = register_pipeline(spec, run["spec_path"], variants, run["uri"], run["root"] / "out" / model)
    assert set(result["versions"]) == set(edits)
    return result["versions"]


def aliases(uri: str, model: str) -> dict[str, str]:
    model_ = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(model)
    return {alias: str(version) for alias, version in model_.aliases.items()}


def version_tags(uri: str, model: str, version: str) -> dict[str, str]:
    return dict(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(model, version).tags)


def read_events(name: str, resource_id: str, count: int = 1, timeout_s: float = 30.0) -> list:
    """Events ``name`` about ``resource_id`` stored by the harness' Prefect server (flushes the
    events worker first, then polls until ``count`` are there, as the server persists events in
    batches; AssertionError after ``timeout_s``)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    flt = EventFilter(event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id]))

    def enough() -> list | None:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=flt, limit=50).events
        return events if len(events) >= count else None

    return wait_until(enough, timeout_s, interval_s=0.5, message=f"fewer than {count} event(s) {name!r} about {resource_id!r}")


# --------------------------------------------------------------------------- the rule, on its own


def _rec(version: str, p50: float, ci: float | None) -> VersionRecord:
    return VersionRecord(version, "run", "v", p50, ci, True, True, "top1", 0.97)


def test_latency_rule_uses_the_confidence_intervals():
    champ = _rec("1", 1.00, 2.0)  # CI [0.98, 1.02]
    # 3% slower point estimate, but CIs overlap: not significantly slower -> passes by default
    assert latency_check(_rec("2", 1.03, 2.0), champ, PromotionSpec())[0]
    # same numbers compared as points: slower -> fails
    assert not latency_check(_rec("2", 1.03, 2.0), champ, PromotionSpec(significance="point"))[0]
    # 10% slower with tight CIs: significantly slower -> fails; a 10% allowance lets it through
    assert not latency_check(_rec("2", 1.10, 1.0), champ, PromotionSpec())[0]
    assert latency_check(_rec("2", 1.10, 1.0), champ, PromotionSpec(max_p50_regression_pct=10))[0]
    # required 5% speed-up: 8% faster but CI upper 0.92*1.03=0.9476 > 0.98*0.95=0.931 -> not significant
    passed, threshold, detail = latency_check(_rec("2", 0.92, 3.0), champ, PromotionSpec(min_p50_improvement_pct=5))
    assert not passed and threshold == pytest.approx(0.98 * 0.95) and "CI upper bound" in detail
    assert latency_check(_rec("2", 0.80, 3.0), champ, PromotionSpec(min_p50_improvement_pct=5))[0]
    # no CI recorded: half-width 0, and the detail says so
    passed, _, detail = latency_check(_rec("2", 1.01, None), champ, PromotionSpec())
    assert passed and "no CI recorded for version(s) 2" in detail


def test_promotion_spec_in_the_pipeline_spec(digits_paths, tmp_path):
    data = digits_spec_dict(digits_paths)
    data["registry"]["promotion"] = {"target": "cpu", "batch_size": 1, "min_p50_improvement_pct": 5}
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.registry.promotion.min_p50_improvement_pct == 5
    data["registry"]["promotion"] = {"target": "jetson"}
    with pytest.raises(SpecError, match=r"registry.promotion.target 'jetson' is not one of the targets \['cpu'\]"):
        load_spec(write_spec(tmp_path, data))
    data["registry"]["promotion"] = {"max_p50_regression_pct": 5, "min_p50_improvement_pct": 5}
    with pytest.raises(SpecError, match="not both"):
        load_spec(write_spec(tmp_path, data))


# --------------------------------------------------------------------------- promotion on a real registry


@pytest.mark.slow
def test_first_promotion_of_the_pipelines_challenger(digits_run):
    from prefect.artifacts import Artifact

    from flows.promote import promote_flow

    uri, summary = digits_run["uri"], digits_run["summary"]
    challenger = summary["challenger"]["version"]
    assert CHAMPION not in aliases(uri, MODEL)
    decision = promote_flow(MODEL, spec_path=str(digits_run["spec_path"]))
    assert decision["accepted"] and decision["candidate_version"] == challenger
    assert decision["champion_version"] is None and "no champion yet" in decision["reason"]
    assert (decision["target"], decision["batch_size"]) == ("cpu", 1)
    ranked = next(b for v in summary["variants"] if v["model_version"] == challenger for b in v["benchmarks"]
                  if (b["target"], b["batch_size"]) == ("cpu", 1))
    assert decision["candidate"]["p50_ms"] == pytest.approx(ranked["p50_ms"])
    assert decision["candidate"]["ci_halfwidth_pct"] == pytest.approx(ranked["ci_halfwidth_pct"])
    assert aliases(uri, MODEL)[CHAMPION] == challenger and PREVIOUS_CHAMPION not in aliases(uri, MODEL)
    tags = version_tags(uri, MODEL, challenger)
    assert tags["edgeport.promotion.decision"] == "accepted" and tags["edgeport.promotion.champion_version"] == "none"
    artifact = Artifact.get("edgeport-promotion-digits-promote")
    assert artifact is not None and f"version {challenger}: **promoted**" in artifact.data
    # promoting the champion again changes nothing and is not an acceptance
    again = promote(MODEL, uri, version=challenger)
    assert not again.accepted and "already is the champion" in again.reason
    assert aliases(uri, MODEL)[CHAMPION] == challenger


@pytest.mark.slow
def test_faster_candidate_replaces_the_champion(digits_run):
    from flows.promote import promote_flow

    uri, model = digits_run["uri"], "digits-faster"
    v = register_versions(digits_run, model, {"base": {"p50_scale": 1.0}, "fast": {"p50_scale": 0.5}})
    assert promote_flow(model, version=v["base"], tracking_uri=uri)["accepted"]
    decision = promote_flow(model, tracking_uri=uri)  # the alias challenger: the fastest, "fast"
    assert decision["candidate_version"] == v["fast"] and decision["accepted"], decision["reason"]
    assert decision["champion_version"] == v["base"] and decision["change_pct"] == pytest.approx(-50.0)
    assert aliases(uri, model) == {"challenger": v["fast"], "challenger-cpu": v["fast"], CHAMPION: v["fast"], PREVIOUS_CHAMPION: v["base"]}

    tags = version_tags(uri, model, v["fast"])
    assert tags["edgeport.promotion.decision"] == "accepted"
    assert tags["edgeport.promotion.champion_version"] == v["base"]
    assert float(tags["edgeport.promotion.p50_ms"]) == pytest.approx(0.5 * float(tags["edgeport.promotion.champion_p50_ms"]), rel=1e-5)
    assert float(tags["edgeport.promotion.margin_pct"]) == pytest.approx(-50.0)
    assert tags["edgeport.promotion.flow_run_id"]
    assert version_tags(uri, model, v["base"])["edgeport.promotion.superseded_by"] == v["fast"]
    description = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(model, v["fast"]).description
    assert "Champion since" in description and "-50.0%" in description

    events = read_events("edgeport.model.promoted", f"edgeport.registered-model.{model}", count=2)
    payloads = {e.payload["candidate_version"]: e.payload for e in events}
    assert set(payloads) == {v["base"], v["fast"]}
    assert payloads[v["fast"]]["champion_version"] == v["base"] and payloads[v["fast"]]["accepted"] is True


@pytest.mark.slow
def test_slower_candidate_is_rejected_and_nothing_changes(digits_run):
    from flows.promote import promote_flow

    uri, model = digits_run["uri"], "digits-slower"
    v = register_versions(digits_run, model, {"base": {"p50_scale": 1.0}, "slow": {"p50_scale": 2.0}})
    assert promote(model, uri, version=v["base"]).accepted
    before = aliases(uri, model)
    decision = promote_flow(model, version=v["slow"], tracking_uri=uri)
    assert not decision["accepted"] and decision["change_pct"] == pytest.approx(100.0)
    assert "rejected: latency" in decision["reason"] and "+100.0%" in decision["reason"]
    assert aliases(uri, model) == before
    tags = version_tags(uri, model, v["slow"])
    assert tags["edgeport.promotion.decision"] == "rejected" and "latency" in tags["edgeport.promotion.reason"]
    events = read_events("edgeport.model.promotion-rejected", f"edgeport.registered-model.{model}")
    assert [e.payload["candidate_version"] for e in events] == [v["slow"]]
    with pytest.raises(PromotionRejected) as info:
        promote(model, uri, version=v["slow"], emit_events=False).raise_if_rejected()
    assert info.value.decision["champion_version"] == v["base"]


@pytest.mark.slow
def test_required_speedup_from_the_spec_rejects_a_small_gain(digits_run, tmp_path):
    from flows.promote import promote_flow

    uri, model = digits_run["uri"], "digits-margin"
    v = register_versions(digits_run, model, {"base": {"p50_scale": 1.0}, "fast": {"p50_scale": 0.9}})
    assert promote(model, uri, version=v["base"]).accepted
    data = copy.deepcopy(digits_run["data"])
    data["registry"]["promotion"] = {"min_p50_improvement_pct": 50}
    decision = promote_flow(model, version=v["fast"], spec_path=str(write_spec(tmp_path, data)))
    assert not decision["accepted"] and decision["policy"]["min_p50_improvement_pct"] == 50
    assert aliases(uri, model)[CHAMPION] == v["base"]


@pytest.mark.slow
def test_quality_failing_candidate_is_rejected(digits_run):
    uri, model = digits_run["uri"], "digits-quality"
    v = register_versions(
        digits_run, model, {"base": {"p50_scale": 1.0}, "bad": {"p50_scale": 0.5, "evaluation_passed": False}}
    )
    assert version_tags(uri, model, v["bad"]) and MlflowClient(tracking_uri=uri).get_run(
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(model, v["bad"]).run_id
    ).data.tags["edgeport.evaluation.passed"] == "false"
    assert promote(model, uri, version=v["base"]).accepted
    decision = promote(model, uri, version=v["bad"])
    assert not decision.accepted
    failed = [c["name"] for c in decision.checks if not c["passed"]]
    assert failed == ["quality"] and "evaluation gate FAILED" in decision.reason
    assert aliases(uri, model)[CHAMPION] == v["base"] and PREVIOUS_CHAMPION not in aliases(uri, model)


@pytest.mark.slow
def test_rollback_moves_champion_back_once(digits_run):
    from flows.promote import rollback_flow

    uri, model = digits_run["uri"], "digits-rollback"
    v = register_versions(digits_run, model, {"a": {"p50_scale": 1.0}, "b": {"p50_scale": 0.5}})
    with pytest.raises(PromotionError, match="no 'previous-champion' alias"):
        rollback(model, uri)
    assert promote(model, uri, version=v["a"]).accepted and promote(model, uri, version=v["b"]).accepted
    result = rollback_flow(model, tracking_uri=uri)
    assert (result["from_version"], result["to_version"]) == (v["b"], v["a"])
    assert aliases(uri, model) == {"challenger": v["b"], "challenger-cpu": v["b"], CHAMPION: v["a"]}
    assert version_tags(uri, model, v["b"])["edgeport.promotion.decision"] == "rolled-back"
    assert version_tags(uri, model, v["a"])["edgeport.promotion.restored_from"] == v["b"]
    assert read_events("edgeport.model.rolled-back", f"edgeport.registered-model.{model}")
    with pytest.raises(PromotionError, match="nothing to roll back to"):
        rollback(model, uri)


@pytest.mark.slow
def test_bad_requests_fail_clearly(digits_run):
    uri, model = digits_run["uri"], "digits-errors"
    v = register_versions(digits_run, model, {"a": {"p50_scale": 1.0}})
    with pytest.raises(PromotionError, match="registered model 'no-such-model' not found"):
        promote("no-such-model", uri)
    with pytest.raises(PromotionError, match="model version 99 not found"):
        promote(model, uri, version="99")
    with pytest.raises(PromotionError, match=r"no version has the alias 'staging' \(aliases: challenger -> "):
        promote(model, uri, alias="staging")
    with pytest.raises(PromotionError, match=r"no p50 recorded for target 'cpu-1t' at batch size 1 .*recorded: cpu.b1, cpu.b32"):
        promote(model, uri, version=v["a"], target="cpu-1t")
    with sock_port() as port, pytest.raises(RegistryUnavailable, match=f"127.0.0.1:{port}"):
        promote(model, f"http://127.0.0.1:{port}")
    assert CHAMPION not in aliases(uri, model)


class sock_port:
    """A loopback port nobody listens on (bound, never listened to, for the block)."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- serialisation


@pytest.mark.slow
def test_promotion_waits_for_the_models_lock(digits_run):
    from flows.promote import promote_flow, promotion_lock

    uri, model = digits_run["uri"], "digits-lock"
    v = register_versions(digits_run, model, {"a": {"p50_scale": 1.0}})
    results: list = []
    with promotion_lock(model):
        worker = threading.Thread(target=lambda: results.append(promote_flow(model, version=v["a"], tracking_uri=uri)))
        worker.start()
        worker.join(timeout=8)
        assert worker.is_alive() and CHAMPION not in aliases(uri, model)  # blocked on the slot
    worker.join(timeout=120)
    assert not worker.is_alive() and results[0]["accepted"] and aliases(uri, model)[CHAMPION] == v["a"]


@pytest.mark.slow
def test_concurrent_promotions_end_consistent(digits_run):
    from flows.promote import promote_flow

    uri, model = digits_run["uri"], "digits-concurrent"
    v = register_versions(digits_run, model, {"a": {"p50_scale": 1.0}, "b": {"p50_scale": 0.5}, "c": {"p50_scale": 0.25}})
    assert promote(model, uri, version=v["a"]).accepted
    decisions: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            decisions[name] = promote_flow(model, version=v[name], tracking_uri=uri)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and set(decisions) == {"b", "c"}
    # serialised: exactly one decision saw the old champion a; the other saw the first one's outcome
    first, second = sorted(decisions.values(), key=lambda d: d["champion_version"] != v["a"])
    assert first["champion_version"] == v["a"] and first["accepted"]
    assert second["champion_version"] == first["candidate_version"]
    # the final aliases are those of the later decision (whatever the gate said about it)
    final = aliases(uri, model)
    if second["accepted"]:
        assert (final[CHAMPION], final[PREVIOUS_CHAMPION]) == (second["candidate_version"], first["candidate_version"])
    else:
        assert (final[CHAMPION], final[PREVIOUS_CHAMPION]) == (first["candidate_version"], v["a"])
    assert final[CHAMPION] == v["c"]  # c (4x faster than a, 2x faster than b) wins in either order
    champion_tags = version_tags(uri, model, final[CHAMPION])
    assert champion_tags["edgeport.promotion.decision"] == "accepted"
    assert champion_tags["edgeport.promotion.champion_version"] == final[PREVIOUS_CHAMPION]


# --------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_exit_codes(digits_run, cli_env):
    from edgeport.cli import app

    uri, model = digits_run["uri"], "digits-cli"
    v = register_versions(digits_run, model, {"a": {"p50_scale": 1.0}, "slow": {"p50_scale": 2.0}, "fast": {"p50_scale": 0.5}})
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [*args, "--tracking-uri", uri], catch_exceptions=False)

    first = invoke("promote", model, "--version", v["a"])
    assert first.exit_code == 0, first.output
    assert "promoted" in first.output and "p50 ms" in first.output
    slow = invoke("promote", model, "--version", v["slow"], "--batch-size", "32")  # compared on its ranking target, cpu
    assert slow.exit_code == 2, slow.output
    assert "not promoted" in slow.output and "latency" in slow.output
    fast = invoke("promote", model)  # alias challenger -> the fastest
    assert fast.exit_code == 0, fast.output
    assert aliases(uri, model)[CHAMPION] == v["fast"]
    unknown = invoke("promote", "no-such-model")
    assert unknown.exit_code == 1 and "PromotionError" in unknown.output
    assert invoke("promote", model, "--version", "1", "--alias", "challenger").exit_code == 1
    assert invoke("rollback", model).exit_code == 0
    assert aliases(uri, model)[CHAMPION] == v["a"]
    again = invoke("rollback", model)
    assert again.exit_code == 1 and "nothing to roll back to" in again.output
