"""Where the time goes: ONNX Runtime's per-node profile of MiniLM variants, aggregated by op type.

    python benchmarks/minilm_profile.py SUMMARY.json [--variants fp32,int8-dynamic] [--batch 1] [--runs 50]

Reads the variant paths from a pipeline run's summary.json (``edgeport run
examples/minilm/pipeline.yaml``), feeds real tokenized sentences (the spec's evaluation set),
and runs each model with ``SessionOptions.enable_profiling`` (2 intra-op threads, spinning
off, like the benchmark runner). Prints, per variant, the share of kernel time per op type.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml


def profile(model: str, feeds: dict[str, np.ndarray], runs: int, threads: int) -> dict[str, float]:
    """Total kernel time per op type (us), summed over ``runs`` timed runs after 5 warm-up runs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 5):
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    return dict(per_op)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path)
    parser.add_argument("--variants", default="fp32,fp32-optimized,int8-dynamic,int8-static")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    spec = yaml.safe_load(Path(summary["spec"]).read_text())
    data = Path(summary["spec"]).parent / spec["evaluation"]["dataset"]
    names = [i["name"] for i in spec["inputs"]]
    with np.load(data) as npz:
        feeds = {n: np.ascontiguousarray(npz[n][: args.batch]) for n in names}
    paths = {v["name"]: v["path"] for v in summary["variants"]}
    for name in args.variants.split(","):
        per_op = profile(paths[name], feeds, args.runs, args.threads)
        total = sum(per_op.values())
        print(f"\n### {name}: {total / args.runs / 1000:.2f} ms of kernel time per run (batch {args.batch})\n")
        print("| op type | ms per run | share |")
        print("|---|---|---|")
        for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:10]:
            print(f"| {op} | {us / args.runs / 1000:.2f} | {100 * us / total:.1f}% |")


if __name__ == "__main__":
    main()
