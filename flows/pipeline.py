"""The edgeport pipeline flow: checkpoint -> ONNX -> validate -> [optimize -> validate] -> quantize
-> validate -> evaluate -> [search] -> benchmark -> register -> report.

This module only composes: :func:`pipeline` reads as the table of contents, each stage a named
helper below it or a subflow (:mod:`flows.search`, :mod:`flows.export`). The steps are in
``tasks/``, the cache policy in :mod:`flows.caching`, the Prefect artifacts in
:mod:`flows.artifacts`, the records in :mod:`edgeport.records`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event
from prefect.runtime import flow_run

from edgeport.data import benchmark_samples_path
from edgeport.errors import RegistryError, RegistryUnavailable
from edgeport.home import default_output_dir
from edgeport.records import (
    BenchmarkEntry,
    Challenger,
    Evaluation,
    FlowRunInfo,
    RunSummary,
    Validation,
    VariantRecord,
    gate_verdict,
)
from edgeport.registry import (
    clear_pending_registration,
    resolve_tracking_uri,
    with_retry_window,
    write_pending_registration,
)
from edgeport.spec import PipelineSpec, load_spec
from flows.artifacts import benchmark_progress, publish_benchmarks, publish_summary
from flows.caching import RunLog, cached_export, latencies_kept, report_restored
from flows.export import select_export_flow
from flows.hooks import cancel_when_interrupted
from flows.remote_benchmark import remote_benchmark_task
from flows.search import search_flow
from tasks.benchmark import benchmark_target_task
from tasks.cache import files_intact
from tasks.evaluate import evaluate_task
from tasks.export import ExportResult, with_exporter
from tasks.optimize import optimize_task
from tasks.preflight import preflight_task
from tasks.quantize import quantize_task
from tasks.register import check_tracking_uri_task, register_task
from tasks.report import report_task
from tasks.search import log_search_task
from tasks.validate import validate_task

__all__ = ["PIPELINE_COMPLETED_EVENT", "pipeline"]

#: Prefect event emitted when a pipeline run registered a challenger (triggers the promotion deployment).
PIPELINE_COMPLETED_EVENT = "edgeport.pipeline.completed"


@flow(
    name="edgeport-pipeline", description="Checkpoint -> validated, quantized, benchmarked ONNX variants -> MLflow registry.",
    on_crashed=[cancel_when_interrupted],
)
def pipeline(
    spec_path: str,
    output_dir: str | None = None,
    tracking_uri: str | None = None,
    checkpoint: str | None = None,
    rebenchmark: bool = False,
    register_always: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline for one spec.

    The expensive deterministic steps (export, optimize, quantize, validate, evaluate,
    benchmark) are cached by Prefect on their input files' sha256 and settings
    (:mod:`tasks.cache`): a re-run after a failure resumes where it stopped (``summary["cache"]``
    tells which steps came from the cache). Results are written to ``output_dir`` before MLflow
    is touched (``summary.json`` with ``registration: pending`` and ``registration-pending.json``);
    register and report retry transient MLflow errors within ``registry.retry.window_s``.

    Args:
        spec_path: the pipeline spec (YAML).
        output_dir: where variants, reports and ``summary.json`` go (default
            ``$EDGEPORT_HOME/outputs/<spec name>``).
        tracking_uri: MLflow tracking URI overriding ``registry.tracking_uri``.
        checkpoint: PyTorch checkpoint overriding ``model.checkpoint`` (relative paths resolve
            against the working directory); the ``edgeport.checkpoint.created`` trigger passes
            it from the event payload. Checked by preflight like the spec's own.
        rebenchmark: measure the benchmarks again instead of reusing cached ones (the nightly
            re-benchmark sets it; other cached steps are still reused).
        register_always: register every passing variant as a new model version, even one
            identical to an existing version (default: reuse it; also ``registry.register_always``).

    Emits:
        ``edgeport.pipeline.completed`` (:data:`PIPELINE_COMPLETED_EVENT`) when the run registered
        a challenger: resource ``edgeport.registered-model.<name>``; payload ``registered_model``,
        ``version`` (the challenger's model version), ``alias``, ``variant``, ``tracking_uri``,
        ``spec_path``, ``checkpoint``, ``flow_run_id``. The promotion deployment is triggered by it.

    Returns:
        The summary (the ``summary.json`` contract documented in docs/spec.md).

    Raises:
        EdgeportError subclasses: bad input, a failed export or FP32 validation, an unreachable
        registry (after retries). Nothing is registered when the run fails.
    """
    run = RunLog()
    spec = _load(spec_path, checkpoint)
    out = Path(output_dir).resolve() if output_dir else default_output_dir(spec.name)
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(spec.registry.tracking_uri, tracking_uri)
    check_tracking_uri_task(uri)  # fail before any work when MLflow is unreachable
    with run.timed("preflight"):
        preflight_task(spec)  # bad input fails here, in seconds, naming the culprit

    with run.timed("export"):
        spec, export, selection = _export(spec, out, run)
    with run.timed("validate"):
        fp32 = _fp32_variant(spec, export, selection, out, run)
    variants = [fp32]
    parent = fp32  # the FP32 model the quantized variants are built from (the optimized one when there is one)
    if spec.optimization is not None:
        parent = _optimized_variant(spec, export, out, run)
        variants.append(parent)
    variants += [_quantized_variant(spec, vspec, fp32 if vspec.parent == "fp32" else parent, export.opset, out, run) for vspec in spec.quantization]
    if spec.evaluation is not None:
        with run.timed("evaluate"):
            _evaluate(spec, variants, out, run)

    search = None  # accuracy-aware quantization search: a child flow run; its winners (one per target) join the variants
    if spec.search is not None:
        with run.timed("search"):
            winners, search = search_flow(spec, [v.model_dump() for v in variants], str(out))
        variants += winners

    with run.timed("benchmark"):
        _benchmark(spec, spec_path, variants, out, run, rebenchmark)
    for record in variants:
        record.passed, not_registered = gate_verdict(record, spec, search)
        if not_registered:
            record.not_registered = not_registered

    info = FlowRunInfo(id=str(flow_run.id), name=flow_run.name, url=flow_run.ui_url) if flow_run.id else None
    summary = RunSummary(
        spec=str(Path(spec_path).resolve()), name=spec.name, registration="pending", tracking_uri=uri,
        registered_model=spec.registry.registered_model, prefect_flow_run=info, variants=variants,
        cache=run.cache, timings_s=run.timings, search=search,
    )
    with run.timed("register"):
        _register(spec, spec_path, summary, out, register_always)
    if search is not None:  # trials as nested runs, sensitivity and pareto plots under search/
        with _soft_fail("search not logged to MLflow", RegistryError):
            log_search_task(uri, summary.mlflow_run_id, search)
    with run.timed("report"), _soft_fail("plots not logged to MLflow (past the retry window)", RegistryUnavailable):
        summary.plots = with_retry_window(report_task, spec.registry.retry)(spec, _dicts(variants), str(out), uri, summary.mlflow_run_id)

    run.total()
    summary.timings_s = dict(run.timings)
    _write(summary, out)
    publish_summary(spec, summary)
    get_run_logger().info("summary: %s", out / "summary.json")
    result = summary.model_dump()
    if summary.challenger:
        _emit_completed(spec, result)
    return result


