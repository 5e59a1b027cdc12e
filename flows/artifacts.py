"""Prefect artifacts of a pipeline run: the variants table, the summary markdown, the MLflow run link,
per-target benchmark tables, the benchmark progress bar, and the search's sensitivity and trials
tables. What they show is rendered by :mod:`edgeport.render` (and :func:`tasks.search.trial_rows`).

Artifact keys: ``edgeport-<slug of the spec name>-...`` (lowercase letters, digits, dashes).
"""

from __future__ import annotations

import os
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from edgeport.files import slug
from edgeport.records import BenchmarkEntry, RunSummary
from edgeport.render import benchmark_row, summary_markdown, variant_rows
from edgeport.spec import PipelineSpec, TargetSpec
from tasks.search import trial_rows

__all__ = ["LOCAL_MLFLOW_UI", "artifact_key", "benchmark_progress", "publish_benchmarks", "publish_search", "publish_summary"]

#: Where ``mlflow/server.sh`` serves the embedded store (override with EDGEPORT_MLFLOW_UI_URL).
LOCAL_MLFLOW_UI = os.environ.get("EDGEPORT_MLFLOW_UI_URL", "http://127.0.0.1:5000")


def artifact_key(spec: PipelineSpec) -> str:
    """``edgeport-<slug of spec.name>``: the prefix of the run's artifact keys."""
    return "edgeport-" + slug(spec.name)


def publish_summary(spec: PipelineSpec, summary: RunSummary) -> None:
    """The variants table, the summary markdown and a link to the MLflow run (a local store has no
    server: the link points where ``mlflow/server.sh`` serves it, :data:`LOCAL_MLFLOW_UI`)."""
    key = artifact_key(spec)
    create_table_artifact(table=variant_rows(spec, summary.variants), key=f"{key}-variants", description=f"Variants of {spec.name}")
    create_markdown_artifact(markdown=summary_markdown(spec, summary), key=f"{key}-summary", description="Pipeline summary")
    url, note = summary.mlflow_run_url, "MLflow run"
    if not url:
        url = f"{LOCAL_MLFLOW_UI}/#/experiments/{summary.mlflow_experiment_id}/runs/{summary.mlflow_run_id}"
        note = "MLflow run (local store: start mlflow/server.sh to open)"
    create_link_artifact(link=url, link_text=note, key=f"{key}-mlflow-run")


def publish_benchmarks(spec: PipelineSpec, target: TargetSpec, results: dict[str, list[dict[str, Any]]]) -> None:
    """The benchmark entries of one target (``{variant: [entry]}``) as a table."""
    create_table_artifact(
        table=[{"variant": name, **benchmark_row(BenchmarkEntry.model_validate(b))} for name, entries in results.items() for b in entries],
        key=f"{artifact_key(spec)}-benchmark-{slug(target.name)}",
        description=f"Benchmarks on target {target.name} ({', '.join(target.providers)})",
    )


def benchmark_progress(spec: PipelineSpec) -> Any:
    """A progress artifact (0-100 %) for the benchmarks; returns ``update(fraction of targets done)``."""
    progress_id = create_progress_artifact(0.0, key=f"{artifact_key(spec)}-benchmark-progress", description="Benchmarks done")

    def update(done: float) -> None:
        update_progress_artifact(progress_id, 100.0 * done)

    return update


def publish_search(spec: PipelineSpec, summary: dict[str, Any], ranking: list[dict[str, Any]]) -> None:
    """The sensitivity ranking (top 50 nodes; when computed) and the search's trials (p50 on every
    objective target) as tables."""
    key = artifact_key(spec)

    def r(x: Any) -> Any:
        return None if x is None else round(float(x), 6)

    if summary.get("sensitivity") is not None:  # computed only when some exclude_top_k above 0 applies
        create_table_artifact(
            table=[
                {"rank": row["rank"], "node": row["node"], "op_type": row["op_type"], "impact_nsr": r(row["impact"]),
                 f"{summary['metric']}_impact": r(row["metric_impact"]), "measured_alone": row["measured"], "group": row["group"]}
                for row in ranking[:50]
            ],
            key=f"{key}-sensitivity",
            description=f"Sensitivity of the base INT8 configuration ({summary['sensitivity']['probes']} probes): impact = noise-to-signal ratio removed by keeping the node in float",
        )
    create_table_artifact(
        table=trial_rows(summary),
        key=f"{key}-search-trials",
        description=f"Quantization search {summary['search_id']}: winners "
        + (", ".join(f"{t} {w['trial_id']}" for t, w in (summary.get("winners") or {}).items()) or "none"),
    )
