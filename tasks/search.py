"""Accuracy-aware quantization search: on every target, the fastest INT8 configuration of any backend within the quality budget.

The spec's ``search`` section (:class:`edgeport.spec.SearchSpec`) gives the space (``backends``:
onnxruntime / nncf; ``modes``: static / dynamic; ONNX Runtime's calibration methods, per-channel,
activation / weight types, QDQ / QOperator, reduce_range, op-type sets; NNCF's presets, model
types, fast bias correction, accuracy control; ``exclude_top_k``), the objective (p50 at one batch
size on a list of targets, each with its own winner) and the limits (``max_trials``,
``max_wall_time_s``). The quality budget is the ``evaluation`` gate (``max_drop`` for top1,
``min_cosine`` for cosine).

Strategy (:func:`plan_trials`; driven by the subflow :func:`flows.search.search_flow`):

0. **Configurations** (:func:`configurations`): per searched (backend, mode) pair, the product of
   the lists that apply to it (:func:`edgeport.spec.search_field_applies`): a setting that does
   not apply is absent, so no two configurations build the same model.
1. **Sensitivity** (:mod:`tasks.sensitivity`) of the ONNX Runtime static *base* configuration
   (:func:`base_configuration`: the first value of every list), only when some ``k`` above 0
   applies (:func:`needs_sensitivity`): a ranking of the nodes by how much quality their
   quantization costs.
2. **Phase 1**: the first configuration with the ``k`` most sensitive nodes left in float, for
   ``k`` in ``exclude_top_k`` ascending, until one passes the gate (``k_min``): NNCF's
   accuracy-aware "revert the worst quantizers until the metric is met". ONNX Runtime leaves them
   out with ``nodes_to_exclude``, NNCF with its ignored scope (NNCF quantizes ``search.nncf_parent``,
   the unfused ``fp32`` by default; only the names that parent has:
   :func:`exclusions` with ``present``); NNCF accuracy control reverts quantizers itself and is
   tried once (:func:`uses_exclusions`).
3. **Phase 2**: every other configuration (``itertools.product`` order), each starting
   one step below the ``k_min`` of its own (backend, mode) (at the first ``k`` until a
   configuration of that pair passed: NNCF may pass at 0 where ONNX Runtime needs 6) and raising
   ``k`` until it passes. The ranking is the base's, filtered to the configuration's op types.
4. Every trial (quantize + evaluate on the full evaluation set; :func:`trial_variant` builds its
   :class:`~edgeport.spec.QuantizationVariantSpec`, :func:`tasks.quantize.quantize_variant` the
   model) is a Prefect task cached on its configuration hash with a persisted result: a re-run
   resumes (the trials show as Cached). A trial does not depend on the targets. ONNX Runtime
   static calibration ranges are computed once per (calibration method, op-type set), as an ONNX
   Runtime calibration cache (:func:`edgeport.calibration.write_calibration_cache`) that every
   such trial's ``quantize_static`` reads, so trials differing in exclusions, per-channel, types or
   format never recalibrate; NNCF trials read the calibration data themselves. A trial that
   raises (e.g. NNCF refusing the model) is recorded with status ``error``; the search goes on.
5. Trials that pass the gate are benchmarked on every objective target together with the FP32
   reference(s) (``fp32``, ``fp32-optimized``) and the hand-written variants that passed their
   gates, one sweep per target interleaved in rounds by
   :func:`tasks.benchmark.benchmark_target`, so "faster than FP32" is measured in the same
   conditions and "the fastest FP32" is the fastest on any target. On each target the **winner
   is the fastest passing trial there** (lowest p50: :func:`select_winner`), not the first one
   to pass; the pareto set (p50 vs quality) is reported per target.

The winners (validated against their FP32 parent) join the pipeline's variants: the first
target's as ``search.name``, another target's as ``<search.name>-<target>`` unless it is the
same trial (:func:`winner_names`), each with its ``search`` provenance, so registration, the
``challenger`` / ``challenger-<target>`` aliases and the report apply to them. With no passing
trial nothing is returned, every trial's numbers are kept, and the flow registers nothing
(``edgeport run`` exits 2).

Files: ``<output>/search/``: ``search.json`` (the summary), ``trials.json``, ``sensitivity.json``
/ ``.png`` (when computed), ``pareto.png`` (one panel per target); trial models and calibration
caches are content-addressed under ``$EDGEPORT_HOME/cache/search/<key>/`` so they survive a new
output folder.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx
from mlflow.entities import Metric, Param, RunTag
from prefect import task
from prefect.cache_policies import NO_CACHE

from edgeport.calibration import write_calibration_cache
from edgeport.data import calibration_source
from edgeport.errors import EdgeportError, QuantizationError
from edgeport.home import edgeport_home
from edgeport.records import Evaluation, SearchProvenance, Validation, VariantRecord
from edgeport.registry import (
    DEFAULT_RETRY,
    flatten_params,
    map_mlflow_errors,
    with_retry_window,
)
from edgeport.spec import (
    SEARCH_SPACE_FIELDS,
    AccuracyControlSpec,
    NNCFIgnoredScopeSpec,
    PipelineSpec,
    QuantizationVariantSpec,
    search_field_applies,
    spec_digest,
)
from mlflow import MlflowClient
from tasks.evaluate import evaluate_model
from tasks.quantize import quantize_variant
from tasks.report import pareto_front
from tasks.sensitivity import analyze_sensitivity

logger = logging.getLogger("edgeport.search")

__all__ = [
    "SPACE_KEYS",
    "base_configuration",
    "calibrate_task",
    "configurations",
    "exclusions",
    "log_search",
    "log_search_task",
    "needs_sensitivity",
    "node_names",
    "plan_trials",
    "plot_pareto",
    "quality_of",
    "quality_threshold",
    "search_cache_dir",
    "select_winner",
    "sensitivity_task",
    "settings_hash",
    "trial_rows",
    "trial_p50",
    "trial_task",
    "trial_variant",
    "uses_exclusions",
    "winner_names",
    "winner_record",
]

#: Trial settings from the space: (space field, QuantizationVariantSpec field)
#: (:data:`edgeport.spec.SEARCH_SPACE_FIELDS`).
SPACE_KEYS = SEARCH_SPACE_FIELDS


def search_cache_dir() -> Path:
    """``$EDGEPORT_HOME/cache/search``."""
    return edgeport_home() / "cache" / "search"


def settings_hash(settings: dict[str, Any]) -> str:
    """The first 12 hex digits of the settings' digest: a trial's id is ``trial-<settings_hash>``."""
    return spec_digest(settings)[:12]


def configurations(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Every meaningful combination of the space, without ``exclude_top_k``.

    For each searched (backend, mode) pair (:meth:`edgeport.spec.SearchSpaceSpec.searched_modes`:
    ``backends`` then ``modes`` order) the product (``itertools.product`` order) of the space lists
    that apply to the pair (:func:`edgeport.spec.search_field_applies`); a setting that does not
    apply is absent, so no two configurations build the same model. The first ONNX Runtime static
    configuration (the first value of every list) is the base of the sensitivity analysis.

    Returns:
        ``[{"backend", "mode", <variant field>: value, ...}]``: e.g. ONNX Runtime static
        ``calibration_method, per_channel, activation_type, weight_type, format, reduce_range,
        op_types_to_quantize``; dynamic without ``calibration_method, activation_type, format``;
        NNCF ``preset, model_type, fast_bias_correction, accuracy_control`` (a bool).
    """
    space = spec.search.space
    configs: list[dict[str, Any]] = []
    for backend, mode in space.searched_modes():
        keys = [(sf, vf) for sf, vf in SPACE_KEYS if search_field_applies(vf, backend, mode)]
        for combo in itertools.product(*(getattr(space, sf) for sf, _ in keys)):
            config = {"backend": backend, "mode": mode, **dict(zip([vf for _, vf in keys], combo))}
            if config not in configs:
                configs.append(config)
    return configs


