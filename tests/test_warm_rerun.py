"""Warm re-runs (issue 13): a re-run with unchanged inputs skips what it already knows.

Two identical ``edgeport run`` of the digits example leave as many model versions as passing
variants (the second run's MLflow run links to them); ``--register-always`` registers anew.
The torch checks of :func:`edgeport.checks.check_inputs` (exporter opset range, forward pass) are
remembered once passed: the second check of the same spec does not import torch; a change to
what they depend on runs them again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeport.registry.identity import IDENTITY_TAG, REUSED_VERSION_TAG
from mlflow import MlflowClient
from tests.conftest import REPO, digits_spec_dict, write_spec

pytestmark = pytest.mark.slow

_CHECK = (
    "import sys; from edgeport.checks import check_inputs; from edgeport.spec import load_spec; "
    "report = check_inputs(load_spec(sys.argv[1])); "
    "print('torch' in sys.modules, report.num_classes)"
)


def _check(spec: Path, home: Path) -> tuple[bool, int]:
    env = {**os.environ, "EDGEPORT_HOME": str(home), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _CHECK, str(spec)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported, classes = done.stdout.split()
    return imported == "True", int(classes)


def test_second_check_of_unchanged_inputs_does_not_import_torch(digits_artifacts, tmp_path):
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "spec", digits_spec_dict(digits_artifacts))
    assert _check(spec, home) == (True, 10)  # the first check loads the model
    memo = list((home / "cache" / "checks").glob("*.json"))
    assert len(memo) == 1 and json.loads(memo[0].read_text()) == {"first_output_shape": [2, 10]}
    assert _check(spec, home) == (False, 10)  # remembered: torch not imported, the label check still ran
    changed = digits_spec_dict(digits_artifacts)
    changed["export"]["exporter"] = "legacy"  # what the torch checks depend on: they run again
    assert _check(write_spec(tmp_path / "changed", changed), home)[0] is True


def test_identical_runs_reuse_versions_and_register_always_adds_new_ones(cli_env, digits_spec_path, tmp_path):
    from edgeport.cli import app

    out = tmp_path / "out"

    def run(*extra: str) -> tuple[str, dict]:
        result = CliRunner().invoke(app, ["run", str(digits_spec_path), "--output", str(out), *extra])
        assert result.exit_code == 0, result.output
        return result.output, json.loads((out / "summary.json").read_text())

    (_, first), (second_output, second) = run(), run()
    uri = first["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    passing = {v["name"]: v["model_version"] for v in first["variants"] if v["passed"]}
    assert len(passing) >= 2 and all(passing.values())
    assert {v["name"]: v["model_version"] for v in second["variants"] if v["passed"]} == passing
    assert all(v.get("reused") is True for v in second["variants"] if v["passed"])
    assert "reused (no new version)" in second_output
    # after two identical runs: exactly as many versions as passing variants, each marked complete
    after_two = client.search_model_versions("name = 'digits-cnn'")
    assert sorted(str(mv.version) for mv in after_two) == sorted(passing.values())
    assert all(mv.tags.get(IDENTITY_TAG) for mv in after_two)
    # the second run's MLflow runs link to the reused versions
    nested = client.search_runs([second["mlflow_experiment_id"]], f"tags.`mlflow.parentRunId` = '{second['mlflow_run_id']}'")
    links = {r.data.tags["edgeport.variant"]: r.data.tags.get(REUSED_VERSION_TAG) for r in nested}
    assert {name: links[name] for name in passing} == passing
    assert str(client.get_model_version_by_alias("digits-cnn", "challenger").version) == second["challenger"]["version"]
    # --register-always: new versions, nothing reused
    _, third = run("--register-always")
    renewed = {v["name"]: v["model_version"] for v in third["variants"] if v["passed"]}
    assert not set(renewed.values()) & set(passing.values()) and not any(v.get("reused") for v in third["variants"])
    assert len(client.search_model_versions("name = 'digits-cnn'")) == 2 * len(passing)
