"""``edgeport bench MODEL.onnx``: benchmark any ONNX file on the built-in targets, outside a pipeline.

The standalone tool to reach for instead of ``onnxruntime_perf_test``: no spec, no
checkpoint. The model's inputs (names, dtypes, shapes) are read from its graph, a
:class:`~edgeport.spec.PipelineSpec` is synthesized around them, and
:func:`tasks.benchmark.benchmark_variant` runs :mod:`edgeport.runner` in a child
process per target (a crash or hang of ONNX Runtime costs one target, not the command)::

    edgeport bench model.onnx                                   # cpu, batch sizes 1 and 8
    edgeport bench model.onnx -t cpu -t cpu-1t -t openvino-cpu --batch-sizes 1,8,32
    edgeport bench bert.onnx --dim sequence=128 --json bert-bench.json
    edgeport bench model.onnx --samples real.npz                # real data instead of random

Inputs and dims
---------------
The inputs are ``graph.input`` minus the initializers (older models list their weights
as inputs too). Each dim is static (its ``dim_value``), named (its ``dim_param``) or an
unnamed dynamic dim, named ``dim_<axis>`` here (so ``--dim dim_1=128`` sets axis 1 of
every input that leaves it unnamed). The first dim of every input is the batch dim
(the runner's convention); ``--batch-sizes`` sets it. With random data (the default:
seeded N(0, 1) floats, integers uniform in [0, 100), see :func:`edgeport.runner.make_feeds`)
a dynamic non-batch dim takes its ``--dim NAME=SIZE`` value, **else 1**: always a valid
size, the runner's own default, and what a pipeline run uses; the command names every
dim it defaulted so a sequence model is not silently measured at length 1. With
``--samples`` (an ``.npz`` with one array of shape (n_samples, *dims) per input name,
rows cycled to fill a batch) the samples give those sizes and ``--dim`` is ignored.

When ``--batch-sizes`` is not given: 1 and 8, or the model's static batch size when
every input has the same static first dim (a model exported with batch 1 is measured
at batch 1 only). A batch size that differs from a static batch dim is reported as
``unsupported`` by the runner.

Exit codes: 0 every (target, batch size) measured with status ``ok``; 2 the benchmark
ran but some entry is ``fallback``, ``unsupported`` or ``failed`` (its error is printed
under the table); 1 bad input (missing or unreadable model, unknown target or target
environment not set up (:class:`~edgeport.errors.TargetError`), bad ``--dim``,
``--batch-sizes`` or ``--samples``): a one-line message, the traceback with ``--debug``.

Mounted by the main CLI with :func:`register`; also runs alone as
``python -m edgeport.cli.bench MODEL.onnx``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from edgeport.cli.common import console, err_console, fail
from edgeport.cli.interrupts import interruptible
from edgeport.errors import DataError, EdgeportError, RuntimeLoadError, TargetError
from edgeport.runtime_env import configure_runtime_env
from edgeport.spec import InputSpec, PipelineSpec

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "bench",
    "bench_inputs",
    "bench_spec",
    "model_inputs",
    "parse_batch_sizes",
    "parse_dims",
    "register",
]

#: Batch sizes measured when ``--batch-sizes`` is not given (and the batch dim is dynamic).
DEFAULT_BATCH_SIZES = (1, 8)

#: ONNX tensor element types the runner can feed (those of :data:`edgeport.spec.InputDType`).
_ONNX_DTYPES = {
    1: "float32",  # FLOAT
    10: "float16",  # FLOAT16
    11: "float64",  # DOUBLE
    7: "int64",  # INT64
    6: "int32",  # INT32
    3: "int8",  # INT8
    2: "uint8",  # UINT8
    9: "bool",  # BOOL
}

EXIT_OK, EXIT_ERROR, EXIT_NOT_ALL_OK = 0, 1, 2


# --------------------------------------------------------------------------- inputs


def _load_graph(model_path: Path) -> Any:
    """The ModelProto without its external data (only the graph is needed)."""
    import onnx

    if not model_path.is_file():
        raise RuntimeLoadError(f"model file not found: {model_path}")
    try:
        return onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError, ...
        raise RuntimeLoadError(f"{model_path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def model_inputs(model_path: str | Path) -> tuple[list[InputSpec], list[str]]:
    """The inputs and output names of an ONNX model, from its graph.

    Args:
        model_path: the .onnx file (external data is not read).

    Returns:
        ``(inputs, outputs)``: one :class:`~edgeport.spec.InputSpec` per graph input that
        is not an initializer, in graph order, with ``shape`` holding ints (static dims),
        the ``dim_param`` names, or ``"dim_<axis>"`` for unnamed dynamic dims; and the
        graph's output names.

    Raises:
        RuntimeLoadError: the file is missing or not an ONNX model; an input is not a
            tensor, has an element type the runner cannot feed, or has no shape.
    """
    model_path = Path(model_path)
    model = _load_graph(model_path)
    initializers = {init.name for init in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            raise RuntimeLoadError(f"{model_path}: input {value.name!r} is a {value.type.WhichOneof('value')}, not a tensor")
        tensor = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(tensor.elem_type)
        if dtype is None:
            raise RuntimeLoadError(
                f"{model_path}: input {value.name!r} has element type {tensor.elem_type} "
                f"(TensorProto enum); bench feeds {', '.join(sorted(set(_ONNX_DTYPES.values())))}"
            )
        if not tensor.HasField("shape"):
            raise RuntimeLoadError(f"{model_path}: input {value.name!r} has no shape (not even its rank) in the graph")
        shape: list[int | str] = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param:
                shape.append(dim.dim_param)
            else:
                shape.append(f"dim_{axis}")
        inputs.append(InputSpec(name=value.name, dtype=dtype, shape=shape))
    if not inputs:
        raise RuntimeLoadError(f"{model_path}: the graph has no inputs to feed")
    outputs = [out.name for out in model.graph.output] or ["output"]
    return inputs, outputs


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (duplicates dropped, order kept).

    Raises:
        DataError: an item is not a positive integer.
    """
    sizes: list[int] = []
    for item in text.split(","):
        item = item.strip()
        try:
            size = int(item)
        except ValueError:
            size = 0
        if size <= 0:
            raise DataError(f"--batch-sizes: {item!r} is not a positive integer (expected e.g. 1,8,32)")
        if size not in sizes:
            sizes.append(size)
    return sizes