# --------------------------------------------------------------------------- stages


def _dicts(variants: list[VariantRecord]) -> list[dict[str, Any]]:
    """The variant records as the steps take them (the ``summary.json`` dicts)."""
    return [v.model_dump() for v in variants]


def _write(summary: RunSummary, out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary.model_dump(), indent=2, default=str))


def _load(spec_path: str, checkpoint: str | None) -> PipelineSpec:
    """The spec, with its model source file (``model.checkpoint``, ``.onnx``, ``.pt2`` or folder)
    overridden by ``checkpoint`` (resolved against the cwd)."""
    spec = load_spec(spec_path)
    if checkpoint is not None:
        ckpt = Path(checkpoint).expanduser().resolve()
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={spec.model.source: ckpt})})
        get_run_logger().info("checkpoint: %s (overrides model.%s)", ckpt, spec.model.source)
    return spec


def _export(spec: PipelineSpec, out: Path, run: RunLog) -> tuple[PipelineSpec, ExportResult, dict | None]:
    """Export (``exporter: auto``: the :func:`flows.export.select_export_flow` subflow); returns the spec
    with the exporter used, the export, and the exporter comparison (None unless auto)."""
    selection = None
    if spec.export.exporter == "auto":
        export, selection = select_export_flow(spec, str(out))
        spec = with_exporter(spec, export.exporter)  # the rest of the run uses the selected exporter
    else:
        export = cached_export(spec)
    run.hit("export", "fp32", export.cached)
    get_run_logger().info("export: %s (%s)", export.onnx_path, "cached" if export.cached else f"{export.export_s:.1f} s")
    return spec, export, selection


