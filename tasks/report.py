"""Step 7, report: plots of the benchmark results, logged to the pipeline's MLflow run.

* ``latency_vs_accuracy.png``: one point per variant x target (p50 at the primary batch
  size vs the quality metric), the pareto front (no other point is both faster and
  at least as accurate) marked;
* ``latency_<target>.png``: the distribution of every variant's raw timed latencies on
  that target at each batch size (box plots: median, quartiles, 1.5 IQR whiskers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from edgeport.registry import (
    DEFAULT_RETRY,
    map_mlflow_errors,
    mlflow_http_settings,
    with_retry_window,
)
from edgeport.spec import PipelineSpec, spec_digest
from mlflow import MlflowClient
from tasks.benchmark import load_latencies

logger = logging.getLogger("edgeport.report")

__all__ = ["log_plots", "make_plots", "pareto_front"]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the pareto-optimal points for (latency: lower is better, quality: higher is better).

    A point is dominated when another has latency <= and quality >=, one of them strictly.

    Args:
        points: ``[(latency_ms, quality), ...]``.

    Returns:
        Indices of the non-dominated points, sorted by latency.
    """
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any(
            (lo <= lat and qo >= q) and (lo < lat or qo > q) for j, (lo, qo) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _latency_vs_accuracy(spec: PipelineSpec, variants: list[dict[str, Any]], path: Path) -> Path | None:
    batch = spec.benchmark.primary
    points, labels, targets = [], [], []
    for v in variants:
        if not v.get("evaluation"):
            continue
        for b in v["benchmarks"]:
            if b["batch_size"] == batch and b["status"] == "ok":
                points.append((b["p50_ms"], v["evaluation"]["value"]))
                labels.append(v["name"])
                targets.append(b["target"])
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>P*X"
    for k, target in enumerate(dict.fromkeys(targets)):
        idx = [i for i, t in enumerate(targets) if t == target]
        ax.scatter([points[i][0] for i in idx], [points[i][1] for i in idx], marker=markers[k % len(markers)], s=50, label=target)
    for (x, y), name in zip(points, labels):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(points)
    fx, fy = [points[i][0] for i in front], [points[i][1] for i in front]
    ax.scatter(fx, fy, s=220, facecolors="none", edgecolors="k", linewidths=1.2, label="pareto front")
    ax.plot(fx, fy, "k--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, log scale)")
    metric = next(v["evaluation"]["metric"] for v in variants if v.get("evaluation"))
    ax.set_ylabel(metric)
    ax.set_title(f"{spec.name}: latency vs {metric} (variant x target)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency_distribution(spec: PipelineSpec, variants: list[dict[str, Any]], target: str, path: Path) -> Path | None:
    batches = list(spec.benchmark.batch_sizes)
    plt = _plt()
    fig, axes = plt.subplots(1, len(batches), figsize=(4 * len(batches), 4), squeeze=False)
    drawn = False
    for ax, batch in zip(axes[0], batches):
        data, names = [], []
        for v in variants:
            entry = next((b for b in v["benchmarks"] if b["target"] == target and b["batch_size"] == batch), None)
            if entry is None or entry["status"] not in ("ok", "fallback"):
                continue
            paths = entry.get("latencies_paths") or [entry.get("latencies_path")]
            arrays = [a for p in paths if p and (a := load_latencies({"latencies_path": p, "batch_size": batch})) is not None]
            if arrays:
                data.append(np.concatenate(arrays))
                names.append(v["name"] + (" (fallback)" if entry["status"] == "fallback" else ""))
        if data:
            drawn = True
            ax.boxplot(data, showfliers=False)
            ax.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=8)
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{spec.name} on {target}: timed latencies (box: quartiles, whiskers: 1.5 IQR)")
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if drawn else None


def make_plots(spec: PipelineSpec, variants: list[dict[str, Any]], output_dir: str | Path) -> list[str]:
    """Draw the report plots (PNG) into ``output_dir/plots``.

    Args:
        variants: the summary's variant records (with ``evaluation`` and ``benchmarks``).

    The plots of a re-run whose numbers did not change (cached benchmarks and evaluations) are
    the files already there: ``plots/plots.sha256`` records the digest of what they were drawn
    from (:func:`_plots_digest`) and the files; matplotlib is imported only to draw.

    Returns:
        Paths of the PNG files written (a plot without data is skipped).
    """
    folder = Path(output_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    stamp, digest = folder / "plots.sha256", _plots_digest(spec, variants)
    kept = _kept_plots(stamp, digest)
    if kept is not None:
        logger.info("report: plots unchanged since the last run (%s), not drawn again", stamp)
        return kept
    written = [_latency_vs_accuracy(spec, variants, folder / "latency_vs_accuracy.png")]
    for target in spec.targets:
        written.append(_latency_distribution(spec, variants, target.name, folder / f"latency_{target.name}.png"))
    paths = [str(p) for p in written if p is not None]
    stamp.write_text("\n".join([digest, *paths]) + "\n")
    return paths


def _plots_digest(spec: PipelineSpec, variants: list[dict[str, Any]]) -> str:
    """sha256 of what the plots show: each variant's name, evaluation and benchmark entries (their
    numbers and raw-latency files' paths), the spec's targets, benchmark and evaluation sections."""
    return spec_digest({
        "spec": spec.model_dump(mode="json", include={"targets", "benchmark", "evaluation"}),
        "variants": [{key: v.get(key) for key in ("name", "evaluation", "benchmarks")} for v in variants],
    })


def _kept_plots(stamp: Path, digest: str) -> list[str] | None:
    """The plot files listed in ``stamp`` when it names ``digest`` and every file is there, else None."""
    try:
        first, *paths = stamp.read_text().split("\n")
    except OSError:
        return None
    paths = [p for p in paths if p]
    return paths if first == digest and all(Path(p).is_file() for p in paths) else None


def log_plots(tracking_uri: str, run_id: str, paths: list[str], timeout_s: float = 60.0) -> None:
    """Log the plots to the MLflow run ``run_id`` under ``plots/`` (an http(s) server gets
    ``timeout_s`` per request and few quick retries: :func:`edgeport.registry.mlflow_http_settings`;
    the Prefect task retries outages within ``registry.retry.window_s``).

    Raises:
        RegistryUnavailable: MLflow unreachable (transient: the task retries).
        RegistryError: MLflow refused the upload.
    """
    client = MlflowClient(tracking_uri)
    with map_mlflow_errors(f"logging plots to run {run_id}", tracking_uri, wrap_all=True), mlflow_http_settings(tracking_uri, timeout_s):
        for path in paths:
            client.log_artifact(run_id, path, artifact_path="plots")


def report(spec: PipelineSpec, variants: list[dict[str, Any]], output_dir: str | Path, tracking_uri: str, run_id: str) -> list[str]:
    """Draw the plots and log them to the pipeline's MLflow run; returns the PNG paths."""
    paths = make_plots(spec, variants, output_dir)
    log_plots(tracking_uri, run_id, paths, timeout_s=spec.registry.retry.request_timeout_s)
    logger.info("report: %d plots logged to run %s", len(paths), run_id)
    return paths


# --- Prefect wrapper -------------------------------------------------------------------------

#: Retries transient errors only, within the default window of :class:`~edgeport.spec.RetrySpec`
#: (the flow applies the spec's ``registry.retry`` with :func:`edgeport.registry.with_retry_window`).
#: Never cached: it uploads.
report_task = with_retry_window(task(report, name="report", cache_policy=NO_CACHE), DEFAULT_RETRY)
