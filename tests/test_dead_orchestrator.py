"""A dead orchestrator is not a failed registration (issue 14): when Prefect's API goes away
after the registration completed, ``edgeport run`` reports the result from ``summary.json`` and
the registry (exit 0 with a warning), not a ``ConnectError``.

The end-to-end test runs ``edgeport run`` in a subprocess against a ``prefect server start`` of
its own on a free loopback port and kills that server once ``summary.json`` says
``registration: done``; the fast tests call the CLI's decision function on files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgeport.cli.pipeline import completed_despite_orchestrator, orchestrator_gone
from edgeport.errors import RegistryError
from edgeport.processes import signal_group
from edgeport.servers import (
    free_port,
    start_prefect_server,
    stop_process_group,
    wait_healthy,
)
from mlflow import MlflowClient
from tasks.register import register_pipeline
from tests.conftest import REPO, digits_spec_dict, wait_until, write_spec
from tests.test_register import _spec as _tiny_spec
from tests.test_register import _tiny_onnx, _variant


def _lost() -> Exception:
    try:
        try:
            raise httpx.ConnectError("All connection attempts failed")
        except httpx.ConnectError as inner:
            raise RuntimeError("could not set the task run's state") from inner
    except RuntimeError as outer:
        return outer


def _summary(out: Path, registration: str, uri: str = "sqlite:///nowhere.db", versions: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    variants = [{"name": name, "model_version": v, "passed": v is not None} for name, v in (versions or {}).items()]
    path = out / "summary.json"
    path.write_text(json.dumps({"registration": registration, "tracking_uri": uri, "registered_model": "tiny-dead", "variants": variants}))
    return path


def test_only_a_lost_connection_counts():
    assert orchestrator_gone(_lost())
    assert orchestrator_gone(ConnectionRefusedError(111, "Connection refused"))
    assert not orchestrator_gone(RuntimeError("a bug"))
    assert not orchestrator_gone(RegistryError("MLflow refused a write"))


def test_a_pending_stale_or_missing_summary_is_an_error(tmp_path):
    started = time.time()
    assert completed_despite_orchestrator(tmp_path / "none", started, _lost()) is None  # no summary.json
    _summary(tmp_path / "pending", "pending")
    assert completed_despite_orchestrator(tmp_path / "pending", started - 5, _lost()) is None
    stale = _summary(tmp_path / "stale", "done")
    os.utime(stale, (started - 60, started - 60))  # an earlier run's summary in the same folder
    assert completed_despite_orchestrator(tmp_path / "stale", started, _lost()) is None
    _summary(tmp_path / "bug", "done")
    assert completed_despite_orchestrator(tmp_path / "bug", started - 5, RuntimeError("a bug")) is None


@pytest.mark.slow
def test_a_done_summary_is_checked_against_the_registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = _tiny_onnx(tmp_path / "m.onnx", 1.0)
    registered = register_pipeline(_tiny_spec("tiny-dead", tmp_path), tmp_path / "p.yaml", [_variant("fp32", "fp32", model, True, 1.0)], uri, tmp_path / "r")
    version = registered["versions"]["fp32"]
    started = time.time() - 5
    _summary(tmp_path / "ok", "done", uri, {"fp32": version, "int8": None})
    assert completed_despite_orchestrator(tmp_path / "ok", started, _lost())["registration"] == "done"
    _summary(tmp_path / "gone", "done", uri, {"fp32": str(int(version) + 7)})  # a version the registry lacks
    assert completed_despite_orchestrator(tmp_path / "gone", started, _lost()) is None


@pytest.mark.slow
def test_killing_the_prefect_server_after_registration_exits_0_with_a_warning(digits_artifacts, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_log = tmp_path / "prefect.log"
    server = start_prefect_server(tmp_path / "prefect-home", port=port, log_path=server_log)
    try:
        wait_healthy(f"{api}/health", timeout_s=240, proc=server, log_path=server_log)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        data = digits_spec_dict(digits_artifacts)
        data["registry"]["tracking_uri"] = uri
        spec = write_spec(tmp_path / "spec", data)
        out = tmp_path / "out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
        env.update(
            PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-client"), PREFECT_CLIENT_MAX_RETRIES="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true", MLFLOW_ENABLE_TELEMETRY="false", PYTHONUNBUFFERED="1",
        )
        log = tmp_path / "run.log"
        cmd = [sys.executable, "-m", "edgeport.cli", "run", str(spec), "--output", str(out)]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def registered() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"edgeport run exited ({proc.returncode}) before registering:\n{log.read_text()[-3000:]}")
                try:
                    return json.loads((out / "summary.json").read_text())["registration"] == "done"
                except (OSError, ValueError, KeyError):
                    return False

            wait_until(registered, 600, interval_s=0.1, message="summary.json never said registration: done")
            signal_group(server.pid, signal.SIGKILL)  # the orchestrator dies; the work is done
            server.wait(timeout=30)
            rc = proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                stop_process_group(proc.pid, timeout_s=10)
    finally:
        if server.poll() is None:
            stop_process_group(server.pid, timeout_s=10)
            server.wait(timeout=30)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "warning" in text and "Prefect's API went away after the registration completed" in text, text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registration"] == "done" and summary["challenger"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    passing = sorted(v["model_version"] for v in summary["variants"] if v["passed"])
    assert sorted(str(mv.version) for mv in client.search_model_versions("name = 'digits-cnn'")) == passing
    assert str(client.get_model_version_by_alias("digits-cnn", "challenger").version) == summary["challenger"]["version"]
