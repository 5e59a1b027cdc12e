"""Step 3, quantize: build the INT8 variants the spec lists with ``onnxruntime.quantization``.

Every variant starts from the FP32 model after ``quant_pre_process`` (ONNX Runtime's
recommended pre-processing: symbolic shape inference, graph optimization, ONNX shape
inference), so the quantizer sees the shapes of every activation. Static variants
calibrate on ``calibration.dataset`` through a :class:`NpzCalibrationReader`.

A quantizer can "succeed" while quantizing nothing (e.g. without shape inference a
static QDQ model gets weight DequantizeLinear nodes but no activation QuantizeLinear).
So every variant's operators are counted and checked against what its settings imply
(:func:`check_quantized_ops`); a variant that lacks them fails loudly.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeport.checkpoint import file_sha256
from edgeport.data import iter_batches, load_input_arrays
from edgeport.errors import QuantizationError
from edgeport.spec import PipelineSpec, QuantizationVariantSpec

logger = logging.getLogger("edgeport.quantize")

__all__ = ["NpzCalibrationReader", "QuantizeResult", "check_quantized_ops", "preprocess", "quantize_variant"]

#: Operators that carry quantized computation, counted in every variant.
QUANT_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QGemm",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
)


@dataclass(frozen=True)
class QuantizeResult:
    """A quantized variant on disk and how it was made.

    Attributes:
        name: variant name from the spec.
        kind: ``static_int8`` or ``dynamic_int8``.
        onnx_path: absolute path of the quantized model.
        size_bytes: file size (bytes).
        sha256: sha256 of the file.
        settings: the exact quantizer settings (JSON-able), incl. calibration method and samples.
        op_counts: count of every quantization operator in the graph (:data:`QUANT_OPS`).
        quantize_s: wall seconds (pre-processing excluded).
    """

    name: str
    kind: str
    onnx_path: str
    size_bytes: int
    sha256: str
    settings: dict[str, Any]
    op_counts: dict[str, int] = field(default_factory=dict)
    quantize_s: float = 0.0


class NpzCalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over in-memory calibration arrays.

    Args:
        arrays: ``{input name: ndarray of shape (n_samples, *dims)}``.
        batch_size: samples per ``get_next()`` batch.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int) -> None:
        self._arrays = arrays
        self._batch_size = batch_size
        self._iter = iter_batches(arrays, batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when the data is exhausted (ORT's reader protocol)."""
        return next(self._iter, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._iter = iter_batches(self._arrays, self._batch_size)

    def __len__(self) -> int:
        n = next(iter(self._arrays.values())).shape[0]
        return -(-n // self._batch_size)


def preprocess(fp32_path: str | Path, out_path: str | Path) -> str:
    """Run ``onnxruntime.quantization.quant_pre_process`` once (skipped if ``out_path`` exists).

    Returns:
        ``out_path`` as a string.

    Raises:
        QuantizationError: pre-processing failed.
    """
    from onnxruntime.quantization import quant_pre_process

    out_path = Path(out_path)
    if out_path.is_file():
        return str(out_path)
    tmp = out_path.with_suffix(".tmp.onnx")
    try:
        quant_pre_process(str(fp32_path), str(tmp), skip_optimization=False)
    except Exception as exc:
        raise QuantizationError(f"quant_pre_process({fp32_path}) failed: {type(exc).__name__}: {exc}") from exc
    tmp.replace(out_path)
    return str(out_path)


def count_ops(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """``{op_type: count}`` over the main graph, for every op type present."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in model.graph.node))


def check_quantized_ops(variant: QuantizationVariantSpec, op_counts: dict[str, int]) -> None:
    """Check that a quantized graph contains the operators its settings imply.

    * static QDQ: activation ``QuantizeLinear`` and ``DequantizeLinear`` nodes;
    * static QOperator: at least one ``QLinear*``/``QGemm`` operator;
    * dynamic: ``DynamicQuantizeLinear``/``MatMulInteger``/``ConvInteger``/``DynamicQuantizeMatMul``.

    Raises:
        QuantizationError: naming the variant, what is missing and what was found.
    """
    found = {k: v for k, v in op_counts.items() if k in QUANT_OPS}
    if variant.mode == "static" and variant.format == "QDQ":
        ok = op_counts.get("QuantizeLinear", 0) > 0 and op_counts.get("DequantizeLinear", 0) > 0
        need = "QuantizeLinear (activations) and DequantizeLinear nodes"
    elif variant.mode == "static":
        ok = any(k.startswith("QLinear") or k == "QGemm" for k in found)
        need = "QLinear*/QGemm operators"
    else:
        ok = any(k in found for k in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"))
        need = "DynamicQuantizeLinear/MatMulInteger/ConvInteger operators"
    if not ok:
        raise QuantizationError(
            f"quantization variant {variant.name!r} ({variant.mode}, {variant.format}) produced a graph without "
            f"{need}; quantization operators found: {found or 'none'}. Check op_types_to_quantize "
            f"({variant.op_types_to_quantize}) and nodes_to_exclude."
        )


def variant_settings(spec: PipelineSpec, variant: QuantizationVariantSpec) -> dict[str, Any]:
    """The exact settings a variant is built with (recorded in summaries and MLflow tags)."""
    settings = variant.model_dump(mode="json")
    if variant.mode == "static" and spec.calibration is not None:
        settings["calibration_method"] = variant.calibration_method or spec.calibration.method
        settings["calibration_samples"] = spec.calibration.num_samples
        settings["calibration_dataset"] = str(spec.calibration.dataset)
    else:
        settings.pop("calibration_method", None)
        settings.pop("format", None)  # quantize_dynamic always writes QOperator-style integer ops
        settings.pop("activation_type", None)  # dynamic: activations are quantized at run time to uint8
    return settings


def quantize_variant(
    spec: PipelineSpec, variant: QuantizationVariantSpec, fp32_path: str | Path, output_dir: str | Path
) -> QuantizeResult:
    """Build one quantized variant from the FP32 model.

    Args:
        spec: the pipeline spec (for calibration data and inputs).
        variant: which variant to build.
        fp32_path: the validated FP32 ONNX model.
        output_dir: where ``<variant>.onnx`` (and the shared pre-processed model) are written.

    Returns:
        :class:`QuantizeResult`.

    Raises:
        DataError: calibration file missing, empty, or not matching the inputs.
        QuantizationError: the quantizer failed, or the result lacks the operators it claims.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pre = preprocess(fp32_path, output_dir / "fp32-preprocessed.onnx")
    out = output_dir / f"{variant.name}.onnx"
    settings = variant_settings(spec, variant)
    start = time.perf_counter()
    common = dict(
        op_types_to_quantize=variant.op_types_to_quantize,
        per_channel=variant.per_channel,
        reduce_range=variant.reduce_range,
        weight_type=QuantType[variant.weight_type],
        nodes_to_exclude=list(variant.nodes_to_exclude),
    )
    if variant.mode == "static":
        cal = spec.calibration
        if cal is None:  # PipelineSpec's validator refuses this; kept for direct callers
            raise QuantizationError(f"static variant {variant.name!r} needs a `calibration` section")
        arrays = load_input_arrays(cal.dataset, spec.inputs, "calibration.dataset", cal.num_samples)
        reader = NpzCalibrationReader(arrays, cal.batch_size)
        try:
            quantize_static(
                pre,
                str(out),
                reader,
                quant_format=QuantFormat[variant.format],
                activation_type=QuantType[variant.activation_type],
                calibrate_method=CalibrationMethod[settings["calibration_method"]],
                **common,
            )
        except Exception as exc:
            raise QuantizationError(f"quantize_static for variant {variant.name!r} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            quantize_dynamic(pre, str(out), **common)
        except Exception as exc:
            raise QuantizationError(f"quantize_dynamic for variant {variant.name!r} failed: {type(exc).__name__}: {exc}") from exc
    elapsed = time.perf_counter() - start
    ops = count_ops(out)
    op_counts = {k: v for k, v in sorted(ops.items()) if k in QUANT_OPS}
    check_quantized_ops(variant, ops)
    result = QuantizeResult(
        name=variant.name,
        kind=variant.kind,
        onnx_path=str(out.resolve()),
        size_bytes=out.stat().st_size,
        sha256=file_sha256(out),
        settings=settings,
        op_counts=op_counts,
        quantize_s=round(elapsed, 3),
    )
    (output_dir / f"{variant.name}.quantization.json").write_text(json.dumps(asdict(result), indent=2))
    logger.info("quantized %s in %.1f s: %d bytes, ops %s", variant.name, elapsed, result.size_bytes, op_counts)
    return result


# --- Prefect wrapper -------------------------------------------------------------------------
from prefect import task  # noqa: E402

quantize_task = task(quantize_variant, name="quantize", retries=0, task_run_name="quantize-{variant.name}")
