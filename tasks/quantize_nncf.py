"""Step 3c, quantize with NNCF (``backend: nncf``): the second quantization backend.

NNCF's post-training API works on the ``onnx.ModelProto`` itself (no torch, no OpenVINO):

* static INT8, ``nncf.quantize``: MinMax statistics on the calibration set, NNCF's quantizer
  placement (``preset``, ``model_type``, ``target_device``, ``ignored_scope``), SmoothQuant for
  transformers, fast or full bias correction; writes a QDQ graph;
* accuracy-controlled INT8, ``nncf.quantize_with_accuracy_control``: the same, then the
  quantizers that hurt edgeport's evaluation metric most go back to float until the drop vs FP32
  is within the gate (:func:`validation_setup`);
* weight-only INT8 / INT4, ``nncf.compress_weights``: per-channel or grouped weights
  (``DequantizeLinear``; ``MatMulNBits`` for grouped INT4 below opset 21), optional AWQ and scale
  estimation on the calibration set.

The calibration set reaches NNCF as ``calibration.chunk_size``-sample batches (an
``nncf.Dataset`` whose source has a ``batch_size``, so NNCF collects batch-wise statistics and
counts ``subset_size`` in samples). Any error NNCF raises becomes a
:class:`~edgeport.errors.QuantizationError` carrying NNCF's message (:func:`nncf_errors`), so the
pipeline records it on that variant like any other quantization failure.

These functions write the model and return an :class:`NNCFResult`;
:func:`tasks.quantize.quantize_variant` (which dispatches on ``variant.backend``) wraps it into
the common :class:`~tasks.quantize.QuantizeResult` and runs the quantized-op checks.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# NNCF telemetry off: read once when nncf is imported (nncf/telemetry/wrapper.py: NNCF_CI or NNCF_DEV).
os.environ.setdefault("NNCF_CI", "1")

import nncf  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from edgeport.data import calibration_source, evaluation_source, iter_batches  # noqa: E402
from edgeport.datasources import ArraySource, DataSource  # noqa: E402
from edgeport.errors import EdgeportError, QuantizationError, SpecError  # noqa: E402
from edgeport.fidelity import rowwise_cosine  # noqa: E402
from edgeport.spec import PipelineSpec, QuantizationVariantSpec  # noqa: E402

logger = logging.getLogger("edgeport.quantize_nncf")

__all__ = [
    "NNCFResult",
    "calibration_dataset",
    "compress_weights_nncf",
    "ignored_scope",
    "nncf_errors",
    "quantize_nncf",
    "quantize_static_nncf",
    "validation_setup",
]

#: Batch size of the ONNX Runtime runs inside the accuracy-control validation function.
VALIDATION_BATCH_SIZE = 64


@dataclass(frozen=True)
class NNCFResult:
    """An NNCF-built model on disk.

    Attributes:
        onnx_path: the written model.
        settings: what NNCF was called with (JSON-able): ``algorithm`` (``nncf.quantize``,
            ``nncf.quantize_with_accuracy_control`` or ``nncf.compress_weights``), ``nncf_version``,
            the resolved options, and for accuracy control ``max_drop`` and ``reference_metric``.
        op_counts: ``{op_type: count}`` of the written main graph.
        quantize_s: wall seconds of the NNCF call.
    """

    onnx_path: str
    settings: dict[str, Any]
    op_counts: dict[str, int] = field(default_factory=dict)
    quantize_s: float = 0.0


class _Batches:
    """Re-iterable calibration batches; ``batch_size`` tells NNCF they are batches of samples."""

    def __init__(self, source: DataSource, batch_size: int) -> None:
        self._source = source
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._source.iter_inputs(self.batch_size)

    def __len__(self) -> int:
        return -(-self._source.num_samples // self.batch_size)


def calibration_dataset(arrays: dict[str, np.ndarray] | DataSource, chunk_size: int) -> nncf.Dataset:
    """An ``nncf.Dataset`` of ``{input name: ndarray of shape (<= chunk_size, *dims)}`` batches.

    Args:
        arrays: ``{input name: ndarray of shape (n_samples, *dims)}``, or a data source
            (:func:`edgeport.data.calibration_source`), read one batch at a time.
        chunk_size: samples per batch (``calibration.chunk_size``, else ``batch_size``).
    """
    source = arrays if isinstance(arrays, DataSource) else ArraySource(arrays, field="calibration data")
    return nncf.Dataset(_Batches(source, chunk_size))


def ignored_scope(variant: QuantizationVariantSpec) -> nncf.IgnoredScope | None:
    """``nncf.IgnoredScope`` of the variant's ``ignored_scope`` (None when unset)."""
    scope = variant.ignored_scope
    if scope is None:
        return None
    return nncf.IgnoredScope(names=list(scope.names), types=list(scope.types), patterns=list(scope.patterns))


