"""Benchmark: FP32 vs INT8 (static QDQ) of two real CNN architectures on cpu, cpu-1t and openvino-cpu.

The models are the ``onnx`` package's bundled "light" models,
``onnx/backend/test/data/light/light_squeezenet.onnx`` and ``light_resnet50.onnx``: the real
SqueezeNet 1.0 and ResNet-50 graphs (opset 9, input (1, 3, 224, 224) float32) whose weights
are produced by ``ConstantOfShape`` nodes with one constant value (so the files are 16 KB and
80 KB). Constant weights make the latency real (same ops, same shapes, same FLOPs) and the
accuracy meaningless: these numbers say nothing about INT8 accuracy.

Preparation of each model (in ``--work``):

1. ``<name>.onnx``: the batch dim made dynamic. The models ship with a static batch of 1:
   their initializers are dropped from ``graph.input`` (IR 3 lists them there), the first
   dim of the inputs and outputs is renamed ``batch`` with ``onnx.tools.update_model_dims``,
   and a ``Reshape`` whose constant target shape starts with the old batch (ResNet-50's
   ``[1, 2048]`` before the classifier) gets ``-1`` there. Then ``onnx.version_converter``
   to opset 13 (quantization needs QuantizeLinear, opset >= 10, and per-channel axes,
   opset >= 13), and ``onnx.checker``. Checked: batch 8 of one repeated image gives the
   batch-1 output in every row.
2. ``<name>.fp32.onnx``: ``onnxruntime.quantization.quant_pre_process`` (shape inference and
   ORT's basic optimizations: this folds the ``ConstantOfShape`` weights into initializers,
   so the file grows to the real model's size). This is the FP32 variant benchmarked.
3. ``<name>.int8.onnx``: ``quantize_static`` of the FP32 variant, QDQ format, per-channel
   QInt8 weights, QUInt8 activations, MinMax calibration over 16 random N(0, 1) inputs of
   shape (1, 3, 224, 224) (seed 0). Random calibration data is fine for latency, not for
   accuracy.

Each variant x target is measured by :func:`tasks.benchmark.benchmark_variant` (the pipeline's
benchmark step: one runner child process per target) at batch 1 and 8, random N(0, 1)
inputs, default threads (``cpu``: ONNX Runtime's default, one per physical core), spinning
off. ``openvino-cpu`` is skipped (and said so) when ``edgeport targets setup openvino`` has
not been run. Prints a markdown report for docs/benchmarks.md::

    python benchmarks/light_models.py [--work DIR] [--time-budget 4] [--models light_resnet50] [--out report.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader  # noqa: E402

MODELS = ("light_squeezenet", "light_resnet50")
TARGETS = ("cpu", "cpu-1t", "openvino-cpu")
BATCH_SIZES = (1, 8)
OPSET = 13
CALIBRATION_SAMPLES = 16


def light_model_path(name: str) -> Path:
    """``<onnx package>/backend/test/data/light/<name>.onnx``.

    Raises:
        FileNotFoundError: the installed onnx package does not ship it.
    """
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the onnx wheel ships it; is onnx installed from source?)")
    return path


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def make_dynamic_batch(src: Path, dst: Path, batch_name: str = "batch") -> Path:
    """Copy ``src`` to ``dst`` with a dynamic first dim, at opset :data:`OPSET` (see the module
    docstring, step 1), and check that batch 8 gives the batch-1 output in every row.

    Raises:
        AssertionError: the batch-8 output differs from the batch-1 one.
    """
    from onnx import numpy_helper, version_converter
    from onnx.tools import update_model_dims

    model = onnx.load(str(src))
    initializers = {i.name: i for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)  # IR >= 4: initializers need not be inputs
    old_batch = {_dims(i)[0] for i in inputs}
    model = update_model_dims.update_inputs_outputs_dims(
        model,
        {i.name: [batch_name, *_dims(i)[1:]] for i in inputs},
        {o.name: [batch_name, *_dims(o)[1:]] for o in model.graph.output},
    )
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in initializers:
            shape = numpy_helper.to_array(initializers[node.input[1]]).copy()
            if shape.size and int(shape[0]) in old_batch and -1 not in shape:
                shape[0] = -1
                initializers[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    # Convert after the batch is dynamic: the converter's Softmax 12->13 adapter reads the
    # input's shape, which must not fold to a constant batch of 1.
    model = version_converter.convert_version(model, OPSET)
    del model.graph.value_info[:]  # the converter's inferred shapes still say batch 1
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    _check_batch_rows(dst)
    return dst


def _check_batch_rows(path: Path, batch: int = 8) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    node = session.get_inputs()[0]
    one = np.random.default_rng(1).standard_normal([1, *node.shape[1:]]).astype(np.float32)
    y1 = session.run(None, {node.name: one})[0]
    y8 = session.run(None, {node.name: np.repeat(one, batch, axis=0)})[0]
    assert y8.shape[0] == batch and np.allclose(y8, np.repeat(y1, batch, axis=0), rtol=1e-5, atol=1e-6), path


class RandomCalibration(CalibrationDataReader):
    """``CalibrationDataReader`` over ``n`` random N(0, 1) batches of shape ``shape`` (seeded)."""

    def __init__(self, input_name: str, shape: list[int], n: int = CALIBRATION_SAMPLES, seed: int = 0) -> None:
        self.input_name, self.shape, self.n = input_name, shape, n
        self.rng = np.random.default_rng(seed)
        self.given = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.given >= self.n:
            return None
        self.given += 1
        return {self.input_name: self.rng.standard_normal(self.shape).astype(np.float32)}

    def rewind(self) -> None:  # pragma: no cover - newer ORT calibrators may rewind
        self.given = 0


def prepare(name: str, work: Path) -> dict[str, Any]:
    """Build the FP32 and INT8 variants of one light model in ``work`` (module docstring, steps 1-3).

    Returns:
        {"fp32": path, "int8": path, "input": name, "shape": [batch, ...], "seconds": {...},
        "ops": {variant: Counter of op types}}.
    """
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    dynamic = make_dynamic_batch(light_model_path(name), work / f"{name}.onnx")
    seconds["dynamic_batch"] = time.perf_counter() - t0
    fp32, int8 = work / f"{name}.fp32.onnx", work / f"{name}.int8.onnx"
    t0 = time.perf_counter()
    quant_pre_process(str(dynamic), str(fp32))
    seconds["pre_process"] = time.perf_counter() - t0
    graph = onnx.load(str(fp32), load_external_data=False).graph
    node = graph.input[0]
    shape = [1, *_dims(node)[1:]]

    t0 = time.perf_counter()
    quantize_static(
        str(fp32),
        str(int8),
        RandomCalibration(node.name, shape),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    seconds["quantize_static"] = time.perf_counter() - t0
    ops = {v: Counter(n.op_type for n in onnx.load(str(p), load_external_data=False).graph.node) for v, p in (("fp32", fp32), ("int8", int8))}
    return {"fp32": fp32, "int8": int8, "input": node.name, "shape": _dims(node), "seconds": seconds, "ops": ops}


def bench_spec(model_path: Path, batch_sizes: tuple[int, ...], time_budget_s: float, warmup: int) -> Any:
    """The PipelineSpec benchmark_variant needs, inputs read from the graph (as ``edgeport bench`` does)."""
    from edgeport.cli.bench import bench_spec as _spec
    from edgeport.cli.bench import model_inputs

    inputs, outputs = model_inputs(model_path)
    return _spec(inputs, outputs, batch_sizes=list(batch_sizes), warmup=warmup, max_runs=500, time_budget_s=time_budget_s, timeout_s=900)


def available_targets(targets: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The targets that can run here, and the reason for each one that cannot."""
    from edgeport.targets import target_availability

    ok, skipped = [], {}
    for name in targets:
        available, reason = target_availability(name)
        if available:
            ok.append(name)
        else:
            skipped[name] = reason
    return ok, skipped


