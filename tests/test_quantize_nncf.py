"""The NNCF backend (tasks/quantize_nncf.py) and the ONNX Runtime backend's new options, end to end
on the digits example (real load_digits data, real NNCF, real ONNX Runtime sessions)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import digits_spec_dict, write_spec
from onnx import TensorProto, helper, numpy_helper

from edgeport.errors import QuantizationError
from edgeport.spec import PipelineSpec, QuantizationVariantSpec, load_spec
from tasks.evaluate import evaluate_model
from tasks.export import export_model
from tasks.quantize import count_ops, quantize_variant
from tasks.validate import validate_onnx

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, digits_artifacts: dict[str, Path]) -> dict:
    """The digits spec, its FP32 export and FP32's evaluation."""
    folder = tmp_path_factory.mktemp("nncf")
    data = digits_spec_dict(digits_artifacts)
    data["registry"]["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    spec = load_spec(write_spec(folder / "spec", data))
    fp32 = export_model(spec, cache_dir=folder / "export").onnx_path
    reference = evaluate_model(spec, fp32, "fp32", folder / "eval")
    return {"spec": spec, "fp32": fp32, "reference": reference, "folder": folder}


def _with_variant(spec: PipelineSpec, **variant) -> tuple[PipelineSpec, QuantizationVariantSpec]:
    data = spec.model_dump(mode="json")
    data["quantization"] = [variant]
    new = PipelineSpec.model_validate(data)
    return new, new.quantization[0]


def test_nncf_static_int8_digits(digits: dict, tmp_path: Path) -> None:
    spec, variant = _with_variant(digits["spec"], name="nncf-int8", backend="nncf", subset_size=300)
    result = quantize_variant(spec, variant, digits["fp32"], tmp_path)

    assert result.kind == "static_int8"
    assert result.settings["backend"] == "nncf" and result.settings["algorithm"] == "nncf.quantize"
    assert result.settings["parent"] == "fp32" and result.settings["nncf_version"]
    assert result.op_counts.get("QuantizeLinear", 0) > 0 and result.op_counts.get("DequantizeLinear", 0) > 0
    assert result.size_bytes < Path(digits["fp32"]).stat().st_size  # int8 weights
    report = validate_onnx(spec, result.onnx_path, reference_onnx=digits["fp32"], report_path=tmp_path / "validation.json")
    assert report["passed"], report  # the check the pipeline runs on every quantized variant (vs FP32, no NaN/Inf, shapes)
    ev = evaluate_model(spec, result.onnx_path, variant.name, tmp_path / "eval", reference=digits["reference"])
    assert ev["passed"], ev  # top-1 within the digits gate (0.5 pp)


def test_nncf_accuracy_control_respects_max_drop(digits: dict, tmp_path: Path) -> None:
    # max_drop 0: every quantizer that costs a single eval sample goes back to float.
    spec, variant = _with_variant(
        digits["spec"], name="nncf-ac", backend="nncf", preset="performance", accuracy_control={"max_drop": 0.0, "max_num_iterations": 4}
    )
    result = quantize_variant(spec, variant, digits["fp32"], tmp_path)
    assert result.settings["algorithm"] == "nncf.quantize_with_accuracy_control" and result.settings["max_drop"] == 0.0
    ev = evaluate_model(spec, result.onnx_path, variant.name, tmp_path / "eval", reference=digits["reference"])
    # NNCF stops restoring at max_num_iterations; within it, the drop it reaches is the gate's
    assert ev["drop"] <= 0.005 + 1e-12, ev
    assert result.op_counts.get("QuantizeLinear", 0) > 0


def test_nncf_accuracy_control_defaults_to_the_evaluation_gate(digits: dict, tmp_path: Path) -> None:
    spec, variant = _with_variant(digits["spec"], name="nncf-ac", backend="nncf", accuracy_control={})
    result = quantize_variant(spec, variant, digits["fp32"], tmp_path)
    assert result.settings["max_drop"] == spec.evaluation.max_drop == 0.005
    ev = evaluate_model(spec, result.onnx_path, variant.name, tmp_path / "eval", reference=digits["reference"])
    assert ev["drop"] <= spec.evaluation.max_drop + 1e-12, ev


def _matmul_model(path: Path, k: int = 64, n: int = 48) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((n, 10)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["logits"], name="mm2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)  # ORT 1.31 reads IR <= 13
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _mlp_spec(tmp_path: Path) -> PipelineSpec:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((64, 64)).astype(np.float32))
    return PipelineSpec.model_validate(
        {
            "name": "mlp",
            "model": {"checkpoint": str(tmp_path / "unused.pt"), "factory": "m:M"},
            "inputs": [{"name": "x", "shape": ["batch", 64]}],
            "outputs": ["logits"],
            "calibration": {"dataset": str(tmp_path / "cal.npz"), "num_samples": 64},
            "registry": {"registered_model": "mlp"},
        }
    )


@pytest.mark.parametrize(
    ("options", "bits"),
    [({"mode": "weight_only_int8"}, 8), ({"mode": "weight_only_int4", "group_size": 16, "ratio": 1.0}, 4)],
    ids=["int8", "int4-g16"],
)
def test_nncf_compress_weights_matmul(tmp_path: Path, options: dict, bits: int) -> None:
    fp32 = _matmul_model(tmp_path / "mlp.onnx")
    variant = QuantizationVariantSpec(name="w", backend="nncf", **options)
    result = quantize_variant(_mlp_spec(tmp_path), variant, fp32, tmp_path / "out")
    assert result.settings["algorithm"] == "nncf.compress_weights" and result.settings["bits"] == bits
    ops = count_ops(result.onnx_path)
    assert ops.get("DequantizeLinear", 0) + ops.get("MatMulNBits", 0) > 0, ops
    assert "QuantizeLinear" not in ops  # weights only: activations stay float
    import onnxruntime as ort

    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    want = ort.InferenceSession(str(fp32)).run(None, {"x": x})[0]
    got = ort.InferenceSession(result.onnx_path).run(None, {"x": x})[0]
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < rel < (0.02 if bits == 8 else 0.2), rel  # quantized (not identical), but close


def test_nncf_int4_asym_unloadable_by_ort_is_a_quantization_error(tmp_path: Path) -> None:
    """NNCF 3.4.0 writes INT4_ASYM MatMulNBits zero points unpacked; ONNX Runtime 1.31 refuses them.
    The quantize step says so instead of leaving it to the validation step."""
    fp32 = _matmul_model(tmp_path / "mlp.onnx")
    variant = QuantizationVariantSpec(name="asym", backend="nncf", mode="weight_only_int4", group_size=16, is_symmetric=False)
    try:
        result = quantize_variant(_mlp_spec(tmp_path), variant, fp32, tmp_path / "out")
    except QuantizationError as exc:
        assert "cannot load" in str(exc) and "MatMulNBits" in str(exc)
    else:  # a fixed NNCF / ORT pair: then the model must be a real INT4 model
        assert count_ops(result.onnx_path).get("MatMulNBits", 0) > 0


def test_nncf_failure_is_a_quantization_error_with_nncf_message(tmp_path: Path) -> None:
    """An ignored-scope name NNCF cannot find: NNCF refuses; the error names the variant and NNCF's reason."""
    fp32 = _matmul_model(tmp_path / "mlp.onnx")
    variant = QuantizationVariantSpec(name="broken", backend="nncf", mode="weight_only_int8", ignored_scope={"names": ["no_such_node"]})
    with pytest.raises(QuantizationError) as info:
        quantize_variant(_mlp_spec(tmp_path), variant, fp32, tmp_path / "out")
    message = str(info.value)
    assert "nncf.compress_weights for variant 'broken' failed" in message
    assert "no_such_node" in message  # NNCF's own message


def test_nncf_on_a_broken_model_is_a_quantization_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    variant = QuantizationVariantSpec(name="b", backend="nncf", mode="weight_only_int8")
    with pytest.raises(QuantizationError, match="broken.onnx"):
        quantize_variant(_mlp_spec(tmp_path), variant, broken, tmp_path / "out")


def test_ort_activation_symmetric_and_overrides(digits: dict, tmp_path: Path) -> None:
    spec, variant = _with_variant(
        digits["spec"], name="ort-sym", per_channel=True, activation_symmetric=True, activation_type="QInt8"
    )
    result = quantize_variant(spec, variant, digits["fp32"], tmp_path)
    model = onnx.load(result.onnx_path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    act_zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert act_zps and all(np.all(z == 0) for z in act_zps)  # symmetric QInt8 activations: zero point 0
    assert result.settings["activation_symmetric"] is True


@pytest.mark.skipif(importlib.util.find_spec("neural_compressor") is not None, reason="neural-compressor installed")
def test_ort_smooth_quant_without_neural_compressor_says_so(digits: dict, tmp_path: Path) -> None:
    spec, variant = _with_variant(digits["spec"], name="ort-sq", smooth_quant_alpha=0.5)
    with pytest.raises(QuantizationError, match="neural-compressor"):
        quantize_variant(spec, variant, digits["fp32"], tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("neural_compressor") is None, reason="ORT SmoothQuant needs neural-compressor")
def test_ort_smooth_quant_adds_scaling(tmp_path: Path) -> None:
    fp32 = _matmul_model(tmp_path / "mlp.onnx")
    variant = QuantizationVariantSpec(name="sq", smooth_quant_alpha=0.5)
    result = quantize_variant(_mlp_spec(tmp_path), variant, fp32, tmp_path / "out")
    ops = count_ops(result.onnx_path)
    assert ops.get("QuantizeLinear", 0) > 0 and result.settings["smooth_quant_alpha"] == 0.5
