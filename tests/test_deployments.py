"""Deployments, triggers and events (deployments/deploy.py, edgeport deploy | notify-checkpoint,
flows/remote_benchmark.py) against Prefect's test harness: real deployments, real automations,
real events; no worker (tests/test_service.py runs the whole service with workers)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.deploy import (
    CHECKPOINT_EVENT,
    EXAMPLE_SPECS,
    PIPELINE_COMPLETED_EVENT,
    apply_deployments,
    plan_deployments,
)
from edgeport.errors import BenchmarkError, CheckpointError, DeploymentError, SpecError
from tests.conftest import digits_spec_dict, wait_until, write_spec

REPO = Path(__file__).resolve().parents[1]


def _flow_params(module: str, name: str) -> set[str]:
    import importlib

    return set(inspect.signature(getattr(importlib.import_module(module), name).fn).parameters)


def _remote_spec(tmp_path: Path, artifacts: dict, name: str = "digits-remote", pool: str = "edge-pool") -> Path:
    data = digits_spec_dict(artifacts)
    data["name"] = name
    data["targets"] = [{"name": "cpu"}, {"name": "edge", "profile": "cpu-1t", "work_pool": pool}]
    data["registry"] = {"registered_model": name}
    return write_spec(tmp_path / name, data)


def test_plan_of_the_examples_matches_the_flows():
    plans = {p.full_name: p for p in plan_deployments()}
    assert set(plans) == {
        "edgeport-pipeline/digits-cnn-nightly",
        "edgeport-pipeline/digits-cnn-on-checkpoint",
        "edgeport-pipeline/minilm-l6-nightly",
        "edgeport-pipeline/minilm-l6-on-checkpoint",
        "edgeport-promote/digits-cnn",
        "edgeport-promote/minilm-l6",
    }
    nightly = plans["edgeport-pipeline/digits-cnn-nightly"]
    assert nightly.cron == "0 2 * * *" and nightly.trigger is None and nightly.work_pool == "edgeport"
    assert nightly.parameters["spec_path"] == str(EXAMPLE_SPECS[0])

    on_ckpt = plans["edgeport-pipeline/digits-cnn-on-checkpoint"]
    assert on_ckpt.cron is None
    assert on_ckpt.trigger["expect"] == [CHECKPOINT_EVENT]
    assert on_ckpt.trigger["match"] == {"prefect.resource.id": "edgeport.checkpoint.*", "edgeport.spec-name": "digits-cnn"}
    assert on_ckpt.trigger["parameters"]["checkpoint"] == "{{ event.payload.checkpoint }}"

    promote = plans["edgeport-promote/digits-cnn"]
    assert promote.trigger["expect"] == [PIPELINE_COMPLETED_EVENT]
    assert promote.trigger["match"] == {"prefect.resource.id": "edgeport.registered-model.digits-cnn"}

    # Every templated or fixed parameter is one the flow takes; the event names agree with the emitters.
    pipeline_params = _flow_params("flows.pipeline", "pipeline")
    promote_params = _flow_params("flows.promote", "promote_flow")
    for plan in plans.values():
        params = set(plan.parameters) | set((plan.trigger or {}).get("parameters", {}))
        assert params <= (pipeline_params if plan.flow_name == "edgeport-pipeline" else promote_params), plan.full_name
    assert "checkpoint" in pipeline_params
    from flows.pipeline import PIPELINE_COMPLETED_EVENT as emitted

    assert emitted == PIPELINE_COMPLETED_EVENT
    if "rebenchmark" in pipeline_params:
        assert nightly.parameters["rebenchmark"] is True


def test_plan_adds_remote_benchmark_per_pool_and_refuses_name_clashes(tmp_path: Path, digits_paths):
    spec = _remote_spec(tmp_path, digits_paths)
    plans = {p.full_name: p for p in plan_deployments([spec], pool="main-pool", cron="*/5 * * * *")}
    remote = plans["edgeport-remote-benchmark/remote-benchmark-edge-pool"]
    assert remote.work_pool == "edge-pool" and remote.entrypoint == "flows/remote_benchmark.py:remote_benchmark"
    assert plans["edgeport-pipeline/digits-remote-nightly"].cron == "*/5 * * * *"
    assert plans["edgeport-pipeline/digits-remote-nightly"].work_pool == "main-pool"

    twin = write_spec(tmp_path / "twin", {**__import__("yaml").safe_load(spec.read_text())})
    with pytest.raises(DeploymentError, match=r"share the name\(s\) \['digits-remote'\]"):
        plan_deployments([spec, twin])
    with pytest.raises(SpecError, match="spec file not found"):
        plan_deployments([tmp_path / "nope.yaml"])


def test_work_pool_name_is_validated(tmp_path: Path, digits_paths):
    from edgeport.spec import load_spec

    data = digits_spec_dict(digits_paths)
    data["targets"] = [{"name": "cpu", "work_pool": "bad pool!"}]
    with pytest.raises(SpecError, match=r"targets\.0\.work_pool"):
        load_spec(write_spec(tmp_path, data))


def _read_events(name: str, resource_id: str, timeout_s: float = 30.0) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id]))

    def read() -> list:
        with get_client(sync_client=True) as client:
            return client.read_events(filter=flt, limit=50).events

    return wait_until(read, timeout_s, interval_s=0.5, message=f"no event {name!r} about {resource_id!r}")


def _read_flow_runs(deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def _flow_runs(deployment: str, timeout_s: float = 30.0, count: int = 1) -> list:
    """The flow runs of ``deployment`` once there are at least ``count`` (polls up to ``timeout_s``)."""

    def enough() -> list | None:
        runs = _read_flow_runs(deployment)
        return runs if len(runs) >= count else None

    return wait_until(enough, timeout_s, interval_s=0.5, message=f"fewer than {count} flow run(s) of {deployment}")


@pytest.mark.slow
def test_deploy_and_checkpoint_trigger_on_a_real_server(cli_env, tmp_path: Path, digits_artifacts):
    """`edgeport deploy` creates the pools and deployments; `edgeport notify-checkpoint` emits the
    event; the server's automation creates a flow run of `<spec>-on-checkpoint` whose checkpoint
    parameter is the event's (it stays scheduled: no worker here)."""
    from prefect.client.orchestration import get_client

    from edgeport.cli import app

    spec = _remote_spec(tmp_path, digits_artifacts, name="digits-trigger", pool="edge-trigger")
    result = CliRunner().invoke(app, ["deploy", "--spec", str(spec), "--pool", "edgeport-test"])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("edgeport-test").type == "process"
        assert client.read_work_pool("edge-trigger").type == "process"
        dep = client.read_deployment_by_name("edgeport-pipeline/digits-trigger-on-checkpoint")
        assert dep.work_pool_name == "edgeport-test" and dep.entrypoint == "flows/pipeline.py:pipeline"
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        nightly = client.read_deployment_by_name("edgeport-pipeline/digits-trigger-nightly")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        remote = client.read_deployment_by_name("edgeport-remote-benchmark/remote-benchmark-edge-trigger")
        assert remote.work_pool_name == "edge-trigger"
    # Idempotent: a second deploy replaces, it does not duplicate the trigger automations.
    result = CliRunner().invoke(app, ["deploy", "--spec", str(spec), "--pool", "edgeport-test"])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        names = [a.name for a in client.read_automations()]
    assert names.count("edgeport-pipeline/digits-trigger-on-checkpoint: edgeport.checkpoint.created") == 1

    checkpoint = tmp_path / "ckpt" / "new.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(Path(digits_artifacts["checkpoint"]).read_bytes())
    result = CliRunner().invoke(app, ["notify-checkpoint", str(checkpoint), "--spec", str(spec)])
    assert result.exit_code == 0, result.output
    from edgeport.files import file_sha256

    sha = file_sha256(checkpoint)
    (event,) = _read_events(CHECKPOINT_EVENT, f"edgeport.checkpoint.{sha[:12]}")
    assert event.payload == {"checkpoint": str(checkpoint), "spec": str(spec), "sha256": sha, "spec_name": "digits-trigger"}
    assert event.resource["edgeport.spec-name"] == "digits-trigger"

    (run,) = _flow_runs("edgeport-pipeline/digits-trigger-on-checkpoint", timeout_s=60)
    assert run.parameters == {"spec_path": str(spec), "checkpoint": str(checkpoint)}
    assert _read_flow_runs("edgeport-pipeline/digits-trigger-nightly") == [] or all(
        r.state.is_scheduled() for r in _read_flow_runs("edgeport-pipeline/digits-trigger-nightly")
    )


