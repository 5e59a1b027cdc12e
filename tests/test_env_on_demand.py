"""Managed environments on demand, end to end: a target whose environment is missing (and
not created: ``edgeport run --no-env-setup``) or whose setup fails is recorded ``unavailable``,
with the command that sets it up, while every other target runs and a challenger is registered.

Both runs use an empty ``EDGEPORT_ENVS``. The failed setup is real: pip is configured (through
its own environment variables, as on an offline machine) with no index and an empty wheel
folder, so ``pip install onnxruntime-openvino`` fails in the freshly created venv.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import digits_spec_dict, write_spec
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

TARGETS = [{"name": "cpu"}, {"name": "openvino-cpu"}]


def _spec(tmp_path: Path, digits_artifacts) -> Path:
    data = digits_spec_dict(digits_artifacts, targets=TARGETS)
    data["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return write_spec(tmp_path / "spec", data)


def _by_target(summary: dict, target: str) -> list[dict]:
    return [b for v in summary["variants"] for b in v["benchmarks"] if b["target"] == target]


def test_no_env_setup_records_the_target_unavailable_and_runs_the_others(
    cli_env, tmp_path: Path, digits_artifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeport.cli import app

    envs = tmp_path / "envs"
    envs.mkdir()
    monkeypatch.setenv("EDGEPORT_ENVS", str(envs))
    monkeypatch.delenv("EDGEPORT_ENV_SETUP", raising=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(_spec(tmp_path, digits_artifacts)), "--output", str(out), "--no-env-setup"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["challenger"] is not None and summary["challenger"]["version"]
    cpu, ov = _by_target(summary, "cpu"), _by_target(summary, "openvino-cpu")
    assert cpu and all(b["status"] == "ok" for b in cpu)
    assert len(ov) == 2 * len([v for v in summary["variants"] if v["validation"]["passed"]])  # batch sizes 1, 32
    for b in ov:
        assert b["status"] == "unavailable" and b["p50_ms"] is None and b["providers_bound"] == []
        assert b["setup_command"] == "edgeport targets setup openvino"
        assert "`edgeport targets setup openvino`" in b["error"] and "--no-env-setup" not in b["error"]
    assert list(envs.iterdir()) == []  # nothing was created
    assert "EDGEPORT_ENV_SETUP" not in os.environ  # the CLI restored the caller's setting


def test_failed_setup_is_an_unavailable_target_not_a_failed_run(
    prefect_harness, tmp_path: Path, digits_artifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline

    envs = tmp_path / "envs"
    monkeypatch.setenv("EDGEPORT_ENVS", str(envs))
    monkeypatch.setenv("EDGEPORT_ENV_SETUP", "auto")
    # An offline machine: pip may use neither an index nor a wheel folder that has the package.
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")

    summary = pipeline(str(_spec(tmp_path, digits_artifacts)), output_dir=str(tmp_path / "out"))
    assert summary["challenger"] is not None
    assert all(b["status"] == "ok" for b in _by_target(summary, "cpu"))
    ov = _by_target(summary, "openvino-cpu")
    assert ov and all(b["status"] == "unavailable" for b in ov)
    for b in ov:
        assert b["setup_command"] == "edgeport targets setup openvino"
        assert "failed" in b["error"] and "onnxruntime-openvino" in b["error"]  # pip's own message, kept
    assert not (envs / "openvino").exists()  # no half-built environment left
    record = json.loads((envs / ".openvino.setup-error.json").read_text())
    assert record["setup_s"] > 0 and "pip install failed" in record["error"]
