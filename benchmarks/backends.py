"""Benchmark: both quantization backends side by side, MiniLM and the CNN, every variant x target in ONE sweep.

For each model the FP32 variants and the INT8 variants of both backends are built with
edgeport's own steps (``tasks.export``, ``tasks.optimize``, ``tasks.quantize.quantize_variant``,
which dispatches to ``tasks.quantize_nncf`` for ``backend: nncf``), evaluated with the spec's
gate (``tasks.evaluate.evaluate_model``: top-1 drop for the CNN, mean cosine to the FP32 PyTorch
embeddings for MiniLM), then every (model, target, variant) is measured in one interleaved sweep:
``--rounds`` rounds, each running every model x target x variant once
(:func:`tasks.benchmark.benchmark_variant`, one runner process each, the budget split over the
rounds), pooled with :func:`tasks.benchmark.combine_rounds`. A drift of the machine therefore hits
every variant on every target alike, and "speed-up vs the fastest FP32" divides by the fastest
FP32 variant on any target.

Variants:

* MiniLM (``examples/minilm``): ``fp32`` (legacy export, unfused), ``fp32-optimized`` (ORT's BERT
  fusions), ORT dynamic INT8 per-channel and static U8S8 / S8S8 QDQ per-channel with the FFN
  down-projections in float (from ``fp32-optimized``, as in the example's spec), NNCF static INT8
  with ``model_type: transformer`` (from ``fp32``), and Optimum's ``--avx512_vnni`` dynamic
  quantization of ``fp32``, per-tensor (the CLI's default) and ``--per_channel``
  (:func:`optimum_avx512_vnni_dynamic`: Optimum itself cannot be installed next to edgeport's pins).
* CNN (``examples/cnn``): ``fp32`` and the six INT8 variants of ``examples/cnn/pipeline.yaml``
  (ORT MinMax / Entropy / Percentile, NNCF defaults / full bias correction / accuracy control).

Make the artifacts first, then run (a few minutes per model on 2 cores)::

    python examples/minilm/prepare.py --if-missing
    python examples/cnn/train.py --if-missing
    python benchmarks/backends.py [--models minilm,cnn] [--targets cpu,openvino-cpu] [--rounds 2] \
        [--time-budget 4] [--work DIR] [--out report.md]

Prints a markdown report (CPU model and ISA from :func:`edgeport.runner.cpu_info`) and writes
``report.json`` in ``--work``. ``openvino-cpu`` is reported ``unavailable`` until
``edgeport targets setup openvino`` has run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODELS = ("minilm", "cnn")
TARGETS = ("cpu", "openvino-cpu")
BATCH_SIZES = (1, 8)

#: MiniLM's FFN down-projections (after GELU, the widest activations), kept float by the example's int8-static.
FFN_OUT = [f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(6)]

#: MiniLM's INT8 variants: name -> (parent FP32 variant, QuantizationVariantSpec fields).
MINILM_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ort-dynamic-pc": ("fp32-optimized", {"mode": "dynamic", "per_channel": True, "weight_type": "QInt8"}),
    "ort-static-u8s8": (
        "fp32-optimized",
        {"mode": "static", "format": "QDQ", "per_channel": True, "activation_type": "QUInt8", "nodes_to_exclude": FFN_OUT},
    ),
    "ort-static-s8s8": (
        "fp32-optimized",
        {"mode": "static", "format": "QDQ", "per_channel": True, "activation_type": "QInt8", "nodes_to_exclude": FFN_OUT},
    ),
    "nncf-transformer": ("fp32", {"backend": "nncf", "model_type": "transformer", "subset_size": 256}),
    # symmetric activations (preset performance) for the CPU's INT8 kernels (target_device CPU)
    "nncf-transformer-perf": (
        "fp32",
        {"backend": "nncf", "model_type": "transformer", "subset_size": 256, "preset": "performance", "target_device": "CPU"},
    ),
}
#: Optimum's ``--avx512_vnni`` dynamic quantization of MiniLM's fp32: name -> per_channel.
OPTIMUM_VARIANTS = {"optimum-avx512-vnni": False, "optimum-avx512-vnni-pc": True}


def optimum_avx512_vnni_dynamic(fp32_path: str | Path, out_path: str | Path, per_channel: bool) -> dict[str, Any]:
    """Optimum's ``optimum-cli onnxruntime quantize --avx512_vnni [--per_channel]``, reproduced with
    onnxruntime.quantization (Optimum's ONNX Runtime support, ``optimum-onnx``, requires
    transformers < 4.58, edgeport pins 5.x; the last ``optimum[onnxruntime]`` pip resolves under the
    pins, 1.17.1, fails to import with transformers 5).

    Source, ``huggingface/optimum-onnx``: ``optimum/onnxruntime/configuration.py``
    ``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=...)`` is a
    ``QuantizationConfig`` with format QOperator, mode IntegerOps, U8 activations (asymmetric),
    S8 weights (symmetric), ``reduce_range=False``, ``operators_to_quantize`` =
    ``IntegerOpsRegistry`` keys (Conv, MatMul, Attention, LSTM); ``optimum/onnxruntime/quantization.py``
    ``ORTQuantizer.quantize`` then runs ``ONNXQuantizer`` on the un-preprocessed model with
    ``extra_options`` WeightSymmetric True, ActivationSymmetric False, EnableSubgraph False,
    ForceSymmetric False, AddQDQPairToWeight False, DedicatedQDQPair False and
    QDQOpTypePerChannelSupportToAxis {"MatMul": 1}. Unlike ``quantize_dynamic``, it does not set
    ``MatMulConstBOnly``, so the attention MatMuls of two activations become MatMulInteger too.
    The CLI's ``--per_channel`` defaults to off.

    Args:
        fp32_path: the FP32 model (MiniLM's unfused legacy export, as Optimum exports it).
        out_path: where the quantized model is written.
        per_channel: per-channel (per-row) weight scales.

    Returns:
        The settings used (JSON-able), ``quantize_s`` included.
    """
    import onnx
    from onnxruntime.quantization import QuantizationMode, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    start = time.perf_counter()
    extra = {
        "WeightSymmetric": True,
        "ActivationSymmetric": False,
        "EnableSubgraph": False,
        "ForceSymmetric": False,
        "AddQDQPairToWeight": False,
        "DedicatedQDQPair": False,
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }
    quantizer = ONNXQuantizer(
        onnx.load(str(fp32_path)),
        per_channel,
        False,  # reduce_range
        QuantizationMode.IntegerOps,
        False,  # static
        QuantType.QInt8,  # weights
        QuantType.QUInt8,  # activations
        None,  # tensors_range
        [],  # nodes_to_quantize
        [],  # nodes_to_exclude
        list(IntegerOpsRegistry),
        extra,
    )
    quantizer.quantize_model()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(out_path), False)
    return {
        "reproduces": "optimum-cli onnxruntime quantize --avx512_vnni" + (" --per_channel" if per_channel else ""),
        "per_channel": per_channel,
        "op_types_to_quantize": list(IntegerOpsRegistry),
        "extra_options": extra,
        "quantize_s": round(time.perf_counter() - start, 3),
    }


def _variant_spec(name: str, fields: dict[str, Any]) -> Any:
    from edgeport.spec import QuantizationVariantSpec

    return QuantizationVariantSpec.model_validate({"name": name, **fields})


def _limit_eval(spec: Any, num_eval: int | None) -> Any:
    """``spec`` with ``evaluation.max_samples`` = ``num_eval`` (None: unchanged)."""
    if num_eval is None:
        return spec
    return spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"max_samples": num_eval})})


def build_minilm(work: Path, num_eval: int | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """MiniLM's spec (``examples/minilm/pipeline.yaml``, legacy export, 2-thread cpu target) and its
    variants: ``[{"name", "backend", "parent", "path", "settings"}]``."""
    from edgeport.spec import load_spec
    from tasks.export import export_model
    from tasks.optimize import optimize_transformer
    from tasks.quantize import quantize_variant

    spec = load_spec(REPO / "examples" / "minilm" / "pipeline.yaml")
    spec = _limit_eval(spec.model_copy(update={"export": spec.export.model_copy(update={"exporter": "legacy"})}), num_eval)
    export = export_model(spec, cache_dir=work / "export-cache")
    opt = spec.optimization
    fused = optimize_transformer(
        export.onnx_path, work / "fp32-optimized.onnx", model_type=opt.model_type, num_heads=opt.num_heads,
        hidden_size=opt.hidden_size, opt_level=opt.opt_level, require=dict(opt.require),
    )
    variants = [
        {"name": "fp32", "backend": "-", "parent": "checkpoint", "path": export.onnx_path, "settings": {"exporter": "legacy"}},
        {"name": "fp32-optimized", "backend": "onnxruntime", "parent": "fp32", "path": str(fused.path), "settings": {"fusions": fused.fusions}},
    ]
    paths = {v["name"]: v["path"] for v in variants}
    for name, (parent, fields) in MINILM_VARIANTS.items():
        q = quantize_variant(spec, _variant_spec(name, fields), paths[parent], work / f"from-{parent}", parent=parent)
        variants.append({"name": name, "backend": fields.get("backend", "onnxruntime"), "parent": parent, "path": q.onnx_path, "settings": q.settings})
    for name, per_channel in OPTIMUM_VARIANTS.items():
        out = work / "optimum" / f"{name}.onnx"
        settings = optimum_avx512_vnni_dynamic(paths["fp32"], out, per_channel)
        variants.append({"name": name, "backend": "optimum (reproduced)", "parent": "fp32", "path": str(out), "settings": settings})
    return spec, variants


def build_cnn(work: Path, num_eval: int | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """The CNN's spec (``examples/cnn/pipeline.yaml``) and its variants (FP32 and the spec's six)."""
    from edgeport.spec import load_spec
    from tasks.export import export_model
    from tasks.quantize import quantize_variant

    spec = _limit_eval(load_spec(REPO / "examples" / "cnn" / "pipeline.yaml"), num_eval)
    export = export_model(spec, cache_dir=work / "export-cache")
    variants = [{"name": "fp32", "backend": "-", "parent": "checkpoint", "path": export.onnx_path, "settings": {"exporter": export.exporter}}]
    for v in spec.quantization:
        q = quantize_variant(spec, v, export.onnx_path, work / "variants", parent="fp32")
        variants.append({"name": v.name, "backend": v.backend, "parent": "fp32", "path": q.onnx_path, "settings": q.settings})
    return spec, variants


def evaluate(spec: Any, variants: list[dict[str, Any]], work: Path) -> None:
    """Add ``quality`` (the evaluation dict of :func:`tasks.evaluate.evaluate_model`) to each variant."""
    from tasks.evaluate import evaluate_model

    reference = None
    for v in variants:
        v["quality"] = evaluate_model(spec, v["path"], v["name"], work / "evaluation", reference)
        if v["name"] == "fp32":
            reference = v["quality"]


def sweep(
    jobs: list[tuple[str, Any, Any, list[dict[str, Any]], Path]], rounds: int, time_budget_s: float, warmup: int, work: Path
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """One interleaved sweep over every (model, target, variant).

    Args:
        jobs: ``(model name, spec, TargetSpec, variants, samples .npz)`` per model x target.
        rounds: rounds; each runs every job's every variant once, with ``time_budget_s / rounds``
            seconds of timed runs per batch size.

    Returns:
        ``(model, target, variant) -> one pooled entry per batch size`` (:func:`tasks.benchmark.combine_rounds`);
        ``status="unavailable"`` entries for a target whose environment is not ready.
    """
    from tasks.benchmark import (
        benchmark_variant,
        combine_rounds,
        target_unavailable,
        unavailable_entry,
    )

    collected: dict[tuple[str, str, str], list[list[dict[str, Any]]]] = {}
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    live = []
    for model, spec, target, variants, samples in jobs:
        reason = target_unavailable(target)
        for v in variants:
            if reason is not None:
                results[(model, target.name, v["name"])] = [
                    unavailable_entry(target, v["path"], b, reason, samples) for b in BATCH_SIZES
                ]
            else:
                collected[(model, target.name, v["name"])] = []
        if reason is None:
            bench = {"batch_sizes": list(BATCH_SIZES), "warmup": warmup, "repetitions": max(1, 500 // rounds),
                     "time_budget_s": time_budget_s / rounds, "timeout_s": 900, "rounds": 1}
            per_round = spec.model_copy(update={"benchmark": spec.benchmark.model_copy(update=bench)})
            live.append((model, per_round, target, variants, samples))
    for r in range(rounds):
        for model, per_round, target, variants, samples in live:
            for v in variants:
                key = (model, target.name, v["name"])
                previous = collected[key]
                if previous and all(e["status"] == "unsupported" for e in previous[-1]):
                    continue
                print(f"[round {r + 1}/{rounds}] {model} {v['name']} on {target.name}", file=sys.stderr, flush=True)
                out = work / "bench" / model / target.name / v["name"] / f"round-{r}"
                previous.append(benchmark_variant(v["path"], per_round, target, samples, out))
    for key, runs in collected.items():
        results[key] = [combine_rounds([entries[i] for entries in runs], 2.0) for i in range(len(runs[0]))]
    return results


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _quality(q: dict[str, Any]) -> str:
    if q["metric"] == "cosine":
        return f"cos {q['cosine_mean']:.4f}"
    drop = q.get("drop")
    return f"top-1 {100 * q['value']:.2f} %" + ("" if not drop else f" ({-100 * drop:+.2f} pp)")


def report(result: dict[str, Any]) -> str:
    """The markdown report of :func:`run`'s result."""
    import onnxruntime

    from edgeport.targets import runtime_info

    cpu = result["cpu"]
    ov = ""
    try:
        ov = f", onnxruntime-openvino {runtime_info('openvino')['distribution'].get('onnxruntime-openvino')}"
    except Exception:  # env not set up: the target's entries say unavailable
        pass
    lb, la = result["load_before"], result["load_after"]
    lines = [
        f"CPU: {cpu['model']} ({os.cpu_count()} logical cores; ISA: {', '.join(cpu['isa']) or 'none detected'}); "
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}{ov}, nncf {result['nncf']}.",
        f"One interleaved sweep: {result['rounds']} rounds x every model x target x variant; batch sizes "
        f"{', '.join(map(str, BATCH_SIZES))}; {result['time_budget_s']:g} s of timed runs per batch size (split over "
        f"the rounds), warmup {result['warmup']}; real evaluation inputs; spinning off.",
        f"Load average (1/5/15 min) before {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}; "
        f"wall time {result['wall_s']:.0f} s.",
        f"Command: `{result['command']}`",
    ]
    targets = result["targets"]
    for model, info in result["models"].items():
        rows = info["variants"]
        bench = {(r["target"], r["variant"]): r["entries"] for r in result["benchmarks"] if r["model"] == model}
        p50 = {(t, v, e["batch_size"]): e.get("p50_ms") for (t, v), es in bench.items() for e in es if e["status"] == "ok"}
        fp32 = {b: min((val for (t, v, bb), val in p50.items() if bb == b and v.startswith("fp32") and val), default=None) for b in BATCH_SIZES}
        big = BATCH_SIZES[-1]
        lines += ["", f"### {model}", "", "| variant | backend | parent | quality | gate | "
                  + " | ".join(f"{t} p50 ms b{BATCH_SIZES[0]} / b{big}" for t in targets)
                  + f" | best speed-up at b{big} vs fastest FP32 |",
                  "|---|---|---|---|---|" + "---|" * len(targets) + "---|"]
        for v in rows:
            cells, best = [], None
            for t in targets:
                es = {e["batch_size"]: e for e in bench.get((t, v["name"]), [])}
                cell = []
                for b in BATCH_SIZES:
                    e = es.get(b)
                    ok = e is not None and e["status"] == "ok" and e.get("p50_ms") is not None
                    cell.append(_fmt(e["p50_ms"], 2 if e["p50_ms"] < 10 else 1) if ok else (e["status"] if e else "-"))
                cells.append(" / ".join(cell))
                val = p50.get((t, v["name"], big))
                if val and fp32[big] and (best is None or fp32[big] / val > best[0]):
                    best = (fp32[big] / val, t)
            speed = f"{best[0]:.2f}x ({best[1]})" if best else "-"
            gate = "pass" if v["quality"]["passed"] else "FAIL"
            lines.append(f"| {v['name']} | {v['backend']} | {v['parent']} | {_quality(v['quality'])} | {gate} | " + " | ".join(cells) + f" | {speed} |")
        problems = [(t, v, e) for (t, v), es in bench.items() for e in es if e["status"] != "ok"]
        if problems:
            lines += ["", "Entries not ok:"]
            seen = set()
            for t, v, e in problems:
                if (t, v) not in seen:
                    seen.add((t, v))
                    lines.append(f"- {v} on {t}: {e['status']}: {(e.get('error') or '')[:200]}")
    return "\n".join(lines) + "\n"