@pytest.mark.slow
def test_notify_checkpoint_refuses_bad_input(cli_env, tmp_path: Path, digits_artifacts):
    from edgeport.cli import app

    spec = write_spec(tmp_path, digits_spec_dict(digits_artifacts))
    result = CliRunner().invoke(app, ["notify-checkpoint", str(tmp_path / "missing.pt"), "--spec", str(spec)])
    assert result.exit_code == 1 and "CheckpointError" in result.output and "missing.pt" in result.output
    result = CliRunner().invoke(app, ["notify-checkpoint", str(digits_artifacts["checkpoint"]), "--spec", str(tmp_path / "no.yaml")])
    assert result.exit_code == 1 and "SpecError" in result.output and "no.yaml" in result.output


@pytest.mark.slow
def test_notify_checkpoint_and_deploy_need_a_prefect_server(tmp_path: Path, digits_artifacts):
    """No PREFECT_API_URL and no `edgeport servers up`: a clear error, not an ephemeral server that
    would drop the event (a real process: the harness' settings must not leak in)."""
    spec = write_spec(tmp_path, digits_spec_dict(digits_artifacts))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["EDGEPORT_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-m", "edgeport.cli", "notify-checkpoint", str(digits_artifacts["checkpoint"]), "--spec", str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DeploymentError" in done.stderr and "PREFECT_API_URL" in done.stderr
    with pytest.raises(DeploymentError, match="no Prefect server"):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: None}):
            apply_deployments(plan_deployments([spec]))


