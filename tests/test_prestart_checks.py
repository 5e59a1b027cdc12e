"""Checks before anything starts (issue 14, cases 3-11): spec, files and data are refused in
seconds, naming the field, file and value, before Prefect or MLflow is touched.

The pure checks (:func:`edgeport.checks.check_inputs` and the spec loader) run on the session's
real digits artifacts; the CLI tests (marked slow) run ``python -m edgeport.cli run`` in a
subprocess and check it returns quickly, exit 1, the message, and that no MLflow store or
Prefect home was created under ``EDGEPORT_HOME``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import digits_spec_dict, write_spec
from typer.testing import CliRunner

from edgeport.checks import check_inputs, check_output_dir, min_evaluation_samples
from edgeport.cli import app, why_nothing_passed
from edgeport.errors import CheckpointError, DataError, OptionError, SpecError
from edgeport.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def _spec_path(tmp_path: Path, artifacts: dict[str, Path], mutate=None) -> Path:
    data = digits_spec_dict(artifacts)
    if mutate is not None:
        mutate(data)
    return write_spec(tmp_path / "spec", data)


def _eval_arrays(artifacts: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(artifacts["eval"]) as npz:
        return npz["pixels"], npz["labels"]


def _labels_plus_100(tmp_path: Path, artifacts: dict[str, Path]):
    pixels, labels = _eval_arrays(artifacts)
    path = tmp_path / "labels-plus-100.npz"
    np.savez(path, pixels=pixels, labels=labels + 100)
    return path, lambda d: d["evaluation"].update(dataset=str(path))


def _nan_calibration(tmp_path: Path, artifacts: dict[str, Path]):
    with np.load(artifacts["calibration"]) as npz:
        pixels = npz["pixels"].copy()
    pixels[3, 0, 2, 2] = np.nan
    pixels[7, 0, 1, 1] = np.nan
    path = tmp_path / "nan-calibration.npz"
    np.savez(path, pixels=pixels)
    return path, lambda d: d["calibration"].update(dataset=str(path))


class _RunsShell:
    """Unpickling this runs ``os.system("touch <marker>")`` (``posix.system`` on Linux)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------ case 3: label range


def test_labels_outside_the_model_classes(tmp_path: Path, digits_artifacts) -> None:
    path, mutate = _labels_plus_100(tmp_path, digits_artifacts)
    with pytest.raises(DataError) as info:
        check_inputs(load_spec(_spec_path(tmp_path, digits_artifacts, mutate)))
    message = str(info.value)
    assert message.startswith("evaluation.dataset:") and str(path) in message
    assert "540 of 540 labels outside the model's 10 classes" in message
    assert "100..109" in message


def test_good_inputs_report_counts_and_classes(tmp_path: Path, digits_artifacts) -> None:
    report = check_inputs(load_spec(_spec_path(tmp_path, digits_artifacts)))
    assert report.num_classes == 10
    assert report.evaluation_samples == 540 and report.calibration_samples == 512


# ------------------------------------------------------------------------------ case 4: sample count


@pytest.mark.parametrize(("max_drop", "need"), [(0.005, 200), (0.01, 100), (0.02, 50), (0.3, 4), (0.0, 1)])
def test_min_evaluation_samples(max_drop: float, need: int) -> None:
    assert min_evaluation_samples(max_drop) == need


def test_one_sample_cannot_resolve_max_drop(tmp_path: Path, digits_artifacts) -> None:
    pixels, labels = _eval_arrays(digits_artifacts)
    path = tmp_path / "one.npz"
    np.savez(path, pixels=pixels[:1], labels=labels[:1])
    with pytest.raises(DataError) as info:
        check_inputs(load_spec(_spec_path(tmp_path, digits_artifacts, lambda d: d["evaluation"].update(dataset=str(path)))))
    message = str(info.value)
    assert message.startswith("evaluation.max_drop 0.005:") and str(path) in message
    assert "1 sample(s)" in message and "at least 200 samples" in message


