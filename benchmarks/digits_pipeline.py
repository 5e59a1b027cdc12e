"""Benchmark: the digits example end to end, cold (empty EDGEPORT_HOME) then warm (cached export).

Prints a markdown report (variants x batch sizes: size, top-1, p50/p90/p99, throughput; pipeline
wall time split into steps) for docs/benchmarks.md.

    python benchmarks/digits_pipeline.py [--home DIR] [--out report.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "digits" / "pipeline.yaml"


def run_pipeline(home: Path, out: Path) -> tuple[dict, float]:
    env = {**os.environ, "EDGEPORT_HOME": str(home)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "edgeport.cli", "run", str(SPEC), "--output", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        sys.exit(f"edgeport run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text()), wall


def report(cold: dict, cold_wall: float, warm: dict, warm_wall: float) -> str:
    import onnxruntime

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__}.",
        "",
        "| variant | size KB | top-1 | drop pp | batch | p50 ms | p90 ms | p99 ms | samples/s | CI ±% | runs | registered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in cold["variants"]:
        ev = v["evaluation"] or {}
        for b in v["benchmarks"]:
            lines.append(
                f"| {v['name']} | {v['size_bytes'] / 1024:.1f} | {ev.get('value', float('nan')):.4f} | "
                f"{100 * ev.get('drop', float('nan')):.2f} | {b['batch_size']} | {b['p50_ms']:.4f} | {b['p90_ms']:.4f} | "
                f"{b['p99_ms']:.4f} | {b['throughput']:.0f} | {b.get('ci_halfwidth_pct') or float('nan'):.2f} | "
                f"{b.get('runs')} | {v['model_version'] or '-'} |"
            )
    ch = cold["challenger"]
    lines += ["", f"Challenger: {ch['variant']} (version {ch['version']})." if ch else "Challenger: none.", ""]
    steps = [k for k in cold["timings_s"] if k != "total"]
    lines += [
        "| run | " + " | ".join(steps) + " | flow total | `edgeport run` wall |",
        "|---|" + "---|" * (len(steps) + 2),
    ]
    for label, s, wall in (("cold", cold, cold_wall), ("warm (cached export)", warm, warm_wall)):
        lines.append(
            f"| {label} | " + " | ".join(f"{s['timings_s'].get(k, 0):.2f}" for k in steps) + f" | {s['timings_s']['total']:.2f} | {wall:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="EDGEPORT_HOME to use (default: a fresh temporary folder)")
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    args = parser.parse_args()
    subprocess.run([sys.executable, str(REPO / "examples" / "digits" / "train.py"), "--if-missing"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp) / "home"
        cold, cold_wall = run_pipeline(home, Path(tmp) / "cold")
        warm, warm_wall = run_pipeline(home, Path(tmp) / "warm")
    text = report(cold, cold_wall, warm, warm_wall)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
