"""A winner per target in the registry, end to end: one real digits pipeline run with the targets
``cpu`` and ``cpu-1t`` into a sqlite MLflow store under Prefect's test harness (no mocks), then
``promote --target`` / ``rollback --target`` and a pyfunc load of a per-target alias."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edgeport.errors import PromotionError
from edgeport.spec import PipelineSpec
from mlflow import MlflowClient
from tasks.promote import promote, rollback
from tasks.register import register_pipeline
from tests.conftest import digits_spec_dict, write_spec

pytestmark = pytest.mark.slow

MODEL = "digits-winners"
TARGETS = ["cpu", "cpu-1t"]


@pytest.fixture(scope="module")
def run(prefect_harness, digits_artifacts, tmp_path_factory):
    """The digits example (fp32 + int8-static) benchmarked on cpu and cpu-1t, registered."""
    root = tmp_path_factory.mktemp("winners")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPORT_HOME", str(root / "home"))
    from flows.pipeline import pipeline

    data = digits_spec_dict(digits_artifacts)
    data["quantization"] = [q for q in data["quantization"] if q["name"] == "int8-static"]
    data["targets"] = [{"name": t} for t in TARGETS]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data["registry"] = {"tracking_uri": uri, "experiment": "winners-tests", "registered_model": MODEL}
    spec_path = write_spec(root / "spec", data)
    summary = pipeline(str(spec_path), output_dir=str(root / "out"))
    yield {"summary": summary, "uri": uri, "root": root, "data": data, "spec_path": spec_path}
    mp.undo()


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(uri: str, model: str) -> dict[str, str]:
    return {a: str(v) for a, v in client(uri).get_registered_model(model).aliases.items()}


def fastest(summary: dict, target: str) -> str:
    """The passing variant with the lowest p50 on ``target`` at batch size 1, from summary.json."""
    rows = [
        (b["p50_ms"], i, v["name"]) for i, v in enumerate(summary["variants"]) if v["passed"]
        for b in v["benchmarks"] if (b["target"], b["batch_size"], b["status"]) == (target, 1, "ok")
    ]
    return min(rows)[2]


def test_every_target_gets_its_challenger(run):
    uri, summary = run["uri"], run["summary"]
    by_name = {v["name"]: v for v in summary["variants"]}
    assert summary["challenger"] is not None
    assert set(summary["challengers"]) == set(TARGETS)
    on = aliases(uri, MODEL)
    for target in TARGETS:
        won = summary["challengers"][target]
        assert won["variant"] == fastest(summary, target)
        assert won["version"] == by_name[won["variant"]]["model_version"]
        assert on[f"challenger-{target}"] == won["version"]
    # `challenger` keeps its meaning: the first target's winner
    assert on["challenger"] == on["challenger-cpu"] == summary["challenger"]["version"]
    assert summary["challenger"]["variant"] == summary["challengers"]["cpu"]["variant"]
    # a version records the targets it won, and the target whose providers its MLflow model carries
    for version in set(on[f"challenger-{t}"] for t in TARGETS):
        tags = client(uri).get_model_version(MODEL, version).tags
        won = [t for t in TARGETS if on[f"challenger-{t}"] == version]
        assert tags["edgeport.won_targets"] == ",".join(won)
        assert tags["edgeport.logged_target"] == won[0]
        for target in won:
            assert float(tags[f"edgeport.won.{target}.p50_ms"]) == pytest.approx(summary["challengers"][target]["p50_ms"])
    written = json.loads((run["root"] / "out" / "summary.json").read_text())
    assert written["challengers"] == summary["challengers"]


def test_pyfunc_load_of_a_target_alias_runs_as_benchmarked(run):
    import mlflow.pyfunc

    import mlflow

    uri, summary = run["uri"], run["summary"]
    version = aliases(uri, MODEL)["challenger-cpu-1t"]
    variant = next(v for v in summary["variants"] if v["model_version"] == version)
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@challenger-cpu-1t")
        flavor = mlflow.models.get_model_info(f"models:/{MODEL}@challenger-cpu-1t").flavors["onnx"]
    finally:
        mlflow.set_tracking_uri(None)
    # the version's MLflow model carries the session of the first target it won (one file per
    # version): cpu-1t's profile (one intra-op and one inter-op thread) unless it also won cpu
    # (ONNX Runtime's defaults, 0), which comes first in the spec
    logged = MlflowClient(uri).get_model_version(MODEL, version).tags["edgeport.logged_target"]
    threads = {"cpu": 0, "cpu-1t": 1}[logged]
    assert logged == "cpu-1t" or aliases(uri, MODEL)["challenger-cpu"] == version
    assert flavor["providers"] == ["CPUExecutionProvider"]
    assert flavor["onnx_session_options"]["intra_op_num_threads"] == threads
    assert flavor["onnx_session_options"]["inter_op_num_threads"] == threads
    with np.load(run["data"]["evaluation"]["dataset"]) as data:
        name = run["data"]["inputs"][0]["name"]
        x = np.asarray(data[name][:16], dtype=np.float32)
    session = ort.InferenceSession(variant["path"], providers=["CPUExecutionProvider"])
    expected = session.run(None, {name: x})[0]
    got = model.predict({name: x})
    got = next(iter(got.values())) if isinstance(got, dict) else np.asarray(got)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _faster_copy(run: dict, name: str, scale: float) -> dict:
    """The pipeline's int8-static record, renamed, with every latency x ``scale``."""
    out = copy.deepcopy(next(v for v in run["summary"]["variants"] if v["name"] == "int8-static"))
    out["name"], out["passed"] = name, True
    for entry in out["benchmarks"]:
        for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
            if entry.get(key) is not None:
                entry[key] *= scale
        entry["ci_halfwidth_pct"] = 2.0
    return out


