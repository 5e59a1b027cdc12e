"""Benchmark: does edgeport's runner add latency? Runner p50 vs a bare ``session.run`` loop.

For each model and batch size, two measurements alternate over ``--rounds`` rounds, in
the order A B, B A, A B, ... (so slow drift of the machine and any order effect hit both
alike):

A. **runner**: :func:`tasks.benchmark.benchmark_variant` exactly as the pipeline calls it: a
   child process runs :mod:`edgeport.runner` (new session, first inference, warmup, timed
   runs with ``gc`` disabled, stopping once the p50's 95% CI is within ±2%, at
   ``max_runs`` or at the time budget), its result read back from JSON.
B. **bare**: in this process, a new ``InferenceSession`` with the same session options
   (built by the runner's own :func:`edgeport.runner.session_options` from the same
   request: the ``cpu`` target's threads, graph optimization ``all``, spinning off), the
   same input batch (:func:`edgeport.runner.make_feeds`, seed 0), one first inference,
   the same number of warmup runs, then exactly as many timed runs as A made in the same
   round (a B-first round: in the round before), each timed as ``perf_counter_ns()`` around ``session.run``; p50 with numpy.

Overhead of a round = (runner p50 - bare p50) / bare p50. The table gives the median over
rounds and the min..max (the spread), the medians of both p50s, and the median run count;
also the median overhead of the *minimum* latency (runner ``min_ms`` vs the bare loop's),
the estimate least disturbed by other processes on a shared host.

Models: the ``onnx`` package's light SqueezeNet 1.0 and ResNet-50 (real architectures,
constant weights; batch dim made dynamic as in ``benchmarks/light_models.py``) and a small
MLP (x (batch, 256) -> 512 -> ReLU -> 10), whose tens-of-microseconds runs expose any
per-run cost of the harness. Each case's time budget is max(--time-budget, 12 x one run),
capped at 12 s, so a slow case still gets ~10 runs.

    python benchmarks/harness_overhead.py [--rounds 4] [--time-budget 3] [--target cpu] [--out report.md]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for folder in (REPO, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from light_models import light_model_path, make_dynamic_batch, prefect_env  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

#: (model, batch sizes): batch 1 and a larger batch each.
CASES = (("mlp", (1, 64)), ("light_squeezenet", (1, 8)), ("light_resnet50", (1, 2)))
MAX_BUDGET_S = 12.0
RUNS_PER_BUDGET = 12


def make_mlp(path: Path) -> Path:
    """x (batch, 256) float32 -> Gemm 256x512 -> Relu -> Gemm 512x10 (batch, 10); seeded weights."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    inits = [
        numpy_helper.from_array((rng.standard_normal((256, 512)) / 16).astype(np.float32), "W1"),
        numpy_helper.from_array(np.zeros(512, np.float32), "B1"),
        numpy_helper.from_array((rng.standard_normal((512, 10)) / 22).astype(np.float32), "W2"),
        numpy_helper.from_array(np.zeros(10, np.float32), "B2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def model_path(name: str, work: Path) -> Path:
    if name == "mlp":
        return make_mlp(work / "mlp.onnx")
    return make_dynamic_batch(light_model_path(name), work / f"{name}.onnx")


def bare_p50(request: dict[str, Any], batch_size: int, runs: int) -> tuple[float, float, float]:
    """The bare loop (B in the module docstring) on the runner's own request.

    Returns:
        (p50 in ms, min in ms, duration of the first timed run in ms).
    """
    import onnxruntime as ort

    from edgeport import runner

    req = dict(request)
    providers = runner._normalize_providers(req["providers"])
    session = ort.InferenceSession(
        req["model_path"], sess_options=runner.session_options(req["session_options"]), providers=providers
    )
    feeds = runner.make_feeds(req["inputs"], None, batch_size, {}, req.get("seed", 0))
    session.run(None, feeds)
    for _ in range(req["warmup"]):
        session.run(None, feeds)
    perf = time.perf_counter_ns
    latencies = []
    for _ in range(runs):
        t0 = perf()
        session.run(None, feeds)
        latencies.append(perf() - t0)
    del session
    gc.collect()
    ms = np.asarray(latencies, dtype=np.float64) / 1e6
    return float(np.percentile(ms, 50)), float(ms.min()), float(ms[0])


def probe_run_ms(request: dict[str, Any], batch_size: int) -> float:
    """One run's duration in ms (after a first inference and one more run), to size the budget."""
    req = {**request, "warmup": 1}
    return bare_p50(req, batch_size, 2)[2]


def measure_case(name: str, path: Path, batch_size: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edgeport.cli.bench import bench_spec, model_inputs
    from edgeport.spec import TargetSpec
    from tasks.benchmark import benchmark_variant, build_request

    inputs, outputs = model_inputs(path)
    target = TargetSpec(name=args.target)

    def spec_for(budget: float, warmup: int) -> Any:
        return bench_spec(inputs, outputs, batch_sizes=[batch_size], warmup=warmup, max_runs=args.max_runs, time_budget_s=budget, timeout_s=900)

    request = build_request(path, spec_for(1.0, 1), target, None)
    one_ms = probe_run_ms(request, batch_size)
    budget = min(MAX_BUDGET_S, max(args.time_budget, RUNS_PER_BUDGET * one_ms / 1e3))
    warmup = 10 if one_ms < 50 else 3
    spec = spec_for(budget, warmup)
    request = build_request(path, spec, target, None)
    load_before = os.getloadavg()[0]
    rounds = []
    last_runs = None
    for r in range(args.rounds):
        bare_first = r % 2 == 1  # A B, B A, A B, ...: order effects and linear drift cancel
        if bare_first:
            bare = bare_p50(request, batch_size, last_runs)
        entry = benchmark_variant(path, spec, target, None, work / f"{name}-b{batch_size}-r{r}")[0]
        if entry["status"] != "ok":
            raise SystemExit(f"{name} batch {batch_size}: runner status {entry['status']}: {entry['error']}")
        if not bare_first:
            bare = bare_p50(request, batch_size, entry["runs"])
        last_runs = entry["runs"]
        rounds.append(
            {
                "runner_p50_ms": entry["p50_ms"],
                "bare_p50_ms": bare[0],
                "runner_min_ms": entry["min_ms"],
                "bare_min_ms": bare[1],
                "runs": entry["runs"],
                "stop": entry["stop_reason"],
            }
        )
        print(
            f"  {name} b{batch_size} round {r} ({'bare, runner' if bare_first else 'runner, bare'}): runner {entry['p50_ms']:.4f} ms, "
            f"bare {bare[0]:.4f} ms, {100 * (entry['p50_ms'] - bare[0]) / bare[0]:+.2f}% ({entry['runs']} runs, {entry['stop_reason']})",
            file=sys.stderr,
            flush=True,
        )
    overheads = [100 * (x["runner_p50_ms"] - x["bare_p50_ms"]) / x["bare_p50_ms"] for x in rounds]
    min_overheads = [100 * (x["runner_min_ms"] - x["bare_min_ms"]) / x["bare_min_ms"] for x in rounds]
    return {
        "model": name,
        "batch_size": batch_size,
        "budget_s": budget,
        "warmup": warmup,
        "rounds": rounds,
        "overheads_pct": overheads,
        "min_overheads_pct": min_overheads,
        "runner_p50_ms": statistics.median(x["runner_p50_ms"] for x in rounds),
        "bare_p50_ms": statistics.median(x["bare_p50_ms"] for x in rounds),
        "runs": statistics.median(x["runs"] for x in rounds),
        "stops": sorted({x["stop"] for x in rounds}),
        "load": (load_before, os.getloadavg()[0]),
    }


def report(cases: list[dict[str, Any]], args: argparse.Namespace, load: tuple[Any, Any], wall_s: float) -> str:
    import onnxruntime

    lb, la = load
    lines = [
        f"Machine: {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores), Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}; target `{args.target}` (both loops: same session options, spinning off).",
        f"{args.rounds} rounds per case (runner then bare, bare then runner, ...). Load average (1/5/15 min) before "
        f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}; wall time {wall_s:.0f} s.",
        "",
        "| model | batch | runs per measurement | runner stop | runner p50 ms | bare p50 ms | overhead % (median) "
        "| overhead % (min .. max) | overhead of min latency % (median) | load 1-min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        o = c["overheads_pct"]
        lines.append(
            f"| {c['model'].removeprefix('light_')} | {c['batch_size']} | {c['runs']:g} | {'/'.join(c['stops'])} | "
            f"{c['runner_p50_ms']:.4f} | {c['bare_p50_ms']:.4f} | {statistics.median(o):+.2f} | "
            f"{min(o):+.2f} .. {max(o):+.2f} | {statistics.median(c['min_overheads_pct']):+.2f} | "
            f"{c['load'][0]:.1f} -> {c['load'][1]:.1f} |"
        )
    worst = max(abs(statistics.median(c["overheads_pct"])) for c in cases)
    lines += ["", f"Largest |median overhead|: {worst:.2f}% (goal: <= 2%)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="Runner/bare pairs per case (default 4).")
    parser.add_argument("--time-budget", type=float, default=3.0, help="Base seconds of timed runs per runner measurement (default 3).")
    parser.add_argument("--max-runs", type=int, default=2000, help="Runner max_runs (default 2000).")
    parser.add_argument("--target", default="cpu", help="cpu or cpu-1t (default cpu); the bare loop runs in this process's onnxruntime.")
    parser.add_argument("--models", default=",".join(name for name, _ in CASES), help="Comma-separated subset of the models.")
    parser.add_argument("--out", type=Path, help="Also write the markdown report here.")
    args = parser.parse_args()
    if args.target not in ("cpu", "cpu-1t"):
        parser.error("--target must run in this process's onnxruntime: cpu or cpu-1t")
    prefect_env()
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # the light models' unused-initializer warnings, once per session
    wanted = set(args.models.split(","))
    started, load_before = time.perf_counter(), os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeport-overhead-") as tmp:
        work = Path(tmp)
        for name, batch_sizes in CASES:
            if name not in wanted:
                continue
            path = model_path(name, work)
            for batch_size in batch_sizes:
                results.append(measure_case(name, path, batch_size, args, work))
    text = report(results, args, (load_before, os.getloadavg()), time.perf_counter() - started)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