def test_max_samples_counts_not_the_file(tmp_path: Path, digits_artifacts) -> None:
    spec = load_spec(_spec_path(tmp_path, digits_artifacts, lambda d: d["evaluation"].update(max_samples=150)))
    with pytest.raises(DataError, match="has 150 sample"):
        check_inputs(spec)


# ------------------------------------------------------------------------------ case 5: opset


def test_opset_the_dynamo_exporter_cannot_write(tmp_path: Path, digits_artifacts) -> None:
    spec = load_spec(_spec_path(tmp_path, digits_artifacts, lambda d: d["export"].update(opset=7)))
    with pytest.raises(SpecError) as info:
        check_inputs(spec)
    message = str(info.value)
    assert message.startswith("export.opset 7:") and "dynamo" in message
    assert "dynamo >= 18" in message and "legacy 7-20" in message
    assert "export.exporter: legacy" in message


@pytest.mark.parametrize("exporter", ["legacy", "auto"])
def test_opset_7_is_accepted_where_an_exporter_writes_it(tmp_path: Path, digits_artifacts, exporter: str) -> None:
    spec = load_spec(_spec_path(tmp_path, digits_artifacts, lambda d: d["export"].update(opset=7, exporter=exporter)))
    assert check_inputs(spec).num_classes == 10


# ------------------------------------------------------------------------------ case 6: target names


def test_unknown_target_name_is_a_spec_error_with_a_suggestion(tmp_path: Path, digits_artifacts) -> None:
    path = _spec_path(tmp_path, digits_artifacts, lambda d: d.update(targets=[{"name": "tpu-v9"}]))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "targets.0.name: name 'tpu-v9' is no built-in profile" in message
    assert "did you mean 'cpu-1t'?" in message and "providers" in message


def test_custom_target_with_providers_is_accepted(tmp_path: Path, digits_artifacts) -> None:
    path = _spec_path(tmp_path, digits_artifacts, lambda d: d.update(targets=[{"name": "tpu-v9", "providers": ["CPUExecutionProvider"]}]))
    assert load_spec(path).targets[0].providers == ["CPUExecutionProvider"]


# ------------------------------------------------------------------------------ case 7: non-finite data


def test_nan_in_calibration_data(tmp_path: Path, digits_artifacts) -> None:
    path, mutate = _nan_calibration(tmp_path, digits_artifacts)
    with pytest.raises(DataError) as info:
        check_inputs(load_spec(_spec_path(tmp_path, digits_artifacts, mutate)))
    message = str(info.value)
    assert message.startswith("calibration.dataset:") and f"{path}['pixels']" in message
    assert "2 NaN and 0 infinite" in message and "in 2 of 512 samples" in message


def test_inf_in_evaluation_data(tmp_path: Path, digits_artifacts) -> None:
    pixels, labels = _eval_arrays(digits_artifacts)
    pixels = pixels.copy()
    pixels[0, 0, 0, 0] = np.inf
    path = tmp_path / "inf-eval.npz"
    np.savez(path, pixels=pixels, labels=labels)
    with pytest.raises(DataError) as info:
        check_inputs(load_spec(_spec_path(tmp_path, digits_artifacts, lambda d: d["evaluation"].update(dataset=str(path)))))
    assert info.value.args[0].startswith("evaluation.dataset:") and "0 NaN and 1 infinite" in str(info.value)


# ------------------------------------------------------------------------------ case 8: code in a pickle


def test_pickle_that_runs_a_shell_command_is_refused_naming_the_global(tmp_path: Path, digits_artifacts) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "needs_code.pt"
    torch.save({"model_state": {"w": torch.zeros(1)}, "hook": _RunsShell(marker)}, path)
    spec = load_spec(_spec_path(tmp_path, digits_artifacts, lambda d: d["model"].update(checkpoint=str(path))))
    with pytest.raises(CheckpointError) as info:
        check_inputs(spec)
    assert f"model.checkpoint {path}: refused: the checkpoint needs code to unpickle (posix.system)" in str(info.value)
    assert not marker.exists()  # nothing was executed


