"""Step 3, quantize: build the variants the spec lists: INT8 with ``onnxruntime.quantization``,
INT4 weight-only with :mod:`tasks.quantize_int4`.

Every INT8 variant starts from its parent FP32 model (the export, or the fused model of
:mod:`tasks.optimize`) after ``quant_pre_process`` (ONNX Runtime's recommended
pre-processing: symbolic shape inference, graph optimization, ONNX shape inference), so
the quantizer sees the shapes of every activation. Static variants calibrate on
``calibration.dataset`` with :func:`edgeport.calibration.write_calibration_cache`
(``calibration.chunk_size`` samples per session run: bounded memory, and no crash on a
smaller last batch), and ``quantize_static`` reads that cache. INT4 variants
(``weight_only_int4``) quantize the parent's MatMul weights block-wise (``MatMulNBits``).

A quantizer can "succeed" while quantizing nothing (e.g. without shape inference a
static QDQ model gets weight DequantizeLinear nodes but no activation QuantizeLinear).
So every variant's operators are counted and checked against what its settings imply
(:func:`check_quantized_ops`, :func:`check_qdq_inputs`); a variant that lacks them fails loudly.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from prefect import task

from edgeport.calibration import write_calibration_cache
from edgeport.data import calibration_source, describe_dataset
from edgeport.datasources import ArraySource, DataSource
from edgeport.errors import QuantizationError
from edgeport.files import file_sha256
from edgeport.spec import VARIANT_FIELD_SCOPE, PipelineSpec, QuantizationVariantSpec
from tasks import cache as _cache
from tasks.quantize_int4 import quantize_int4

logger = logging.getLogger("edgeport.quantize")

__all__ = [
    "NpzCalibrationReader",
    "QuantizeResult",
    "check_qdq_inputs",
    "check_quantized_ops",
    "count_ops",
    "ort_extra_options",
    "preprocess",
    "quantize_variant",
    "variant_settings",
]

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
    "QAttention",
    "QEmbedLayerNormalization",
    "MatMulNBits",
    "GatherBlockQuantized",
)

#: Operators whose weight (input 1) a static QDQ model feeds through DequantizeLinear.
QDQ_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")

#: Operators that move values without arithmetic (max, reshape): a DequantizeLinear before one
#: of them quantizes the op after it too (NNCF places its activation quantizers this way).
QDQ_PASSTHROUGH_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")

#: Operators that carry a dynamic INT8 variant's quantized computation.
DYNAMIC_OPS = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization")


@dataclass(frozen=True)
class QuantizeResult:
    """A quantized variant on disk and how it was made.

    Attributes:
        name: variant name from the spec.
        kind: ``static_int8``, ``dynamic_int8`` or ``weight_only_int4``.
        onnx_path: absolute path of the quantized model.
        size_bytes: file size (bytes).
        sha256: sha256 of the file.
        settings: the exact quantizer settings (JSON-able), incl. calibration method, samples and
            chunk size (static), block size and accuracy level (INT4), and the parent model.
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
    """``onnxruntime.quantization.CalibrationDataReader`` over calibration data, one chunk per batch.

    Args:
        arrays: ``{input name: ndarray of shape (n_samples, *dims)}``, or a data source
            (:func:`edgeport.data.calibration_source`: any spec data kind, read batch by batch).
        batch_size: samples per ``get_next()`` batch.
    """

    def __init__(self, arrays: dict[str, np.ndarray] | DataSource, batch_size: int) -> None:
        self._source = arrays if isinstance(arrays, DataSource) else ArraySource(arrays, field="calibration data")
        self._batch_size = batch_size
        self._iter = self._source.iter_inputs(batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when the data is exhausted (ORT's reader protocol)."""
        return next(self._iter, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._iter = self._source.iter_inputs(self._batch_size)

    def __len__(self) -> int:
        return -(-self._source.num_samples // self._batch_size)


def preprocess(fp32_path: str | Path, out_path: str | Path) -> str:
    """Run ``onnxruntime.quantization.quant_pre_process`` once (skipped if ``out_path`` exists).

    ``auto_merge=True`` lets symbolic shape inference merge conflicting symbolic dims
    (an unfused transformer export otherwise stops with "Incomplete symbolic shape inference").

    Returns:
        ``out_path`` as a string.

    Raises:
        QuantizationError: pre-processing failed.
    """
    out_path = Path(out_path)
    if out_path.is_file():
        return str(out_path)
    tmp = out_path.with_suffix(".tmp.onnx")
    try:
        quant_pre_process(str(fp32_path), str(tmp), skip_optimization=False, auto_merge=True)
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
    * dynamic: ``DynamicQuantizeLinear``/``MatMulInteger``/``ConvInteger``/``DynamicQuantizeMatMul``/
      ``QAttention``/``QEmbedLayerNormalization``;
    * weight_only_int4: ``MatMulNBits``;
    * NNCF static (always QDQ): as static QDQ; NNCF weight-only: ``DequantizeLinear`` or ``MatMulNBits``.

    Raises:
        QuantizationError: naming the variant, what is missing and what was found.
    """
    found = {k: v for k, v in op_counts.items() if k in QUANT_OPS}
    if variant.backend == "nncf" and variant.mode != "static":
        ok = op_counts.get("MatMulNBits", 0) > 0 or op_counts.get("DequantizeLinear", 0) > 0
        need = "weight DequantizeLinear or MatMulNBits nodes (nncf.compress_weights)"
    elif variant.mode == "static" and (variant.format == "QDQ" or variant.backend == "nncf"):
        ok = op_counts.get("QuantizeLinear", 0) > 0 and op_counts.get("DequantizeLinear", 0) > 0
        need = "QuantizeLinear (activations) and DequantizeLinear nodes"
    elif variant.mode == "static":
        ok = any(k.startswith("QLinear") or k == "QGemm" for k in found)
        need = "QLinear*/QGemm operators"
    elif variant.mode == "weight_only_int4":
        ok = op_counts.get("MatMulNBits", 0) > 0
        need = "MatMulNBits operators"
    else:
        ok = any(k in found for k in DYNAMIC_OPS)
        need = "/".join(DYNAMIC_OPS) + " operators"
    if not ok:
        raise QuantizationError(
            f"quantization variant {variant.name!r} ({variant.mode}, {variant.format}) produced a graph without "
            f"{need}; quantization operators found: {found or 'none'}. Check op_types_to_quantize "
            f"({variant.op_types_to_quantize}) and nodes_to_exclude."
        )


def check_qdq_inputs(variant: QuantizationVariantSpec, model: onnx.ModelProto) -> None:
    """Check that a static QDQ graph quantizes activations, not only weights.

    Every MatMul/Gemm/Conv whose weight (input 1) comes from a ``DequantizeLinear`` must
    also have its input 0 produced by a ``DequantizeLinear``, directly or through
    :data:`QDQ_PASSTHROUGH_OPS`; otherwise the node runs in
    float on dequantized weights (a weight-only graph, usually from missing shapes).
    Exempt: nodes in ``nodes_to_exclude`` and op types outside ``op_types_to_quantize``.

    Raises:
        QuantizationError: naming the variant and (up to 10 of) the offending nodes.
    """
    if variant.mode != "static" or (variant.format != "QDQ" and variant.backend != "nncf"):
        return
    producer = {out: n for n in model.graph.node for out in n.output}
    excluded = set(variant.nodes_to_exclude) | set(variant.ignored_scope.names if variant.ignored_scope else ())
    allowed = set(variant.op_types_to_quantize) if variant.op_types_to_quantize else None

    def from_dq(name: str, hops: int = 8) -> bool:
        # int8 flows through a passthrough op (NNCF puts MaxPool / Flatten after the DequantizeLinear)
        node = producer.get(name)
        while node is not None and node.op_type in QDQ_PASSTHROUGH_OPS and node.input and hops > 0:
            node, hops = producer.get(node.input[0]), hops - 1
        return node is not None and node.op_type == "DequantizeLinear"

    bad = [
        n.name or f"{n.op_type}#{i}"
        for i, n in enumerate(model.graph.node)
        if n.op_type in QDQ_WEIGHT_OPS
        and len(n.input) > 1
        and n.name not in excluded
        and (allowed is None or n.op_type in allowed)
        and from_dq(n.input[1])
        and not from_dq(n.input[0])
    ]
    if bad:
        shown = ", ".join(bad[:10]) + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else "")
        raise QuantizationError(
            f"quantization variant {variant.name!r} (static, QDQ): {len(bad)} node(s) have quantized weights but a "
            f"float input 0 (no DequantizeLinear before them): {shown}. The quantizer saw no activation range for "
            "them (missing shapes or calibration data); or list them in nodes_to_exclude."
        )


def variant_settings(spec: PipelineSpec, variant: QuantizationVariantSpec) -> dict[str, Any]:
    """The exact settings a variant is built with (recorded in summaries and MLflow tags): the
    settings that apply to its backend and mode (:data:`edgeport.spec.VARIANT_FIELD_SCOPE`), plus
    the calibration it reads. ONNX Runtime settings added for NNCF's sake (``activation_symmetric``,
    ``smooth_quant_alpha``, ``tensor_quant_overrides``) appear only when set."""
    dump = variant.model_dump(mode="json")
    where = (variant.backend, variant.mode)
    settings = {
        k: v
        for k, v in dump.items()
        if k in ("name", "backend", "mode", "parent") or where in VARIANT_FIELD_SCOPE.get(k, ())
    }
    if variant.backend == "onnxruntime":
        for key in _ORT_OPTIONAL:
            if key not in variant.model_fields_set:
                settings.pop(key, None)
    if variant.mode == "weight_only_int4" and variant.backend == "onnxruntime":
        settings.pop("op_types_to_quantize", None)
        return settings
    if variant.needs_calibration and spec.calibration is not None:
        cal = spec.calibration
        if variant.backend == "onnxruntime":
            settings["calibration_method"] = variant.calibration_method or cal.method
        settings["calibration_samples"] = cal.num_samples
        settings["calibration_dataset"] = describe_dataset(cal.dataset)
        settings["calibration_chunk_size"] = cal.effective_chunk_size
        if cal.extra_options and variant.backend == "onnxruntime":
            settings["calibration_options"] = dict(cal.extra_options)
    elif variant.mode == "dynamic":
        settings.pop("calibration_method", None)
        settings.pop("format", None)  # quantize_dynamic always writes QOperator-style integer ops
        settings.pop("activation_type", None)  # dynamic: activations are quantized at run time to uint8
    return settings


#: ONNX Runtime variant settings recorded only when the spec sets them (older records lack them).
_ORT_OPTIONAL = ("activation_symmetric", "smooth_quant_alpha", "tensor_quant_overrides")


def ort_extra_options(variant: QuantizationVariantSpec) -> dict[str, Any]:
    """``quantize_static`` ``extra_options`` of an ONNX Runtime static variant's own settings:
    ``ActivationSymmetric``, ``SmoothQuant`` / ``SmoothQuantAlpha`` and ``TensorQuantOverrides``
    (``quant_type`` names converted to ``QuantType``). Empty when none is set. (The calibration
    histogram settings go to :func:`edgeport.calibration.write_calibration_cache`.)"""
    opts: dict[str, Any] = {}
    if variant.activation_symmetric:
        opts["ActivationSymmetric"] = True
    if variant.smooth_quant_alpha is not None:
        opts["SmoothQuant"] = True
        opts["SmoothQuantAlpha"] = variant.smooth_quant_alpha
    if variant.tensor_quant_overrides:

        def convert(ov: dict[str, Any]) -> dict[str, Any]:
            out = dict(ov)
            if "quant_type" in out:
                out["quant_type"] = QuantType[out["quant_type"]]
            if isinstance(out.get("convert"), dict):
                out["convert"] = convert(out["convert"])
            return out

        opts["TensorQuantOverrides"] = {t: [convert(ov) for ov in ovs] for t, ovs in variant.tensor_quant_overrides.items()}
    return opts


def quantize_variant(
    spec: PipelineSpec,
    variant: QuantizationVariantSpec,
    fp32_path: str | Path,
    output_dir: str | Path,
    parent: str = "fp32",
    calibration_cache: str | Path | None = None,
) -> QuantizeResult:
    """Build one quantized variant from an FP32 model.

    Args:
        spec: the pipeline spec (for calibration data and inputs).
        variant: which variant to build.
        fp32_path: the validated FP32 ONNX model it is built from (the export, or the fused model).
        output_dir: where ``<variant>.onnx`` (and the shared pre-processed model) are written.
        parent: name of the FP32 variant ``fp32_path`` is (recorded in ``settings["parent"]``).
        calibration_cache: static only: an existing calibration cache
            (:func:`edgeport.calibration.write_calibration_cache` of the pre-processed parent,
            same method and op types) to quantize with instead of calibrating again.

    Returns:
        :class:`QuantizeResult`.

    Raises:
        DataError: calibration file missing, empty, or not matching the inputs.
        QuantizationError: the quantizer or the calibration failed, or the result lacks the
            operators it claims.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / f"{variant.name}.onnx"
    settings = {**variant_settings(spec, variant), "parent": parent}
    start = time.perf_counter()
    if variant.backend == "nncf":
        from tasks.quantize_nncf import quantize_nncf  # lazy: importing nncf takes ~3 s

        r = quantize_nncf(spec, variant, fp32_path, out)
        settings.update(r.settings)
        ops = r.op_counts
    elif variant.mode == "weight_only_int4":
        r = quantize_int4(
            fp32_path,
            out,
            name=variant.name,
            block_size=variant.block_size,
            is_symmetric=variant.is_symmetric,
            accuracy_level=variant.accuracy_level,
            nodes_to_exclude=list(variant.nodes_to_exclude),
            op_types=variant.op_types_to_quantize,
        )
        settings.update(bits=4, algorithm=r.settings["algorithm"], matmul_float=r.matmul_float)
        ops = r.op_counts
    else:
        _quantize_int8(spec, variant, fp32_path, parent, output_dir, out, settings, calibration_cache)
        ops = count_ops(out)
    elapsed = time.perf_counter() - start
    op_counts = {k: v for k, v in sorted(ops.items()) if k in QUANT_OPS}
    check_quantized_ops(variant, ops)
    if variant.mode == "static" and (variant.format == "QDQ" or variant.backend == "nncf"):
        check_qdq_inputs(variant, onnx.load(str(out), load_external_data=False))
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


def _quantize_int8(
    spec: PipelineSpec,
    variant: QuantizationVariantSpec,
    fp32_path: str | Path,
    parent: str,
    output_dir: Path,
    out: Path,
    settings: dict[str, Any],
    calibration_cache: str | Path | None = None,
) -> None:
    """quantize_static (on a fresh chunked-calibration cache) or quantize_dynamic, into ``out``."""
    # One pre-processed model per parent variant, shared by its INT8 children.
    pre = preprocess(fp32_path, output_dir / f"{parent}-preprocessed.onnx")
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
        method = settings["calibration_method"]
        if calibration_cache is not None:  # precomputed (the search calibrates once per method)
            if not Path(calibration_cache).is_file():
                raise QuantizationError(f"variant {variant.name!r}: calibration cache not found: {calibration_cache}")
            cache = Path(calibration_cache)
            settings["calibration_cache"] = str(cache)
        else:
            cache = output_dir / f"{variant.name}.calibration.json"  # fresh per variant: ORT would reuse any file there
            cache.unlink(missing_ok=True)
        extra = ort_extra_options(variant)
        if variant.smooth_quant_alpha is not None:
            # ORT's SmoothQuant transforms the model with calibration batches before calibrating it
            # (a range cache cannot drive it), and the transform is neural-compressor's.
            if importlib.util.find_spec("neural_compressor") is None:
                raise QuantizationError(
                    f"variant {variant.name!r}: smooth_quant_alpha with backend onnxruntime needs the neural-compressor "
                    "package (onnxruntime's SmoothQuant is neural_compressor.adaptor.ox_utils.smooth_quant), which is "
                    "not installed; use backend: nncf with model_type: transformer for SmoothQuant"
                )
            reader = NpzCalibrationReader(calibration_source(spec), cal.effective_chunk_size)
            try:
                quantize_static(
                    pre,
                    str(out),
                    reader,
                    quant_format=QuantFormat[variant.format],
                    activation_type=QuantType[variant.activation_type],
                    calibrate_method=CalibrationMethod[method],
                    extra_options={**cal.extra_options, **extra},
                    **common,
                )
            except Exception as exc:
                raise QuantizationError(f"quantize_static for variant {variant.name!r} failed: {type(exc).__name__}: {exc}") from exc
            return
        calibration = None if calibration_cache is not None else write_calibration_cache(
            pre,
            calibration_source(spec),
            cache,
            method=method,
            chunk_size=cal.effective_chunk_size,
            op_types_to_calibrate=variant.op_types_to_quantize,
            extra_options=cal.extra_options,
        )
        settings["calibration_s"] = calibration.calibrate_s if calibration is not None else 0.0
        try:
            quantize_static(
                pre,
                str(out),
                None,
                calibration_cache_path=str(cache),
                quant_format=QuantFormat[variant.format],
                activation_type=QuantType[variant.activation_type],
                calibrate_method=CalibrationMethod[method],
                extra_options=extra or None,
                **common,
            )
        except Exception as exc:
            raise QuantizationError(f"quantize_static for variant {variant.name!r} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            quantize_dynamic(pre, str(out), **common)
        except Exception as exc:
            raise QuantizationError(f"quantize_dynamic for variant {variant.name!r} failed: {type(exc).__name__}: {exc}") from exc


# --- Prefect wrapper -------------------------------------------------------------------------



def _quantize_cache_key(context: object, parameters: dict) -> str | None:
    """Prefect cache key: sha256 of the FP32 parent (and of a given calibration cache), the
    variant's settings, the inputs and calibration sections, the calibration data's sha256, the
    output folder and library versions (:mod:`tasks.cache`). None (no caching) when the parent
    is missing: the step then fails with its own error."""
    spec: PipelineSpec = parameters["spec"]
    variant: QuantizationVariantSpec = parameters["variant"]
    parent_sha = _cache.file_digest(parameters["fp32_path"])
    if parent_sha is None:
        return None
    return _cache.step_key(
        "quantize",
        parent_sha256=parent_sha,
        parent=parameters.get("parent", "fp32"),
        variant=variant.model_dump(mode="json"),
        sections=_cache.sections(spec, "inputs", "calibration"),
        data=_cache.data_digests(spec),
        calibration_cache=_cache.file_digest(parameters.get("calibration_cache")),
        output_dir=str(Path(parameters["output_dir"]).resolve()),
        versions=_cache.library_versions(nncf=variant.backend == "nncf"),
        # accuracy control validates on the evaluation set with the evaluation gate (key unchanged otherwise)
        **({"evaluation": _cache.sections(spec, "evaluation", "outputs")} if variant.accuracy_control is not None else {}),
    )


#: Deterministic: no retries. Cached (persisted result) on the parent's sha256 + settings, so a
#: re-run resumes; the flow re-quantizes when the cached model file is gone or changed.
quantize_task = task(
    quantize_variant,
    name="quantize",
    retries=0,
    task_run_name="quantize-{variant.name}",
    cache_key_fn=_quantize_cache_key,
    persist_result=True,
)
