"""examples/cnn: the MobileNet-style depthwise-separable CNN trains on load_digits and its spec validates."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgeport.cli import app

CNN = Path(__file__).resolve().parents[1] / "examples" / "cnn"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_cnn_{name}", CNN / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_depthwise_cnn_is_a_27_conv_chain_with_relu6() -> None:
    model_module = _load("model")
    model = model_module.DepthwiseCNN().eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * len(model_module.BLOCKS) == 27
    assert sum(c.groups == c.in_channels > 1 for c in convs) == 13  # the depthwise ones
    assert sum(isinstance(m, torch.nn.ReLU6) for m in model.modules()) == 27
    with torch.no_grad():
        out = model(torch.zeros(3, 1, model_module.IMAGE_SIZE, model_module.IMAGE_SIZE))
    assert out.shape == (3, model_module.NUM_CLASSES)


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"num_classes": -1}, {"blocks": []}])
def test_depthwise_cnn_refuses_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        _load("model").DepthwiseCNN(**kwargs)


@pytest.mark.slow
def test_cnn_example_trains_and_its_spec_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _load("train").train(tmp_path / "artifacts", epochs=3)
    checkpoint = torch.load(paths["checkpoint"], weights_only=True)
    assert checkpoint["meta"]["arch"] == "DepthwiseCNN"
    assert checkpoint["meta"]["test_top1"] > 0.5  # 3 epochs; the default 10 reach about 0.97
    with np.load(paths["calibration"]) as cal, np.load(paths["eval"]) as ev:
        assert cal["pixels"].shape == (1257, 1, 32, 32) and cal["pixels"].dtype == np.float32
        assert ev["pixels"].shape == (540, 1, 32, 32) and ev["labels"].shape == (540,)
        assert 0.0 <= float(ev["pixels"].min()) and float(ev["pixels"].max()) <= 1.0

    # The example's spec, in a folder next to the trained artifacts (its relative paths resolve there).
    data = yaml.safe_load((CNN / "pipeline.yaml").read_text())
    data["model"]["search_path"] = [str(CNN)]
    spec_path = tmp_path / "pipeline.yaml"
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate-spec", str(spec_path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert [v["backend"] for v in shown["quantization"]] == ["onnxruntime"] * 3 + ["nncf"] * 3
    assert [t["name"] for t in shown["targets"]] == ["cpu", "openvino-cpu"]
    assert shown["evaluation"]["max_drop"] == 0.01
