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
    # A fresh EDGEPORT_HOME (cold export cache) but the machine's managed target environments.
    from edgeport.home import managed_envs_dir

    env = {**os.environ, "EDGEPORT_HOME": str(home), "EDGEPORT_ENVS": os.environ.get("EDGEPORT_ENVS", str(managed_envs_dir()))}
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
        "| variant | size KB | top-1 | drop pp | target | batch | status | p50 ms | p90 ms | p99 ms | samples/s | CI ±% | drift % | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for v in cold["variants"]:
        ev = v["evaluation"] or {}
        for b in v["benchmarks"]:
            lines.append(
                f"| {v['name']} | {v['size_bytes'] / 1024:.1f} | {f(ev.get('value'), '.4f')} | "
                f"{f(100 * ev['drop'] if ev else None, '.2f')} | {b['target']} | {b['batch_size']} | {b['status']} | "
                f"{f(b['p50_ms'], '.4f')} | {f(b['p90_ms'], '.4f')} | {f(b['p99_ms'], '.4f')} | {f(b['throughput'], '.0f')} | "
                f"{f(b.get('ci_halfwidth_pct'), '.2f')} | {f(b.get('drift_pct'), '.1f')} | {b.get('runs') or '-'} |"
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
