"""Warm re-runs (issue 13): a re-run with unchanged inputs skips what it already knows.

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
