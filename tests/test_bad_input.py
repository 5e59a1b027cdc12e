"""Bad input fails early, with an error of the right type whose message names the culprit.

Real torch, ONNX Runtime and sqlite MLflow stores, no mocks. Broken inputs are copies of
the session's digits artifacts (``digits_artifacts``) made in ``tmp_path``.

Most cases call the steps' plain functions. A handful run through the Prefect flow
(``flows.pipeline.pipeline``) to show that the flow raises the same error and registers
nothing. Those flow tests share one sqlite MLflow store per module (creating a store takes
seconds); every one of them fails, so the store must stay empty throughout.

The steps that export (tolerance breach, NaN) share one export cache per module via
``EDGEPORT_HOME``; the cache is content-addressed, so sharing it changes no result,
it only avoids exporting the same checkpoint twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import digits_spec_dict, write_spec
from onnx import numpy_helper
from typer.testing import CliRunner

from edgeport.checkpoint import load_model
from edgeport.errors import (
    CheckpointError,
    DataError,
    ModelFactoryError,
    RegistryUnavailable,
    RuntimeLoadError,
    SpecError,
    ValidationFailed,
)
from edgeport.registry import check_tracking_uri
from edgeport.spec import PipelineSpec, load_spec
from mlflow import MlflowClient
from tasks.export import export_model
from tasks.preflight import preflight
from tasks.validate import validate_onnx

pytestmark = pytest.mark.slow

UNREACHABLE_URI = "http://127.0.0.1:9"  # the discard port: nothing listens there


# ------------------------------------------------------------------------------ helpers & fixtures


class _Payload:
    """A class only this module defines: unpickling it needs this module's code."""

    def __init__(self) -> None:
        self.weights = torch.zeros(3)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a pickle that executes code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _spec_path(tmp_path: Path, artifacts: dict[str, Path], mutate=None, **overrides) -> Path:
    data = digits_spec_dict(artifacts, **overrides)
    if mutate is not None:
        mutate(data)
    return write_spec(tmp_path / "spec", data)


def _spec(tmp_path: Path, artifacts: dict[str, Path], mutate=None, **overrides) -> PipelineSpec:
    return load_spec(_spec_path(tmp_path, artifacts, mutate, **overrides))


def _with_checkpoint(path: Path, *, state_dict_key: str | None = "model_state"):
    def mutate(data: dict) -> None:
        data["model"]["checkpoint"] = str(path)
        data["model"]["state_dict_key"] = state_dict_key

    return mutate


def _with_calibration(path: Path):
    return lambda data: data["calibration"].update(dataset=str(path))


def _real_state(artifacts: dict[str, Path]) -> dict:
    return torch.load(artifacts["checkpoint"], weights_only=True)


