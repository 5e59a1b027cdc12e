"""edgeport as a service, end to end, on loopback only (issue 6 acceptance):

servers up -> ``edgeport deploy`` -> process workers (``prefect worker start``) for the main pool
and for a "remote" target's pool -> ``edgeport notify-checkpoint`` -> the triggered pipeline run
completes on the worker (its remote target benchmarked by the other pool's worker) -> versions in
the MLflow server's registry -> the promotion deployment (triggered by ``edgeport.pipeline.completed``)
sets ``champion`` -> a 3x slower candidate, announced the same way, is rejected by the gate ->
a faster one is promoted with ``edgeport promote`` -> ``edgeport rollback`` -> servers down, no
process left.

Everything is real: the servers of :mod:`edgeport.servers`, Prefect's automations and workers,
the CLI in subprocesses, MLflow over HTTP.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from edgeport.servers import (
    free_port,
    process_alive,
    process_tree,
    servers_down,
    servers_up,
    stop_process_group,
)
from edgeport.spec import load_spec
from mlflow import MlflowClient
from tests.conftest import digits_spec_dict, wait_until, write_spec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODEL = "digits-service"
POOL = "edgeport"  # the default of `edgeport deploy`
REMOTE_POOL = "edge-device"
#: Seconds the triggered pipeline run may take, queueing included (~1-2 min here when idle).
PIPELINE_TIMEOUT_S = 420.0
PROMOTE_TIMEOUT_S = 180.0


def _edgeport(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeport.cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def _start_worker(pool: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``prefect worker start --pool POOL`` in its own process group (killed at teardown)."""
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
            env=env,
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Service:
    """The running servers, workers and helpers to wait on their flow runs."""

    def __init__(self, state, env: dict[str, str], logs: Path) -> None:
        self.state, self.env, self.logs = state, env, logs
        self.workers: list[subprocess.Popen] = []

    def settings(self):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.state.prefect_api_url})

    def log_tails(self) -> str:
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)

    def flow_runs(self, deployment: str) -> list:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
        from prefect.client.schemas.sorting import FlowRunSort

        with self.settings(), get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(deployment)
            return client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])), sort=FlowRunSort.START_TIME_ASC
            )

    def wait_final(self, deployment: str, count: int, timeout_s: float) -> list:
        """The first ``count`` flow runs of ``deployment`` once all are in a final state (fails at
        once when a run ends other than completed, and after ``timeout_s``)."""
        runs: list = []

        def report() -> str:
            states = [(r.name, r.state.name if r.state else None, r.state.message if r.state else None) for r in runs]
            return f"{deployment}: flow runs {states} (want {count} completed)\n{self.log_tails()}"

        def final() -> list | None:
            runs[:] = self.flow_runs(deployment)
            if len(runs) >= count and all(r.state and r.state.is_final() for r in runs[:count]):
                return runs[:count]
            if any(r.state and r.state.is_final() and not r.state.is_completed() for r in runs):
                pytest.fail(report())
            return None

        return wait_until(final, timeout_s, interval_s=2, message=report)

    def emit(self, event) -> None:
        from edgeport.cli.service import emit_confirmed

        with self.settings():
            asyncio.run(emit_confirmed(event))


