"""Rendering of run records: the variants table and summary markdown (Prefect artifacts, published by
:mod:`flows.artifacts`) and the rich table ``edgeport run`` prints. One place for the metric
columns, so the artifact and the terminal name them alike (top-1 drops in percentage points,
cosine drops as they are).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from edgeport.records import (
    BenchmarkEntry,
    RunSummary,
    VariantRecord,
    primary_benchmark,
)
from edgeport.spec import PipelineSpec

__all__ = ["benchmark_row", "metric_columns", "search_line", "summary_markdown", "summary_table", "variant_rows"]


def metric_columns(metric: str | None) -> tuple[str, str, float]:
    """``(value column, drop column, drop scale)`` named after the evaluation metric: ``top1`` drops
    are shown in percentage points (scale 100), other metrics' (cosine) as they are (scale 1)."""
    metric = metric or "metric"
    if metric == "top1":
        return "top1", "drop_pp", 100.0
    return metric, f"{metric}_drop", 1.0


def _round(x: Any, digits: int) -> Any:
    return None if x is None or x != x else round(x, digits)  # x != x: NaN


def variant_rows(spec: PipelineSpec, variants: list[VariantRecord]) -> list[dict[str, Any]]:
    """One row per variant (size in KB, validation, metric and drop, p50 in ms of the
    :func:`~edgeport.records.primary_benchmark`, gate verdict, model version): the Prefect table artifact."""
    value_col, drop_col, scale = metric_columns(spec.evaluation.metric if spec.evaluation is not None else None)
    rows = []
    for v in variants:
        bench = primary_benchmark(v, spec)
        ev = v.evaluation
        rows.append(
            {
                "variant": v.name,
                "kind": v.kind,
                "size_kb": round(v.size_bytes / 1024, 1),
                "validation": "passed" if v.validation is not None and v.validation.passed else "FAILED",
                value_col: None if ev is None else _round(ev.value, 4),
                drop_col: None if ev is None else _round(scale * ev.drop, 4 if scale == 1 else 2),
                f"p50_ms@b{spec.benchmark.primary}": None if bench is None else round(bench.p50_ms, 4),
                "passed": v.passed,
                "model_version": v.model_version,
            }
        )
    return rows


def benchmark_row(b: BenchmarkEntry) -> dict[str, Any]:
    """One benchmark entry as a flat row (ms rounded to 4 decimals, throughput in samples/s, error cut to 120 characters)."""

    def r(x: Any) -> Any:
        return None if x is None else round(x, 4)

    extra = b.model_extra or {}
    return {
        "batch": b.batch_size,
        "status": b.status,
        "providers_bound": ",".join(b.providers_bound or []),
        "p50_ms": r(b.p50_ms),
        "p90_ms": r(b.p90_ms),
        "p99_ms": r(b.p99_ms),
        "samples_per_s": r(b.throughput),
        "ci_pct": r(b.ci_halfwidth_pct),
        "drift_pct": r(extra.get("drift_pct")),
        "runs": b.runs,
        "error": (b.error or "")[:120],
    }


def summary_markdown(spec: PipelineSpec, summary: RunSummary) -> str:
    """The run's markdown summary: registered model and challenger, the :func:`variant_rows` table,
    the MLflow run."""
    rows = variant_rows(spec, summary.variants)
    challenger = summary.challenger
    lines = [
        f"# edgeport: {spec.name}",
        "",
        f"Registered model **{summary.registered_model}**; "
        + (
            f"alias `{spec.registry.alias}` -> version {challenger.version} ({challenger.variant})."
            if challenger
            else "no variant passed its gates: nothing registered."
        ),
        "",
        "| " + " | ".join(rows[0].keys() if rows else ()) + " |",
        "|" + "---|" * (len(rows[0]) if rows else 0),
    ]
    lines += ["| " + " | ".join(str(x) for x in r.values()) + " |" for r in rows]
    lines += ["", f"MLflow run: `{summary.mlflow_run_id}` at `{summary.tracking_uri}`"]
    return "\n".join(lines)


def summary_table(summary: RunSummary) -> Table:
    """The variants of a summary as a rich table, one row per benchmark entry (``edgeport run``).
    Metric columns are named after the evaluation metric (``top-1`` / ``drop pp``, ``cosine`` / ``cosine drop``)."""
    table = Table(title=f"edgeport: {summary.name}")
    metric = next((v.evaluation.metric for v in summary.variants if v.evaluation is not None), "top1")
    _, _, scale = metric_columns(metric)
    top1 = scale != 1
    value_col, drop_col = ("top-1", "drop pp") if top1 else (metric, f"{metric} drop")
    cols = ("variant", "kind", "size KB", "valid", value_col, drop_col, "target", "batch", "status", "p50 ms", "p99 ms", "samples/s", "passed", "version")
    for col in cols:
        table.add_column(col, justify="left" if col in ("variant", "kind", "target", "status") else "right")

    def number(x: float | None, fmt: str) -> str:
        return "-" if x is None or x != x else format(x, fmt)  # x != x: NaN

    for v in summary.variants:
        ev = v.evaluation
        rows: list[BenchmarkEntry | None] = list(v.benchmarks) or [None]
        for i, bench in enumerate(rows):
            first = i == 0
            measured = bench is not None and bench.p50_ms is not None
            table.add_row(
                v.name if first else "",
                v.kind if first else "",
                f"{v.size_bytes / 1024:.1f}" if first else "",
                ("yes" if v.validation is not None and v.validation.passed else "NO") if first else "",
                (number(ev.value, ".4f") if ev else "-") if first else "",
                (number(scale * ev.drop, ".2f" if top1 else ".4f") if ev and ev.drop is not None else "-") if first else "",
                bench.target if bench else "-",
                str(bench.batch_size) if bench else "-",
                bench.status if bench else "-",
                f"{bench.p50_ms:.3f}" if measured else "-",
                f"{bench.p99_ms:.3f}" if measured else "-",
                f"{bench.throughput:.0f}" if measured else "-",
                ("yes" if v.passed else "no") if first else "",
                str(v.model_version or "-") if first else "",
            )
    return table


def search_line(search: dict[str, Any]) -> str:
    """One line (rich markup) on the quantization search: trials, why it stopped, the winner on every
    objective target (``winners``; a summary of an earlier version: its one ``winner``)."""
    head = f"search {search['search_id']}: {len(search['trials'])} trials ({search['stopped']}); "
    winners = search.get("winners")
    if winners is None and search.get("winner"):
        winners = {search["objective"]["target"]: {**search["winner"], "variant": search["name"]}}
    if not winners:
        return head + "[yellow]no configuration meets the quality budget[/]"
    return head + "; ".join(
        f"winner on {target}: {w['trial_id']} as {w.get('variant', search['name'])} "
        f"({search['metric']} {w['quality']:.4f}, p50 {w['p50_ms']:.3f} ms)"
        for target, w in winners.items()
    )
