"""``export.exporter: auto`` as a subflow of the pipeline: export with every exporter, validate each
against PyTorch, benchmark the valid ones, keep the fastest.

The steps are the pipeline's own Prefect tasks (export and validation cached like the pipeline's),
so they show under this child flow run in the Prefect UI; the comparison is
:func:`tasks.export.compare_exports`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from edgeport.data import benchmark_samples_path
from edgeport.errors import ExportError, ValidationFailed
from edgeport.spec import PipelineSpec
from flows.caching import cached_export
from flows.hooks import cancel_when_interrupted
from tasks.benchmark import benchmark_target_task
from tasks.export import (
    EXPORTERS,
    ExportResult,
    compare_exports,
    new_candidate,
    no_valid_export,
    selection_benchmark_spec,
    with_exporter,
)
from tasks.validate import validate_task

__all__ = ["select_export_flow"]


@flow(
    name="edgeport-select-export", description="export.exporter auto: the fastest valid ONNX exporter.",
    on_crashed=[cancel_when_interrupted],
)
def select_export_flow(spec: PipelineSpec, output_dir: str, cache_dir: str | None = None) -> tuple[ExportResult, dict]:
    """Export with every exporter (:data:`tasks.export.EXPORTERS`), validate each against PyTorch, and
    keep the fastest valid one: p50 (ms) on the spec's first target at the primary batch size,
    measured again on every run into ``<output_dir>/export-selection``.

    Returns:
        (the winner's :class:`tasks.export.ExportResult`, the comparison: ``{"selected", "candidates":
        {exporter: {"onnx_path", "valid", "error", "p50_ms", "export_s", "cached"}}}``).

    Raises:
        ExportError: no exporter produced a valid model (the message lists each one's error).
        CheckpointError, SpecError, DataError, RuntimeLoadError: bad input (the same for every exporter).
    """
    logger = get_run_logger()
    candidates: dict[str, dict] = {}
    results: dict[str, ExportResult] = {}
    for exporter in EXPORTERS:
        variant_spec = with_exporter(spec, exporter)
        entry = candidates[exporter] = new_candidate()
        try:
            result = cached_export(variant_spec, cache_dir)
            entry.update(onnx_path=result.onnx_path, export_s=result.export_s, cached=result.cached)
            validate_task(variant_spec, result.onnx_path)
        except (ExportError, ValidationFailed) as exc:  # bad input (checkpoint, data, opset) propagates
            entry["error"] = f"{type(exc).__name__}: {exc}"
            logger.warning("exporter %s rejected: %s", exporter, entry["error"])
            continue
        entry["valid"] = True
        results[exporter] = result
    if not results:
        raise no_valid_export(candidates)
    measured = benchmark_target_task.with_options(refresh_cache=True)(  # a comparison: always measured now
        selection_benchmark_spec(spec), spec.targets[0], {e: r.onnx_path for e, r in results.items()},
        benchmark_samples_path(spec), str(Path(output_dir) / "export-selection"),
    )
    selected = compare_exports(candidates, measured)
    return results[selected], {"selected": selected, "candidates": candidates}
