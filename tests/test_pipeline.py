"""End to end: the digits example through the Prefect flow, into a real sqlite MLflow registry."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from prefect.artifacts import Artifact
from typer.testing import CliRunner

from mlflow import MlflowClient
from tests.conftest import (
    DIGITS,
    REAL_ENVS,
    digits_spec_dict,
    openvino_env_ready,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.slow

SUMMARY_VARIANT_KEYS = {"name", "kind", "path", "size_bytes", "validation", "evaluation", "benchmarks", "model_version"}
BENCH_KEYS = {
    "target",
    "batch_size",
    "provider",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "throughput",
    "peak_rss_mb",
    "session_create_ms",
}


@pytest.fixture(scope="module")
def e2e(prefect_harness, digits_artifacts, tmp_path_factory):
    """One full pipeline run and a re-run with unchanged inputs (same EDGEPORT_HOME, so same export cache)."""
    root = tmp_path_factory.mktemp("e2e")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPORT_HOME", str(root / "home"))
    mp.setenv("EDGEPORT_ENVS", str(REAL_ENVS))
    from flows.pipeline import pipeline

    # The example's own targets (cpu, cpu-1t, openvino-cpu) when the OpenVINO env is set up.
    targets = yaml.safe_load((DIGITS / "pipeline.yaml").read_text())["targets"]
    if not openvino_env_ready():
        targets = [t for t in targets if t["name"] != "openvino-cpu"]
    data = digits_spec_dict(digits_artifacts, targets=targets)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data["registry"]["tracking_uri"] = uri
    spec_path = write_spec(root / "spec", data)
    first = pipeline(str(spec_path), output_dir=str(root / "out1"))
    second = pipeline(str(spec_path), output_dir=str(root / "out2"))
    yield {"first": first, "second": second, "uri": uri, "root": root, "spec": data}
    mp.undo()


def test_summary_json_follows_the_contract(e2e):
    summary = json.loads((e2e["root"] / "out1" / "summary.json").read_text())
    assert summary["registered_model"] == "digits-cnn"
    assert summary["mlflow_run_id"]
    assert [v["name"] for v in summary["variants"]] == ["fp32", "int8-static", "int8-dynamic"]
    assert [v["kind"] for v in summary["variants"]] == ["fp32", "static_int8", "dynamic_int8"]
    for v in summary["variants"]:
        assert SUMMARY_VARIANT_KEYS <= v.keys()
        assert Path(v["path"]).is_file() and v["size_bytes"] == Path(v["path"]).stat().st_size
        assert {"passed", "max_abs_err", "max_rel_err"} <= v["validation"].keys()
        assert {"metric", "value", "drop", "passed"} <= v["evaluation"].keys()
        targets = [t["name"] for t in e2e["spec"]["targets"]]
        assert [(b["target"], b["batch_size"]) for b in v["benchmarks"]] == [(t, bs) for t in targets for bs in (1, 32)]
        for b in v["benchmarks"]:
            assert BENCH_KEYS <= b.keys()
            if b["target"] in ("cpu", "cpu-1t"):
                assert b["status"] == "ok" and b["providers_bound"] == ["CPUExecutionProvider"]
                assert 0 < b["p50_ms"] <= b["p99_ms"] and b["throughput"] > 0
                assert b["allow_spinning"] is False
    fp32, static, dynamic = summary["variants"]
    assert fp32["validation"]["max_abs_err"] < 1e-4
    # The acceptance goal: static INT8 within 0.5 pp of FP32 on real digits, and smaller.
    assert static["evaluation"]["drop"] <= 0.005 and static["evaluation"]["passed"]
    assert static["size_bytes"] < 0.5 * fp32["size_bytes"]
    assert static["op_counts"]["QuantizeLinear"] > 0
    assert dynamic["op_counts"].get("ConvInteger", 0) > 0
    challenger = summary["challenger"]
    assert challenger is not None
    passed = [v for v in summary["variants"] if v["passed"]]
    p50 = {v["name"]: next(b["p50_ms"] for b in v["benchmarks"] if b["batch_size"] == 1) for v in passed}
    assert challenger["variant"] == min(p50, key=p50.get)


#: The keys of summary.json and of its variant records before the records were typed (edgeport/records.py).
SUMMARY_KEYS = [  # the keys before the redesign, plus "challengers" (a winner per target: optional, set when any target has one)
    "spec", "name", "registration", "mlflow_run_id", "mlflow_run_url", "mlflow_experiment_id", "tracking_uri",
    "registered_model", "prefect_flow_run", "variants", "challenger", "challengers", "plots", "cache", "timings_s", "search",
]
VARIANT_KEYS = [
    "name", "kind", "path", "size_bytes", "sha256", "opset", "passed", "validation", "evaluation", "benchmarks",
    "model_version", "quantization", "op_counts", "lineage",
]


def test_summary_json_validates_against_the_published_schema_with_the_same_keys(e2e):
    import jsonschema

    from edgeport.records import RunSummary, summary_json_schema

    text = (e2e["root"] / "out1" / "summary.json").read_text()
    summary = json.loads(text)
    jsonschema.validate(summary, summary_json_schema())
    assert list(summary) == SUMMARY_KEYS
    assert [list(v) for v in summary["variants"]] == [VARIANT_KEYS + ["export_selection"], VARIANT_KEYS, VARIANT_KEYS]
    assert list(summary["variants"][0]["validation"])[:3] == ["passed", "reference", "gated"]
    assert json.dumps(RunSummary.model_validate(summary).model_dump(), indent=2, default=str) == text


def test_openvino_target_binds_its_ep_and_marks_what_it_cannot_load(e2e):
    if not openvino_env_ready():
        pytest.skip("OpenVINO env missing: run `edgeport targets setup openvino` (make install does)")
    by_variant = {v["name"]: [b for b in v["benchmarks"] if b["target"] == "openvino-cpu"] for v in e2e["first"]["variants"]}
    for name in ("fp32", "int8-static"):
        for b in by_variant[name]:
            assert b["status"] == "ok", b
            assert b["providers_bound"][0] == "OpenVINOExecutionProvider" and b["provider"] == "OpenVINOExecutionProvider"
    # Dynamic quantization of convolutions gives ConvInteger, which the OpenVINO EP rejects:
    # recorded as unsupported with the runtime's message, not a crash, and the run went on.
    for b in by_variant["int8-dynamic"]:
        assert b["status"] == "unsupported" and b["error"]


def test_registry_holds_versions_aliases_tags_and_reports(e2e):
    client = MlflowClient(e2e["uri"])
    summary = e2e["first"]
    versions = {v["name"]: v["model_version"] for v in summary["variants"] if v["passed"]}
    assert all(versions.values())
    for name, version in versions.items():
        mv = client.get_model_version("digits-cnn", version)
        assert mv.tags["variant"] == name
        record = next(v for v in summary["variants"] if v["name"] == name)
        assert mv.tags["sha256"] == record["sha256"]
        assert mv.tags["opset"] == "18"
        assert "p50_ms" in mv.tags and "accuracy" in mv.tags
        if name != "fp32":
            assert json.loads(mv.tags["quantization"])["name"] == name
    # The alias follows the latest run (the re-run reused the versions: idempotent registration).
    alias = client.get_model_version_by_alias("digits-cnn", "challenger")
    assert str(alias.version) == e2e["second"]["challenger"]["version"]
    assert alias.tags["variant"] == e2e["second"]["challenger"]["variant"]

    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.data.tags["edgeport.prefect.flow_run_id"]
    assert parent.data.tags["edgeport.spec_digest"]
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags.get("edgeport.variant", r.info.run_name) for r in children) == sorted(
        ["fp32", "int8-static", "int8-dynamic"]
    )
    for run in children:
        names = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
        assert {"reports/validation.json", "reports/evaluation.json", "reports/benchmarks.json"} <= names
        assert any(k.startswith("p50_ms.cpu.b1") for k in run.data.metrics)


def test_plots_are_drawn_and_logged(e2e):
    summary = e2e["first"]
    names = sorted(Path(p).name for p in summary["plots"])
    targets = [t["name"] for t in e2e["spec"]["targets"]]
    assert names == sorted(["latency_vs_accuracy.png", *(f"latency_{t}.png" for t in targets)])
    assert all(Path(p).stat().st_size > 10_000 for p in summary["plots"])
    logged = {a.path for a in MlflowClient(e2e["uri"]).list_artifacts(summary["mlflow_run_id"], "plots")}
    assert logged == {f"plots/{n}" for n in names}


def test_benchmarks_interleave_rounds_and_pool_them(e2e):
    variants = e2e["first"]["variants"]
    ok = {(v["name"], b["target"], b["batch_size"]): b for v in variants for b in v["benchmarks"] if b["status"] == "ok"}
    # Every variant measures on the CPU EP targets (OpenVINO may mark one unsupported): fail when
    # those entries are missing or not ok, instead of checking nothing.
    cpu_targets = [t["name"] for t in e2e["spec"]["targets"] if t["name"] in ("cpu", "cpu-1t")]
    batch_sizes = e2e["spec"]["benchmark"]["batch_sizes"]
    expected = {(v["name"], t, bs) for v in variants for t in cpu_targets for bs in batch_sizes}
    assert variants and cpu_targets and expected <= ok.keys(), sorted(expected - ok.keys())
    for b in ok.values():
        assert b["rounds"] == 2 and len(b["round_p50_ms"]) == 2
        assert b["drift_pct"] >= 0
        assert min(b["round_p50_ms"]) * 0.5 <= b["p50_ms"] <= max(b["round_p50_ms"]) * 2


def test_rerun_reuses_the_cached_export(e2e):
    first, second = e2e["first"], e2e["second"]
    assert first["variants"][0]["lineage"]["cached"] is False
    assert second["variants"][0]["lineage"]["cached"] is True
    assert second["timings_s"]["export"] < first["timings_s"]["export"]
    assert second["variants"][0]["sha256"] == first["variants"][0]["sha256"]
    # The re-run with unchanged inputs reuses the versions of the first (idempotent registration).
    assert second["variants"][0]["model_version"] == first["variants"][0]["model_version"]
    assert second["variants"][0]["reused"] is True and "reused" not in first["variants"][0]


def test_prefect_artifacts_are_published(e2e):
    table = Artifact.get("edgeport-digits-cnn-variants")
    assert table is not None and table.type == "table"
    assert "int8-static" in str(table.data)
    summary = Artifact.get("edgeport-digits-cnn-summary")
    assert summary is not None and "challenger" in summary.data


def test_variant_failing_its_gate_is_logged_not_registered(prefect_harness, digits_artifacts, tmp_path):
    """Calibrating on data scaled x0.01 (a preprocessing mismatch) wrecks static INT8: caught by the gate."""
    from flows.pipeline import pipeline

    with np.load(digits_artifacts["calibration"]) as npz:
        np.savez(tmp_path / "bad-calibration.npz", pixels=npz["pixels"] * 0.01)
    data = digits_spec_dict(digits_artifacts)
    data["calibration"]["dataset"] = str(tmp_path / "bad-calibration.npz")
    data["quantization"] = [{"name": "int8-miscalibrated", "mode": "static", "per_channel": True, "activation_type": "QInt8"}]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["registry"]["tracking_uri"] = uri
    summary = pipeline(str(write_spec(tmp_path / "spec", data)), output_dir=str(tmp_path / "out"))
    bad = summary["variants"][1]
    assert bad["evaluation"]["drop"] > 0.005 and not bad["evaluation"]["passed"]
    assert bad["passed"] is False and bad["model_version"] is None
    client = MlflowClient(uri)
    registered = client.search_model_versions("name = 'digits-cnn'")
    assert {mv.tags["variant"] for mv in registered} == {"fp32"}
    runs = client.search_runs(
        [client.get_experiment_by_name("digits").experiment_id], filter_string="tags.`edgeport.passed` = 'false'"
    )
    assert len(runs) == 1


def test_cli_exits_2_when_no_variant_passes(cli_env, digits_artifacts, tmp_path):
    from edgeport.cli import app

    data = digits_spec_dict(digits_artifacts)
    data["evaluation"]["min_value"] = 1.0  # an unreachable accuracy floor: nothing passes
    data["quantization"] = data["quantization"][:1]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["registry"]["tracking_uri"] = uri
    spec_path = write_spec(tmp_path / "spec", data)
    result = CliRunner().invoke(app, ["run", str(spec_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "nothing registered" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["challenger"] is None
    assert MlflowClient(uri).search_model_versions("name = 'digits-cnn'") == []


def _kill_a_runner(marker: str, killed: list[int]) -> bool:
    """SIGKILL a running benchmark runner process whose command line mentions ``marker``, if any."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"runner.py") for part in cmdline) and marker.encode() in b" ".join(cmdline):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:  # it finished first: wait for the next one
                continue
            killed.append(int(pid))
            return True
    return False


