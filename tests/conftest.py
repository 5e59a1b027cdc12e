"""Shared fixtures: the digits example's real artifacts, specs pointing at them, Prefect's test harness."""

from __future__ import annotations

import importlib.util
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from edgeport.home import managed_envs_dir

REPO = Path(__file__).resolve().parents[1]

# A test session started in the background of a non-interactive shell (`cmd &`, e.g. a CI wrapper)
# inherits SIGINT *ignored*, and every command the tests start would too: the Ctrl-C tests would
# then test nothing but that. Python's own handler here makes the children start with SIGINT's
# default action again (a caught signal is reset at exec; an ignored one is not).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
#: Managed target environments (`edgeport targets setup openvino`), read before any test
#: points EDGEPORT_HOME at a temporary folder.
REAL_ENVS = managed_envs_dir()
DIGITS = REPO / "examples" / "digits"

#: A minimal spec (as loaded from YAML) with calibration and evaluation sections: the fast spec tests
#: add or change one section; its files need not exist (only the spec is validated).
TINY_SPEC = {
    "name": "tiny",
    "model": {"checkpoint": "m.pt", "factory": "m:f"},
    "inputs": [{"name": "x", "shape": ["batch", 4]}],
    "outputs": ["y"],
    "calibration": {"dataset": "cal.npz"},
    "evaluation": {"dataset": "eval.npz"},
    "registry": {"registered_model": "tiny"},
}

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
# Persisted task results (the export cache's Prefect records) stay out of ~/.prefect.
os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", tempfile.mkdtemp(prefix="edgeport-prefect-results-"))

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.2, message: str | Callable[[], str] = ""
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Calls it at once, then every ``interval_s`` seconds until ``timeout_s`` seconds (monotonic
    clock) have passed, with one last call at the deadline; ``timeout_s=0`` checks once. An
    exception from ``predicate`` propagates (to fail early on a condition that cannot come true).

    Raises:
        AssertionError: still falsy at the deadline; the text is ``message`` (called if callable)
            and the last value.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            raise AssertionError(f"{text or 'condition not met'} within {timeout_s} s (last value: {value!r})")
        time.sleep(min(interval_s, remaining))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own EDGEPORT_HOME (export cache, default stores) and cwd-independent paths.

    EDGEPORT_ENVS is unset too, so managed environments live under that home (none set up);
    tests that need the machine's environments ask for ``real_envs``.
    """
    home = tmp_path / "edgeport-home"
    monkeypatch.setenv("EDGEPORT_HOME", str(home))
    monkeypatch.delenv("EDGEPORT_ENVS", raising=False)
    return home


def openvino_env_ready() -> bool:
    """True when `edgeport targets setup openvino` has created the OpenVINO environment."""
    return (REAL_ENVS / "openvino" / "edgeport-env.json").is_file()


@pytest.fixture
def real_envs(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Use the machine's managed environments (the OpenVINO EP's) despite the per-test EDGEPORT_HOME."""
    monkeypatch.setenv("EDGEPORT_ENVS", str(REAL_ENVS))
    return REAL_ENVS


@pytest.fixture(scope="session")
def digits_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train the digits CNN once per session (real load_digits data): checkpoint, calibration, eval."""
    spec = importlib.util.spec_from_file_location("_digits_train", DIGITS / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def digits_paths(tmp_path: Path) -> dict[str, Path]:
    """Where ``digits_artifacts`` would put its files, without training: for tests that only
    validate or plan a spec (loading a spec does not open the checkpoint or the datasets)."""
    folder = tmp_path / "digits-untrained"
    return {"checkpoint": folder / "digits_cnn.pt", "calibration": folder / "calibration.npz", "eval": folder / "eval.npz"}


def digits_spec_dict(artifacts: dict[str, Path], **overrides) -> dict:
    """The example's pipeline.yaml, repointed at ``artifacts``, with a quick benchmark on the ``cpu`` target."""
    data = yaml.safe_load((DIGITS / "pipeline.yaml").read_text())
    data["model"]["checkpoint"] = str(artifacts["checkpoint"])
    data["model"]["search_path"] = [str(DIGITS)]
    data["calibration"]["dataset"] = str(artifacts["calibration"])
    data["evaluation"]["dataset"] = str(artifacts["eval"])
    data["benchmark"] = {"batch_sizes": [1, 32], "warmup": 5, "repetitions": 60, "time_budget_s": 0.5, "timeout_s": 120}
    data["targets"] = [{"name": "cpu"}]  # the example's other targets: see test_pipeline.py
    # The example's ONNX Runtime variants (its NNCF variant: tests/test_quantize_nncf.py builds NNCF ones).
    data["quantization"] = [v for v in data["quantization"] if v.get("backend", "onnxruntime") == "onnxruntime"]
    for key, value in overrides.items():
        data[key] = value
    return data


def write_spec(folder: Path, data: dict, name: str = "pipeline.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def digits_spec_path(tmp_path: Path, digits_artifacts: dict[str, Path]) -> Path:
    """A digits spec in a tmp folder, with the registry on a sqlite store in that folder."""
    data = digits_spec_dict(digits_artifacts)
    data["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return write_spec(tmp_path / "spec", data)


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness: a temporary database and API server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def cli_env(prefect_harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the CLI in-process against the harness' server without leaking its environment.

    The harness points Prefect at its server through a settings context, not os.environ:
    export its URL so the CLI leaves PREFECT_HOME alone, and let monkeypatch restore the
    variables the CLI sets with os.environ.setdefault.
    """
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    for name in (
        "PREFECT_HOME",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
        "DO_NOT_TRACK",
        "MLFLOW_ENABLE_TELEMETRY",
        "PREFECT_LOGGING_EXTRA_LOGGERS",
    ):
        monkeypatch.delenv(name, raising=False)
