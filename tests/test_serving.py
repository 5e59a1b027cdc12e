"""Serving the champion with MLflow's own tooling (README, "Serve a registered model").

Runs the digits pipeline, points ``champion`` at the challenger's model version, starts
``mlflow models serve -m models:/digits-cnn@champion --env-manager local`` on 127.0.0.1 (a
free port) against the run's sqlite store, posts evaluation samples to ``/invocations``, and
checks the served logits equal ONNX Runtime's on the registered ``model.onnx``; then stops
the server's process group and checks it is gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import mlflow
from edgeport.processes import signal_group
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

MODEL = "digits-cnn"
#: Seconds allowed for `mlflow models serve` to answer /ping (uvicorn start-up on 2 busy cores).
READY_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer /ping within {READY_TIMEOUT_S:g} s:\n{log.read_text()[-3000:]}")


def test_champion_served_by_mlflow_matches_onnx_runtime(prefect_harness, digits_spec_path: Path, digits_artifacts, tmp_path: Path):
    from flows.pipeline import pipeline

    summary = pipeline(str(digits_spec_path), output_dir=str(tmp_path / "out"))
    uri = summary["tracking_uri"]
    version = summary["challenger"]["version"]
    client = MlflowClient(uri)
    client.set_registered_model_alias(MODEL, "champion", version)  # what `edgeport promote` does on acceptance

    # The registered file itself, as the server will load it.
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path / "champion")))
    finally:
        mlflow.set_tracking_uri(None)
    session = ort.InferenceSession(str(local / "model.onnx"), providers=["CPUExecutionProvider"])
    with np.load(digits_artifacts["eval"]) as data:
        pixels = data["pixels"][:16].astype(np.float32)
    (expected,) = session.run(["logits"], {"pixels": pixels})

    port = _free_port()
    log = tmp_path / "serve.log"
    # mlflow starts `uvicorn` from PATH: the venv's bin first, as an activated venv has it.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(proc, url, log)
        body = json.dumps({"inputs": {"pixels": pixels.tolist()}}).encode()
        request = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    served = np.asarray(answer["predictions"]["logits"], dtype=np.float32)
    assert served.shape == expected.shape == (16, 10)
    assert np.allclose(served, expected, rtol=1e-5, atol=1e-6)
    assert (served.argmax(1) == expected.argmax(1)).all()

    deadline = time.monotonic() + 15
    while _group_alive(proc.pid) and time.monotonic() < deadline:  # workers exit after their parent
        time.sleep(0.2)
    assert proc.returncode is not None and not _group_alive(proc.pid)
    with pytest.raises(OSError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