def _validated(spec: PipelineSpec, record: VariantRecord, out: Path, run: RunLog, reference_onnx: str | None = None) -> VariantRecord:
    """Validate ``record``'s model (against PyTorch, gated; or against ``reference_onnx``, reported)."""
    report = str(out / f"validation-{record.name}.json")
    kwargs = {} if reference_onnx is None else {"reference_onnx": reference_onnx}
    result = run.run("validate", record.name, validate_task, spec, record.path, report_path=report, intact=report_restored(report), **kwargs)
    record.validation = Validation.model_validate(result)
    return record


def _fp32_variant(spec: PipelineSpec, export: ExportResult, selection: dict | None, out: Path, run: RunLog) -> VariantRecord:
    record = VariantRecord(
        name="fp32", kind="fp32", path=export.onnx_path, size_bytes=export.size_bytes, sha256=export.model_sha256, opset=export.opset,
        lineage={"parent": f"checkpoint:{export.checkpoint_sha256}", "step": f"export:{export.exporter}", "cached": export.cached},
        export_selection=selection,
    )
    return _validated(spec, record, out, run)


def _optimized_variant(spec: PipelineSpec, export: ExportResult, out: Path, run: RunLog) -> VariantRecord:
    """ONNX Runtime's transformer optimizer on the FP32 model; gated against PyTorch like the export
    (a fusion that breaks parity fails the run)."""
    o = spec.optimization
    with run.timed("optimize"):
        opt = run.run(
            "optimize", "fp32-optimized", optimize_task, export.onnx_path, str(out / "variants" / "fp32-optimized.onnx"),
            model_type=o.model_type, num_heads=o.num_heads, hidden_size=o.hidden_size, opt_level=o.opt_level,
            require=dict(o.require) or None, intact=lambda r: files_intact({r.path: r.sha256}),
        )
    with run.timed("validate"):
        record = VariantRecord(
            name="fp32-optimized", kind="fp32", path=opt.path, size_bytes=opt.size_bytes, sha256=opt.sha256, opset=export.opset,
            fusions=opt.fusions,
            optimization={
                "model_type": opt.model_type, "num_heads": opt.num_heads, "hidden_size": opt.hidden_size, "opt_level": opt.opt_level,
                "nodes_before": opt.nodes_before, "nodes_after": opt.nodes_after,
                "onnxruntime_version": opt.onnxruntime_version, "optimize_s": opt.optimize_s,
            },
            lineage={"parent": "fp32", "parent_sha256": export.model_sha256, "step": f"optimize:{opt.model_type}"},
        )
        _validated(spec, record, out, run)
    get_run_logger().info("optimize: %s, fusions %s", opt.path, opt.fusions)
    return record


def _quantized_variant(spec: PipelineSpec, vspec: Any, base: VariantRecord, opset: int, out: Path, run: RunLog) -> VariantRecord:
    """Quantize ``base`` as ``vspec`` says; validated against ``base`` (reported, not gated)."""
    with run.timed("quantize"):
        q = run.run(
            "quantize", vspec.name, quantize_task, spec, vspec, base.path, str(out / "variants"), parent=base.name,
            intact=lambda r: files_intact({r.onnx_path: r.sha256}),
        )
    with run.timed("validate"):
        record = VariantRecord(
            name=q.name, kind=q.kind, path=q.onnx_path, size_bytes=q.size_bytes, sha256=q.sha256, opset=opset,
            quantization=q.settings, op_counts=q.op_counts,
            lineage={"parent": base.name, "parent_sha256": base.sha256, "step": f"quantize_{vspec.mode}"},
        )
        return _validated(spec, record, out, run, reference_onnx=base.path)


def _evaluate(spec: PipelineSpec, variants: list[VariantRecord], out: Path, run: RunLog) -> None:
    """Evaluate FP32 (the reference) and every variant that passed validation, gated on the drop."""

    def predictions_kept(r: dict[str, Any]) -> bool:
        return files_intact({r["predictions_path"]: None})

    fp32 = variants[0]
    reference = run.run("evaluate", "fp32", evaluate_task, spec, fp32.path, "fp32", str(out), intact=predictions_kept)
    fp32.evaluation = Evaluation.model_validate(reference)
    for record in variants[1:]:
        if record.validation.passed:
            result = run.run(
                "evaluate", record.name, evaluate_task, spec, record.path, record.name, str(out), reference=reference, intact=predictions_kept
            )
            record.evaluation = Evaluation.model_validate(result)