@contextlib.contextmanager
def nncf_errors(variant: QuantizationVariantSpec, call: str) -> Iterator[None]:
    """Translate anything NNCF (or ONNX Runtime under it) raises into a QuantizationError.

    Raises:
        QuantizationError: ``"<call> for variant '<name>' failed: <type>: <NNCF's message>"``.
            edgeport's own errors (e.g. from the validation function) pass through unchanged.
    """
    try:
        yield
    except EdgeportError:
        raise
    except Exception as exc:
        raise QuantizationError(f"{call} for variant {variant.name!r} failed: {type(exc).__name__}: {exc}") from exc


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _first_output(session: ort.InferenceSession, output: str, items: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Run ``items`` (one sample each, ``{input: ndarray of shape (1, *dims)}``) in batches."""
    arrays = {k: np.concatenate([it[k] for it in items]) for k in items[0]}
    return np.concatenate([session.run([output], b)[0] for b in iter_batches(arrays, VALIDATION_BATCH_SIZE)])


def validation_setup(
    spec: PipelineSpec, fp32_model: onnx.ModelProto
) -> tuple[nncf.Dataset, Callable[[onnx.ModelProto, Iterable[Any]], tuple[float, list[float]]], float, float]:
    """The validation dataset, function and ``max_drop`` for ``nncf.quantize_with_accuracy_control``.

    The function is edgeport's evaluation metric (``evaluation.metric``) on the evaluation set
    (first ``max_samples``), run with ONNX Runtime's CPU EP on the ModelProto NNCF passes:

    * ``top1``: per sample 1.0 if the arg-max of the first output's last axis equals the label;
      the metric is their mean (= :func:`tasks.evaluate.evaluate_model`'s top-1);
    * ``cosine``: per sample the cosine of the first output to the reference embedding
      (the dataset's ``reference_key`` array, else the FP32 model's own outputs), the metric is
      their mean (= ``cosine_mean`` of :func:`edgeport.fidelity.fidelity_report`).

    NNCF calls it on single items to rank quantizers, so it returns the per-item values too.
    Default ``max_drop`` (no ``accuracy_control.max_drop``): ``evaluation.max_drop`` for top1;
    for cosine, FP32's mean cosine minus ``evaluation.min_cosine`` (at least 0).

    Returns:
        ``(validation dataset of (inputs, target) items, validation_fn, max_drop, fp32 metric)``;
        the FP32 metric is NaN for top1 (NNCF measures it).

    Raises:
        SpecError: no ``evaluation`` section.
        DataError: evaluation data missing or not matching the inputs.
    """
    ev = spec.evaluation
    if ev is None:
        raise SpecError("accuracy_control needs an `evaluation` section")
    data = evaluation_source(spec).take()  # NNCF indexes the validation items: the evaluation set in memory
    arrays = data.inputs
    n = len(data)
    output = spec.outputs[0]
    if ev.metric == "top1":
        targets: np.ndarray = data.labels
    elif data.reference is not None:
        targets = data.reference
    else:
        targets = _first_output(_session(fp32_model), output, [{k: a[i : i + 1] for k, a in arrays.items()} for i in range(n)])
    items = [({k: a[i : i + 1] for k, a in arrays.items()}, targets[i]) for i in range(n)]
    cache: dict[int, tuple[onnx.ModelProto, ort.InferenceSession]] = {}

    def validate(model: onnx.ModelProto, data: Iterable[Any]) -> tuple[float, list[float]]:
        if id(model) not in cache or cache[id(model)][0] is not model:
            cache.clear()  # NNCF validates one model at a time: keep its session for the per-item calls
            cache[id(model)] = (model, _session(model))
        batch = list(data)
        out = _first_output(cache[id(model)][1], output, [inputs for inputs, _ in batch])
        want = np.stack([t for _, t in batch])
        if ev.metric == "top1":
            values = (np.argmax(out, axis=-1).reshape(-1) == want).astype(np.float64)
        else:
            values = rowwise_cosine(out.reshape(len(batch), -1).astype(np.float32), want)
        return float(np.mean(values)), [float(v) for v in values]

    if ev.metric == "cosine":
        fp32_value = validate(fp32_model, items)[0]
        max_drop = max(0.0, fp32_value - ev.min_cosine)
    else:
        fp32_value = float("nan")
        max_drop = ev.max_drop
    return nncf.Dataset(items), validate, max_drop, fp32_value


def _load(model_path: str | Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(model_path))
    except Exception as exc:
        raise QuantizationError(f"cannot load {model_path}: {type(exc).__name__}: {exc}") from exc


def _save(model: onnx.ModelProto, out_path: Path, start: float, settings: dict[str, Any]) -> NNCFResult:
    elapsed = time.perf_counter() - start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    try:  # NNCF can write graphs this ONNX Runtime refuses (e.g. INT4_ASYM MatMulNBits zero points in 3.4.0)
        ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise QuantizationError(
            f"{settings['algorithm']} wrote {out_path}, which ONNX Runtime {ort.__version__} cannot load: {type(exc).__name__}: {exc}"
        ) from exc
    ops = dict(collections.Counter(n.op_type for n in model.graph.node))
    return NNCFResult(onnx_path=str(out_path.resolve()), settings=settings, op_counts=ops, quantize_s=round(elapsed, 3))


def quantize_static_nncf(
    spec: PipelineSpec, variant: QuantizationVariantSpec, fp32_path: str | Path, out_path: str | Path
) -> NNCFResult:
    """Static INT8 with ``nncf.quantize``, or ``nncf.quantize_with_accuracy_control`` when the
    variant sets ``accuracy_control``.

    Args:
        spec: needs ``calibration`` (and ``evaluation`` for accuracy control).
        variant: a ``backend: nncf``, ``mode: static`` variant.
        fp32_path: the FP32 parent model.
        out_path: where the QDQ model is written.

    Raises:
        DataError: calibration / evaluation data missing or not matching the inputs.
        QuantizationError: NNCF failed (its message included), or the model cannot be loaded.
    """
    from nncf.quantization.advanced_parameters import (  # submodule: not re-exported by nncf
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    cal = spec.calibration
    if cal is None:
        raise SpecError(f"variant {variant.name!r}: static quantization needs a `calibration` section")
    model = _load(fp32_path)
    dataset = calibration_dataset(calibration_source(spec), cal.effective_chunk_size)
    advanced = AdvancedQuantizationParameters()
    if variant.smooth_quant_alpha is not None:
        advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=variant.smooth_quant_alpha)
    kwargs: dict[str, Any] = dict(
        preset=nncf.QuantizationPreset(variant.preset) if variant.preset else None,
        target_device=nncf.TargetDevice(variant.target_device),
        # NNCF counts subset_size in dataset items (here batches of chunk_size samples)
        subset_size=-(-(variant.subset_size or 300) // cal.effective_chunk_size),  # 300 samples: NNCF's default
        fast_bias_correction=variant.fast_bias_correction,
        model_type=nncf.ModelType(variant.model_type) if variant.model_type else None,
        ignored_scope=ignored_scope(variant),
    )
    settings: dict[str, Any] = {
        "nncf_version": nncf.__version__,
        "preset": variant.preset,
        "target_device": variant.target_device,
        "subset_size": variant.subset_size or 300,
        "subset_batches": kwargs["subset_size"],
        "fast_bias_correction": variant.fast_bias_correction,
        "model_type": variant.model_type,
        "smooth_quant_alpha": variant.smooth_quant_alpha,
        "calibration_batch_size": cal.effective_chunk_size,
    }
    start = time.perf_counter()
    if variant.accuracy_control is None:
        settings["algorithm"] = "nncf.quantize"
        with nncf_errors(variant, "nncf.quantize"):
            quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **kwargs)
    else:
        ac = variant.accuracy_control
        val_data, val_fn, gate_drop, fp32_value = validation_setup(spec, model)
        max_drop = ac.max_drop if ac.max_drop is not None else gate_drop
        restorer = AdvancedAccuracyRestorerParameters()
        if ac.max_num_iterations is not None:
            restorer.max_num_iterations = ac.max_num_iterations
        if ac.ranking_subset_size is not None:
            restorer.ranking_subset_size = ac.ranking_subset_size
        settings.update(
            algorithm="nncf.quantize_with_accuracy_control",
            max_drop=max_drop,
            metric=spec.evaluation.metric if spec.evaluation else None,
            fp32_metric=None if np.isnan(fp32_value) else fp32_value,
            max_num_iterations=ac.max_num_iterations,
            ranking_subset_size=ac.ranking_subset_size,
        )
        with nncf_errors(variant, "nncf.quantize_with_accuracy_control"):
            quantized = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                val_data,
                val_fn,
                max_drop=max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                advanced_quantization_parameters=advanced,
                advanced_accuracy_restorer_parameters=restorer,
                **kwargs,
            )
    return _save(quantized, Path(out_path), start, settings)


def compress_weights_nncf(
    spec: PipelineSpec, variant: QuantizationVariantSpec, fp32_path: str | Path, out_path: str | Path
) -> NNCFResult:
    """Weight-only INT8 / INT4 with ``nncf.compress_weights``.

    Mode: ``INT8_SYM`` / ``INT8_ASYM`` (``weight_only_int8``) or ``INT4_SYM`` / ``INT4_ASYM``
    (``weight_only_int4``), by ``is_symmetric``. AWQ and scale estimation read the calibration set.

    Raises:
        DataError: calibration data missing or not matching the inputs (AWQ / scale estimation).
        QuantizationError: NNCF failed (its message included), or the model cannot be loaded.
    """
    bits = 4 if variant.mode == "weight_only_int4" else 8
    mode = nncf.CompressWeightsMode[f"INT{bits}_{'SYM' if variant.is_symmetric else 'ASYM'}"]
    model = _load(fp32_path)
    dataset = None
    if variant.awq or variant.scale_estimation:
        cal = spec.calibration
        if cal is None:
            raise SpecError(f"variant {variant.name!r}: awq / scale_estimation need a `calibration` section")
        dataset = calibration_dataset(calibration_source(spec), 1)  # NNCF's data-aware weight methods take one sample per item
    kwargs: dict[str, Any] = dict(
        mode=mode,
        ratio=variant.ratio,
        group_size=variant.group_size,
        ignored_scope=ignored_scope(variant),
        dataset=dataset,
        awq=variant.awq or None,
        scale_estimation=variant.scale_estimation or None,
    )
    if variant.subset_size is not None:
        kwargs["subset_size"] = variant.subset_size
    settings = {
        "algorithm": "nncf.compress_weights",
        "nncf_version": nncf.__version__,
        "compress_mode": mode.value,
        "bits": bits,
        "ratio": variant.ratio,
        "group_size": variant.group_size,
        "awq": variant.awq,
        "scale_estimation": variant.scale_estimation,
        "subset_size": variant.subset_size,
    }
    start = time.perf_counter()
    with nncf_errors(variant, "nncf.compress_weights"):
        compressed = nncf.compress_weights(model, **kwargs)
    return _save(compressed, Path(out_path), start, settings)


def quantize_nncf(
    spec: PipelineSpec, variant: QuantizationVariantSpec, fp32_path: str | Path, out_path: str | Path
) -> NNCFResult:
    """Build a ``backend: nncf`` variant: :func:`quantize_static_nncf` (mode ``static``) or
    :func:`compress_weights_nncf` (``weight_only_int8`` / ``weight_only_int4``).

    Raises:
        SpecError: the variant is not an NNCF variant.
        DataError, QuantizationError: see the two functions.
    """
    if variant.backend != "nncf":
        raise SpecError(f"variant {variant.name!r}: backend is {variant.backend}, not nncf")
    if variant.mode == "static":
        result = quantize_static_nncf(spec, variant, fp32_path, out_path)
    else:
        result = compress_weights_nncf(spec, variant, fp32_path, out_path)
    logger.info("%s built %s in %.1f s", result.settings["algorithm"], variant.name, result.quantize_s)
    return result