def base_configuration(spec: PipelineSpec) -> dict[str, Any]:
    """The ONNX Runtime static configuration of the first value of every ONNX Runtime list: the
    configuration the sensitivity analysis ranks the nodes of (whatever backends are searched)."""
    space = spec.search.space
    return {
        "backend": "onnxruntime", "mode": "static",
        **{vf: getattr(space, sf)[0] for sf, vf in SPACE_KEYS if search_field_applies(vf, "onnxruntime", "static")},
    }


def uses_exclusions(config: dict[str, Any]) -> bool:
    """Whether ``exclude_top_k`` applies to ``config``: not to NNCF accuracy control (it reverts quantizers itself)."""
    return not (config.get("backend") == "nncf" and config.get("accuracy_control"))


def needs_sensitivity(spec: PipelineSpec) -> bool:
    """True when some trial may leave nodes in float: an ``exclude_top_k`` above 0 and a
    configuration it applies to. Only then is the sensitivity ranking computed."""
    return max(spec.search.space.exclude_top_k) > 0 and any(uses_exclusions(c) for c in configurations(spec))


def plan_trials(config: dict[str, Any], ks: list[int], k_min: int | None) -> list[int]:
    """The ``exclude_top_k`` values to try for one configuration, in order (the caller stops at the
    first that passes): phase 1 (``k_min`` None): every ``k`` ascending; phase 2: ascending from
    the ``k`` just below ``k_min`` (another configuration may need fewer nodes in float, e.g.
    Percentile ranges clip the outliers), or from the smallest ``k`` when phase 1 found none.
    A configuration without exclusions (NNCF accuracy control) is tried once, at ``k`` 0."""
    if not uses_exclusions(config):
        return [0]
    ordered = sorted(ks)
    if k_min is None or k_min not in ordered:
        return ordered
    i = ordered.index(k_min)
    return ordered[max(0, i - 1):]


