"""Fast layer: chunked calibration (edgeport/calibration.py, edgeport/data.iter_batches) on a
two-node model with ten samples: the chunks, the option mapping, the input errors, and MinMax
ranges that do not depend on the chunk size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeport.calibration import calibrate_chunked, calibrator_options, tensor_ranges
from edgeport.data import iter_batches
from edgeport.errors import DataError, QuantizationError

W = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """x (batch, 4) float32 -> h = x @ W -> y = Relu(h), shape (batch, 3)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y], [numpy_helper.from_array(W, "W")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "tiny.onnx")
    return tmp_path / "tiny.onnx"


SAMPLES = {"x": np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)}


def test_iter_batches_splits_without_cycling():
    arrays = {"a": np.arange(10), "b": np.arange(10) * 2}
    batches = list(iter_batches(arrays, 4))
    assert [len(b["a"]) for b in batches] == [4, 4, 2]  # the last one smaller
    assert np.array_equal(np.concatenate([b["b"] for b in batches]), arrays["b"])
    assert [len(b["a"]) for b in iter_batches(arrays, 20)] == [10]


def test_calibrator_options_map_quantize_static_keys_and_drop_the_rest():
    options = calibrator_options({"CalibPercentile": 99.9, "CalibNumBins": 2048, "ActivationSymmetric": True})
    assert options == {"percentile": 99.9, "num_bins": 2048}
    assert calibrator_options(None) == {}


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 64])
def test_minmax_ranges_do_not_depend_on_the_chunk_size(model: Path, chunk_size: int):
    ranges = tensor_ranges(calibrate_chunked(model, SAMPLES, "MinMax", chunk_size=chunk_size))
    h = SAMPLES["x"] @ W
    expected = {"x": SAMPLES["x"], "h": h, "y": np.maximum(h, 0)}
    assert set(ranges) == set(expected)
    for name, values in expected.items():
        assert ranges[name] == pytest.approx((float(values.min()), float(values.max())), rel=1e-6), name


@pytest.mark.parametrize(
    ("arrays", "method", "chunk_size", "error", "message"),
    [
        (SAMPLES, "MinMax", 0, DataError, "chunk_size must be at least 1, got 0"),
        ({}, "MinMax", 4, DataError, "no samples"),
        ({"x": np.zeros((0, 4), np.float32)}, "MinMax", 4, DataError, "no samples"),
        (SAMPLES, "Median", 4, QuantizationError, "unknown calibration method 'Median'"),
    ],
)
def test_bad_calibration_requests_fail_before_calibrating(model: Path, arrays, method, chunk_size, error, message):
    with pytest.raises(error, match=message):
        calibrate_chunked(model, arrays, method, chunk_size=chunk_size)