def parse_dims(items: list[str]) -> dict[str, int]:
    """``["sequence=128", "dim_2=7"]`` -> ``{"sequence": 128, "dim_2": 7}``.

    Raises:
        DataError: an item is not ``NAME=SIZE`` with a positive integer size.
    """
    sizes: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            size = int(value)
        except ValueError:
            size = 0
        if not sep or not name or size <= 0:
            raise DataError(f"--dim: expected NAME=SIZE with a positive integer SIZE, got {item!r}")
        sizes[name] = size
    return sizes


def bench_inputs(
    inputs: list[InputSpec], dim_sizes: dict[str, int], *, samples: bool
) -> tuple[list[InputSpec], dict[str, int]]:
    """Fix the sizes of the dynamic non-batch dims for random data.

    The first dim of every input stays as it is (the runner sets it to the batch size).
    With ``samples`` nothing changes: the samples give the sizes.

    Args:
        inputs: from :func:`model_inputs`.
        dim_sizes: ``--dim`` values, dim name -> size.
        samples: True when ``--samples`` is given.

    Returns:
        ``(inputs, defaulted)``: the inputs with every dynamic non-batch dim replaced by its
        size, and the dims that got the default size 1 because ``dim_sizes`` lacks them.

    Raises:
        DataError: ``dim_sizes`` names a dim that is no dynamic non-batch dim of any input
            (the message lists the ones there are), or a batch dim (use --batch-sizes).
    """
    batch_names = {i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], str)}
    other_names = {d for i in inputs for d in i.shape[1:] if isinstance(d, str)}
    for name in dim_sizes:
        if name in batch_names and name not in other_names:
            raise DataError(f"--dim {name}: {name!r} is the batch dim; set it with --batch-sizes")
        if name not in other_names:
            known = ", ".join(sorted(other_names)) or "none"
            raise DataError(f"--dim {name}: the model has no dynamic dim {name!r} (its dynamic non-batch dims: {known})")
    if samples:
        return list(inputs), {}
    defaulted: dict[str, int] = {}
    fixed = []
    for spec in inputs:
        shape = list(spec.shape)
        for axis in range(1, len(shape)):
            dim = shape[axis]
            if isinstance(dim, str):
                if dim not in dim_sizes:
                    defaulted[dim] = 1
                shape[axis] = dim_sizes.get(dim, 1)
        fixed.append(InputSpec(name=spec.name, dtype=spec.dtype, shape=shape))
    return fixed, defaulted


