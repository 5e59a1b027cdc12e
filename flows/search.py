"""The accuracy-aware quantization search as a subflow of the pipeline (a child flow run in the Prefect UI).

This module drives the search's Prefect tasks; the strategy, the trial task and the pure planning
and selection code are in :mod:`tasks.search` (read its module docs first):

1. calibrate once per (method, op-type set) and, when some ``exclude_top_k`` above 0 applies,
   rank the nodes by sensitivity (cached tasks);
2. phase 1 and phase 2 trials over every backend's configurations (:func:`tasks.search.plan_trials`),
   each a cached :data:`tasks.search.trial_task`, until the space or a limit (``max_trials``,
   ``max_wall_time_s``) is exhausted; a trial that raises is recorded as an ``error`` trial;
3. benchmark the passing trials with the references on every objective target, one interleaved
   sweep per target;
4. on each target, the fastest passing trial there that also validates against its FP32 parent
   wins (:func:`tasks.search.winner_record`; one record per distinct winning trial).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from edgeport.data import benchmark_samples_path, dataset_digest
from edgeport.errors import SpecError
from edgeport.prefect_context import in_prefect_run
from edgeport.records import VariantRecord, primary_benchmark
from edgeport.spec import PipelineSpec, spec_digest
from flows.artifacts import publish_search
from flows.caching import run_cached
from flows.hooks import cancel_when_interrupted
from tasks.benchmark import benchmark_target_task
from tasks.quantize import preprocess
from tasks.search import (
    base_configuration,
    calibrate_task,
    configurations,
    exclusions,
    needs_sensitivity,
    node_names,
    plan_trials,
    plot_pareto,
    quality_of,
    quality_threshold,
    search_cache_dir,
    select_winner,
    sensitivity_task,
    settings_hash,
    trial_p50,
    trial_rows,
    trial_task,
    trial_variant,
    winner_names,
    winner_record,
)
from tasks.sensitivity import write_report
from tasks.validate import validate_task

__all__ = ["search_flow"]

logger = logging.getLogger("edgeport.search")  # routed to the Prefect run log (PREFECT_LOGGING_EXTRA_LOGGERS)


class _Calibrations:
    """Calibration caches, computed once per (method, op-type set) by the cached ``calibrate_task``."""

    def __init__(self, spec: PipelineSpec, pre: str, work: Path, data_key: dict[str, Any]) -> None:
        self.spec, self.pre, self.work, self.data_key = spec, pre, work, data_key
        self.paths: dict[str, str] = {}
        self.computed = self.cached = 0

    def for_config(self, config: dict[str, Any]) -> str:
        ops, method = config["op_types_to_quantize"], config["calibration_method"]
        ckey = spec_digest({"work": str(self.work), "method": method, "ops": ops, **self.data_key})[:16]
        if ckey not in self.paths:
            path = str(self.work / f"calibration-{method}-{ckey}.json")
            result, cached = run_cached(
                calibrate_task, spec=self.spec, pre_path=self.pre, cache_path=path, method=method, op_types=ops,
                key=f"edgeport-search-calibrate-{ckey}", intact=lambda r: Path(r["cache_path"]).is_file(),
            )
            if cached:
                self.cached += 1
            else:
                self.computed += 1
            self.paths[ckey] = result["cache_path"]
        return self.paths[ckey]


def _run_trials(
    spec: PipelineSpec, ranking: list[dict[str, Any]], parent_nodes: Callable[[], set[str]], run_trial: Any, t0: float
) -> tuple[list[dict[str, Any]], str]:
    """Phase 1 then phase 2 (see :mod:`tasks.search`); returns (trial records, why the loop stopped).

    ``parent_nodes()``: the parent's node names, the names an NNCF trial may leave in float."""
    search = spec.search
    trials: list[dict[str, Any]] = []
    stopped = "space exhausted"

    def limit_reached() -> str | None:
        if len(trials) >= search.max_trials:
            return f"max_trials ({search.max_trials})"
        if time.perf_counter() - t0 > search.max_wall_time_s:
            return f"max_wall_time_s ({search.max_wall_time_s:g} s)"
        return None

    def attempt(config: dict[str, Any], k: int, phase: int) -> bool | None:
        """Run one trial; True/False = passed the gate or not; None = a limit stopped it."""
        present = parent_nodes() if config["backend"] == "nncf" and k > 0 else None
        nodes = exclusions(ranking, config, k, present)
        # The same configuration with the same nodes in float (k beyond the ranking, or names NNCF's
        # parent lacks) builds the same model: its earlier trial answers.
        same = next((t for t in trials if t["config"] == config and t["nodes_to_exclude"] == nodes), None)
        if same is not None:
            return same["passed_quality"]
        if limit_reached() is not None:
            return None
        settings = {**config, "exclude_top_k": k}
        shash = settings_hash({**settings, "nodes_to_exclude": nodes})
        trial = {"trial_id": f"trial-{shash}", "settings": settings, "nodes_to_exclude": nodes}
        record = {**trial, "settings_hash": shash, "phase": phase, "index": len(trials), "p50_ms": None, "benchmark": None}
        record.update(run_trial(trial, config))
        record["config"] = config
        trials.append(record)
        logger.info(
            "search trial %s (phase %d, k=%d, %s): %s %s", record["trial_id"], phase, k, config, record["status"], quality_of(record)
        )
        return record["passed_quality"]

    configs = configurations(spec)
    ks = list(search.space.exclude_top_k)
    # The smallest passing k of the first passing configuration, per (backend, mode): how many nodes
    # one backend needs in float says nothing about another (NNCF may pass at k=0 where ONNX Runtime
    # needs 6), so each pair starts from the smallest k until one of its configurations passes.
    k_mins: dict[tuple[str, str], int] = {}

    def pair(config: dict[str, Any]) -> tuple[str, str]:
        return config["backend"], config["mode"]

    for k in plan_trials(configs[0], ks, None):  # phase 1: exclude the worst nodes until the budget is met
        passed = attempt(configs[0], k, 1)
        if passed is None:
            stopped = limit_reached() or stopped
            break
        if passed:
            k_mins[pair(configs[0])] = k
            break
    for config in configs[1:]:  # phase 2: the rest of the space
        if limit_reached():
            stopped = limit_reached()
            break
        for k in plan_trials(config, ks, k_mins.get(pair(config))):
            passed = attempt(config, k, 2)
            if passed:
                k_mins.setdefault(pair(config), k)
            if passed is None or passed:
                break
    for t in trials:
        del t["config"]
    return trials, limit_reached() or stopped


