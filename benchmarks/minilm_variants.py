"""Benchmark: all-MiniLM-L6-v2 variants: exporters, fusion, INT8 (dynamic, static), INT4: size, fidelity, latency.

Builds every variant from the MiniLM example's checkpoint with edgeport's own steps
(``tasks.export``, ``tasks.validate``, ``tasks.optimize``, ``tasks.quantize``,
``tasks.quantize_int4``), then for each one:

* fidelity to the FP32 PyTorch embeddings of the evaluation sentences
  (:func:`edgeport.fidelity.fidelity_report`: cosine mean/min, nearest-neighbour
  agreement, Spearman of pairwise similarities; gate: mean cosine >= 0.99);
* latency with edgeport's benchmark runner (``tasks.benchmark.benchmark_variant``, a
  child process): batch 1 and 8, sequence 128 (real sentences, padded), 2 intra-op
  threads, 1 inter-op thread, spinning off.

Prints a markdown report (for docs/benchmarks.md) and writes ``report.json`` in ``--work``.

    python examples/minilm/prepare.py --if-missing
    python benchmarks/minilm_variants.py [--artifacts DIR] [--work DIR] [--time-budget S] [--num-eval N]
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MINILM = REPO / "examples" / "minilm"
INPUTS = ("input_ids", "attention_mask")

#: The six FFN down-projections (1536 -> 384, after GELU: the widest activation ranges).
FFN_OUT = [f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(6)]

#: INT8 variants: (name, parent FP32 variant, QuantizationVariantSpec fields).
INT8_VARIANTS = [
    ("int8-dynamic-default", "fp32-legacy-opt", {"mode": "dynamic"}),
    ("int8-dynamic-per-channel", "fp32-legacy-opt", {"mode": "dynamic", "per_channel": True}),
    ("int8-dynamic-per-channel-unfused", "fp32-legacy", {"mode": "dynamic", "per_channel": True}),
    ("int8-static-default", "fp32-legacy-opt", {"mode": "static", "format": "QDQ"}),
    ("int8-static-s8s8-per-channel", "fp32-legacy-opt", {"mode": "static", "format": "QDQ", "per_channel": True, "activation_type": "QInt8"}),
    (
        "int8-static-s8s8-pc-no-ffn-out",
        "fp32-legacy-opt",
        {"mode": "static", "format": "QDQ", "per_channel": True, "activation_type": "QInt8", "nodes_to_exclude": FFN_OUT},
    ),
    (
        "int8-static-u8s8-pc-no-ffn-out",
        "fp32-legacy-opt",
        {"mode": "static", "format": "QDQ", "per_channel": True, "activation_type": "QUInt8", "nodes_to_exclude": FFN_OUT},
    ),
]
INT4_VARIANTS = [
    ("int4-b32-acc4", {"block_size": 32, "accuracy_level": 4}),
    ("int4-b16-acc4", {"block_size": 16, "accuracy_level": 4}),
]


def make_spec(art: Path, exporter: str, quantization: list[dict], benchmark: dict, calibration_samples: int):
    from edgeport.spec import PipelineSpec

    return PipelineSpec.model_validate(
        {
            "name": "minilm",
            "model": {
                "checkpoint": str(art / "minilm.pt"),
                "factory": "model:SentenceEncoder",
                "state_dict_key": "model_state",
                "search_path": [str(MINILM)],
            },
            "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUTS],
            "outputs": ["embeddings"],
            "export": {"opset": 18, "exporter": exporter},
            "validation": {"batch_sizes": [1, 7, 32], "num_samples": 32},
            "calibration": {"dataset": str(art / "calibration.npz"), "num_samples": calibration_samples, "batch_size": 16},
            "quantization": quantization,
            "targets": [{"name": "cpu-2t", "profile": "cpu", "intra_op_num_threads": 2, "inter_op_num_threads": 1}],
            "benchmark": benchmark,
            "registry": {"registered_model": "minilm"},
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "artifacts", help="prepare.py's output folder")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--num-eval", type=int, default=None, help="evaluation sentences (default: all in eval.npz)")
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--time-budget", type=float, default=5.0, help="timed seconds per batch size")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to build (default: all)")
    args = parser.parse_args(argv)

    from edgeport.fidelity import embed_onnx, fidelity_report
    from tasks.benchmark import benchmark_variant
    from tasks.export import export_model
    from tasks.optimize import optimize_transformer
    from tasks.quantize import quantize_variant
    from tasks.quantize_int4 import quantize_int4
    from tasks.validate import validate_onnx

    art = args.artifacts
    if not (art / "minilm.pt").is_file():
        sys.exit(f"{art}/minilm.pt not found: run `python examples/minilm/prepare.py` first")
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeport-minilm-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = {"batch_sizes": [1, 8], "warmup": 5, "repetitions": 200, "time_budget_s": args.time_budget, "timeout_s": 600}
    quant = [{"name": n, **v} for n, _, v in INT8_VARIANTS]
    parents = {n: p for n, p, _ in INT8_VARIANTS}
    specs = {e: make_spec(art, e, quant, bench, args.calibration_samples) for e in ("legacy", "dynamo")}
    with np.load(art / "eval.npz") as npz:
        n = args.num_eval or npz["input_ids"].shape[0]
        arrays = {k: npz[k][:n] for k in INPUTS}
        reference = npz["embeddings"][:n]

    steps: dict[str, dict] = {}
    variants: list[dict] = []

    def wanted(name: str) -> bool:
        return args.only is None or name in args.only

    for exporter, spec in specs.items():
        export = export_model(spec, cache_dir=work / "export-cache")
        report = validate_onnx(spec, export.onnx_path)
        steps[f"export-{exporter}"] = {"export_s": export.export_s, "cached": export.cached, "size_bytes": export.size_bytes,
                                       "validation_max_abs_err": report["max_abs_err"]}
        variants.append({"name": f"fp32-{exporter}", "path": export.onnx_path, "parent": "checkpoint"})
        opt = optimize_transformer(export.onnx_path, work / f"fp32-{exporter}-opt.onnx", num_heads=12, hidden_size=384)
        steps[f"optimize-{exporter}"] = {"fusions": opt.fusions, "nodes": [opt.nodes_before, opt.nodes_after], "optimize_s": opt.optimize_s}
        variants.append({"name": f"fp32-{exporter}-opt", "path": opt.path, "parent": f"fp32-{exporter}"})
        print(f"{exporter}: export {export.export_s} s, fusions {opt.fusions}", file=sys.stderr, flush=True)

    legacy_opt = work / "fp32-legacy-opt.onnx"
    spec = specs["legacy"]
    paths = {v["name"]: v["path"] for v in variants}
    for vspec in spec.quantization:
        if not wanted(vspec.name):
            continue
        parent = parents[vspec.name]
        out_dir = work / f"variants-from-{parent}"
        q = quantize_variant(spec, vspec, paths[parent], out_dir, parent=parent)
        variants.append({"name": q.name, "path": q.onnx_path, "parent": parent, "settings": q.settings,
                         "op_counts": q.op_counts, "quantize_s": q.quantize_s})
        print(f"{q.name}: {q.op_counts} in {q.quantize_s} s", file=sys.stderr, flush=True)
    for name, settings in INT4_VARIANTS:
        if not wanted(name):
            continue
        r = quantize_int4(legacy_opt, work / "variants" / f"{name}.onnx", name=name, **settings)
        variants.append({"name": name, "path": r.onnx_path, "parent": "fp32-legacy-opt", "settings": r.settings,
                         "op_counts": {"MatMulNBits": r.matmul_nbits}, "quantize_s": r.quantize_s})

    for v in variants:
        start = time.perf_counter()
        v["size_bytes"] = Path(v["path"]).stat().st_size
        emb = embed_onnx(v["path"], arrays, batch_size=32)
        v["fidelity"] = fidelity_report(emb, reference)
        v["eval_s"] = round(time.perf_counter() - start, 1)
        entries = benchmark_variant(v["path"], spec, spec.targets[0], art / "eval.npz", work / "benchmarks" / v["name"])
        v["latency"] = {e["batch_size"]: e for e in entries}
        f = v["fidelity"]
        print(f"{v['name']}: cos {f['cosine_mean']:.4f}, p50 " + ", ".join(
            f"b{b} {e.get('p50_ms', float('nan')):.2f} ms" for b, e in v["latency"].items()), file=sys.stderr, flush=True)

    (work / "report.json").write_text(json.dumps({"steps": steps, "variants": variants}, indent=2, default=str))
    import onnxruntime
    import torch
    import transformers

    fp32_best = min((v for v in variants if v["name"].startswith("fp32")), key=lambda v: v["latency"][1].get("p50_ms", 1e9))
    print(
        f"all-MiniLM-L6-v2 on {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}. "
        f"Fidelity on {n} held-out sentences vs FP32 PyTorch; latency: seq 128, 2 intra-op threads, spinning off.\n"
    )
    for name, s in steps.items():
        print(f"- {name}: " + ", ".join(f"{k} {val}" for k, val in s.items()))
    print()
    print("| variant | size MB | cosine mean | cosine min | NN agreement | Spearman | gate 0.99 | p50 ms b1 | p50 ms b8 | b1 vs fastest FP32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        f, lat = v["fidelity"], v["latency"]
        b1, b8 = lat[1].get("p50_ms", float("nan")), lat[8].get("p50_ms", float("nan"))
        speed = fp32_best["latency"][1]["p50_ms"] / b1 if b1 == b1 else float("nan")
        print(
            f"| {v['name']} | {v['size_bytes'] / 1e6:.1f} | {f['cosine_mean']:.4f} | {f['cosine_min']:.4f} | "
            f"{f['nn_agreement']:.3f} | {f['spearman']:.4f} | {'pass' if f['passed'] else 'FAIL'} | {b1:.2f} | {b8:.2f} | {speed:.2f}x |"
        )
    print(f"\nFastest FP32: {fp32_best['name']}. Report: {work / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