@pytest.mark.slow
def test_remote_benchmark_errors_are_clear(prefect_harness, tmp_path: Path, digits_artifacts):
    """No deployment for the pool: BenchmarkError naming `edgeport deploy`. No worker: the run is
    cancelled after the timeout and the error says to start one."""
    from prefect.client.orchestration import get_client

    from edgeport.spec import load_spec
    from flows.remote_benchmark import run_remote_benchmark

    spec_path = _remote_spec(tmp_path, digits_artifacts, name="digits-nowork", pool="nobody-home")
    target = load_spec(spec_path).targets[1]
    with pytest.raises(BenchmarkError, match=r"no deployment 'edgeport-remote-benchmark/remote-benchmark-nobody-home'.*edgeport deploy"):
        run_remote_benchmark(str(spec_path), target, {"fp32": "/x.onnx"}, None, str(tmp_path / "out"), timeout_s=5)

    plans = [p for p in plan_deployments([spec_path]) if p.flow_name == "edgeport-remote-benchmark"]
    apply_deployments(plans)
    with pytest.raises(BenchmarkError, match=r"did not finish within 3 s.*prefect worker start --pool nobody-home"):
        run_remote_benchmark(str(spec_path), target, {"fp32": "/x.onnx"}, None, str(tmp_path / "out"), timeout_s=3)
    (run,) = _flow_runs("edgeport-remote-benchmark/remote-benchmark-nobody-home", timeout_s=0)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.is_cancelled()


@pytest.mark.slow
def test_pipeline_checkpoint_parameter_is_checked_by_preflight(prefect_harness, tmp_path: Path, digits_artifacts):
    from flows.pipeline import pipeline

    data = digits_spec_dict(digits_artifacts)
    data["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path / "spec", data)
    with pytest.raises(CheckpointError, match="gone.pt"):
        pipeline(str(spec), output_dir=str(tmp_path / "out"), checkpoint=str(tmp_path / "gone.pt"))


@pytest.mark.slow
def test_preflight_leaves_a_remote_targets_environment_to_its_device(tmp_path: Path, digits_artifacts, monkeypatch):
    """A target benchmarked by a work pool's worker is checked on that device, not here: the
    managed OpenVINO environment missing on this host makes a local target unavailable only."""
    from edgeport.spec import PipelineSpec
    from tasks.preflight import preflight

    monkeypatch.setenv("EDGEPORT_ENVS", str(tmp_path / "no-envs"))
    monkeypatch.setenv("EDGEPORT_ENV_SETUP", "never")  # report it missing, do not build it
    local = digits_spec_dict(digits_artifacts)
    local["targets"] = [{"name": "cpu"}, {"name": "openvino-cpu"}]
    report = preflight(PipelineSpec.model_validate(local))
    assert report["targets"]["cpu"]["available"] is True
    ov = report["targets"]["openvino-cpu"]
    assert ov["available"] is False and ov["setup_command"] == "edgeport targets setup openvino"
    remote = digits_spec_dict(digits_artifacts)
    remote["targets"] = [{"name": "cpu"}, {"name": "openvino-cpu", "work_pool": "edge-box"}]
    report = preflight(PipelineSpec.model_validate(remote))
    assert report["checkpoint_sha256"] and list(report["targets"]) == ["cpu"]