def trial_variant(config: dict[str, Any], name: str, nodes_to_exclude: list[str]) -> QuantizationVariantSpec:
    """The quantization variant of one configuration (:func:`configurations`), with
    ``nodes_to_exclude`` left in float.

    ONNX Runtime (static or dynamic): the settings as they are, ``nodes_to_exclude``. NNCF static:
    ``preset``, ``model_type``, ``fast_bias_correction``; ``accuracy_control`` true becomes
    :class:`~edgeport.spec.AccuracyControlSpec` at its defaults (the evaluation gate's budget);
    ``nodes_to_exclude`` become the ignored scope's names (they must exist in the model NNCF
    quantizes: :func:`exclusions` with ``present``). A configuration without ``backend`` / ``mode``
    is ONNX Runtime static (search records of earlier versions).

    Raises:
        SpecError: a setting that does not apply to the backend and mode (pydantic's validation).
    """
    settings = {k: (list(v) if isinstance(v, list) else v) for k, v in {"backend": "onnxruntime", "mode": "static", **config}.items()}
    if settings["backend"] == "nncf":
        extra: dict[str, Any] = {}
        if settings.pop("accuracy_control", False):
            extra["accuracy_control"] = AccuracyControlSpec()
        if nodes_to_exclude:
            extra["ignored_scope"] = NNCFIgnoredScopeSpec(names=list(nodes_to_exclude))
        return QuantizationVariantSpec(name=name, **settings, **extra)
    return QuantizationVariantSpec(name=name, nodes_to_exclude=list(nodes_to_exclude), **settings)


def exclusions(ranking: list[dict[str, Any]], config: dict[str, Any], k: int, present: Collection[str] | None = None) -> list[str]:
    """The ``k`` most sensitive nodes of ``ranking`` whose op type ``config`` quantizes (all op
    types when it names none), among ``present`` (the node names of the model the backend
    quantizes; None: all). The ranking's names are those of ONNX Runtime's pre-processed parent;
    NNCF quantizes the parent itself, where a node the pre-processing fused has no counterpart."""
    ops = config.get("op_types_to_quantize")
    allowed = set(ops) if ops else None
    nodes = [r["node"] for r in ranking if (allowed is None or r["op_type"] in allowed) and (present is None or r["node"] in present)]
    return nodes[:k]