def _kill_first_runner(marker: str, killed: list[int], timeout_s: float = 300.0) -> None:
    """SIGKILL the first benchmark runner process whose command line mentions ``marker``
    (none within ``timeout_s``: ``killed`` stays empty, which the test asserts against)."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: _kill_a_runner(marker, killed), timeout_s, interval_s=0.02)


def test_killed_runner_is_recorded_failed_and_the_pipeline_completes(prefect_harness, digits_artifacts, tmp_path):
    from flows.pipeline import pipeline

    data = digits_spec_dict(digits_artifacts, quantization=[], targets=[{"name": "cpu"}, {"name": "cpu-1t"}])
    data["benchmark"].update(time_budget_s=3.0, repetitions=100000, rounds=1)
    data["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_first_runner, args=(str(out), killed), daemon=True)
    watcher.start()
    summary = pipeline(str(write_spec(tmp_path / "spec", data)), output_dir=str(out))
    watcher.join(timeout=1)
    assert killed, "no runner process was seen"
    by_target = {}
    for b in summary["variants"][0]["benchmarks"]:
        by_target.setdefault(b["target"], []).append(b)
    # The killed runner's batch sizes are failed, with the reason; the other target finished.
    killed_target = next(t for t, entries in by_target.items() if any(b["status"] == "failed" for b in entries))
    assert any("SIGKILL" in b["error"] for b in by_target[killed_target] if b["status"] == "failed")
    other = ({"cpu", "cpu-1t"} - {killed_target}).pop()
    assert all(b["status"] == "ok" for b in by_target[other])
    assert (out / "summary.json").is_file()
