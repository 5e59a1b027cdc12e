"""Bounded-memory calibration for static quantization, written as an ONNX Runtime calibration cache.

``quantize_static`` calibrates with one ``collect_data(reader)`` call over the whole
reader. ONNX Runtime's calibrators keep what that call collects until it returns:

* ``MinMaxCalibrater`` keeps one ReduceMin/ReduceMax pair per tensor and batch (small);
* ``HistogramCalibrater`` (``Entropy``, ``Percentile``, ``Distribution``) keeps **every
  calibrated activation of every sample** (the augmented model outputs each float
  tensor), then stacks them (``np.asarray``, another full copy) to build histograms.
  For MiniLM at 128 tokens that is roughly 30 MB per sentence: 2,000 sentences do not
  fit in 24 GiB. The stacking also fails on a reader whose last batch is smaller.

Both calibrators do merge across ``collect_data`` calls: ranges (MinMax) and
histograms (``HistogramCollector.merge_histogram``) persist in the calibrator, and each
call ends with ``clear_collected_data()``, which drops the per-sample outputs. But a
histogram merged across calls is not the one-shot histogram: its bin edges are set by
the first call and widened by whole bins as later calls see larger values. Percentile
thresholds move by about a bin; Entropy (KL search over the bins) moves by up to half
the range on MiniLM. So :func:`calibrate_chunked` does:

* MinMax: ONNX Runtime's ``MinMaxCalibrater``, one ``collect_data`` call per chunk of
  ``chunk_size`` samples (exactly the one-shot ranges);
* histogram methods (``exact=True``, the default): two passes over the chunks with the
  calibrator's augmented session: pass 1 finds each tensor's range, pass 2 adds up each
  chunk's histogram over that fixed range, in the layout ``HistogramCollector`` builds
  in one shot; the collector's own ``compute_collection_result()`` then picks the
  thresholds. Same histograms, same thresholds as one-shot calibration, at twice the
  inference time. ``exact=False`` uses ORT's merge instead (one pass, approximate).

Peak memory is set by ``chunk_size``, not by the number of samples: the data is a
:class:`~edgeport.datasources.DataSource` (any spec data kind, read chunk by chunk) or, as
before, in-memory arrays.

The ranges are saved with ``onnxruntime.quantization.save_tensors_data`` (JSON);
``quantize_static(..., calibration_data_reader=None, calibration_cache_path=PATH,
calibrate_method=<the same method>)`` then loads them with ``load_tensors_data`` and
skips its own calibration (it refuses a cache made with another method).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeport.datasources import ArraySource, DataSource
from edgeport.errors import DataError, QuantizationError

logger = logging.getLogger("edgeport.calibration")

__all__ = [
    "CALIBRATION_METHODS",
    "CalibrationResult",
    "calibrate_chunked",
    "calibrator_options",
    "tensor_ranges",
    "write_calibration_cache",
]

#: Calibration methods (``onnxruntime.quantization.CalibrationMethod`` names).
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")

#: ``quantize_static`` ``extra_options`` keys -> ``create_calibrator`` option names (the
#: mapping ``quantize_static`` itself applies), so a cache matches what it would compute.
_EXTRA_OPTION_KEYS = {
    "CalibTensorRangeSymmetric": "symmetric",
    "CalibMovingAverage": "moving_average",
    "CalibMovingAverageConstant": "averaging_constant",
    "CalibMaxIntermediateOutputs": "max_intermediate_outputs",
    "CalibPercentile": "percentile",
    # edgeport's additions (``quantize_static`` does not pass these to its calibrator):
    "CalibNumBins": "num_bins",
    "CalibNumQuantizedBins": "num_quantized_bins",
}


@dataclass(frozen=True)
class CalibrationResult:
    """A calibration cache on disk and how it was made.

    Attributes:
        cache_path: absolute path of the JSON cache (``save_tensors_data`` format).
        method: calibration method name.
        num_samples: samples calibrated on.
        chunk_size: samples per ``collect_data`` call (one session run).
        num_chunks: ``collect_data`` calls.
        num_tensors: tensors with a range in the cache.
        calibrate_s: wall seconds.
    """

    cache_path: str
    method: str
    num_samples: int
    chunk_size: int
    num_chunks: int
    num_tensors: int
    calibrate_s: float


class _OneBatchReader:
    """``CalibrationDataReader`` that yields one batch, then None."""

    def __init__(self, batch: dict[str, np.ndarray]) -> None:
        self._batch: dict[str, np.ndarray] | None = batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch, self._batch = self._batch, None
        return batch


def calibrator_options(extra_options: dict[str, Any] | None) -> dict[str, Any]:
    """``create_calibrator`` options from ``quantize_static``-style ``extra_options``
    (``CalibTensorRangeSymmetric``, ``CalibMovingAverage``, ``CalibMovingAverageConstant``,
    ``CalibMaxIntermediateOutputs``, ``CalibPercentile``), plus ``CalibNumBins`` and
    ``CalibNumQuantizedBins``, which ``quantize_static`` cannot pass; other keys are ignored.

    Note: ``Entropy`` with ONNX Runtime's defaults (128 bins, 128 quantized bins) has a
    single candidate threshold, the full range: it returns exactly the MinMax ranges.
    Give ``CalibNumBins`` > ``CalibNumQuantizedBins`` (e.g. 2048 / 128) for a real KL search.
    """
    return {opt: (extra_options or {})[key] for key, opt in _EXTRA_OPTION_KEYS.items() if key in (extra_options or {})}


def _as_source(data: dict[str, np.ndarray] | DataSource) -> DataSource:
    """``data`` as a :class:`~edgeport.datasources.DataSource` (arrays are wrapped, not copied)."""
    return data if isinstance(data, DataSource) else ArraySource(data, field="calibration data")


def calibrate_chunked(
    model_path: str | Path,
    arrays: dict[str, np.ndarray] | DataSource,
    method: str = "MinMax",
    chunk_size: int = 16,
    op_types_to_calibrate: list[str] | None = None,
    extra_options: dict[str, Any] | None = None,
    providers: list[str] | None = None,
    exact: bool = True,
):
    """Calibrate ``model_path`` on ``arrays``, ``chunk_size`` samples per session run.

    Args:
        model_path: the model ``quantize_static`` will quantize (after ``quant_pre_process``:
            the calibrator needs the shapes of every activation).
        arrays: ``{input name: ndarray of shape (n_samples, *dims)}``, or a data source
            (:func:`edgeport.data.calibration_source`), read ``chunk_size`` samples at a time.
        method: one of :data:`CALIBRATION_METHODS`.
        chunk_size: samples per session run: sets the peak memory (for histogram methods
            about ``chunk_size`` x the calibrated activations of one sample, twice over).
        op_types_to_calibrate: calibrate the tensors of these op types only (``quantize_static``
            passes its ``op_types_to_quantize``); None = every float tensor.
        extra_options: ``quantize_static``-style options (see :func:`calibrator_options`).
        providers: ONNX Runtime providers for the calibration session (default CPU).
        exact: histogram methods only: two passes giving one-shot calibration's exact
            histograms (default), or one pass with ONNX Runtime's approximate merge.

    Returns:
        ``onnxruntime.quantization.calibrate.TensorsData``, as ``compute_data()`` returns it.

    Raises:
        DataError: ``arrays`` is empty or ``chunk_size`` < 1.
        QuantizationError: an unknown method, or ONNX Runtime's calibrator failed.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"unknown calibration method {method!r}; use one of {CALIBRATION_METHODS}")
    if chunk_size < 1:
        raise DataError(f"chunk_size must be at least 1, got {chunk_size}")
    source = _as_source(arrays)
    if source.num_samples == 0:
        raise DataError("calibration data holds no samples")
    calibrator = None
    with tempfile.TemporaryDirectory(prefix="edgeport-calib-") as tmp:
        try:
            calibrator = create_calibrator(
                Path(model_path),
                op_types_to_calibrate,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod[method],
                use_external_data_format=False,
                providers=providers,
                extra_options=calibrator_options(extra_options),
            )
            if method != "MinMax" and exact:
                return _exact_histogram_calibration(calibrator, source, chunk_size, CalibrationMethod[method])
            chatter = io.StringIO()  # HistogramCollector print()s on every call
            with contextlib.redirect_stdout(chatter):
                for chunk in source.iter_inputs(chunk_size):
                    calibrator.collect_data(_OneBatchReader(chunk))
                    calibrator.clear_collected_data()
                return calibrator.compute_data()
        except (DataError, QuantizationError):
            raise
        except Exception as exc:
            raise QuantizationError(f"{method} calibration of {model_path} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            del calibrator  # release the session before its folder goes


def _run_chunks(calibrator, source: DataSource, chunk_size: int):
    """Yield ``{tensor name: activations}`` of the calibrated tensors, one chunk at a time."""
    session = calibrator.infer_session
    names = [o.name for o in session.get_outputs()]
    wanted = calibrator.tensors_to_calibrate
    for chunk in source.iter_inputs(chunk_size):
        outputs = session.run(None, chunk)
        yield {name: value for name, value in zip(names, outputs) if name in wanted}
        del outputs


def _exact_histogram_calibration(calibrator, source: DataSource, chunk_size: int, method):
    """Two passes: ranges, then fixed-range histograms summed over the chunks, in the layout
    of ``HistogramCollector.collect_value`` / ``collect_absolute_value`` on all data at once."""
    from onnxruntime.quantization.calibrate import HistogramCollector, TensorsData

    absolute = calibrator.method == "percentile" and calibrator.symmetric
    lows: dict[str, np.ndarray] = {}
    highs: dict[str, np.ndarray] = {}
    abs_lows: dict[str, np.ndarray] = {}
    abs_highs: dict[str, np.ndarray] = {}
    for outputs in _run_chunks(calibrator, source, chunk_size):  # pass 1: ranges
        for name, value in outputs.items():
            if value.size == 0:
                continue
            lo, hi = np.nanmin(value), np.nanmax(value)
            lows[name] = lo if name not in lows else min(lows[name], lo)
            highs[name] = hi if name not in highs else max(highs[name], hi)
            if absolute:
                magnitude = np.abs(value)
                alo, ahi = np.nanmin(magnitude), np.nanmax(magnitude)
                abs_lows[name] = alo if name not in abs_lows else min(abs_lows[name], alo)
                abs_highs[name] = ahi if name not in abs_highs else max(abs_highs[name], ahi)
    num_bins = calibrator.num_bins
    counts: dict[str, np.ndarray] = {}
    edges: dict[str, np.ndarray] = {}
    for outputs in _run_chunks(calibrator, source, chunk_size):  # pass 2: histograms
        for name, value in outputs.items():
            if name not in lows:
                continue
            if absolute:
                hist, hist_edges = np.histogram(np.abs(value), bins=num_bins, range=(abs_lows[name], abs_highs[name]))
            else:
                threshold = np.array(max(abs(lows[name]), abs(highs[name])), dtype=value.dtype)
                hist, hist_edges = np.histogram(value, num_bins, range=(-threshold, threshold))
            counts[name] = hist if name not in counts else counts[name] + hist
            edges[name] = hist_edges.astype(value.dtype)
    collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    for name, hist in counts.items():
        low, high = lows[name], highs[name]
        if absolute:
            collector.histogram_dict[name] = (hist, edges[name], low, high)
        else:
            threshold = np.array(max(abs(low), abs(high)), dtype=edges[name].dtype)
            collector.histogram_dict[name] = (hist, edges[name], low, high, threshold)
    if not collector.histogram_dict:
        raise QuantizationError("no calibrated tensor produced any value")
    with contextlib.redirect_stdout(io.StringIO()):
        result = collector.compute_collection_result()
    return TensorsData(method, result)


def tensor_ranges(tensors_data) -> dict[str, tuple[float, float]]:
    """``{tensor name: (lowest, highest)}`` of a ``TensorsData`` (scalars; per-channel ranges
    are reduced to their overall min/max)."""
    out = {}
    for name, value in tensors_data.items():
        low, high = value.range_value
        out[name] = (float(np.min(low)), float(np.max(high)))
    return out


def write_calibration_cache(
    model_path: str | Path,
    arrays: dict[str, np.ndarray] | DataSource,
    cache_path: str | Path,
    method: str = "MinMax",
    chunk_size: int = 16,
    op_types_to_calibrate: list[str] | None = None,
    extra_options: dict[str, Any] | None = None,
) -> CalibrationResult:
    """Chunked calibration (:func:`calibrate_chunked`) saved as a ``quantize_static`` cache.

    Use it as::

        write_calibration_cache(pre, arrays, cache, method="Percentile")
        quantize_static(pre, out, None, calibration_cache_path=cache,
                        calibrate_method=CalibrationMethod.Percentile, ...)

    Returns:
        :class:`CalibrationResult`.

    Raises:
        DataError, QuantizationError: see :func:`calibrate_chunked`.
    """
    from onnxruntime.quantization.calibrate import save_tensors_data

    start = time.perf_counter()
    source = _as_source(arrays)
    data = calibrate_chunked(model_path, source, method, chunk_size, op_types_to_calibrate, extra_options)
    cache_path = Path(cache_path)
    save_tensors_data(data, cache_path, smooth_quant=False)
    n = source.num_samples
    result = CalibrationResult(
        cache_path=str(cache_path.resolve()),
        method=method,
        num_samples=n,
        chunk_size=chunk_size,
        num_chunks=-(-n // chunk_size),
        num_tensors=len(list(data.keys())),
        calibrate_s=round(time.perf_counter() - start, 3),
    )
    logger.info("calibrated %s (%s, %d samples in %d chunks) in %.1f s -> %s", model_path, method, n, result.num_chunks, result.calibrate_s, cache_path)
    return result