def node_names(model_path: str | Path) -> set[str]:
    """The names of the main graph's nodes of the ONNX model at ``model_path`` (weights not loaded).

    Raises:
        QuantizationError: the file cannot be read as an ONNX model.
    """
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise QuantizationError(f"cannot read the node names of {model_path}: {type(exc).__name__}: {exc}") from exc
    return {n.name for n in model.graph.node}


# --------------------------------------------------------------------------- Prefect tasks


def _key_from_parameter(context: object, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn``: the content key the caller computed (``key`` parameter)."""
    return str(parameters["key"])


def calibrate(spec: PipelineSpec, pre_path: str, cache_path: str, method: str, op_types: list[str] | None, key: str) -> dict[str, Any]:
    """Calibrate the pre-processed parent once for (``method``, ``op_types``) into ``cache_path``.

    Returns:
        :class:`edgeport.calibration.CalibrationResult` as a dict.

    Raises:
        DataError, QuantizationError: see :func:`edgeport.calibration.write_calibration_cache`.
    """
    cal = spec.calibration
    arrays = calibration_source(spec)  # any data kind, streamed in chunks
    Path(cache_path).unlink(missing_ok=True)
    result = write_calibration_cache(
        pre_path, arrays, cache_path, method=method, chunk_size=cal.effective_chunk_size,
        op_types_to_calibrate=op_types, extra_options=cal.extra_options,
    )
    return asdict(result)


def sensitivity(
    spec: PipelineSpec, base: QuantizationVariantSpec, fp32_path: str, parent: str, work_dir: str, calibration_cache: str, key: str
) -> dict[str, Any]:
    """:func:`tasks.sensitivity.analyze_sensitivity` (the Prefect task caches it on ``key``)."""
    return analyze_sensitivity(spec, base, fp32_path, parent, work_dir, calibration_cache, spec.search.sensitivity)


def run_trial(
    spec: PipelineSpec,
    trial: dict[str, Any],
    fp32_path: str,
    parent: str,
    work_dir: str,
    calibration_cache: str | None,
    reference: dict[str, Any],
    key: str,
) -> dict[str, Any]:
    """Quantize one configuration and evaluate it on the full evaluation set against the FP32
    ``reference`` (the gate of ``evaluation``). Target-independent: the benchmarks are per target.

    Args:
        trial: ``{"trial_id", "settings": config + exclude_top_k, "nodes_to_exclude"}``.
        calibration_cache: ONNX Runtime static: the shared calibration cache of the configuration's
            (method, op types); None for ONNX Runtime dynamic and NNCF (NNCF reads the calibration
            data itself).

    Returns:
        ``{"path", "sha256", "size_bytes", "op_counts", "quantization" (exact settings),
        "evaluation" (see :func:`tasks.evaluate.evaluate_model`), "quantize_s", "evaluate_s"}``.

    Raises:
        QuantizationError, DataError, RuntimeLoadError: the trial cannot be built or run.
    """
    config = {k: v for k, v in trial["settings"].items() if k != "exclude_top_k"}
    variant = trial_variant(config, trial["trial_id"], trial["nodes_to_exclude"])
    q = quantize_variant(spec, variant, fp32_path, work_dir, parent=parent, calibration_cache=calibration_cache)
    start = time.perf_counter()
    evaluation = evaluate_model(spec, q.onnx_path, trial["trial_id"], Path(work_dir) / "evaluation", reference=reference)
    return {
        "path": q.onnx_path,
        "sha256": q.sha256,
        "size_bytes": q.size_bytes,
        "op_counts": q.op_counts,
        "quantization": q.settings,
        "evaluation": evaluation,
        "quantize_s": q.quantize_s,
        "evaluate_s": round(time.perf_counter() - start, 3),
    }


def _retry_unless_deterministic(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry a trial only on unexpected errors (a QuantizationError/DataError would fail again)."""
    try:
        state.result()
    except EdgeportError:
        return False
    except BaseException:  # noqa: BLE001
        return True
    return False


#: Calibration once per (method, op types): cached on the parent, data and settings.
calibrate_task = task(
    calibrate, name="search-calibrate", cache_key_fn=_key_from_parameter, persist_result=True, retries=0,
    task_run_name="search-calibrate-{method}",
)
#: Sensitivity of the base configuration: cached on the base settings, data and sensitivity settings.
sensitivity_task = task(sensitivity, name="search-sensitivity", cache_key_fn=_key_from_parameter, persist_result=True, retries=0)
#: One trial (quantize + evaluate): retriable, cached on the configuration hash (persisted result).
trial_task = task(
    run_trial,
    name="search-trial",
    cache_key_fn=_key_from_parameter,
    persist_result=True,
    retries=1,
    retry_delay_seconds=1,
    retry_condition_fn=_retry_unless_deterministic,
    task_run_name="search-trial-{trial[trial_id]}",
)


# --------------------------------------------------------------------------- selection


def quality_of(trial: dict[str, Any]) -> float | None:
    """The trial's gate metric value (top-1 or mean cosine), or None when not evaluated."""
    ev = trial.get("evaluation") or {}
    return ev.get("value")


def trial_p50(trial: dict[str, Any], target: str | None = None) -> float | None:
    """The trial's p50 (ms) on ``target`` (``p50_ms_by_target``), or its ``p50_ms`` (the first
    objective target) when ``target`` is None; None when not benchmarked there."""
    if target is None:
        return trial.get("p50_ms")
    return (trial.get("p50_ms_by_target") or {}).get(target)


def select_winner(trials: list[dict[str, Any]], target: str | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """The fastest trial within the budget on one target, and the pareto set there.

    Args:
        trials: records with ``trial_id``, ``passed_quality`` (bool), ``evaluation.value`` and the
            p50 (float or None: not benchmarked or benchmark not ok): ``p50_ms_by_target[target]``,
            or ``p50_ms`` when ``target`` is None (:func:`trial_p50`).
        target: an objective target's name; None: the trials' ``p50_ms``.

    Returns:
        ``(winner, pareto)``: the passing trial with the lowest p50 (None when no trial passed and
        was benchmarked); the ``trial_id`` of every benchmarked trial that no other benchmarked
        trial dominates (p50 <= and quality >=, one strictly: :func:`tasks.report.pareto_front`),
        fastest first.
    """
    timed = [t for t in trials if trial_p50(t, target) is not None and quality_of(t) is not None]
    front = pareto_front([(trial_p50(t, target), quality_of(t)) for t in timed])
    passing = [t for t in timed if t.get("passed_quality")]
    winner = min(passing, key=lambda t: trial_p50(t, target)) if passing else None
    return winner, [timed[i]["trial_id"] for i in front]


def plot_pareto(summary: dict[str, Any], path: str | Path) -> str | None:
    """Latency vs quality of every trial, one panel per objective target (pareto front highlighted,
    FP32 reference(s) and hand-written variants marked, the quality budget drawn, that target's
    winner starred), into ``path`` (PNG); None without data.

    Reads ``objective.targets`` (else ``objective.target``), trials' ``p50_ms_by_target`` (else
    ``p50_ms``), references' ``p50_ms_by_target`` (else ``p50_ms``), ``pareto`` /
    ``winners`` per target (else ``pareto`` / ``winner``): a summary of an earlier version plots too.
    """
    import matplotlib  # lazy: matplotlib is heavy and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = summary["objective"]
    targets = obj.get("targets") or [obj["target"]]
    per_target = "p50_ms_by_target" in (summary["trials"][0] if summary["trials"] else {}) or len(targets) > 1

    def p50(row: dict[str, Any], target: str) -> float | None:
        return (row.get("p50_ms_by_target") or {}).get(target) if per_target else row.get("p50_ms")

    trials = summary["trials"]
    if not any(p50(t, tg) is not None for t in trials for tg in targets) and not any(
        p50(r, tg) is not None and r.get("quality") is not None for r in summary["references"] for tg in targets
    ):
        return None
    fig, axes = plt.subplots(1, len(targets), figsize=(7.5 * len(targets), 4.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        _pareto_panel(ax, summary, target, lambda row, t=target: p50(row, t))
        ax.set_xlabel(f"p50 latency (ms) on {target} at batch {obj['batch_size']}")
    fig.suptitle(f"Quantization search: {len(trials)} trials", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _pareto_panel(ax: Any, summary: dict[str, Any], target: str, p50: Any) -> None:
    """One target's panel of :func:`plot_pareto`; ``p50(row)`` reads a trial's / reference's p50 there."""
    trials = summary["trials"]
    timed = [t for t in trials if p50(t) is not None and quality_of(t) is not None]
    refs = [r for r in summary["references"] if p50(r) is not None and r.get("quality") is not None]
    if timed:
        ax.scatter([p50(t) for t in timed], [quality_of(t) for t in timed], c="tab:blue", s=36, label="trials (benchmarked)")
    pareto = summary["pareto"].get(target, []) if isinstance(summary["pareto"], dict) else summary["pareto"]
    front = sorted([t for t in timed if t["trial_id"] in pareto], key=p50)
    if front:
        ax.plot([p50(t) for t in front], [quality_of(t) for t in front], "k--", lw=1)
        ax.scatter([p50(t) for t in front], [quality_of(t) for t in front], s=200, facecolors="none", edgecolors="k", label="pareto front")
    xs = [p50(t) for t in timed] + [p50(r) for r in refs]
    failed = [t for t in trials if not t.get("passed_quality") and quality_of(t) is not None]
    if failed:
        x_fail = max(xs) * 1.15 if xs else 1.0
        ax.scatter([x_fail] * len(failed), [quality_of(t) for t in failed], marker="x", c="tab:red", label="failed the gate (not benchmarked)")
    for r in refs:  # FP32: green diamonds; hand-written variants: grey squares
        fp32 = r.get("kind", "fp32") == "fp32"
        ax.scatter([p50(r)], [r["quality"]], marker="D" if fp32 else "s", c="tab:green" if fp32 else "tab:gray", s=60)
        ax.annotate(r["name"], (p50(r), r["quality"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    winner = (summary.get("winners") or {}).get(target) if "winners" in summary else summary.get("winner")
    if winner:
        w = next(t for t in trials if t["trial_id"] == winner["trial_id"])
        ax.scatter([p50(w)], [quality_of(w)], marker="*", c="gold", edgecolors="k", s=260, label=f"winner {w['trial_id']}", zorder=5)
    if summary.get("quality_threshold") is not None:
        ax.axhline(summary["quality_threshold"], color="tab:red", lw=0.8, ls=":", label="quality budget")
    ax.set_ylabel(summary["metric"])
    ax.set_title(target, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


# --------------------------------------------------------------------------- records


def quality_threshold(spec: PipelineSpec, reference: dict[str, Any]) -> float:
    """The quality budget: ``min_cosine`` for cosine; for top1 the FP32 ``reference`` value minus
    ``max_drop`` (not below ``min_value`` when set)."""
    ev = spec.evaluation
    if ev.metric == "cosine":
        return ev.min_cosine
    floor = reference["value"] - ev.max_drop
    return max(floor, ev.min_value) if ev.min_value is not None else floor


def _nncf_label(settings: dict[str, Any]) -> str | None:
    """NNCF settings of a trial in one cell, e.g. ``preset=mixed,model_type=transformer,bias_correction=full,accuracy_control``."""
    if settings.get("backend") != "nncf":
        return None
    parts = [f"preset={settings.get('preset') or 'default'}"]
    if settings.get("model_type"):
        parts.append(f"model_type={settings['model_type']}")
    if settings.get("fast_bias_correction") is False:
        parts.append("bias_correction=full")
    if settings.get("accuracy_control"):
        parts.append("accuracy_control")
    return ",".join(parts)


def trial_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per trial (settings, quality, p50 on every objective target) for tables and
    artifacts; a setting that does not apply to the trial's backend and mode is None."""
    obj = summary["objective"]
    targets = obj.get("targets") or [obj["target"]]
    rows = []
    for t in summary["trials"]:
        s = t["settings"]
        ops = s.get("op_types_to_quantize")
        act, weight = s.get("activation_type"), s.get("weight_type")
        row = {
            "trial": t["trial_id"],
            "phase": t["phase"],
            "backend": s.get("backend", "onnxruntime"),
            "mode": s.get("mode", "static"),
            "calibration": s.get("calibration_method"),
            "per_channel": s.get("per_channel"),
            "act/weight": None if act is None and weight is None else f"{act or '-'}/{weight or '-'}",
            "format": s.get("format"),
            "reduce_range": s.get("reduce_range"),
            "op_types": None if "op_types_to_quantize" not in s else (",".join(ops) if ops else "all"),
            "nncf": _nncf_label(s),
            "exclude_top_k": s["exclude_top_k"],
            summary["metric"]: None if quality_of(t) is None else round(quality_of(t), 5),
            "passed": t["passed_quality"],
            "p50_ms": None if t.get("p50_ms") is None else round(t["p50_ms"], 4),
        }
        if len(targets) > 1:
            for target in targets:
                value = (t.get("p50_ms_by_target") or {}).get(target)
                row[f"p50_ms@{target}"] = None if value is None else round(value, 4)
        row.update(cached=t["cached"], status=t["status"])
        rows.append(row)
    return rows


def winner_names(name: str, targets: list[str], winners: dict[str, str]) -> dict[str, str]:
    """The variant name of every distinct winning trial: the first objective target's winner is
    ``name``, another target's ``<name>-<target>``, unless it is a trial already named.

    Args:
        name: ``search.name``.
        targets: the objective targets in order.
        winners: target -> the trial id that won there (a target without a winner is absent).

    Returns:
        trial id -> variant name, in the order the trials were first named.
    """
    names: dict[str, str] = {}
    for i, target in enumerate(targets):
        trial_id = winners.get(target)
        if trial_id is not None and trial_id not in names:
            names[trial_id] = name if i == 0 else f"{name}-{target}"
    return names


def winner_record(
    name: str, winner: dict[str, Any], parent: dict[str, Any], search_id: str, num_trials: int, output_dir: Path,
    targets: list[str] | None = None,
) -> VariantRecord:
    """A search winner's variant record: its model copied to ``<output_dir>/variants/<name>.onnx``,
    kind of its mode (``static_int8`` / ``dynamic_int8``), its quantization settings (with
    ``exclude_top_k``, the ``search`` provenance and the objective ``search_targets`` it won), its
    evaluation and its validation against ``parent`` (the FP32 model it was built from).

    Args:
        winner: the winning trial record (``path``, ``sha256``, ``quantization``, ``settings``,
            ``evaluation``, ``validation``, ``op_counts``, ``trial_id``, ``settings_hash``).
        parent: the parent's variant record (dict).
        targets: the objective targets this trial won (None: not recorded).

    Raises:
        OSError: the trial model cannot be copied.
    """
    folder = output_dir / "variants"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    shutil.copyfile(winner["path"], path)
    provenance = SearchProvenance(
        search_id=search_id, trial_id=winner["trial_id"], settings_hash=winner["settings_hash"], num_trials=num_trials
    )
    quantization = {**winner["quantization"], "name": name, "exclude_top_k": winner["settings"]["exclude_top_k"], "search": provenance.model_dump()}
    if targets is not None:
        quantization["search_targets"] = list(targets)
    return VariantRecord(
        name=name,
        kind=f"{winner['settings'].get('mode', 'static')}_int8",
        path=str(path.resolve()),
        size_bytes=path.stat().st_size,
        sha256=winner["sha256"],
        opset=parent.get("opset"),
        validation=Validation.model_validate(winner["validation"]),
        evaluation=Evaluation.model_validate(winner["evaluation"]),
        quantization=quantization,
        op_counts=winner["op_counts"],
        lineage={"parent": parent["name"], "parent_sha256": parent["sha256"], "step": "search"},
        search=provenance,
    )


# --------------------------------------------------------------------------- MLflow


def log_search(tracking_uri: str, run_id: str, summary: dict[str, Any]) -> int:
    """Log the search to the pipeline's MLflow run: one nested run per trial (settings as params,
    quality and p50 as metrics, status tags), and ``search.json``, ``trials.json``, the sensitivity
    report and plot, and the pareto plot as artifacts under ``search/`` of the parent run.

    Idempotent: trials already logged under ``run_id`` (a retry) are skipped.

    Returns:
        The number of nested runs created.

    Raises:
        RegistryUnavailable: MLflow unreachable (transient: the task retries).
        RegistryError: MLflow refused a write.
    """
    client = MlflowClient(tracking_uri)
    created = 0
    with map_mlflow_errors(f"logging the search to MLflow run {run_id}", tracking_uri, wrap_all=True):
        parent = client.get_run(run_id)
        exp = parent.info.experiment_id
        done = {
            r.data.tags.get("edgeport.search.trial_id")
            for r in client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=5000)
        }
        now = int(time.time() * 1000)
        for t in summary["trials"]:
            if t["trial_id"] in done:
                continue
            tags = {
                "mlflow.parentRunId": run_id,
                "edgeport.search.id": summary["search_id"],
                "edgeport.search.trial_id": t["trial_id"],
                "edgeport.search.settings_hash": t["settings_hash"],
                "edgeport.search.status": t["status"],
                "edgeport.search.cached": str(bool(t.get("cached"))).lower(),
                "edgeport.search.winner": str(bool(summary["winner"] and summary["winner"]["trial_id"] == t["trial_id"])).lower(),
                "edgeport.search.winner_of": ",".join(
                    target for target, w in (summary.get("winners") or {}).items() if w["trial_id"] == t["trial_id"]
                ),
            }
            run = client.create_run(exp, run_name=t["trial_id"], tags=tags)
            params = flatten_params({**t["settings"], "nodes_to_exclude": t["nodes_to_exclude"], "phase": t["phase"]})
            metrics = {"quality": quality_of(t), "p50_ms": t.get("p50_ms"), "size_bytes": t.get("size_bytes")}
            metrics.update({f"p50_ms.{target}": p50 for target, p50 in (t.get("p50_ms_by_target") or {}).items()})
            if t.get("evaluation"):
                metrics["quality_drop"] = t["evaluation"].get("drop")
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag("edgeport.search.error", t["error"][:4000])] if t.get("error") else [],
            )
            client.set_terminated(run.info.run_id)
            created += 1
        for path in summary["files"].values():
            if path and Path(path).is_file():
                client.log_artifact(run_id, path, artifact_path="search")
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in {
                "search.trials": len(summary["trials"]),
                "search.calibrations": summary["calibrations"],
                "search.winner_p50_ms": (summary["winner"] or {}).get("p50_ms"),
                "search.winner_quality": (summary["winner"] or {}).get("quality"),
                **{f"search.winner_p50_ms.{target}": w["p50_ms"] for target, w in (summary.get("winners") or {}).items()},
            }.items() if v is not None],
            tags=[
                RunTag("edgeport.search.id", summary["search_id"]),
                RunTag("edgeport.search.winner", (summary["winner"] or {}).get("trial_id") or "none"),
                *(RunTag(f"edgeport.search.winner.{target}", w["trial_id"]) for target, w in (summary.get("winners") or {}).items()),
            ],
        )
    return created


#: Retries transient errors only, within the default window of :class:`~edgeport.spec.RetrySpec`
#: (the same policy as register and report: :func:`edgeport.registry.with_retry_window`).
log_search_task = with_retry_window(task(log_search, name="search-log", cache_policy=NO_CACHE), DEFAULT_RETRY)
