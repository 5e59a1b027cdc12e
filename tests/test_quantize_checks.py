"""tasks/quantize.py's graph checks on tiny hand-made graphs (no quantizer run)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgeport.errors import QuantizationError
from edgeport.spec import QuantizationVariantSpec
from tasks.quantize import check_qdq_inputs, check_quantized_ops


def _weight_only_graph() -> onnx.ModelProto:
    """x (float) -> MatMul(x, DequantizeLinear(w_q)): a weight is quantized, the activation is not."""
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], name="w_dq"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc/MatMul"),
    ]
    inits = [
        helper.make_tensor("w_q", TensorProto.INT8, [4, 2], [1] * 8),
        helper.make_tensor("w_scale", TensorProto.FLOAT, [], [0.1]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits,
    )
    return helper.make_model(graph)


def test_qdq_check_names_a_node_with_a_float_activation():
    variant = QuantizationVariantSpec(name="s", mode="static", format="QDQ")
    with pytest.raises(QuantizationError, match="fc/MatMul"):
        check_qdq_inputs(variant, _weight_only_graph())


def test_qdq_check_exempts_excluded_nodes_and_other_op_types():
    model = _weight_only_graph()
    check_qdq_inputs(QuantizationVariantSpec(name="s", nodes_to_exclude=["fc/MatMul"]), model)
    check_qdq_inputs(QuantizationVariantSpec(name="s", op_types_to_quantize=["Conv"]), model)
    check_qdq_inputs(QuantizationVariantSpec(name="d", mode="dynamic"), model)  # QDQ only


def test_op_check_accepts_fused_dynamic_ops_and_int4():
    check_quantized_ops(QuantizationVariantSpec(name="d", mode="dynamic"), {"QAttention": 6})
    check_quantized_ops(QuantizationVariantSpec(name="i", mode="weight_only_int4"), {"MatMulNBits": 18})
    with pytest.raises(QuantizationError, match="MatMulNBits"):
        check_quantized_ops(QuantizationVariantSpec(name="i", mode="weight_only_int4"), {"MatMul": 18})