def test_plain_pickle_that_runs_code_is_refused_too(tmp_path: Path, digits_artifacts) -> None:
    """A plain protocol-4 pickle: torch 2.13 only says "Unsupported operand 149"; the opcodes name the global."""
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_RunsShell(marker), protocol=4))
    spec = load_spec(_spec_path(tmp_path, digits_artifacts, lambda d: d["model"].update(checkpoint=str(path), state_dict_key=None)))
    with pytest.raises(CheckpointError, match=r"needs code to unpickle \(posix\.system\)"):
        check_inputs(spec)
    assert not marker.exists()


# ------------------------------------------------------------------------------ case 9: --output


def test_output_that_is_an_existing_file(tmp_path: Path) -> None:
    existing = tmp_path / "summary.txt"
    existing.write_text("x")
    with pytest.raises(OptionError, match=rf"--output {existing}: is an existing file"):
        check_output_dir(existing)
    with pytest.raises(OptionError, match="is a file, so the folder cannot be created"):
        check_output_dir(existing / "out")
    check_output_dir(tmp_path / "new" / "out")  # created later: fine


# ------------------------------------------------------------------------------ case 10: validate-spec


def test_validate_spec_runs_the_file_checks(tmp_path: Path, digits_artifacts) -> None:
    missing = tmp_path / "gone.pt"
    path = _spec_path(tmp_path, digits_artifacts, lambda d: d["model"].update(checkpoint=str(missing)))
    result = CliRunner().invoke(app, ["validate-spec", str(path)])
    assert result.exit_code == 1
    assert f"CheckpointError: model.checkpoint: file not found: {missing}" in result.stderr
    assert "valid:" not in result.stderr


def test_validate_spec_runs_the_data_checks(tmp_path: Path, digits_artifacts) -> None:
    path, mutate = _labels_plus_100(tmp_path, digits_artifacts)
    result = CliRunner().invoke(app, ["validate-spec", str(_spec_path(tmp_path, digits_artifacts, mutate))])
    assert result.exit_code == 1
    assert "evaluation.dataset" in result.stderr and "outside the model's 10 classes" in result.stderr


# ------------------------------------------------------------------------------ case 11: smaller


def test_spec_path_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a folder, not a spec file"):
        load_spec(tmp_path)


def test_truncated_checkpoint_message_ends_with_a_whole_sentence(tmp_path: Path, digits_artifacts) -> None:
    raw = digits_artifacts["checkpoint"].read_bytes()
    broken = tmp_path / "truncated.pt"
    broken.write_bytes(raw[: int(len(raw) * 0.9)])  # the zip's central directory is gone
    spec = load_spec(_spec_path(tmp_path, digits_artifacts, lambda d: d["model"].update(checkpoint=str(broken))))
    with pytest.raises(CheckpointError) as info:
        check_inputs(spec)
    message = str(info.value)
    assert "corrupt or truncated checkpoint" in message and f"{broken.stat().st_size} bytes" in message
    assert message.endswith(".)"), message  # the reason is whole sentences, not cut mid-word


@pytest.mark.parametrize(
    ("mutate", "line"),
    [
        (lambda d: d["benchmark"].update(primary_batch_size=8), "benchmark.primary_batch_size: primary_batch_size 8 is not in"),
        (lambda d: d["benchmark"].update(batch_sizes=[1, -2]), "benchmark.batch_sizes: must be positive"),
        (lambda d: d["inputs"].append(dict(d["inputs"][0])), "inputs: names must be unique"),
        (lambda d: d["export"].update(dynamic_dims=["seq"]), "export.dynamic_dims: export.dynamic_dims names 'seq'"),
    ],
    ids=["primary-batch", "batch-sizes", "input-names", "dynamic-dims"],
)
def test_model_level_errors_name_the_field(tmp_path: Path, digits_artifacts, mutate, line: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec_path(tmp_path, digits_artifacts, mutate))
    assert line in str(info.value)
    assert "<root>" not in str(info.value)


