"""Per-node sensitivity of a static INT8 configuration: which nodes' quantization costs the quality.

Method ("leave it in float", the ranking NNCF's accuracy-aware quantization reverts by): the
base configuration is quantized fully once, then once per *probe* with the probe's nodes in
``nodes_to_exclude``; each model runs on the first ``sensitivity.num_samples`` samples of the
evaluation set and is compared with the FP32 parent's outputs on the same samples. A probe's
``impact`` is how much of the quantization noise it removes::

    nsr(model)  = sum((y_model - y_fp32)^2) / sum(y_fp32^2)      (first output, all samples)
    impact      = nsr(fully quantized) - nsr(probe left in float)

``nsr`` is the noise-to-signal ratio, the reciprocal of the SQNR that ONNX Runtime's
``onnxruntime.quantization.qdq_loss_debug.compute_signal_to_quantization_noice_ratio`` reports
in dB; it is continuous, so it ranks nodes even when the gate metric (top-1 on a few samples)
does not move. The gate metric on the subset is reported next to it (``metric``,
``metric_impact`` = metric with the probe in float - metric fully quantized).

Bounded cost: with at most ``max_single_nodes`` candidate nodes every node is a probe. Otherwise
the candidates are grouped first (``group_by``: ``block`` = name prefix up to the first path
component ending in ``.N``/``_N``, e.g. MiniLM's ``/bert/encoder/layer.3``; ``role`` = the name
with that index wildcarded, e.g. ``/bert/encoder/layer.*/output/dense/MatMul``, the same layer
in every block; ``op_type``), every group is a probe, and then only the nodes of the
``refine_groups`` worst groups are probed one by one. Probes: ``#groups + refine_groups x
group size`` instead of one per node.

Candidates are the nodes whose op type ``quantize_static`` quantizes by default (the union of
``onnxruntime.quantization.registry``'s ``QDQRegistry`` and ``QLinearOpsRegistry``), restricted to
``op_types_to_quantize`` when set, minus pure data-movement ops (Reshape, Transpose, ...), which
only inherit their input's quantization.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from edgeport.data import evaluation_source, iter_batches
from edgeport.errors import EdgeportError, QuantizationError, SpecError
from edgeport.fidelity import rowwise_cosine
from edgeport.spec import PipelineSpec, QuantizationVariantSpec, SensitivitySpec
from tasks.quantize import preprocess, quantize_variant
from tasks.validate import ort_session

logger = logging.getLogger("edgeport.sensitivity")

__all__ = [
    "DATA_MOVEMENT_OPS",
    "SubsetEvaluator",
    "analyze_sensitivity",
    "candidate_nodes",
    "group_nodes",
    "plot_sensitivity",
]

#: Ops that only move data: they inherit their input's quantization, excluding them recovers nothing.
DATA_MOVEMENT_OPS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Split", "Slice", "Pad", "Concat", "Resize", "CumSum", "TopK", "ArgMax"}
)

#: A path component that numbers a block: ``layer.3``, ``features.0``, ``block_12``.
_BLOCK_COMPONENT = re.compile(r"^(.*?[A-Za-z_])([._])(\d+)$")


def candidate_nodes(model_path: str | Path, quant_format: str, op_types: list[str] | None) -> list[dict[str, str]]:
    """Nodes a static INT8 configuration quantizes and that a ``nodes_to_exclude`` can keep in float.

    Args:
        model_path: the pre-processed FP32 model (``quant_pre_process`` output).
        quant_format: ``QDQ`` or ``QOperator`` (both quantize ``quantize_static``'s default op
            types: the union of ONNX Runtime's ``QDQRegistry`` and ``QLinearOpsRegistry``).
        op_types: ``op_types_to_quantize`` of the configuration (None = the registry's).

    Returns:
        ``[{"node": name, "op_type": op}]`` in graph order (unnamed nodes are skipped: they
        cannot be excluded by name).
    """
    registry = set(QDQRegistry) | set(QLinearOpsRegistry)  # quantize_static's default op types, both formats
    allowed = (registry if op_types is None else registry & set(op_types)) - DATA_MOVEMENT_OPS
    model = onnx.load(str(model_path), load_external_data=False)
    return [{"node": n.name, "op_type": n.op_type} for n in model.graph.node if n.name and n.op_type in allowed]


def _block_and_role(name: str) -> tuple[str | None, str | None]:
    parts = name.split("/")
    for i, part in enumerate(parts):
        m = _BLOCK_COMPONENT.match(part)
        if m:
            block = "/".join(parts[: i + 1])
            role = "/".join([*parts[:i], f"{m.group(1)}{m.group(2)}*", *parts[i + 1 :]])
            return block, role
    return None, None


def group_nodes(nodes: list[dict[str, str]], group_by: list[str]) -> dict[str, list[str]]:
    """Group candidate nodes for the first, coarse pass.

    Args:
        nodes: :func:`candidate_nodes` output.
        group_by: any of ``block``, ``role``, ``op_type`` (see the module docs). A node without a
            numbered block component falls into ``op_type:<op>`` for ``block`` and ``role``.

    Returns:
        ``{group id: [node names]}``, ids prefixed by their kind (``block:/bert/encoder/layer.3``,
        ``role:/bert/encoder/layer.*/output/dense/MatMul``, ``op_type:MatMul``); groups of every
        kind asked, so a node can be in several. Duplicate member lists are kept once.
    """
    groups: dict[str, list[str]] = {}
    for n in nodes:
        block, role = _block_and_role(n["node"])
        for kind in group_by:
            if kind == "op_type" or block is None:
                key = f"op_type:{n['op_type']}"
            else:
                key = f"{kind}:{block if kind == 'block' else role}"
            members = groups.setdefault(key, [])
            if n["node"] not in members:
                members.append(n["node"])
    unique: dict[str, list[str]] = {}
    seen: set[tuple[str, ...]] = set()
    for key, members in groups.items():
        sig = tuple(sorted(members))
        if sig not in seen:
            seen.add(sig)
            unique[key] = members
    return unique


class SubsetEvaluator:
    """The first ``num_samples`` evaluation samples, the FP32 parent's outputs on them, and the
    gate metric, for scoring many quantized models quickly (in-process ONNX Runtime sessions).

    Args:
        spec: needs an ``evaluation`` section.
        fp32_path: the FP32 parent model.
        num_samples: samples used (capped by the dataset).

    Raises:
        SpecError: no evaluation section.
        DataError: the evaluation set is missing or does not match the inputs.
    """

    def __init__(self, spec: PipelineSpec, fp32_path: str | Path, num_samples: int) -> None:
        ev = spec.evaluation
        if ev is None:
            raise SpecError("sensitivity: the spec has no evaluation section (the quality metric)")
        self.spec = spec
        data = evaluation_source(spec, limit=num_samples).take()
        self.arrays = data.inputs
        self.num_samples = len(data)
        self.metric = ev.metric
        self.fp32 = self.outputs(fp32_path)
        if ev.metric == "top1":
            self.target = data.labels
        elif data.reference is not None:
            self.target = data.reference
        else:
            self.target = self.fp32
        self.fp32_score = self.score_outputs(self.fp32)

    def outputs(self, model_path: str | Path) -> np.ndarray:
        """First output of ``model_path`` on the subset: float64 ndarray (n_samples, ...)."""
        session = ort_session(model_path)
        first = self.spec.outputs[0]
        return np.concatenate([session.run([first], b)[0] for b in iter_batches(self.arrays, 64)]).astype(np.float64)

    def score_outputs(self, y: np.ndarray) -> dict[str, float]:
        """``{"nsr": noise-to-signal ratio vs FP32, "metric": top-1 or mean cosine on the subset}``."""
        signal = float(np.sum(self.fp32**2)) or 1e-30
        nsr = float(np.sum((y - self.fp32) ** 2) / signal)
        if self.metric == "top1":
            metric = float(np.mean(np.argmax(y, axis=-1) == self.target))
        else:
            metric = float(np.nanmean(rowwise_cosine(y.reshape(len(y), -1), np.asarray(self.target, dtype=np.float64).reshape(len(y), -1))))
        return {"nsr": nsr if np.isfinite(nsr) else float("inf"), "metric": metric}

    def score(self, model_path: str | Path) -> dict[str, float]:
        """:meth:`score_outputs` of ``model_path``."""
        return self.score_outputs(self.outputs(model_path))


def analyze_sensitivity(
    spec: PipelineSpec,
    base: QuantizationVariantSpec,
    fp32_path: str | Path,
    parent: str,
    work_dir: str | Path,
    calibration_cache: str | Path,
    settings: SensitivitySpec,
) -> dict[str, Any]:
    """Rank the nodes of ``base`` (a static INT8 configuration) by their contribution to its quality loss.

    Args:
        spec: the pipeline spec (inputs, outputs, evaluation, calibration).
        base: the configuration analysed (its ``nodes_to_exclude`` must be empty).
        fp32_path: the FP32 parent model (the pre-processed one is ``work_dir/<parent>-preprocessed.onnx``).
        parent: the parent variant's name.
        work_dir: scratch folder shared with the search (pre-processed model, probe models).
        calibration_cache: the calibration cache of ``base``'s method and op types.
        settings: ``search.sensitivity``.

    Returns:
        ``{"base": settings of base, "num_samples", "metric", "fp32": score, "quantized": score,
        "candidates": count, "probes": count, "groups": [{group, nodes, nsr, impact, metric,
        metric_impact}], "ranking": [{rank, node, op_type, impact, metric_impact, nsr, metric,
        measured (bool: probed alone), group}], "analysis_s"}``; ``ranking`` is sorted by
        ``impact`` (descending) for the nodes probed alone, then the others by their worst group's
        impact. A score is ``{"nsr", "metric"}`` (see the module docs).

    Raises:
        QuantizationError: the fully quantized base cannot be built.
        DataError, SpecError, RuntimeLoadError: bad evaluation data or an unloadable model.
    """
    start = time.perf_counter()
    work_dir = Path(work_dir)
    pre = preprocess(fp32_path, work_dir / f"{parent}-preprocessed.onnx")
    evaluator = SubsetEvaluator(spec, fp32_path, settings.num_samples)
    nodes = candidate_nodes(pre, base.format, base.op_types_to_quantize)
    op_of = {n["node"]: n["op_type"] for n in nodes}
    probes_run = 0

    def probe(excluded: list[str]) -> dict[str, Any]:
        nonlocal probes_run
        probes_run += 1
        if set(excluded) >= set(op_of):  # nothing left to quantize: the FP32 model
            return {"nsr": 0.0, "metric": evaluator.fp32_score["metric"], "error": None}
        variant = base.model_copy(update={"name": "sensitivity-probe", "nodes_to_exclude": list(excluded)})
        try:
            q = quantize_variant(spec, variant, fp32_path, work_dir, parent=parent, calibration_cache=calibration_cache)
            return {**evaluator.score(q.onnx_path), "error": None}
        except EdgeportError as exc:
            logger.warning("sensitivity probe %s failed: %s", excluded[:3], exc)
            return {"nsr": None, "metric": None, "error": f"{type(exc).__name__}: {exc}"[:300]}

    full = probe([])
    if full["error"]:
        raise QuantizationError(f"sensitivity: the base configuration cannot be quantized: {full['error']}")

    def row(excluded: list[str], result: dict[str, Any]) -> dict[str, Any]:
        ok = result["nsr"] is not None
        return {
            "nsr": result["nsr"],
            "metric": result["metric"],
            "impact": (full["nsr"] - result["nsr"]) if ok else None,
            "metric_impact": (result["metric"] - full["metric"]) if ok else None,
            "error": result["error"],
        }

    groups: list[dict[str, Any]] = []
    if len(nodes) <= settings.max_single_nodes:
        to_measure = list(op_of)
    else:
        for gid, members in group_nodes(nodes, list(settings.group_by)).items():
            groups.append({"group": gid, "nodes": members, **row(members, probe(members))})
        groups.sort(key=lambda g: -(g["impact"] if g["impact"] is not None else float("-inf")))
        to_measure = list(dict.fromkeys(n for g in groups[: settings.refine_groups] for n in g["nodes"]))
    measured = {name: row([name], probe([name])) for name in to_measure}

    def group_of(name: str) -> dict[str, Any] | None:
        return next((g for g in groups if name in g["nodes"]), None)  # groups are sorted worst first

    def key(r: dict[str, Any]) -> float:
        return r["impact"] if r["impact"] is not None else float("-inf")

    ranking = []
    for name in sorted(measured, key=lambda n: -key(measured[n])):
        g = group_of(name)
        ranking.append({"node": name, "op_type": op_of[name], "measured": True, "group": g["group"] if g else None, **measured[name]})
    rest = [n for n in op_of if n not in measured]
    rest.sort(key=lambda n: -key(group_of(n) or {"impact": None}))
    for name in rest:
        g = group_of(name)
        ranking.append({
            "node": name, "op_type": op_of[name], "measured": False, "group": g["group"] if g else None,
            "nsr": None, "metric": None, "impact": g["impact"] if g else None,
            "metric_impact": g["metric_impact"] if g else None, "error": None,
        })
    for i, r in enumerate(ranking, 1):
        r["rank"] = i
    result = {
        "base": base.model_dump(mode="json", exclude={"block_size", "accuracy_level", "is_symmetric"}),
        "num_samples": evaluator.num_samples,
        "metric": evaluator.metric,
        "fp32": evaluator.fp32_score,
        "quantized": {"nsr": full["nsr"], "metric": full["metric"]},
        "candidates": len(nodes),
        "probes": probes_run,
        "groups": groups,
        "ranking": ranking,
        "analysis_s": round(time.perf_counter() - start, 3),
    }
    logger.info(
        "sensitivity: %d candidates, %d probes in %.1f s; top: %s",
        len(nodes), probes_run, result["analysis_s"], [r["node"] for r in ranking[:3]],
    )
    return result


def plot_sensitivity(report: dict[str, Any], path: str | Path, top: int = 20) -> str | None:
    """Horizontal bar plot of the ``top`` nodes' impact (NSR recovery) into ``path`` (PNG).

    Returns:
        ``path`` as a string, or None when no node was measured.
    """
    rows = [r for r in report["ranking"] if r["impact"] is not None][:top]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    labels = [f"{r['node']} ({r['op_type']})" + ("" if r["measured"] else " [group]") for r in rows]
    colors = ["tab:red" if r["measured"] else "tab:gray" for r in rows]
    ax.barh(range(len(rows)), [r["impact"] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    q = report["quantized"]["nsr"]
    ax.set_xlabel("impact: noise-to-signal ratio removed by keeping the node in float")
    ax.set_title(
        f"Sensitivity: {report['num_samples']} samples, {report['probes']} probes; fully quantized NSR {q:.3g}, "
        f"{report['metric']} {report['quantized']['metric']:.4f}",
        fontsize=9,
    )
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_report(report: dict[str, Any], output_dir: str | Path) -> dict[str, str | None]:
    """``sensitivity.json`` and ``sensitivity.png`` into ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "sensitivity.json"
    json_path.write_text(json.dumps(report, indent=2))
    return {"json": str(json_path), "plot": plot_sensitivity(report, output_dir / "sensitivity.png")}
