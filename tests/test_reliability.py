"""MLflow outage in the middle of a pipeline run, against a real MLflow server on loopback.

* The server stops once the benchmarks have started and comes back (same port, same store)
  within ``registry.retry.window_s``: the run retries, completes, and nothing is lost.
* The server stays down past the window: the run fails with a clear message, nothing is
  registered, the results stay in the output folder; once the server is back, a re-run
  completes and its expensive steps come from Prefect's cache.
* A registration retried under the same registration id removes what the interrupted attempt
  left behind (sqlite store, tiny models).

The pipeline runs as ``edgeport run`` subprocesses against the session's Prefect test server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeport.registry import PENDING_FILE, REGISTRATION_TAG
from edgeport.registry.identity import IDENTITY_TAG
from edgeport.servers import (
    free_port,
    start_mlflow_server,
    stop_process_group,
    wait_healthy,
)
from mlflow import MlflowClient
from tasks.register import register_pipeline
from tests.conftest import REPO, digits_spec_dict, wait_until, write_spec
from tests.test_register import _spec as _tiny_spec
from tests.test_register import _tiny_onnx, _variant

pytestmark = pytest.mark.slow


class MlflowServer:
    """``mlflow server`` on a free loopback port with a sqlite store; stop() / start() keep both."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{root / 'mlflow.db'}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.root / "mlflow.log"
        self.proc = start_mlflow_server(self.store, self.root / "artifacts", "127.0.0.1", self.port, log_path=log)
        wait_healthy(f"{self.url}/health", timeout_s=180, proc=self.proc, log_path=log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc.pid, timeout_s=30)
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def mlflow_server(tmp_path: Path):
    server = MlflowServer(tmp_path / "mlflow-server")
    server.root.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def run_env(prefect_harness, tmp_path: Path) -> dict[str, str]:
    """Environment of the ``edgeport run`` subprocesses: the harness' Prefect API, this test's home."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_HOME"))}
    env.update(
        PREFECT_API_URL=PREFECT_API_URL.value(),
        EDGEPORT_HOME=os.environ["EDGEPORT_HOME"],
        MLFLOW_ENABLE_TELEMETRY="false",
        DO_NOT_TRACK="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def _digits_spec(tmp_path: Path, artifacts: dict, uri: str, window_s: float) -> Path:
    data = digits_spec_dict(artifacts)
    data["registry"]["tracking_uri"] = uri
    data["registry"]["retry"] = {"window_s": window_s, "initial_delay_s": 1, "max_delay_s": 4, "request_timeout_s": 10}
    return write_spec(tmp_path / "spec", data)


def _start_run(spec: Path, out: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgeport.cli", "run", str(spec), "--output", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    def appeared() -> bool:
        if path.exists():
            return True
        if proc.poll() is not None:
            raise AssertionError(f"edgeport run exited ({proc.returncode}) before {path} appeared")
        return False

    wait_until(appeared, timeout_s, interval_s=0.2, message=f"{path} did not appear")


def _retried(log: Path, proc: subprocess.Popen, offset: int) -> bool:
    """Whether the run logged a task retry (Prefect's "Retry <i>/<n> will start ...") past character
    ``offset`` of its log; fails if it exited."""
    if re.search(r"Retry \d+/", log.read_text()[offset:]):
        return True
    if proc.poll() is not None:
        raise AssertionError(f"edgeport run exited ({proc.returncode}) before a retry was logged")
    return False


def _finish(proc: subprocess.Popen, timeout_s: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise


def _assert_registered_completely(uri: str, summary: dict) -> None:
    """Every passing variant is a version of the registered model, the alias names the challenger,
    every variant has its nested run with metrics, and no run is left RUNNING or FAILED."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = summary["registered_model"]
    passing = {v["name"]: v["model_version"] for v in summary["variants"] if v["passed"]}
    assert passing and all(passing.values())
    versions = {str(mv.version): mv for mv in client.search_model_versions(f"name = '{model}'")}
    assert sorted(versions) == sorted(passing.values())
    assert str(client.get_model_version_by_alias(model, "challenger").version) == summary["challenger"]["version"]
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    registration_id = parent.data.tags[REGISTRATION_TAG]
    for mv in versions.values():
        assert mv.tags[REGISTRATION_TAG] == registration_id
        run = client.get_run(mv.run_id)
        assert run.info.status == "FINISHED" and run.data.metrics  # metrics logged
    nested = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["edgeport.variant"] for r in nested) == sorted(v["name"] for v in summary["variants"])
    assert all(r.data.metrics.get("size_bytes") for r in nested)
    runs = client.search_runs([parent.info.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert len(runs) == len(summary["variants"]) + 1  # leftovers of the interrupted attempts were removed
    plots = [f.path for f in client.list_artifacts(parent.info.run_id, "plots")]
    assert plots


def test_outage_within_the_window_completes_and_loses_nothing(mlflow_server, run_env, digits_artifacts, tmp_path):
    spec = _digits_spec(tmp_path, digits_artifacts, mlflow_server.url, window_s=240)
    out, log = tmp_path / "out", tmp_path / "run.log"
    proc = _start_run(spec, out, run_env, log)
    try:
        _wait_for(out / "benchmarks", proc)  # the start-up check passed long ago: stop MLflow now
        mlflow_server.stop()
        _wait_for(out / PENDING_FILE, proc)  # results persisted locally before talking to MLflow
        pending = json.loads((out / PENDING_FILE).read_text())
        assert pending["status"] == "pending" and {v["name"] for v in pending["variants"]} >= {"fp32", "int8-static"}
        logged = len(log.read_text())
        wait_until(lambda: _retried(log, proc, logged), 120, interval_s=0.5, message="no retry logged")  # an attempt failed
        mlflow_server.start()  # same port, same store
        code = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "Retry 1/" in text  # the outage was really seen by the register task
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registration"] == "done"
    assert not (out / PENDING_FILE).exists()
    registration = json.loads((out / "registration.json").read_text())
    assert registration["registration_id"] == pending["registration_id"]
    _assert_registered_completely(mlflow_server.url, summary)


def test_outage_past_the_window_fails_cleanly_and_the_rerun_resumes_from_cache(mlflow_server, run_env, digits_artifacts, tmp_path):
    spec = _digits_spec(tmp_path, digits_artifacts, mlflow_server.url, window_s=8)
    out, log = tmp_path / "out", tmp_path / "run1.log"
    proc = _start_run(spec, out, run_env, log)
    try:
        _wait_for(out / "benchmarks", proc)
        mlflow_server.stop()
        code = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    text = log.read_text()
    assert code == 1, text[-4000:]
    assert "RegistryUnavailable" in text and "retry window" in text and mlflow_server.url in text
    assert "Traceback" not in text.split("error:")[-1]

    # Everything is kept locally, marked pending.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registration"] == "pending" and summary["mlflow_run_id"] is None
    pending = json.loads((out / PENDING_FILE).read_text())
    assert pending["registered_model"] == "digits-cnn" and pending["tracking_uri"] == mlflow_server.url
    for variant in pending["variants"]:
        assert Path(variant["path"]).is_file()
        assert variant["validation"] and variant["benchmarks"]

    mlflow_server.start()
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    assert client.search_registered_models() == []  # nothing half-registered

    log2 = tmp_path / "run2.log"
    proc = _start_run(spec, out, run_env, log2)
    try:
        code = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert code == 0, log2.read_text()[-4000:]
    resumed = json.loads((out / "summary.json").read_text())
    cache = resumed["cache"]
    assert cache["export"] == {"fp32": True}
    for step in ("validate", "quantize", "evaluate", "benchmark"):
        assert cache[step] and all(cache[step].values()), (step, cache)
    assert set(cache["quantize"]) == {v["name"] for v in summary["variants"] if v["kind"] != "fp32"}
    # the cached measurements are the same ones
    assert [v["benchmarks"] for v in resumed["variants"]] == [v["benchmarks"] for v in summary["variants"]]
    registration = json.loads((out / "registration.json").read_text())
    assert registration["registration_id"] == pending["registration_id"]
    assert not (out / PENDING_FILE).exists()
    _assert_registered_completely(mlflow_server.url, resumed)


def test_retried_registration_removes_the_interrupted_attempts_leftovers(tmp_path):
    """Attempt 1 (same registration id) registered versions and left its runs behind, as an
    outage that also defeats the rollback would; attempt 2 deletes them before registering.
    (register_always: the variants are identical, which would otherwise reuse ``earlier``'s version.)"""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = _tiny_onnx(tmp_path / "m.onnx", 1.0)
    spec = _tiny_spec("tiny-retry", tmp_path)
    variants = [_variant("fp32", "fp32", model, True, 1.0)]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    earlier = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out1")
    client.set_registered_model_alias("tiny-retry", "champion", earlier["versions"]["fp32"])  # someone else's alias
    first = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out2", registration_id="rid-1", register_always=True)
    client.set_terminated(first["mlflow_run_id"], "RUNNING")  # as left by an outage:
    client.delete_model_version_tag("tiny-retry", first["versions"]["fp32"], IDENTITY_TAG)  # the tag a completed registration writes last
    second = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out3", registration_id="rid-1", register_always=True)

    versions = {str(mv.version): mv.tags.get(REGISTRATION_TAG) for mv in client.search_model_versions("name = 'tiny-retry'")}
    assert versions == {earlier["versions"]["fp32"]: earlier["registration_id"], second["versions"]["fp32"]: "rid-1"}
    assert first["versions"]["fp32"] not in versions
    assert client.get_run(first["mlflow_run_id"]).info.lifecycle_stage == "deleted"
    assert str(client.get_model_version_by_alias("tiny-retry", "challenger").version) == second["versions"]["fp32"]
    assert str(client.get_model_version_by_alias("tiny-retry", "champion").version) == earlier["versions"]["fp32"]