def _benchmark(spec: PipelineSpec, spec_path: str, variants: list[VariantRecord], out: Path, run: RunLog, rebenchmark: bool) -> None:
    """Benchmark every validated variant on every target: one target at a time (they share this
    host's cores), variants interleaved in rounds; a target with a ``work_pool`` is measured by a
    worker of that pool (:mod:`flows.remote_benchmark`)."""
    models = {r.name: r.path for r in variants if r.validation.passed}
    progress = benchmark_progress(spec)
    for i, target in enumerate(spec.targets):
        folder = str(out / "benchmarks" / target.name)
        if target.work_pool is not None:
            results = remote_benchmark_task(str(Path(spec_path).resolve()), target, models, benchmark_samples_path(spec), folder)
        else:
            results = run.run(
                "benchmark", target.name, benchmark_target_task, spec, target, models, benchmark_samples_path(spec), folder,
                on_progress=lambda f, i=i: progress((i + f) / len(spec.targets)), intact=latencies_kept, refresh=rebenchmark,
            )
        for record in variants:
            record.benchmarks += [BenchmarkEntry.model_validate(b) for b in results.get(record.name, [])]
        publish_benchmarks(spec, target, results)


def _register(spec: PipelineSpec, spec_path: str, summary: RunSummary, out: Path, register_always: bool = False) -> None:
    """Persist the results locally first (``summary.json`` pending, ``registration-pending.json``), so an
    MLflow outage past the retry window loses nothing and the re-run reuses the registration id to
    clean up after the failed attempt; then register (retrying transient MLflow errors)."""
    _write(summary, out)
    variants = _dicts(summary.variants)
    info = summary.prefect_flow_run.model_dump() if summary.prefect_flow_run else None
    pending = write_pending_registration(out, spec, spec_path, variants, summary.tracking_uri, flow_run=info)
    retry = spec.registry.retry
    try:
        registration = with_retry_window(register_task, retry)(
            spec, spec_path, variants, summary.tracking_uri, str(out), flow_run=info, registration_id=pending["registration_id"],
            register_always=register_always,
        )
    except RegistryUnavailable as exc:
        raise RegistryUnavailable(
            f"MLflow at {pending['tracking_uri']} stayed unreachable past the retry window "
            f"(registry.retry.window_s = {retry.window_s:g} s); nothing registered. Results are kept in {out} "
            f"({out / 'registration-pending.json'}); re-run to resume from the cached steps. Last error: {exc}"
        ) from exc
    clear_pending_registration(out)
    for record in summary.variants:
        record.model_version = registration["versions"].get(record.name)
        if record.name in registration.get("reused", []):
            record.reused = True
    summary.registration = "done"
    summary.mlflow_run_id = registration["mlflow_run_id"]
    summary.mlflow_run_url = registration.get("run_url")
    summary.mlflow_experiment_id = registration["experiment_id"]
    summary.challenger = Challenger.model_validate(registration["challenger"]) if registration["challenger"] else None
    if registration.get("challengers"):  # written only when set (records.RunSummary)
        summary.challengers = {t: Challenger.model_validate(c) for t, c in registration["challengers"].items()}
    _write(summary, out)


@contextmanager
def _soft_fail(what: str, *errors: type[Exception]):
    """After registration, an MLflow failure of a secondary step is a warning, not a failed run."""
    try:
        yield
    except errors as exc:
        get_run_logger().warning("%s: %s", what, exc)


def _emit_completed(spec: PipelineSpec, summary: dict[str, Any]) -> None:
    """Emit :data:`PIPELINE_COMPLETED_EVENT` for a run that registered a challenger."""
    name = summary["registered_model"]
    emit_event(
        event=PIPELINE_COMPLETED_EVENT,
        resource={"prefect.resource.id": f"edgeport.registered-model.{name}", "prefect.resource.name": name},
        payload={
            "registered_model": name,
            "version": str(summary["challenger"]["version"]),
            "alias": spec.registry.alias,
            "variant": summary["challenger"]["variant"],
            "tracking_uri": summary["tracking_uri"],
            "spec_path": summary["spec"],
            "checkpoint": str(spec.model.source_path),
            "flow_run_id": (summary["prefect_flow_run"] or {}).get("id"),
        },
    )
