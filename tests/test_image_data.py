"""End to end (issue 12): the digits images written as PNG class folders by
examples/digits/write_pngs.py drive calibration and top-1 evaluation of the digits CNN through
examples/digits/pipeline-images.yaml, and the run registers a challenger."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from conftest import DIGITS, write_spec

from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def test_image_folders_drive_calibration_and_top1_evaluation_and_register_a_challenger(
    prefect_harness, digits_artifacts, tmp_path
) -> None:
    from flows.pipeline import pipeline

    module_spec = importlib.util.spec_from_file_location("_digits_pngs", DIGITS / "write_pngs.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    folders = module.write_pngs(tmp_path / "images")

    data = yaml.safe_load((DIGITS / "pipeline-images.yaml").read_text())
    data["model"].update(checkpoint=str(digits_artifacts["checkpoint"]), search_path=[str(DIGITS)])
    data["calibration"]["dataset"]["path"] = str(folders["calibration"])
    data["evaluation"]["dataset"]["path"] = str(folders["eval"])
    data["quantization"] = data["quantization"][:1]  # int8-static: the one that reads the calibration images
    data["targets"] = [{"name": "cpu"}]
    data["benchmark"] = {"batch_sizes": [1, 32], "warmup": 5, "repetitions": 60, "time_budget_s": 0.5, "timeout_s": 120}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["registry"]["tracking_uri"] = uri
    summary = pipeline(str(write_spec(tmp_path / "spec", data)), output_dir=str(tmp_path / "out"))

    fp32, int8 = summary["variants"]
    assert fp32["evaluation"]["num_samples"] == 540 and int8["evaluation"]["num_samples"] == 540
    # the images are the .npz's pixels exactly: FP32 top-1 equals the one on eval.npz
    session = ort.InferenceSession(fp32["path"], providers=["CPUExecutionProvider"])
    with np.load(digits_artifacts["eval"]) as npz:
        expected = float(np.mean(np.argmax(session.run(None, {"pixels": npz["pixels"]})[0], axis=-1) == npz["labels"]))
    assert fp32["evaluation"]["value"] == pytest.approx(expected, abs=1e-12) and expected > 0.9
    assert int8["evaluation"]["passed"] and int8["evaluation"]["drop"] <= 0.005
    challenger = summary["challenger"]
    assert challenger is not None
    alias = MlflowClient(uri).get_model_version_by_alias("digits-cnn-images", "challenger")
    assert str(alias.version) == str(challenger["version"])