def run(
    models: tuple[str, ...],
    targets: tuple[str, ...],
    rounds: int,
    time_budget_s: float,
    warmup: int,
    work: Path,
    command: str,
    num_eval: int | None = None,
) -> dict[str, Any]:
    """Build, evaluate and sweep; the JSON-able result :func:`report` formats."""
    import nncf

    from edgeport.runner import cpu_info
    from edgeport.spec import TargetSpec

    started = time.perf_counter()
    load_before = os.getloadavg()
    built: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    for model in models:
        print(f"[{model}] building and evaluating variants ...", file=sys.stderr, flush=True)
        spec, variants = (build_minilm if model == "minilm" else build_cnn)(work / model, num_eval)
        evaluate(spec, variants, work / model)
        built[model] = (spec, variants)
    jobs = []
    for model, (spec, variants) in built.items():
        for t in targets:
            target = next((s for s in spec.targets if s.name == t), None) or TargetSpec(name=t)
            if model == "minilm" and t == "cpu":  # the example's 2-thread CPU target, under the profile's name
                target = TargetSpec(name="cpu", intra_op_num_threads=2, inter_op_num_threads=1)
            jobs.append((model, spec, target, variants, spec.evaluation.dataset))
    results = sweep(jobs, rounds, time_budget_s, warmup, work)
    return {
        "command": command,
        "cpu": cpu_info(),
        "nncf": nncf.__version__,
        "rounds": rounds,
        "time_budget_s": time_budget_s,
        "warmup": warmup,
        "targets": list(targets),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
        "models": {
            m: {"variants": [{k: v[k] for k in ("name", "backend", "parent", "path", "settings", "quality")} for v in variants]}
            for m, (_, variants) in built.items()
        },
        "benchmarks": [{"model": m, "target": t, "variant": v, "entries": es} for (m, t, v), es in results.items()],
    }


def main(argv: list[str] | None = None) -> int:
    # benchmarks/light_models.py (this script's folder is sys.path[0]): Prefect's home, telemetry off
    from light_models import prefect_env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated targets (default {','.join(TARGETS)})")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--time-budget", type=float, default=4.0, help="seconds of timed runs per batch size, all rounds (default 4)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per batch size and round (default 3)")
    parser.add_argument("--num-eval", type=int, default=None, help="evaluation samples per model (default: the whole set)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    if set(models) - set(MODELS):
        parser.error(f"--models: unknown {sorted(set(models) - set(MODELS))}; choose from {', '.join(MODELS)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    prefect_env()
    command = "python benchmarks/backends.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="edgeport-backends-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        result = run(models, tuple(t for t in args.targets.split(",") if t), args.rounds, args.time_budget, args.warmup, work, command.strip(), args.num_eval)
        (work / "report.json").write_text(json.dumps(result, indent=2, default=str))
        text = report(result)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