def test_final_line_says_why_every_variant_fell_back() -> None:
    fallback = {
        "target": "gpu", "batch_size": 1, "status": "fallback",
        "error": "requested provider(s) ['CUDAExecutionProvider'] not bound (bound: ['CPUExecutionProvider'])",
    }
    summary = {
        "variants": [
            {"name": name, "validation": {"passed": True}, "evaluation": {"passed": True}, "benchmarks": [fallback]}
            for name in ("fp32", "int8-static")
        ]
    }
    why = why_nothing_passed(summary)
    assert why.startswith("fp32, int8-static: target gpu: fallback")
    assert "CUDAExecutionProvider" in why


# ------------------------------------------------------------------------------ through the CLI (real processes)


def _cli_run(tmp_path: Path, spec_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float, Path]:
    home = tmp_path / "home"
    env = {**os.environ, "EDGEPORT_HOME": str(home), "PYTHONPATH": str(REPO)}
    for name in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "edgeport.cli", "run", str(spec_path), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    return proc, time.perf_counter() - start, home


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["labels", "one-sample", "opset-7", "tpu-v9", "nan", "pickle", "output-file", "spec-folder"],
)
def test_cli_run_fails_before_prefect_or_mlflow(tmp_path: Path, digits_artifacts, case: str) -> None:
    extra: list[str] = []
    marker = tmp_path / "pwned"
    if case == "labels":
        _, mutate = _labels_plus_100(tmp_path, digits_artifacts)
        expected = "outside the model's 10 classes"
    elif case == "one-sample":
        pixels, labels = _eval_arrays(digits_artifacts)
        np.savez(tmp_path / "one.npz", pixels=pixels[:1], labels=labels[:1])
        mutate = lambda d: d["evaluation"].update(dataset=str(tmp_path / "one.npz"))  # noqa: E731
        expected = "evaluation.max_drop 0.005"
    elif case == "opset-7":
        mutate = lambda d: d["export"].update(opset=7)  # noqa: E731
        expected = "SpecError: export.opset 7"
    elif case == "tpu-v9":
        mutate = lambda d: d.update(targets=[{"name": "tpu-v9"}])  # noqa: E731
        expected = "targets.0.name: name 'tpu-v9' is no built-in profile"
    elif case == "nan":
        _, mutate = _nan_calibration(tmp_path, digits_artifacts)
        expected = "2 NaN"
    elif case == "pickle":
        path = tmp_path / "needs_code.pt"
        torch.save({"model_state": {"w": torch.zeros(1)}, "hook": _RunsShell(marker)}, path)
        mutate = lambda d: d["model"].update(checkpoint=str(path))  # noqa: E731
        expected = "refused: the checkpoint needs code to unpickle (posix.system)"
    elif case == "output-file":
        (tmp_path / "taken").write_text("x")
        extra = ["--output", str(tmp_path / "taken")]
        mutate = None
        expected = f"OptionError: --output {tmp_path / 'taken'}: is an existing file"
    else:
        mutate = None
        expected = "is a folder, not a spec file"
    spec_path = _spec_path(tmp_path, digits_artifacts, mutate)
    proc, seconds, home = _cli_run(tmp_path, spec_path.parent if case == "spec-folder" else spec_path, *extra)
    assert proc.returncode == 1, proc.stderr
    assert expected in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    # The proof that nothing started is below (no Prefect home, no MLflow store); the bound is generous
    # because the host is shared: torch's import alone takes 3-8 s under load (Prefect's start: 12-15 s idle).
    assert seconds < 20, f"took {seconds:.1f} s: the checks should fail before Prefect starts"
    assert not (home / "mlflow").exists()  # no MLflow store was created
    assert not (home / "prefect").exists()  # Prefect was never set up
    assert not marker.exists()
