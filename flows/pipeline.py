"""The edgeport pipeline flow: checkpoint -> ONNX -> validate -> [optimize -> validate] -> quantize
-> validate -> evaluate -> benchmark -> register -> report.

This module only composes the steps in ``tasks/`` and publishes Prefect artifacts;
the ONNX, ONNX Runtime and MLflow logic lives in the steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.runtime import flow_run

from edgeport.data import benchmark_samples_path
from edgeport.errors import RegistryError, RegistryUnavailable
from edgeport.home import default_output_dir
from edgeport.registry import (
    clear_pending_registration,
    resolve_tracking_uri,
    with_retry_window,
    write_pending_registration,
)
from edgeport.spec import PipelineSpec, load_spec
from flows.remote_benchmark import remote_benchmark_task
from tasks.benchmark import benchmark_target_task
from tasks.cache import files_intact
from tasks.evaluate import evaluate_task
from tasks.export import export_task, select_export_task, with_exporter
from tasks.optimize import optimize_task
from tasks.preflight import preflight_task
from tasks.quantize import quantize_task
from tasks.register import check_tracking_uri_task, register_task
from tasks.report import report_task
from tasks.validate import validate_task

__all__ = ["PIPELINE_COMPLETED_EVENT", "pipeline", "select_primary_benchmark"]

#: Prefect event emitted when a pipeline run registered a challenger (triggers the promotion deployment).
PIPELINE_COMPLETED_EVENT = "edgeport.pipeline.completed"

#: Where ``mlflow/server.sh`` serves the embedded store (override with EDGEPORT_MLFLOW_UI_URL).
LOCAL_MLFLOW_UI = os.environ.get("EDGEPORT_MLFLOW_UI_URL", "http://127.0.0.1:5000")


def select_primary_benchmark(variant: dict[str, Any], spec: PipelineSpec) -> dict[str, Any] | None:
    """The benchmark entry that ranks a variant: first target, primary batch size, status ``ok``."""
    target, batch = spec.targets[0].name, spec.benchmark.primary
    return next(
        (b for b in variant["benchmarks"] if b["target"] == target and b["batch_size"] == batch and b.get("status") == "ok"),
        None,
    )


def _variant_record(name: str, kind: str, path: str, size: int, sha: str, opset: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "path": path,
        "size_bytes": size,
        "sha256": sha,
        "opset": opset,
        "passed": False,
        "validation": None,
        "evaluation": None,
        "benchmarks": [],
        "model_version": None,
        **extra,
    }


def _metric_columns(spec: PipelineSpec) -> tuple[str, str, float]:
    """(value column, drop column, drop scale) named after the evaluation metric: top1 drops
    are shown in percentage points, cosine drops as they are."""
    metric = spec.evaluation.metric if spec.evaluation is not None else "metric"
    if metric == "top1":
        return "top1", "drop_pp", 100.0
    return metric, f"{metric}_drop", 1.0


def _round(x: Any, digits: int) -> Any:
    return None if x is None or x != x else round(x, digits)  # x != x: NaN


def _summary_table(spec: PipelineSpec, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    value_col, drop_col, scale = _metric_columns(spec)
    rows = []
    for v in variants:
        bench = select_primary_benchmark(v, spec)
        ev = v["evaluation"] or {}
        rows.append(
            {
                "variant": v["name"],
                "kind": v["kind"],
                "size_kb": round(v["size_bytes"] / 1024, 1),
                "validation": "passed" if (v["validation"] or {}).get("passed") else "FAILED",
                value_col: None if not ev else _round(ev["value"], 4),
                drop_col: None if not ev else _round(scale * ev["drop"], 4 if scale == 1 else 2),
                f"p50_ms@b{spec.benchmark.primary}": None if bench is None else round(bench["p50_ms"], 4),
                "passed": v["passed"],
                "model_version": v["model_version"],
            }
        )
    return rows


def _cached(task_: Any, *args: Any, intact: Any = None, refresh: bool = False, **kwargs: Any) -> tuple[Any, bool]:
    """Call a cached step (see :mod:`tasks.cache`); returns ``(result, cached)``.

    A ``Cached`` result is used only when ``intact(result)`` says its output files are still
    there (and unchanged); otherwise, or with ``refresh``, the step runs again with
    ``refresh_cache=True`` (which also replaces the cache entry). Failures raise as usual.
    """
    if refresh:
        return task_.with_options(refresh_cache=True)(*args, **kwargs), False
    state = task_(*args, return_state=True, **kwargs)
    result = state.result()
    if state.name != "Cached":
        return result, False
    if intact is None or intact(result):
        return result, True
    get_run_logger().warning("%s: cached result's output files are gone or changed: running it again", task_.name)
    return task_.with_options(refresh_cache=True)(*args, **kwargs), False


def _report_restored(report_path: str) -> Any:
    """``intact`` check of a cached validation: (re)write its report file from the cached result."""

    def restore(report: dict[str, Any]) -> bool:
        Path(report_path).write_text(json.dumps(report, indent=2))
        return True

    return restore


def _latencies_kept(results: dict[str, list[dict[str, Any]]]) -> bool:
    """``intact`` check of cached benchmarks: every raw-latency file they name still exists, and
    no runner crashed or timed out (a ``failed`` entry is measured again, not reused)."""
    entries = [e for group in results.values() for e in group]
    if any(e.get("status") == "failed" for e in entries):
        return False
    paths = [p for e in entries for p in (e.get("latencies_paths") or [e.get("latencies_path")]) if p]
    return files_intact(dict.fromkeys(paths))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())


def _artifact_key(spec: PipelineSpec) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "edgeport-" + _slug(spec.name)


def _bench_row(b: dict[str, Any]) -> dict[str, Any]:
    def r(x: Any) -> Any:
        return None if x is None else round(x, 4)

    return {
        "batch": b["batch_size"],
        "status": b["status"],
        "providers_bound": ",".join(b.get("providers_bound") or []),
        "p50_ms": r(b.get("p50_ms")),
        "p90_ms": r(b.get("p90_ms")),
        "p99_ms": r(b.get("p99_ms")),
        "samples_per_s": r(b.get("throughput")),
        "ci_pct": r(b.get("ci_halfwidth_pct")),
        "drift_pct": r(b.get("drift_pct")),
        "runs": b.get("runs"),
        "error": (b.get("error") or "")[:120],
    }


def _publish_artifacts(spec: PipelineSpec, summary: dict[str, Any]) -> None:
    key = _artifact_key(spec)
    rows = _summary_table(spec, summary["variants"])
    create_table_artifact(table=rows, key=f"{key}-variants", description=f"Variants of {spec.name}")
    challenger = summary["challenger"]
    lines = [
        f"# edgeport: {spec.name}",
        "",
        f"Registered model **{summary['registered_model']}**; "
        + (
            f"alias `{spec.registry.alias}` -> version {challenger['version']} ({challenger['variant']})."
            if challenger
            else "no variant passed its gates: nothing registered."
        ),
        "",
        "| " + " | ".join(rows[0].keys() if rows else ()) + " |",
        "|" + "---|" * (len(rows[0]) if rows else 0),
    ]
    lines += ["| " + " | ".join(str(x) for x in r.values()) + " |" for r in rows]
    lines += ["", f"MLflow run: `{summary['mlflow_run_id']}` at `{summary['tracking_uri']}`"]
    create_markdown_artifact(markdown="\n".join(lines), key=f"{key}-summary", description="Pipeline summary")
    url = summary.get("mlflow_run_url")
    note = "MLflow run"
    if not url:  # a local store has no server: link to where mlflow/server.sh serves it
        url = f"{LOCAL_MLFLOW_UI}/#/experiments/{summary['mlflow_experiment_id']}/runs/{summary['mlflow_run_id']}"
        note = "MLflow run (local store: start mlflow/server.sh to open)"
    create_link_artifact(link=url, link_text=note, key=f"{key}-mlflow-run")


@flow(name="edgeport-pipeline", description="Checkpoint -> validated, quantized, benchmarked ONNX variants -> MLflow registry.")
def pipeline(
    spec_path: str,
    output_dir: str | None = None,
    tracking_uri: str | None = None,
    checkpoint: str | None = None,
    rebenchmark: bool = False,
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
    logger = get_run_logger()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(step: str, start: float) -> None:
        timings[step] = round(timings.get(step, 0.0) + time.perf_counter() - start, 3)

    cache: dict[str, dict[str, bool]] = {}  # step -> {item: came from the cache}

    def cached(step: str, item: str, task_: Any, *args: Any, **kwargs: Any) -> Any:
        result, hit = _cached(task_, *args, **kwargs)
        cache.setdefault(step, {})[item] = hit
        return result

    spec = load_spec(spec_path)
    if checkpoint is not None:
        ckpt = Path(checkpoint).expanduser().resolve()
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"checkpoint": ckpt})})
        logger.info("checkpoint: %s (overrides model.checkpoint)", ckpt)
    out = Path(output_dir).resolve() if output_dir else default_output_dir(spec.name)
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(spec.registry.tracking_uri, tracking_uri)
    check_tracking_uri_task(uri)  # fail before any work when MLflow is unreachable
    start = time.perf_counter()
    preflight_task(spec)  # bad input fails here, in seconds, naming the culprit
    lap("preflight", start)

    start = time.perf_counter()
    selection = None
    if spec.export.exporter == "auto":
        export, selection = select_export_task(spec, str(out))
        spec = with_exporter(spec, export.exporter)  # the rest of the run uses the selected exporter
    else:
        export_state = export_task(spec, return_state=True)
        export = export_state.result()
        if export_state.name == "Cached":
            if Path(export.onnx_path).is_file():
                export = dataclasses.replace(export, cached=True, export_s=0.0)
            else:  # the cache folder was cleaned since: export again
                export = export_task.with_options(refresh_cache=True)(spec)
    lap("export", start)
    cache["export"] = {"fp32": bool(export.cached)}
    logger.info("export: %s (%s)", export.onnx_path, "cached" if export.cached else f"{export.export_s:.1f} s")

    start = time.perf_counter()
    fp32 = _variant_record(
        "fp32",
        "fp32",
        export.onnx_path,
        export.size_bytes,
        export.model_sha256,
        export.opset,
        quantization=None,
        op_counts=None,
        lineage={"parent": f"checkpoint:{export.checkpoint_sha256}", "step": f"export:{export.exporter}", "cached": export.cached},
        export_selection=selection,
    )
    report = str(out / "validation-fp32.json")
    fp32["validation"] = cached("validate", "fp32", validate_task, spec, export.onnx_path, report_path=report, intact=_report_restored(report))
    lap("validate", start)
    variants = [fp32]
    parent = fp32  # the FP32 model every quantized variant is built from

    if spec.optimization is not None:
        opt_spec = spec.optimization
        start = time.perf_counter()
        opt = cached(
            "optimize",
            "fp32-optimized",
            optimize_task,
            export.onnx_path,
            str(out / "variants" / "fp32-optimized.onnx"),
            model_type=opt_spec.model_type,
            num_heads=opt_spec.num_heads,
            hidden_size=opt_spec.hidden_size,
            opt_level=opt_spec.opt_level,
            require=dict(opt_spec.require) or None,
            intact=lambda r: files_intact({r.path: r.sha256}),
        )
        lap("optimize", start)
        start = time.perf_counter()
        parent = _variant_record(
            "fp32-optimized",
            "fp32",
            opt.path,
            opt.size_bytes,
            opt.sha256,
            export.opset,
            quantization=None,
            op_counts=None,
            fusions=opt.fusions,
            optimization={
                "model_type": opt.model_type,
                "num_heads": opt.num_heads,
                "hidden_size": opt.hidden_size,
                "opt_level": opt.opt_level,
                "nodes_before": opt.nodes_before,
                "nodes_after": opt.nodes_after,
                "onnxruntime_version": opt.onnxruntime_version,
                "optimize_s": opt.optimize_s,
            },
            lineage={"parent": "fp32", "parent_sha256": export.model_sha256, "step": f"optimize:{opt.model_type}"},
        )
        # Gated against PyTorch, like the export: a fusion that breaks parity fails the run.
        report = str(out / "validation-fp32-optimized.json")
        parent["validation"] = cached(
            "validate", "fp32-optimized", validate_task, spec, opt.path, report_path=report, intact=_report_restored(report)
        )
        lap("validate", start)
        variants.append(parent)
        logger.info("optimize: %s, fusions %s", opt.path, opt.fusions)

    for vspec in spec.quantization:
        start = time.perf_counter()
        base = fp32 if vspec.parent == "fp32" else parent  # default: the optimized model when there is one
        q = cached(
            "quantize",
            vspec.name,
            quantize_task,
            spec,
            vspec,
            base["path"],
            str(out / "variants"),
            parent=base["name"],
            intact=lambda r: files_intact({r.onnx_path: r.sha256}),
        )
        lap("quantize", start)
        start = time.perf_counter()
        record = _variant_record(
            q.name,
            q.kind,
            q.onnx_path,
            q.size_bytes,
            q.sha256,
            export.opset,
            quantization=q.settings,
            op_counts=q.op_counts,
            lineage={"parent": base["name"], "parent_sha256": base["sha256"], "step": f"quantize_{vspec.mode}"},
        )
        report = str(out / f"validation-{q.name}.json")
        record["validation"] = cached(
            "validate", q.name, validate_task, spec, q.onnx_path, reference_onnx=base["path"], report_path=report,
            intact=_report_restored(report),
        )
        lap("validate", start)
        variants.append(record)

    if spec.evaluation is not None:
        start = time.perf_counter()
        predictions_kept = lambda r: files_intact({r["predictions_path"]: None})  # noqa: E731
        reference = cached("evaluate", "fp32", evaluate_task, spec, fp32["path"], "fp32", str(out), intact=predictions_kept)
        fp32["evaluation"] = reference
        for record in variants[1:]:
            if record["validation"]["passed"]:
                record["evaluation"] = cached(
                    "evaluate", record["name"], evaluate_task, spec, record["path"], record["name"], str(out),
                    reference=reference, intact=predictions_kept,
                )
        lap("evaluate", start)

    search = None  # accuracy-aware quantization search (tasks/search.py): its winner joins the variants
    if spec.search is not None:
        from tasks.search import run_search

        start = time.perf_counter()
        winner, search = run_search(spec, variants, str(out))
        if winner is not None:
            variants.append(winner)
        lap("search", start)

    # Benchmarks share this host's cores: one target at a time, variants interleaved in rounds.
    start = time.perf_counter()
    models = {r["name"]: r["path"] for r in variants if r["validation"]["passed"]}
    progress_id = create_progress_artifact(0.0, key=f"{_artifact_key(spec)}-benchmark-progress", description="Benchmarks done")
    for i, target in enumerate(spec.targets):
        if target.work_pool is not None:  # benchmarked by a worker of that pool (flows/remote_benchmark.py)
            results = remote_benchmark_task(
                str(Path(spec_path).resolve()), target, models, benchmark_samples_path(spec), str(out / "benchmarks" / target.name)
            )
        else:
            results, hit = _cached(
                benchmark_target_task,
                spec,
                target,
                models,
                benchmark_samples_path(spec),
                str(out / "benchmarks" / target.name),
                on_progress=lambda f, i=i: update_progress_artifact(progress_id, 100.0 * (i + f) / len(spec.targets)),
                intact=_latencies_kept,
                refresh=rebenchmark,
            )
            cache.setdefault("benchmark", {})[target.name] = hit
        for record in variants:
            record["benchmarks"] += results.get(record["name"], [])
        create_table_artifact(
            table=[{"variant": name, **_bench_row(b)} for name, entries in results.items() for b in entries],
            key=f"{_artifact_key(spec)}-benchmark-{_slug(target.name)}",
            description=f"Benchmarks on target {target.name} ({', '.join(target.providers)})",
        )
    lap("benchmark", start)

    for record in variants:
        record["passed"] = bool(
            record["validation"]["passed"]
            and (record["evaluation"] is None or record["evaluation"]["passed"])
            and select_primary_benchmark(record, spec) is not None
        )
    if search is not None and search["winner"] is None:  # no configuration meets the budget: register nothing
        for record in variants:
            record["passed"] = False
            record["not_registered"] = "search: no configuration meets the quality budget"

    start = time.perf_counter()
    info = {"id": str(flow_run.id), "name": flow_run.name, "url": flow_run.ui_url} if flow_run.id else None
    summary = {
        "spec": str(Path(spec_path).resolve()),
        "name": spec.name,
        "registration": "pending",
        "mlflow_run_id": None,
        "mlflow_run_url": None,
        "mlflow_experiment_id": None,
        "tracking_uri": uri,
        "registered_model": spec.registry.registered_model,
        "prefect_flow_run": info,
        "variants": variants,
        "challenger": None,
        "plots": [],
        "cache": cache,
        "timings_s": timings,
    }
    summary["search"] = search
    # Persist locally first: an MLflow outage past the retry window loses nothing, and the
    # re-run reuses the registration id to clean up after the failed attempt.
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    pending = write_pending_registration(out, spec, spec_path, variants, uri, flow_run=info)
    retry = spec.registry.retry
    try:
        registration = with_retry_window(register_task, retry)(
            spec, spec_path, variants, uri, str(out), flow_run=info, registration_id=pending["registration_id"]
        )
    except RegistryUnavailable as exc:
        raise RegistryUnavailable(
            f"MLflow at {pending['tracking_uri']} stayed unreachable past the retry window "
            f"(registry.retry.window_s = {retry.window_s:g} s); nothing registered. Results are kept in {out} "
            f"({out / 'registration-pending.json'}); re-run to resume from the cached steps. Last error: {exc}"
        ) from exc
    clear_pending_registration(out)
    lap("register", start)
    for record in variants:
        record["model_version"] = registration["versions"].get(record["name"])
    summary.update(
        registration="done",
        mlflow_run_id=registration["mlflow_run_id"],
        mlflow_run_url=registration.get("run_url"),
        mlflow_experiment_id=registration["experiment_id"],
        challenger=registration["challenger"],
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if search is not None:  # trials as nested runs, sensitivity and pareto plots under search/
        from tasks.search import log_search_task

        try:
            log_search_task(uri, registration["mlflow_run_id"], search)
        except RegistryError as exc:
            logger.warning("search not logged to MLflow: %s", exc)
    start = time.perf_counter()
    try:
        summary["plots"] = with_retry_window(report_task, retry)(spec, variants, str(out), uri, registration["mlflow_run_id"])
    except RegistryUnavailable as exc:  # registered already: the plots stay local (output_dir/plots)
        logger.warning("plots not logged to MLflow (past the retry window): %s", exc)
    lap("report", start)

    timings["total"] = round(time.perf_counter() - t0, 3)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _publish_artifacts(spec, summary)
    logger.info("summary: %s", out / "summary.json")
    if summary["challenger"]:
        _emit_completed(spec, summary)
    return summary


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
            "checkpoint": str(spec.model.checkpoint),
            "flow_run_id": (summary["prefect_flow_run"] or {}).get("id"),
        },
    )