def run(work: Path, time_budget_s: float, warmup: int, targets: tuple[str, ...], models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    from edgeport.spec import TargetSpec
    from tasks.benchmark import benchmark_variant

    runnable, skipped = available_targets(targets)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows, prepared = [], {}
    for name in models:
        print(f"[{name}] preparing FP32 and INT8 variants ...", file=sys.stderr, flush=True)
        prepared[name] = info = prepare(name, work)
        for variant in ("fp32", "int8"):
            path = info[variant]
            spec = bench_spec(path, BATCH_SIZES, time_budget_s, warmup)
            for target in runnable:
                print(f"[{name}] {variant} on {target} ...", file=sys.stderr, flush=True)
                out = work / "bench" / name / variant
                for entry in benchmark_variant(path, spec, TargetSpec(name=target), None, out):
                    rows.append({"model": name, "variant": variant, "size_mb": path.stat().st_size / 2**20, **entry})
    return {
        "rows": rows,
        "prepared": prepared,
        "skipped": skipped,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
        "time_budget_s": time_budget_s,
        "warmup": warmup,
    }


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(result: dict[str, Any]) -> str:
    import onnxruntime

    from edgeport.targets import runtime_info

    ov = ""
    try:
        info = runtime_info("openvino")
        ov = f"; openvino-cpu: onnxruntime-openvino {info['distribution'].get('onnxruntime-openvino')}"
    except Exception:  # env not set up: reported under "skipped"
        pass
    lb, la = result["load_before"], result["load_after"]
    lines = [
        f"Machine: {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores), Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}{ov}.",
        f"Settings: batch sizes {', '.join(map(str, BATCH_SIZES))}; warmup {result['warmup']}; time budget "
        f"{result['time_budget_s']:g} s per batch size; stop at 500 runs or once the p50's 95% CI is within ±2%; "
        "random N(0, 1) inputs; spinning off.",
        f"Load average (1/5/15 min) before {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}; "
        f"wall time {result['wall_s']:.0f} s.",
        "",
        "| model | variant | size MB | target | batch | status | p50 ms | p99 ms | samples/s | CI ±% | runs | providers bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        bound = ", ".join(p.removesuffix("ExecutionProvider") for p in r.get("providers_bound") or []) or "-"
        lines.append(
            f"| {r['model'].removeprefix('light_')} | {r['variant']} | {r['size_mb']:.1f} | {r['target']} | {r['batch_size']} | "
            f"{r['status']} | {_fmt(r.get('p50_ms'))} | {_fmt(r.get('p99_ms'))} | {_fmt(r.get('throughput'), 1)} | "
            f"{_fmt(r.get('ci_halfwidth_pct'), 1)} | {r.get('runs') or '-'} | {bound} |"
        )
    problems = [r for r in result["rows"] if r["status"] != "ok"]
    if problems:
        lines += ["", "Entries not ok:"]
        lines += [f"- {r['model']} {r['variant']} {r['target']} batch {r['batch_size']}: {r['status']}: {(r.get('error') or '')[:300]}" for r in problems]
    if result["skipped"]:
        lines += ["", "Targets skipped:"]
        lines += [f"- {name}: {reason}" for name, reason in result["skipped"].items()]
    lines += ["", "INT8 speed-up (FP32 p50 / INT8 p50):", "", "| model | target | batch | speed-up |", "|---|---|---|---|"]
    p50 = {(r["model"], r["variant"], r["target"], r["batch_size"]): r.get("p50_ms") for r in result["rows"] if r["status"] == "ok"}
    for (model, variant, target, batch), value in p50.items():
        if variant == "fp32" and (model, "int8", target, batch) in p50:
            lines.append(f"| {model.removeprefix('light_')} | {target} | {batch} | {value / p50[(model, 'int8', target, batch)]:.2f}x |")
    lines += ["", "Preparation (s): " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in info["seconds"].items()) for name, info in result["prepared"].items()
    )]
    return "\n".join(lines) + "\n"


def prefect_env() -> None:
    """Before importing Prefect (``tasks.benchmark`` does): its home under EDGEPORT_HOME, as
    ``edgeport run`` keeps it, and no telemetry."""
    from edgeport.home import edgeport_home

    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        (edgeport_home() / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(edgeport_home() / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="Folder for the prepared models and runner files (default: a temporary one).")
    parser.add_argument("--time-budget", type=float, default=4.0, help="Seconds of timed runs per batch size (default 4).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed runs per batch size (default 2).")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"Comma-separated targets (default {','.join(TARGETS)}).")
    parser.add_argument("--models", default=",".join(MODELS), help=f"Comma-separated subset of {','.join(MODELS)}.")
    parser.add_argument("--out", type=Path, help="Also write the markdown report here.")
    args = parser.parse_args()
    models = tuple(m for m in args.models.split(",") if m)
    if set(models) - set(MODELS):
        parser.error(f"--models: unknown {sorted(set(models) - set(MODELS))}; choose from {', '.join(MODELS)}")
    prefect_env()
    with tempfile.TemporaryDirectory(prefix="edgeport-light-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        text = report(run(work, args.time_budget, args.warmup, tuple(t for t in args.targets.split(",") if t), models))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