@flow(
    name="edgeport-search", flow_run_name="search-{spec.name}",
    description="Accuracy-aware quantization search across backends and targets: the fastest INT8 configuration "
    "within the quality budget on every objective target.",
    on_crashed=[cancel_when_interrupted],
)
def search_flow(spec: PipelineSpec, variants: list[dict[str, Any]], output_dir: str) -> tuple[list[VariantRecord], dict[str, Any]]:
    """Run the search of ``spec.search`` (see :mod:`tasks.search`) as a child flow run of the pipeline.

    Args:
        spec: the pipeline spec with a ``search`` section (and ``calibration``, ``evaluation``).
        variants: the pipeline's variant records so far (dicts); ``fp32`` (and ``fp32-optimized``)
            must be validated and ``fp32`` evaluated (its evaluation is the reference of the gate).
        output_dir: the pipeline's output folder; the search writes into ``<output_dir>/search``.

    Returns:
        ``(records, summary)``: one :class:`edgeport.records.VariantRecord` per distinct winning
        trial, in objective-target order (kind ``static_int8`` / ``dynamic_int8``, with ``search``
        provenance): the first target's winner is named ``search.name``, another target's
        ``<search.name>-<target>`` unless it is a trial already named; empty when no trial
        passed. The summary (``search.json``, docs/spec.md): ``search_id``, ``objective``
        (``targets``; ``target`` = the first), ``metric``, ``quality_threshold``, ``sensitivity``
        (None when no ``exclude_top_k`` above 0 applies), ``calibrations`` (computed in this run)
        and ``calibrations_cached``, ``trials`` (``p50_ms_by_target``; ``p50_ms`` on the first
        target), ``references``, ``fastest_fp32``, ``pareto`` and ``winners`` per target,
        ``winner`` (the first target's), ``stopped``, ``elapsed_s``, ``files``.

    Raises:
        SpecError: no search section, or no FP32 evaluation.
        QuantizationError, DataError: the base configuration cannot be calibrated or quantized
            (when the sensitivity analysis runs).
    """
    logger = get_run_logger()
    search = spec.search
    if search is None:
        raise SpecError("search: the spec has no `search` section")
    t0 = time.perf_counter()
    out = Path(output_dir) / "search"
    out.mkdir(parents=True, exist_ok=True)
    by_name = {v["name"]: v for v in variants}
    parent_name = search.parent or ("fp32-optimized" if "fp32-optimized" in by_name else "fp32")
    parent = by_name[parent_name]
    parent_names = {"onnxruntime": parent_name, "nncf": search.nncf_parent}  # per backend: the FP32 model it quantizes
    reference = by_name["fp32"]["evaluation"]
    if reference is None:
        raise SpecError("search: the fp32 variant has no evaluation (the spec needs an `evaluation` section)")
    cal, ev = spec.calibration, spec.evaluation
    data_key = {"parent_sha256": parent["sha256"], "calibration": cal.model_dump(mode="json"), "calibration_sha256": dataset_digest(cal.dataset)}
    work = search_cache_dir() / spec_digest(data_key)[:16]
    work.mkdir(parents=True, exist_ok=True)
    eval_key = {"evaluation": ev.model_dump(mode="json"), "sha256": dataset_digest(ev.dataset), "reference": reference["value"]}
    search_id = spec_digest({**data_key, "evaluation": eval_key, "search": search.model_dump(mode="json")})[:12]
    target_names = search.objective.target_names([t.name for t in spec.targets])
    targets = [next(t for t in spec.targets if t.name == name) for name in target_names]
    batch = search.objective.batch_size or spec.benchmark.primary
    calibrations = _Calibrations(spec, preprocess(parent["path"], work / f"{parent_name}-preprocessed.onnx"), work, data_key)

    # Sensitivity of the ONNX Runtime static base configuration, when some trial may exclude nodes.
    ranking: list[dict[str, Any]] = []
    sens: dict[str, Any] | None = None
    sens_files: dict[str, Any] = {"json": None, "plot": None}
    if needs_sensitivity(spec):
        base_config = base_configuration(spec)
        base = trial_variant(base_config, "sensitivity-base", [])
        skey = spec_digest({"work": str(work), "base": base.model_dump(mode="json"), "sens": search.sensitivity.model_dump(mode="json"), "eval": eval_key})[:16]
        sens = sensitivity_task(
            spec=spec, base=base, fp32_path=parent["path"], parent=parent_name, work_dir=str(work),
            calibration_cache=calibrations.for_config(base_config), key=f"edgeport-search-sensitivity-{skey}",
        )
        sens_files = write_report(sens, out)
        ranking = sens["ranking"]

    def run_trial(trial: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Quantize + evaluate one trial (cached task); a broken configuration is a result, not the end of the search."""
        pname = parent_names[config["backend"]]
        try:
            ort_static = config["backend"] == "onnxruntime" and config["mode"] == "static"
            calibration_cache = calibrations.for_config(config) if ort_static else None  # NNCF reads the data itself
            tkey = spec_digest({"work": str(work), "trial": trial, "parent": by_name[pname]["sha256"], "eval": eval_key})[:24]
            result, cached = run_cached(
                trial_task, spec=spec, trial=trial, fp32_path=by_name[pname]["path"], parent=pname, work_dir=str(work),
                calibration_cache=calibration_cache, reference=reference, key=f"edgeport-search-trial-{tkey}",
                intact=lambda r: Path(r["path"]).is_file(),
            )
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"[:500]
            logger.warning("search trial %s failed: %s", trial["trial_id"], error)
            return {"parent": pname, "cached": False, "passed_quality": False, "status": "error", "error": error, "evaluation": None}
        passed = bool(result["evaluation"]["passed"])
        return {
            **result, "parent": pname, "cached": cached, "passed_quality": passed,
            "status": "passed" if passed else "failed_quality", "error": None,
        }

    parent_nodes = functools.cache(lambda: node_names(by_name[parent_names["nncf"]]["path"]))
    trials, stopped = _run_trials(spec, ranking, parent_nodes, run_trial, t0)

    # Every passing trial benchmarked on every objective target with the FP32 reference(s) and the
    # hand-written variants that passed their gates (the search must be no slower): per target one
    # interleaved sweep, so "the fastest FP32" is the fastest on any target.
    references = [
        v for v in variants
        if (v.get("validation") or {}).get("passed") and (v["kind"] == "fp32" or (v.get("evaluation") or {}).get("passed"))
    ]
    passing = [t for t in trials if t["passed_quality"]]
    bench: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in targets}
    if passing:
        bspec = spec.model_copy(update={"benchmark": spec.benchmark.model_copy(update={"batch_sizes": [batch], "primary_batch_size": None})})
        models = {r["name"]: r["path"] for r in references} | {t["trial_id"]: t["path"] for t in passing}
        for target in targets:
            bench[target.name] = benchmark_target_task(bspec, target, models, benchmark_samples_path(spec), str(out / "benchmarks" / target.name))

    def p50_on(name: str, target: str) -> float | None:
        entry = primary_benchmark({"benchmarks": bench[target].get(name) or []}, spec, target=target, batch_size=batch)
        return None if entry is None else entry["p50_ms"]

    first = targets[0].name
    for t in trials:
        t["p50_ms_by_target"] = {target.name: p50_on(t["trial_id"], target.name) if t["passed_quality"] else None for target in targets}
        t["p50_ms"] = t["p50_ms_by_target"][first]
        t["benchmark"] = (bench[first].get(t["trial_id"]) or [None])[0] if t["passed_quality"] else None
    refs = []
    for r in references:
        by_target = {target.name: p50_on(r["name"], target.name) for target in targets}
        refs.append({
            "name": r["name"], "kind": r["kind"], "p50_ms": by_target[first], "p50_ms_by_target": by_target,
            "quality": (r.get("evaluation") or (reference if r["name"] == "fp32" else None) or {}).get("value"),
        })

    # Per target: the fastest passing trial whose model also passes validation against its FP32 parent
    # (validated once per trial, whichever target asks first).
    def validated(cand: dict[str, Any]) -> bool:
        if "validation" not in cand:
            cand["validation"] = validate_task(
                spec, cand["path"], reference_onnx=by_name[cand["parent"]]["path"], report_path=str(out / f"validation-{cand['trial_id']}.json")
            )
        return bool(cand["validation"]["passed"])

    won: dict[str, dict[str, Any]] = {}
    pareto: dict[str, list[str]] = {}
    for target in targets:
        _, pareto[target.name] = select_winner(trials, target.name)
        for cand in sorted([t for t in passing if trial_p50(t, target.name) is not None], key=lambda t: trial_p50(t, target.name)):
            if validated(cand):
                won[target.name] = cand
                break
            logger.warning("search: trial %s is fastest on %s but failed validation; trying the next", cand["trial_id"], target.name)

    fp32_points = [(p50, r["name"], tg) for r in refs if r["kind"] == "fp32" for tg, p50 in r["p50_ms_by_target"].items() if p50 is not None]
    fastest_fp32 = min(fp32_points, default=None)
    handwritten = [p50 for r in refs if r["kind"] != "fp32" for p50 in r["p50_ms_by_target"].values() if p50 is not None]
    names = winner_names(search.name, target_names, {tg: w["trial_id"] for tg, w in won.items()})
    winners = {
        tg: {
            "trial_id": w["trial_id"], "variant": names[w["trial_id"]], "settings_hash": w["settings_hash"], "p50_ms": trial_p50(w, tg),
            "quality": quality_of(w),
            "speedup_vs_fastest_fp32": (fastest_fp32[0] / trial_p50(w, tg)) if fastest_fp32 else None,
            "speedup_vs_fastest_handwritten": (min(handwritten) / trial_p50(w, tg)) if handwritten else None,
            "settings": w["settings"], "nodes_to_exclude": w["nodes_to_exclude"],
        }
        for tg, w in won.items()
    }
    summary: dict[str, Any] = {
        "search_id": search_id,
        "name": search.name,
        "parent": parent_name,
        "nncf_parent": search.nncf_parent,
        "objective": {"target": first, "targets": target_names, "batch_size": batch, "statistic": "p50_ms"},
        "metric": ev.metric,
        "quality_threshold": quality_threshold(spec, reference),
        "work_dir": str(work),
        "sensitivity": None if sens is None else {
            "probes": sens["probes"], "candidates": sens["candidates"], "num_samples": sens["num_samples"],
            "analysis_s": sens["analysis_s"], "top": [r["node"] for r in ranking[:10]], **sens_files,
        },
        "calibrations": calibrations.computed,
        "calibrations_cached": calibrations.cached,
        "trials": [{k: v for k, v in t.items() if k != "validation"} for t in trials],
        "references": refs,
        "fastest_fp32": None if fastest_fp32 is None else {"p50_ms": fastest_fp32[0], "variant": fastest_fp32[1], "target": fastest_fp32[2]},
        "pareto": pareto,
        "winners": winners,
        "winner": winners.get(first),
        "stopped": stopped,
        "elapsed_s": None,
    }
    records = []
    for trial_id, name in names.items():
        w = next(t for t in trials if t["trial_id"] == trial_id)
        records.append(winner_record(name, w, by_name[w["parent"]], search_id, len(trials), Path(output_dir), [tg for tg, x in won.items() if x is w]))
    summary["elapsed_s"] = round(time.perf_counter() - t0, 3)
    plot = plot_pareto(summary, out / "pareto.png")
    (out / "trials.json").write_text(json.dumps(trial_rows(summary), indent=2))
    summary["files"] = {
        "summary": str(out / "search.json"), "trials": str(out / "trials.json"), "pareto_plot": plot,
        "sensitivity_json": sens_files["json"], "sensitivity_plot": sens_files["plot"],
    }
    (out / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    if in_prefect_run():
        publish_search(spec, summary, ranking)
    if not winners:
        logger.warning("search: no configuration meets the budget (%d trials, %s); nothing will be registered", len(trials), stopped)
    for tg, w in winners.items():
        logger.info("search: winner on %s: %s (%s), p50 %.4f ms, %s %.5f (%d trials)", tg, w["trial_id"], w["variant"], w["p50_ms"], ev.metric, w["quality"], len(trials))
    return records, summary