@pytest.fixture
def service(tmp_path: Path, _isolated_home: Path):
    """Servers up (free loopback ports) in this test's EDGEPORT_HOME; at teardown every worker,
    every flow-run process and both servers are stopped, and none is left in /proc."""
    state = servers_up(mlflow_port=free_port(), prefect_port=free_port(), timeout_s=180)
    env = {
        **os.environ,
        "EDGEPORT_HOME": str(_isolated_home),
        "PREFECT_API_URL": state.prefect_api_url,
        "MLFLOW_TRACKING_URI": state.mlflow_url,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
    }
    env.pop("PREFECT_HOME", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    svc = Service(state, env, logs)
    pids: set[int] = set()
    try:
        yield svc
    finally:
        for w in svc.workers:
            pids |= process_tree(w.pid)
        pids |= process_tree(state.mlflow_pid) | process_tree(state.prefect_pid)
        for w in svc.workers:
            stop_process_group(w.pid, timeout_s=20)
            w.wait(timeout=10)
        servers_down()
    left = sorted(p for p in pids if process_alive(p))
    assert not left, f"processes left after teardown: {left}"


def test_service_end_to_end(service: Service, digits_artifacts, tmp_path: Path):
    from prefect.events import Event

    from deployments.deploy import (
        PIPELINE_COMPLETED_EVENT,
        registered_model_resource_id,
    )
    from tasks.register import register_pipeline

    # A quick digits spec: fp32 + int8-static; target `cpu` here, target `edge` on the remote pool.
    data = digits_spec_dict(digits_artifacts)
    data["name"] = MODEL
    data["quantization"] = [q for q in data["quantization"] if q["name"] == "int8-static"]
    data["benchmark"]["batch_sizes"] = [1]
    data["targets"] = [{"name": "cpu"}, {"name": "edge", "profile": "cpu-1t", "work_pool": REMOTE_POOL}]
    data["registry"] = {"experiment": "service", "registered_model": MODEL}  # MLflow: the servers' (discovered)
    spec_path = write_spec(tmp_path / "spec", data)

    # deploy: pools created, deployments applied
    done = _edgeport("deploy", "--spec", str(spec_path), env=service.env)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (
        f"edgeport-pipeline/{MODEL}-nightly",
        f"edgeport-pipeline/{MODEL}-on-checkpoint",
        f"edgeport-promote/{MODEL}",
        f"edgeport-remote-benchmark/remote-benchmark-{REMOTE_POOL}",
    ):
        assert name in done.stdout, done.stdout
    assert service.flow_runs(f"edgeport-pipeline/{MODEL}-on-checkpoint") == []

    service.workers.append(_start_worker(POOL, service.env, service.logs / "worker-main.log"))
    service.workers.append(_start_worker(REMOTE_POOL, service.env, service.logs / "worker-remote.log"))

    # A training job saved a new checkpoint somewhere else and announces it.
    checkpoint = tmp_path / "training" / "epoch-12.pt"
    checkpoint.parent.mkdir()
    shutil.copy(digits_artifacts["checkpoint"], checkpoint)
    done = _edgeport("notify-checkpoint", str(checkpoint), "--spec", str(spec_path), env=service.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "edgeport.checkpoint.created" in done.stdout

    # The triggered pipeline run completes on the worker, on the event's checkpoint.
    (run,) = service.wait_final(f"edgeport-pipeline/{MODEL}-on-checkpoint", 1, PIPELINE_TIMEOUT_S)
    assert run.state.is_completed()
    assert run.parameters["checkpoint"] == str(checkpoint)
    summary = json.loads((Path(service.env["EDGEPORT_HOME"]) / "outputs" / MODEL / "summary.json").read_text())
    fp32 = next(v for v in summary["variants"] if v["name"] == "fp32")
    meta = {p.key: p.value for p in onnx.load(fp32["path"], load_external_data=False).metadata_props}
    assert meta["edgeport.checkpoint"] == str(checkpoint)
    assert summary["tracking_uri"] == service.state.mlflow_url

    # The remote target was benchmarked by the other pool's worker, inside this pipeline run.
    (remote,) = service.wait_final(f"edgeport-remote-benchmark/remote-benchmark-{REMOTE_POOL}", 1, 60)
    assert remote.state.is_completed() and remote.parameters["target_name"] == "edge"
    edge = [b for v in summary["variants"] for b in v["benchmarks"] if b["target"] == "edge"]
    assert len(edge) == 2 and all(b["status"] == "ok" and b["p50_ms"] > 0 for b in edge)

    # Versions in the MLflow server's registry; the challenger alias on the fastest.
    client = MlflowClient(tracking_uri=service.state.mlflow_url, registry_uri=service.state.mlflow_url)
    versions = {mv.version for mv in client.search_model_versions(f"name='{MODEL}'")}
    assert versions == {str(v["model_version"]) for v in summary["variants"] if v["model_version"]} != set()
    challenger = str(summary["challenger"]["version"])
    assert client.get_registered_model(MODEL).aliases["challenger"] == challenger

    # edgeport.pipeline.completed -> promotion deployment -> champion (first one: no gate on p50).
    (promo,) = service.wait_final(f"edgeport-promote/{MODEL}", 1, PROMOTE_TIMEOUT_S)
    assert promo.parameters["version"] == challenger
    aliases = client.get_registered_model(MODEL).aliases
    assert aliases["champion"] == challenger and "previous-champion" not in aliases

    # A second, 3x slower candidate, announced like a pipeline run does: rejected, nothing moves.
    spec = load_spec(spec_path)
    base = next(v for v in summary["variants"] if str(v["model_version"]) == challenger)

    def candidate(name: str, scale: float) -> str:
        record = copy.deepcopy(base)
        record["name"] = name
        for entry in record["benchmarks"]:
            for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
                if entry.get(key) is not None:
                    entry[key] *= scale
        result = register_pipeline(spec, spec_path, [record], service.state.mlflow_url, tmp_path / name)
        return str(result["versions"][name])

    slow = candidate("slow", 3.0)
    service.emit(
        Event(
            event=PIPELINE_COMPLETED_EVENT,
            resource={"prefect.resource.id": registered_model_resource_id(MODEL)},
            payload={
                "registered_model": MODEL,
                "version": slow,
                "tracking_uri": service.state.mlflow_url,
                "spec_path": str(spec_path),
            },
        )
    )
    runs = service.wait_final(f"edgeport-promote/{MODEL}", 2, PROMOTE_TIMEOUT_S)
    assert runs[1].parameters["version"] == slow
    assert client.get_registered_model(MODEL).aliases["champion"] == challenger
    tags = client.get_model_version(MODEL, slow).tags
    assert tags["edgeport.promotion.decision"] == "rejected", tags

    # A faster candidate through `edgeport promote`, then `edgeport rollback`.
    fast = candidate("fast", 0.5)
    done = _edgeport("promote", MODEL, "--version", fast, "--spec", str(spec_path), env=service.env)
    assert done.returncode == 0, done.stdout + done.stderr
    aliases = client.get_registered_model(MODEL).aliases
    assert (aliases["champion"], aliases["previous-champion"]) == (fast, challenger)
    done = _edgeport("rollback", MODEL, env=service.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert client.get_registered_model(MODEL).aliases["champion"] == challenger