def static_batch(inputs: list[InputSpec]) -> int | None:
    """The batch size every input fixes (same static first dim everywhere), else None."""
    firsts = {i.shape[0] for i in inputs if i.shape}
    if len(firsts) == 1:
        (first,) = firsts
        if isinstance(first, int):
            return first
    return None


def bench_spec(
    inputs: list[InputSpec],
    outputs: list[str],
    *,
    batch_sizes: list[int],
    warmup: int,
    max_runs: int,
    time_budget_s: float,
    timeout_s: float,
) -> PipelineSpec:
    """A PipelineSpec carrying only what :func:`tasks.benchmark.benchmark_variant` reads
    (``inputs`` and ``benchmark``); model and registry are placeholders, never used."""
    return PipelineSpec.model_validate(
        {
            "name": "bench",
            "model": {"checkpoint": "unused.pt", "factory": "unused:unused", "search_path": []},
            "inputs": [i.model_dump(mode="json") for i in inputs],
            "outputs": outputs,
            "benchmark": {
                "batch_sizes": batch_sizes,
                "warmup": warmup,
                "repetitions": max_runs,
                "time_budget_s": time_budget_s,
                "timeout_s": timeout_s,
            },
            "registry": {"registered_model": "bench"},
        }
    )


# --------------------------------------------------------------------------- output


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    value = float(value)
    if abs(value) >= 100:
        return f"{value:.0f}" if digits == 0 else f"{value:.1f}"
    return f"{value:.{digits}f}"


def _short_providers(names: list[str]) -> str:
    return ", ".join(n.removesuffix("ExecutionProvider") for n in names) or "-"


def print_table(model_path: Path, entries: list[dict[str, Any]]) -> None:
    """Render benchmark entries as a rich table, then the error of every entry not ``ok``.

    Providers are shown without the ``ExecutionProvider`` suffix (``OpenVINO, CPU``); the
    JSON written by ``--json`` has the full names.
    """
    table = Table(title=f"edgeport bench: {model_path.name}")
    columns = ("target", "batch", "status", "providers bound", "p50 ms", "p90 ms", "p99 ms", "samples/s", "CI ±%", "runs", "peak RSS MB")
    for col in columns:
        table.add_column(col, justify="left" if col in ("target", "status", "providers bound") else "right")
    for e in entries:
        status = e["status"]
        color = {"ok": "green", "fallback": "yellow"}.get(status, "red")
        table.add_row(
            e["target"],
            str(e["batch_size"]),
            f"[{color}]{status}[/]",
            _short_providers(e.get("providers_bound") or []),
            _num(e.get("p50_ms")),
            _num(e.get("p90_ms")),
            _num(e.get("p99_ms")),
            _num(e.get("throughput"), 1),
            _num(e.get("ci_halfwidth_pct"), 1),
            str(e["runs"]) if e.get("runs") is not None else "-",
            _num(e.get("peak_rss_mb"), 0),
        )
    console.print(table)
    for e in entries:
        if e["status"] != "ok":
            error = (e.get("error") or "").strip()
            if len(error) > 600:
                error = error[:600] + " ... (full text in the --json file)"
            console.print(f"[bold]{escape(e['target'])}[/] batch {e['batch_size']}: {e['status']}: {escape(error)}", highlight=False, soft_wrap=True)