def test_promote_and_roll_back_per_target(run, cli_env):
    from edgeport.cli import app
    from flows.promote import promote_flow, rollback_flow

    uri = run["uri"]
    first = aliases(uri, MODEL)["challenger-cpu-1t"]
    decision = promote_flow(MODEL, target="cpu-1t", per_target=True, tracking_uri=uri)
    assert decision["accepted"] and decision["candidate_version"] == first, decision["reason"]
    assert (decision["target"], decision["champion_alias"]) == ("cpu-1t", "champion-cpu-1t")
    on = aliases(uri, MODEL)
    assert on["champion-cpu-1t"] == first and "champion" not in on and "previous-champion-cpu-1t" not in on
    tags = client(uri).get_model_version(MODEL, first).tags
    assert tags["edgeport.promotion.cpu-1t.decision"] == "accepted" and "edgeport.promotion.decision" not in tags

    # a later registration, 2x faster everywhere, becomes challenger-cpu-1t; promote it from the CLI
    spec = PipelineSpec.model_validate(run["data"], context={"base_dir": run["spec_path"].parent})
    result = register_pipeline(spec, run["spec_path"], [_faster_copy(run, "int8-fast", 0.5)], uri, run["root"] / "out2")
    fast = result["versions"]["int8-fast"]
    assert result["challengers"]["cpu-1t"]["version"] == fast and aliases(uri, MODEL)["challenger-cpu-1t"] == fast
    out = CliRunner().invoke(app, ["promote", MODEL, "--target", "cpu-1t", "--tracking-uri", uri], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "champion-cpu-1t -> version" in out.output
    on = aliases(uri, MODEL)
    assert (on["champion-cpu-1t"], on["previous-champion-cpu-1t"]) == (fast, first) and "champion" not in on

    # the plain champion is untouched by per-target promotions, and moves on its own
    assert promote(MODEL, uri, version=first).accepted
    assert aliases(uri, MODEL)["champion"] == first and aliases(uri, MODEL)["champion-cpu-1t"] == fast

    back = rollback_flow(MODEL, tracking_uri=uri, target="cpu-1t")
    assert (back["from_version"], back["to_version"], back["champion_alias"]) == (fast, first, "champion-cpu-1t")
    on = aliases(uri, MODEL)
    assert on["champion-cpu-1t"] == first and "previous-champion-cpu-1t" not in on and on["champion"] == first
    assert client(uri).get_model_version(MODEL, fast).tags["edgeport.promotion.cpu-1t.decision"] == "rolled-back"
    with pytest.raises(PromotionError, match="no 'previous-champion-cpu-1t' alias"):
        rollback(MODEL, uri, target="cpu-1t")
    with pytest.raises(PromotionError, match="needs the target"):
        promote(MODEL, uri, per_target=True)
