"""Benchmark: peak memory of histogram calibration on MiniLM, chunked (edgeport) vs one-shot (ONNX Runtime).

Each measurement runs in a fresh child process and reports its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after calibrating the pre-processed,
fused FP32 MiniLM graph (what ``quantize_static`` sees) on N sentences at 128 tokens:

* ``chunked``: :func:`edgeport.calibration.calibrate_chunked`, ``--chunk-size`` sentences
  per ``collect_data`` call; the goal is peak(2,000) / peak(100) <= 1.2;
* ``one-shot``: ONNX Runtime's own way (one ``collect_data`` over the whole reader, as
  ``quantize_static`` does), at the smaller sizes only (``--one-shot-sizes``): it keeps
  every activation of every sentence (about 17 MiB each here), and 2,000 sentences would
  need over 30 GiB. The sizes must be multiples of the batch size: ORT's histogram
  calibrators stack the batches with ``np.asarray`` and fail on a smaller last batch.

Measured (2 cores, onnxruntime 1.31.1, Percentile, chunk 16): chunked 851 MiB for 100
sentences, 984 MiB for 2,000 (ratio 1.16); one-shot 1,137 MiB for 48, 1,942 MiB for 96.

The sentences are the MiniLM example's calibration + evaluation text, cycled when N is
larger than the ~1,900 available (activations depend on the sequence length, 128, not on
which sentence fills it). Prints a markdown table for docs/benchmarks.md.

    python benchmarks/minilm_calibration_memory.py [--work DIR] [--sizes 100 2000] [--method Percentile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MINILM = REPO / "examples" / "minilm"
INPUTS = ("input_ids", "attention_mask")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _vm_hwm_mb() -> float | None:
    """Peak RSS of this process image from /proc (``VmHWM``), Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def child(model: str, data: str, n: int, mode: str, method: str, chunk_size: int, batch_size: int) -> dict:
    """Calibrate ``model`` on the first ``n`` samples of ``data``; report peak RSS (MiB) and seconds."""
    import contextlib
    import io

    with np.load(data) as npz:
        arrays = {k: npz[k][:n] for k in INPUTS}
    baseline = _peak_rss_mb()
    start = time.perf_counter()
    if mode == "chunked":
        from edgeport.calibration import calibrate_chunked

        tensors = calibrate_chunked(model, arrays, method=method, chunk_size=chunk_size)
    else:
        from onnxruntime.quantization.calibrate import (
            CalibrationMethod,
            create_calibrator,
        )

        from edgeport.data import iter_batches

        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(
                Path(model), None, augmented_model_path=str(Path(tmp) / "aug.onnx"), calibrate_method=CalibrationMethod[method]
            )
            batches = iter(list(iter_batches(arrays, batch_size)))

            class Reader:
                def get_next(self):
                    return next(batches, None)

            with contextlib.redirect_stdout(io.StringIO()):
                calibrator.collect_data(Reader())
                tensors = calibrator.compute_data()
    return {
        "mode": mode,
        "method": method,
        "n": n,
        "chunk_size": chunk_size if mode == "chunked" else batch_size,
        "tensors": len(list(tensors.keys())),
        "seconds": round(time.perf_counter() - start, 1),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "vm_hwm_mb": _vm_hwm_mb(),
    }


def prepare_inputs(work: Path, max_n: int) -> tuple[Path, Path]:
    """The pre-processed fused FP32 model and a tokenized ``.npz`` of ``max_n`` sentences, in ``work``."""
    import importlib.util

    from edgeport.spec import PipelineSpec
    from tasks.export import export_model
    from tasks.optimize import optimize_transformer
    from tasks.quantize import preprocess

    work.mkdir(parents=True, exist_ok=True)
    spec_mod = importlib.util.spec_from_file_location("_minilm_prepare", MINILM / "prepare.py")
    prep = importlib.util.module_from_spec(spec_mod)
    spec_mod.loader.exec_module(prep)
    art = work / "artifacts"
    if not all(p.is_file() for p in prep.artifact_paths(art).values()):
        prep.prepare(art, small=True)
    data = work / f"sentences-{max_n}.npz"
    if not data.is_file():
        sentences = prep.english_sentences()
        cycled = [sentences[i % len(sentences)] for i in range(max_n)]
        np.savez(data, **prep.tokenize(cycled, 128))
    pre = work / "fp32-opt-preprocessed.onnx"
    if not pre.is_file():
        spec = PipelineSpec.model_validate(
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
                "export": {"exporter": "legacy", "opset": 18},
                "calibration": {"dataset": str(art / "calibration.npz")},
                "registry": {"registered_model": "minilm"},
            }
        )
        fp32 = export_model(spec, cache_dir=work / "export-cache")
        opt = optimize_transformer(fp32.onnx_path, work / "fp32-opt.onnx", num_heads=12, hidden_size=384)
        preprocess(opt.path, pre)
    return pre, data


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else ''}", "args": args}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 2000], help="sentences calibrated on (chunked)")
    parser.add_argument("--one-shot-sizes", type=int, nargs="*", default=[48, 96], help="sentences for ORT's one-shot calibration (multiples of --chunk-size)")
    parser.add_argument("--method", default="Percentile", choices=["Percentile", "Entropy", "MinMax"])
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--child", nargs=7, metavar=("MODEL", "DATA", "N", "MODE", "METHOD", "CHUNK", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=2, metavar=("WORK", "MAX_N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model, data, n, mode, method, chunk, batch = args.child
        print(json.dumps(child(model, data, int(n), mode, method, int(chunk), int(batch))))
        return 0
    if args.prepare:
        pre, data = prepare_inputs(Path(args.prepare[0]), int(args.prepare[1]))
        print(json.dumps([str(pre), str(data)]))
        return 0

    # The parent never imports torch or onnxruntime: a child's ru_maxrss starts at its
    # parent's RSS at fork time (Linux), so a heavy parent would hide the children's peaks.
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeport-calib-mem-"))
    proc = subprocess.run(
        [sys.executable, __file__, "--prepare", str(work), str(max(args.sizes + args.one_shot_sizes))], capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"preparation failed:\n{proc.stderr[-3000:]}")
    pre, data = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    for n in args.sizes:
        rows.append(run_child([str(pre), str(data), str(n), "chunked", args.method, str(args.chunk_size), str(args.chunk_size)]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for n in args.one_shot_sizes:
        rows.append(run_child([str(pre), str(data), str(n), "one-shot", args.method, str(args.chunk_size), str(args.chunk_size)]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f"MiniLM-L6 calibration ({args.method}, seq 128), {os.cpu_count()} cores; peak RSS per child process.\n")
    print("| mode | sentences | chunk/batch | tensors | seconds | RSS before MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['args'][3]} | {r['args'][2]} | - | - | - | - | failed: {r['error']} |")
        else:
            print(
                f"| {r['mode']} | {r['n']} | {r['chunk_size']} | {r['tensors']} | {r['seconds']} | "
                f"{r['baseline_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
            )
    chunked = {r["n"]: r["peak_rss_mb"] for r in rows if r.get("mode") == "chunked"}
    if len(chunked) >= 2:
        lo, hi = min(chunked), max(chunked)
        ratio = chunked[hi] / chunked[lo]
        print(f"\nChunked peak RSS ratio {hi} / {lo} sentences: {ratio:.2f} (goal <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