def _shape_text(spec: InputSpec) -> str:
    return f"{spec.name}: {spec.dtype} [{', '.join(map(str, spec.shape))}]"


# --------------------------------------------------------------------------- command


def bench(
    model: Annotated[Path, typer.Argument(help="The .onnx file (external data next to it is used by ONNX Runtime, not read here).")],
    target: Annotated[
        Optional[list[str]],
        typer.Option("--target", "-t", help="Target profile (cpu, cpu-1t, openvino-cpu); repeat for several. Default: cpu."),
    ] = None,
    batch_sizes: Annotated[
        Optional[str],
        typer.Option("--batch-sizes", "-b", help="Comma-separated batch sizes, e.g. 1,8,32. Default: 1,8 (the static batch if the model fixes one)."),
    ] = None,
    dim: Annotated[
        Optional[list[str]],
        typer.Option("--dim", help="NAME=SIZE for a dynamic non-batch dim (dim_param, or dim_<axis> when unnamed); repeatable. Unset dims: 1."),
    ] = None,
    samples: Annotated[
        Optional[Path],
        typer.Option("--samples", help=".npz with one array of shape (n_samples, *dims) per input name (default: seeded random data)."),
    ] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs per batch size.")] = 10,
    time_budget_s: Annotated[float, typer.Option("--time-budget", min=0.001, help="Seconds of timed runs per batch size, at most.")] = 5.0,
    max_runs: Annotated[int, typer.Option("--max-runs", min=1, help="Timed runs per batch size, at most (fewer once the p50's 95% CI is within ±2%).")] = 1000,
    timeout_s: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds before a target's runner process is killed.")] = 600.0,
    output: Annotated[Optional[Path], typer.Option("--json", help="Write the raw results (every runner key, full provider names and errors) to this JSON file.")] = None,
    work_dir: Annotated[
        Optional[Path],
        typer.Option("--work-dir", help="Keep the runner's request, result and stderr log files here (default: a temporary folder)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Benchmark any ONNX model on one or more targets: p50/p90/p99 latency, throughput, peak memory.

    Inputs (names, dtypes, shapes) come from the model's graph; the data is random unless --samples. The first dim of every input is the batch dim.

    Exit codes: 0 every measurement ok; 2 some fallback, unsupported or failed (errors under the table); 1 bad input.
    """
    targets = list(dict.fromkeys(target or ["cpu"]))
    try:
        model = model.expanduser()
        inputs, outputs = model_inputs(model)
        sizes = parse_batch_sizes(batch_sizes) if batch_sizes is not None else None
        dim_sizes = parse_dims(dim or [])
        if samples is not None:
            samples = samples.expanduser()
            _check_samples(samples, inputs)
        fixed, defaulted = bench_inputs(inputs, dim_sizes, samples=samples is not None)
        if sizes is None:
            static = static_batch(inputs)
            sizes = [static] if static is not None else list(DEFAULT_BATCH_SIZES)
        from edgeport.targets import PROFILES, resolve_target

        for name in targets:
            if name not in PROFILES:
                raise TargetError(f"unknown target {name!r}; built-in target profiles: {', '.join(PROFILES)}")
            resolve_target(name, check_env=True)  # TargetError: managed environment not set up
        spec = bench_spec(
            fixed, outputs, batch_sizes=sizes, warmup=warmup, max_runs=max_runs, time_budget_s=time_budget_s, timeout_s=timeout_s
        )
    except EdgeportError as exc:
        fail(exc, debug)

    err_console.print(f"model: {model}", markup=False, highlight=False)
    for spec_in in fixed:
        err_console.print(f"  input {_shape_text(spec_in)}", markup=False, highlight=False)
    if samples is not None:
        err_console.print(f"  data: samples from {samples}" + (" (--dim ignored)" if dim_sizes else ""), markup=False, highlight=False)
    else:
        err_console.print("  data: random, seed 0 (floats N(0, 1), integers uniform in [0, 100))", markup=False, highlight=False)
    if defaulted:
        err_console.print(
            f"  [yellow]note:[/] dynamic dim(s) {escape(', '.join(sorted(defaulted)))} set to 1; choose sizes with --dim NAME=SIZE",
            highlight=False,
        )

    configure_runtime_env()  # before tasks.benchmark imports Prefect
    from edgeport.spec import TargetSpec
    from tasks.benchmark import benchmark_variant

    entries: list[dict[str, Any]] = []
    runtimes: list[dict[str, Any]] = []
    interrupted = interruptible(f"edgeport bench {model}", "re-run it to measure again", prefect_server=False)  # exit 130/143
    with interrupted, tempfile.TemporaryDirectory(prefix="edgeport-bench-") as tmp:
        folder = (work_dir.expanduser() if work_dir is not None else Path(tmp)).resolve()
        for name in targets:
            err_console.print(f"{name}: batch sizes {', '.join(map(str, sizes))} ...", markup=False, highlight=False)
            try:
                got = benchmark_variant(model, spec, TargetSpec(name=name), samples, folder)
            except EdgeportError as exc:
                fail(exc, debug)
            if work_dir is None:  # the temporary folder goes away: do not point at its files
                got = [{**e, "latencies_path": None} if "latencies_path" in e else e for e in got]
            entries.extend(got)
            runtimes.append(_runtime(folder / f"benchmark-{name}.json", name))

    print_table(model, entries)
    if output is not None:
        raw = {
            "model_path": str(model.resolve()),
            "inputs": [i.model_dump(mode="json") for i in fixed],
            "graph_inputs": [i.model_dump(mode="json") for i in inputs],
            "dim_sizes": dim_sizes,
            "defaulted_dims": sorted(defaulted),
            "samples_path": None if samples is None else str(samples.resolve()),
            "settings": spec.benchmark.model_dump(mode="json"),
            "targets": runtimes,
            "results": entries,
        }
        output.expanduser().parent.mkdir(parents=True, exist_ok=True)
        output.expanduser().write_text(json.dumps(raw, indent=2))
        console.print(f"results: {output}", highlight=False)
    raise typer.Exit(EXIT_OK if all(e["status"] == "ok" for e in entries) else EXIT_NOT_ALL_OK)


def _check_samples(path: Path, inputs: list[InputSpec]) -> None:
    """Fail early on a samples file that cannot feed the model (the runner would report
    ``failed`` for every batch size)."""
    import numpy as np

    if not path.is_file():
        raise DataError(f"--samples: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
    except Exception as exc:
        raise DataError(f"--samples: {path} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    missing = [i.name for i in inputs if i.name not in names]
    if missing:
        raise DataError(f"--samples: {path} has no array for input(s) {missing} (it has {sorted(names)})")


def _runtime(result_path: Path, target: str) -> dict[str, Any]:
    """The runtime facts of one target's result file (versions, available providers)."""
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {}
    return {
        "target": target,
        "onnxruntime_version": result.get("onnxruntime_version"),
        "available_providers": result.get("available_providers"),
        "runner_version": result.get("runner_version"),
        "runner_error": result.get("runner_error"),
    }


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to ``app`` (the main CLI: ``register(app)`` in edgeport/cli/__init__.py)."""
    app.command("bench")(bench)


if __name__ == "__main__":  # pragma: no cover
    _app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(_app)
    _app()