def _pixels(artifacts: dict[str, Path], kind: str = "calibration") -> np.ndarray:
    with np.load(artifacts[kind]) as npz:
        return npz["pixels"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the module: shared export cache (EDGEPORT_HOME) and MLflow store."""
    return tmp_path_factory.mktemp("bad-input")


@pytest.fixture
def shared_home(shared: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = shared / "home"
    monkeypatch.setenv("EDGEPORT_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def nan_checkpoint(digits_artifacts: dict[str, Path], shared: Path) -> Path:
    """The real checkpoint with one NaN in the classifier bias (class 3): logit 3 is NaN for every sample."""
    ckpt = _real_state(digits_artifacts)
    ckpt["model_state"]["classifier.bias"][3] = float("nan")
    path = shared / "nan.pt"
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def registry_uri(shared: Path) -> str:
    return f"sqlite:///{shared / 'mlflow.db'}"


def _run_flow(spec_path: Path, out: Path, expected: type[Exception]) -> Exception:
    from flows.pipeline import pipeline

    with pytest.raises(expected) as info:
        pipeline(str(spec_path), output_dir=str(out))
    assert not (out / "summary.json").exists()
    return info.value


def _assert_nothing_registered(uri: str) -> None:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_registered_models() == []
    assert client.search_model_versions() == []


# ------------------------------------------------------------------------------ checkpoint


def test_missing_checkpoint(tmp_path: Path, digits_artifacts) -> None:
    missing = tmp_path / "gone" / "digits_cnn.pt"
    spec = _spec(tmp_path, digits_artifacts, _with_checkpoint(missing))
    with pytest.raises(CheckpointError, match="file not found") as info:
        preflight(spec)
    assert str(missing) in str(info.value)
    assert "model.checkpoint" in str(info.value)
    with pytest.raises(CheckpointError, match="file not found"):  # the export step says the same
        export_model(spec)


@pytest.mark.parametrize("keep", [0.5, 0.05, 0.0], ids=["half", "head", "empty"])
def test_truncated_checkpoint(tmp_path: Path, digits_artifacts, keep: float) -> None:
    raw = digits_artifacts["checkpoint"].read_bytes()
    broken = tmp_path / "truncated.pt"
    broken.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CheckpointError) as info:
        preflight(_spec(tmp_path, digits_artifacts, _with_checkpoint(broken)))
    message = str(info.value)
    assert str(broken) in message
    assert "corrupt" in message
    assert "arbitrary code" not in message  # a damaged file is not a security refusal


def test_garbage_checkpoint_is_corrupt_not_unsafe(tmp_path: Path, digits_artifacts) -> None:
    broken = tmp_path / "garbage.pt"
    broken.write_bytes(b"this is not a torch checkpoint\n" * 20)
    with pytest.raises(CheckpointError) as info:
        preflight(_spec(tmp_path, digits_artifacts, _with_checkpoint(broken)))
    assert str(broken) in str(info.value)
    assert "corrupt" in str(info.value)
    assert "arbitrary code" not in str(info.value)


@pytest.mark.parametrize(
    ("make", "key", "culprit"),
    [
        (lambda tmp: _Net(), None, "_Net"),  # a whole nn.Module, pickled
        (lambda tmp: {"model_state": _Payload()}, "model_state", "_Payload"),
        (lambda tmp: {"model_state": {"w": torch.zeros(1)}, "hook": _RunsCode(tmp / "pwned")}, "model_state", "open"),
    ],
    ids=["full-module", "custom-class", "code-execution"],
)
def test_checkpoint_that_needs_code_is_refused(tmp_path: Path, digits_artifacts, make, key, culprit: str) -> None:
    path = tmp_path / "needs_code.pt"
    torch.save(make(tmp_path), path)
    with pytest.raises(CheckpointError) as info:
        preflight(_spec(tmp_path, digits_artifacts, _with_checkpoint(path, state_dict_key=key)))
    message = str(info.value)
    assert str(path) in message
    assert "refused" in message and "weights_only=True" in message
    assert culprit in message  # the global that would have been imported
    assert not (tmp_path / "pwned").exists()  # nothing was executed


def test_factory_kwargs_that_do_not_fit_the_checkpoint(tmp_path: Path, digits_artifacts) -> None:
    spec = _spec(tmp_path, digits_artifacts, lambda d: d["model"].update(kwargs={"width": 8}))
    with pytest.raises(CheckpointError) as info:
        preflight(spec)
    message = str(info.value)
    assert str(digits_artifacts["checkpoint"]) in message
    assert "'model:DigitsCNN'" in message
    assert "size mismatch for features.0.weight" in message


def test_state_dict_with_a_renamed_key(tmp_path: Path, digits_artifacts) -> None:
    ckpt = _real_state(digits_artifacts)
    ckpt["model_state"]["head.weight"] = ckpt["model_state"].pop("classifier.weight")
    path = tmp_path / "renamed.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        load_model(_spec(tmp_path, digits_artifacts, _with_checkpoint(path)).model)
    message = str(info.value)
    assert str(path) in message
    assert 'Missing key(s) in state_dict: "classifier.weight"' in message
    assert 'Unexpected key(s) in state_dict: "head.weight"' in message


def test_wrong_state_dict_key(tmp_path: Path, digits_artifacts) -> None:
    spec = _spec(tmp_path, digits_artifacts, lambda d: d["model"].update(state_dict_key="state_dict"))
    with pytest.raises(CheckpointError) as info:
        preflight(spec)
    assert "model.state_dict_key 'state_dict'" in str(info.value)
    assert "'model_state'" in str(info.value)  # the keys that are there


# ------------------------------------------------------------------------------ factory


@pytest.mark.parametrize(
    ("factory", "culprit"),
    [("no_such_module_xyz:Thing", "No module named 'no_such_module_xyz'"), ("model:NoSuchNet", "no attribute 'NoSuchNet'")],
    ids=["module", "attribute"],
)
def test_factory_that_does_not_import(tmp_path: Path, digits_artifacts, factory: str, culprit: str) -> None:
    spec = _spec(tmp_path, digits_artifacts, lambda d: d["model"].update(factory=factory))
    with pytest.raises(ModelFactoryError) as info:
        preflight(spec)
    assert f"model.factory {factory!r}" in str(info.value)
    assert culprit in str(info.value)
    assert isinstance(info.value, ImportError)


def test_factory_module_that_raises_on_import(tmp_path: Path, digits_artifacts) -> None:
    (tmp_path / "broken_factory_mod.py").write_text("raise RuntimeError('boom at import')\n")
    spec = _spec(
        tmp_path,
        digits_artifacts,
        lambda d: d["model"].update(factory="broken_factory_mod:Net", search_path=[str(tmp_path)]),
    )
    with pytest.raises(ModelFactoryError) as info:
        preflight(spec)
    assert "'broken_factory_mod:Net'" in str(info.value)
    assert "RuntimeError: boom at import" in str(info.value)
    assert str(tmp_path) in str(info.value)  # where it searched


# ------------------------------------------------------------------------------ inputs / opset


def _synthetic_only(shape: list) -> Callable[[dict], None]:
    """Inputs of ``shape``; no calibration, evaluation or quantization: the steps use synthetic data."""

    def mutate(data: dict) -> None:
        data["inputs"] = [{"name": "pixels", "dtype": "float32", "shape": shape}]
        for key in ("calibration", "evaluation"):
            data.pop(key)
        data["quantization"] = []

    return mutate


@pytest.mark.parametrize("step", [preflight, export_model], ids=["preflight", "export"])
def test_declared_input_shape_does_not_fit_the_model(tmp_path: Path, digits_artifacts, step) -> None:
    spec = _spec(tmp_path, digits_artifacts, _synthetic_only(["batch", 3, 8, 8]))
    with pytest.raises(SpecError) as info:
        step(spec)
    message = str(info.value)
    assert message.startswith("inputs:")
    assert "'pixels': ['batch', 3, 8, 8]" in message
    assert "3 channels" in message  # torch's reason


@pytest.mark.parametrize("step", [preflight, export_model], ids=["preflight", "export"])
def test_opset_the_runtime_cannot_load(tmp_path: Path, digits_artifacts, step) -> None:
    spec = _spec(tmp_path, digits_artifacts, export={"opset": 27})
    with pytest.raises(RuntimeLoadError) as info:
        step(spec)
    assert "export.opset 27" in str(info.value)
    assert not (Path(os.environ["EDGEPORT_HOME"]) / "cache").exists()  # refused before exporting


# ------------------------------------------------------------------------------ data files


def test_calibration_file_missing(tmp_path: Path, digits_artifacts) -> None:
    missing = tmp_path / "no_calibration.npz"
    with pytest.raises(DataError) as info:
        preflight(_spec(tmp_path, digits_artifacts, _with_calibration(missing)))
    assert "calibration.dataset" in str(info.value)
    assert "file not found" in str(info.value) and str(missing) in str(info.value)


def test_calibration_file_not_an_npz(tmp_path: Path, digits_artifacts) -> None:
    path = tmp_path / "calibration.npz"
    shutil.copy(digits_artifacts["checkpoint"], path)  # a zip, but not numpy's
    with pytest.raises(DataError) as info:
        preflight(_spec(tmp_path, digits_artifacts, _with_calibration(path)))
    assert "calibration.dataset" in str(info.value) and str(path) in str(info.value)


def test_calibration_file_with_zero_samples(tmp_path: Path, digits_artifacts) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path, pixels=_pixels(digits_artifacts)[:0])
    with pytest.raises(DataError) as info:
        preflight(_spec(tmp_path, digits_artifacts, _with_calibration(path)))
    assert "calibration.dataset" in str(info.value) and str(path) in str(info.value)
    assert "no samples" in str(info.value)


def test_calibration_file_with_a_wrong_input_name(tmp_path: Path, digits_artifacts) -> None:
    path = tmp_path / "renamed.npz"
    np.savez(path, image=_pixels(digits_artifacts))
    with pytest.raises(DataError) as info:
        preflight(_spec(tmp_path, digits_artifacts, _with_calibration(path)))
    message = str(info.value)
    assert "calibration.dataset" in message and str(path) in message
    assert "no array for input 'pixels'" in message
    assert "['image']" in message  # what the file holds instead


@pytest.mark.parametrize(
    ("array", "culprit"),
    [
        (np.zeros((16, 64), np.float32), "rank 2"),
        (np.zeros((16, 1, 4, 4), np.float32), "axis 2 is 4"),
        (np.zeros((16, 3, 8, 8), np.float32), "axis 1 is 3"),
    ],
    ids=["flat", "small-image", "channels"],
)
def test_calibration_file_with_a_wrong_shape(tmp_path: Path, digits_artifacts, array: np.ndarray, culprit: str) -> None:
    path = tmp_path / "wrong_shape.npz"
    np.savez(path, pixels=array)
    with pytest.raises(DataError) as info:
        preflight(_spec(tmp_path, digits_artifacts, _with_calibration(path)))
    message = str(info.value)
    assert "calibration.dataset" in message and str(path) in message
    assert str(array.shape) in message and culprit in message
    assert "['batch', 1, 8, 8]" in message  # what the spec declares


def test_evaluation_labels_missing(tmp_path: Path, digits_artifacts) -> None:
    path = tmp_path / "unlabelled.npz"
    np.savez(path, pixels=_pixels(digits_artifacts, "eval"))
    with pytest.raises(DataError) as info:
        preflight(_spec(tmp_path, digits_artifacts, lambda d: d["evaluation"].update(dataset=str(path))))
    message = str(info.value)
    assert "evaluation.dataset" in message and str(path) in message
    assert "'labels'" in message and "['pixels']" in message


def test_evaluation_labels_fewer_than_samples(tmp_path: Path, digits_artifacts) -> None:
    with np.load(digits_artifacts["eval"]) as npz:
        pixels, labels = npz["pixels"], npz["labels"]
    path = tmp_path / "short_labels.npz"
    np.savez(path, pixels=pixels, labels=labels[:-5])
    with pytest.raises(DataError) as info:
        preflight(_spec(tmp_path, digits_artifacts, lambda d: d["evaluation"].update(dataset=str(path))))
    assert str(path) in str(info.value)
    assert f"{len(labels) - 5} labels for {len(labels)} samples" in str(info.value)


# ------------------------------------------------------------------------------ validation


def test_tolerance_breach(tmp_path: Path, digits_artifacts, shared_home: Path) -> None:
    """rtol = atol = 0: ORT's float32 kernels are not bit-identical to torch's."""
    spec = _spec(tmp_path, digits_artifacts, validation={"rtol": 0, "atol": 0, "batch_sizes": [1, 7, 32]})
    onnx_path = export_model(spec).onnx_path
    report_path = tmp_path / "validation.json"
    with pytest.raises(ValidationFailed) as info:
        validate_onnx(spec, onnx_path, report_path=report_path)
    message = str(info.value)
    assert onnx_path in message
    assert "output 'logits'" in message and "at batch size" in message
    assert "atol=0.0 + rtol=0.0" in message
    assert "worst at index [" in message and "abs err" in message
    report = info.value.report
    assert report["passed"] is False and report_path.is_file()  # the report is written on failure too
    worst = report["outputs"]["logits"]["worst"]
    assert worst["abs_err"] > 0 and worst["actual"] != worst["expected"]


def test_tampered_onnx_breaches_default_tolerance(tmp_path: Path, digits_artifacts, shared_home: Path) -> None:
    """A deterministic breach: the exported classifier bias shifted by 0.5 (well beyond atol 1e-4)."""
    spec = _spec(tmp_path, digits_artifacts)
    model = onnx.load(export_model(spec).onnx_path)
    bias_values = _real_state(digits_artifacts)["model_state"]["classifier.bias"].numpy()
    init = next(i for i in model.graph.initializer if i.dims == [10] and np.allclose(numpy_helper.to_array(i), bias_values))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.5), init.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, tampered)
    with pytest.raises(ValidationFailed) as info:
        validate_onnx(spec, tampered)
    assert "output 'logits' at batch size 1" in str(info.value)
    assert "abs err 0.5" in str(info.value)
    assert info.value.report["outputs"]["logits"]["max_abs_err"] == pytest.approx(0.5, abs=1e-3)


def test_nan_in_outputs(tmp_path: Path, digits_artifacts, nan_checkpoint: Path, shared_home: Path) -> None:
    spec = _spec(tmp_path, digits_artifacts, _with_checkpoint(nan_checkpoint))
    onnx_path = export_model(spec).onnx_path
    with pytest.raises(ValidationFailed) as info:
        validate_onnx(spec, onnx_path)
    assert "output 'logits'" in str(info.value)
    assert "NaN" in str(info.value)
    assert info.value.report["outputs"]["logits"]["nonfinite"] > 0


# ------------------------------------------------------------------------------ registry


def test_unreachable_tracking_uri() -> None:
    with pytest.raises(RegistryUnavailable) as info:
        check_tracking_uri(UNREACHABLE_URI, attempts=2, backoff_s=0.05, timeout_s=2)
    assert UNREACHABLE_URI in str(info.value)
    assert "after 2 attempt(s)" in str(info.value)
    assert isinstance(info.value, ConnectionError)


# ------------------------------------------------------------------------------ through the flow


def test_flow_missing_checkpoint(prefect_harness, tmp_path: Path, digits_artifacts, registry_uri: str) -> None:
    missing = tmp_path / "gone.pt"

    def mutate(data: dict) -> None:
        _with_checkpoint(missing)(data)
        data["registry"]["tracking_uri"] = registry_uri

    err = _run_flow(_spec_path(tmp_path, digits_artifacts, mutate), tmp_path / "out", CheckpointError)
    assert str(missing) in str(err)
    _assert_nothing_registered(registry_uri)


def test_flow_calibration_with_a_wrong_input_name(prefect_harness, tmp_path: Path, digits_artifacts, registry_uri: str) -> None:
    path = tmp_path / "renamed.npz"
    np.savez(path, image=_pixels(digits_artifacts))

    def mutate(data: dict) -> None:
        _with_calibration(path)(data)
        data["registry"]["tracking_uri"] = registry_uri

    err = _run_flow(_spec_path(tmp_path, digits_artifacts, mutate), tmp_path / "out", DataError)
    assert "calibration.dataset" in str(err) and "no array for input 'pixels'" in str(err)
    assert not (Path(os.environ["EDGEPORT_HOME"]) / "cache").exists()  # preflight failed before the export
    _assert_nothing_registered(registry_uri)


def test_flow_tolerance_breach(prefect_harness, tmp_path: Path, digits_artifacts, registry_uri: str, shared_home: Path) -> None:
    def mutate(data: dict) -> None:
        data["validation"] = {"rtol": 0, "atol": 0}
        data["registry"]["tracking_uri"] = registry_uri

    out = tmp_path / "out"
    err = _run_flow(_spec_path(tmp_path, digits_artifacts, mutate), out, ValidationFailed)
    assert "output 'logits'" in str(err) and "worst at index" in str(err)
    assert not (out / "variants").exists()  # nothing was quantized after the failed gate
    _assert_nothing_registered(registry_uri)


def test_flow_nan_outputs(
    prefect_harness, tmp_path: Path, digits_artifacts, registry_uri: str, nan_checkpoint: Path, shared_home: Path
) -> None:
    def mutate(data: dict) -> None:
        _with_checkpoint(nan_checkpoint)(data)
        data["registry"]["tracking_uri"] = registry_uri

    err = _run_flow(_spec_path(tmp_path, digits_artifacts, mutate), tmp_path / "out", ValidationFailed)
    assert "NaN" in str(err) and "output 'logits'" in str(err)
    _assert_nothing_registered(registry_uri)


def test_flow_unreachable_tracking_uri(prefect_harness, tmp_path: Path, digits_artifacts, registry_uri: str) -> None:
    spec_path = _spec_path(tmp_path, digits_artifacts, lambda d: d["registry"].update(tracking_uri=UNREACHABLE_URI))
    err = _run_flow(spec_path, tmp_path / "out", RegistryUnavailable)
    assert UNREACHABLE_URI in str(err)
    home = Path(os.environ["EDGEPORT_HOME"])
    assert not (home / "mlflow").exists()  # no silent fallback to the local store
    assert not (home / "cache").exists()  # failed before any work
    _assert_nothing_registered(registry_uri)


# ------------------------------------------------------------------------------ CLI


def test_cli_run_with_missing_checkpoint(cli_env, tmp_path: Path, digits_artifacts, registry_uri: str) -> None:
    from edgeport.cli import app

    missing = tmp_path / "gone.pt"

    def mutate(data: dict) -> None:
        _with_checkpoint(missing)(data)
        data["registry"]["tracking_uri"] = registry_uri

    spec_path = _spec_path(tmp_path, digits_artifacts, mutate)
    result = CliRunner().invoke(app, ["run", str(spec_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    assert "CheckpointError" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.output
    assert "PREFECT_HOME" not in os.environ  # the CLI respected the harness' server
    _assert_nothing_registered(registry_uri)


def test_cli_run_user_sees_no_traceback(prefect_harness, tmp_path: Path, digits_artifacts, registry_uri: str) -> None:
    """What a user's terminal shows: the CLI in a real process (CliRunner cannot see Prefect's
    console handler, whose stream was bound when Prefect configured logging)."""
    from prefect.settings import PREFECT_API_URL

    missing = tmp_path / "gone.pt"

    def mutate(data: dict) -> None:
        _with_checkpoint(missing)(data)
        data["registry"]["tracking_uri"] = registry_uri

    spec_path = _spec_path(tmp_path, digits_artifacts, mutate)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "EDGEPORT_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeport.cli", "run", str(spec_path), "--output", str(tmp_path / "out")],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"error: CheckpointError: model.checkpoint: file not found: {missing}" in proc.stderr
    _assert_nothing_registered(registry_uri)
    assert "Traceback" not in proc.stderr + proc.stdout
