"""Self-contained ONNX Runtime latency runner: ``python runner.py REQUEST.json``.

This file imports only the standard library, ``numpy`` and ``onnxruntime``, so it can
be copied next to a model and run in another environment (a venv with
``onnxruntime-openvino``, an edge device). edgeport launches it as a child process
(:func:`tasks.benchmark.benchmark_variant`): a crash or hang in ONNX Runtime then
costs one benchmark, not the pipeline.

Protocol
--------
stdin: unused. stdout: exactly one line, the result JSON object. stderr: logs
(ours and ONNX Runtime's). Exit code 0 when a result was printed (even if every
batch size failed), 2 when the request itself is unreadable or invalid.

Request (JSON object)::

    model_path          str, the .onnx file
    providers           ["CPUExecutionProvider"] or [[name, {option: value}], ...]  (default CPU)
    session_options     {intra_op_num_threads: int = 0, inter_op_num_threads: int = 0,
                         graph_optimization_level: "disable"|"basic"|"extended"|"all" = "all",
                         execution_mode: "sequential"|"parallel" = "sequential",
                         allow_spinning: bool = false}
    inputs              [{name, dtype, shape: [int | str, ...]}]; first dim = batch.
                        Default: the model's own inputs (session.get_inputs()).
    samples_path        .npz with one array of shape (n_samples, *input_dims) per input
                        name, or null for seeded random data
    dim_values          {dim name: int} sizes of named non-batch dims for random data (default 1)
    seed                int = 0, seed of the random data
    batch_sizes         [int, ...] = [1]
    warmup              int = 10, untimed runs per batch size (after the first inference)
    max_runs            int = 100, max timed runs per batch size
    min_runs            int = 10, timed runs before the stopping rule is checked
    time_budget_s       float = 10.0, max wall seconds of timed runs per batch size
    target_ci_pct       float = 2.0, stop once the 95% CI half-width of the median
                        latency is at most this percentage of the median
    latencies_path      str | null; if set, the raw timed latencies (ms, float64) of every
                        measured batch size are saved there as .npz, key "b<batch size>"
    partial_path        str | null; if set, the result so far is rewritten there
                        (atomically) after every batch size, so a caller can salvage
                        finished batch sizes when the process dies later

Result (JSON object)::

    {"runner_version", "onnxruntime_version", "available_providers", "model_path",
     "results": [entry per batch size]}

with each entry holding the keys of :data:`RESULT_KEYS` (see there for units).
Every batch size gets its own session (one live session at a time), so
``session_create_ms`` and ``first_inference_ms`` are measured per batch size.

Statuses: ``ok``; ``fallback`` (measured, but a requested non-CPU execution provider
is not among the providers the session bound, so the numbers are CPU numbers);
``unsupported`` (the session could not be created: unknown provider name, opset or
op type not implemented, invalid model file; or the model's batch dim is static and
differs from the batch size); ``failed`` (an error while building inputs or running).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort

RUNNER_VERSION = "1.2"

#: Minimum time between two checks of the stopping rule (ns): see ``_measure``.
CHECK_INTERVAL_NS = 20_000_000

#: Keys of every per-batch-size entry, in order. Units are in the names; in addition
#: ``throughput`` is samples/s (``batch_size * runs / total timed seconds``, i.e.
#: batch_size / mean latency), ``ci_halfwidth_pct`` is a percentage of ``p50_ms``,
#: ``peak_rss_mb`` is the runner process's peak resident set size so far in MiB
#: (monotone over batch sizes; includes the interpreter and ONNX Runtime),
#: ``model_size_bytes`` is the .onnx file plus its ``<file>.data`` external-data file
#: when present. ``stop_reason`` is "ci" | "max_runs" | "time_budget" (null if not
#: measured); ``data`` is "samples" | "random"; ``cpu`` is the host CPU, :func:`cpu_info`.
RESULT_KEYS = (
    "batch_size",
    "status",
    "error",
    "providers_requested",
    "providers_bound",
    "session_create_ms",
    "first_inference_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "throughput",
    "runs",
    "ci_halfwidth_pct",
    "stable",
    "stop_reason",
    "peak_rss_mb",
    "model_size_bytes",
    "allow_spinning",
    "data",
    "cpu",
)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXEC_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
_CPU = "CPUExecutionProvider"

log = logging.getLogger("edgeport.runner")


class RequestError(ValueError):
    """The request JSON is unreadable or has an invalid field."""


# --------------------------------------------------------------------------- statistics


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """1-based ranks ``(j, k)`` of the order statistics bounding a CI of the median.

    Distribution-free: the number B of observations below the true median is
    Binomial(n, 1/2), so ``P(X_(j) <= median < X_(k)) = P(j <= B <= k - 1)``. We take
    the symmetric ``k = n + 1 - j`` with the largest ``j`` such that
    ``P(B <= j - 1) <= (1 - confidence) / 2`` (exact binomial tail, no normal
    approximation). Source: W. J. Conover, *Practical Nonparametric Statistics*,
    3rd ed., Wiley 1999, §3.2 (confidence interval for a quantile); J.-Y. Le Boudec,
    *Performance Evaluation of Computer and Communication Systems*, EPFL Press 2010,
    Theorem 2.1 and Table A.1 (e.g. n=10 -> (2, 9), n=100 -> (40, 61)).

    Args:
        n: number of observations.
        confidence: coverage, in (0, 1).

    Returns:
        ``(j, k)`` with ``1 <= j < k <= n``, or None when n is too small for that
        confidence (n < 6 at 95%).
    """
    if n < 2:
        return None
    tail = (1.0 - confidence) / 2.0
    log_half_n = n * math.log(0.5)
    log_n_fact = math.lgamma(n + 1)
    cdf = 0.0
    j = 0
    for i in range(n // 2 + 1):
        cdf += math.exp(log_n_fact - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
        if cdf > tail:
            break
        j = i + 1
    if j < 1:
        return None
    return j, n + 1 - j


def median_ci_halfwidth_pct(sorted_values: np.ndarray, confidence: float = 0.95) -> float | None:
    """Relative half-width of the distribution-free CI of the median, in percent.

    ``100 * (X_(k) - X_(j)) / 2 / median`` with ``(j, k)`` from :func:`median_ci_ranks`
    (the interval need not be symmetric around the median; this is half its width).

    Args:
        sorted_values: ndarray of shape (n,), ascending (e.g. latencies in ms).
        confidence: coverage of the interval.

    Returns:
        The half-width in percent of the median, or None when n is too small
        (see :func:`median_ci_ranks`) or the median is 0.
    """
    ranks = median_ci_ranks(len(sorted_values), confidence)
    if ranks is None:
        return None
    median = float(np.median(sorted_values))
    if median <= 0:
        return None
    j, k = ranks
    return 100.0 * (float(sorted_values[k - 1]) - float(sorted_values[j - 1])) / 2.0 / median


def summarize(latencies_ns: list[int], batch_size: int) -> dict[str, Any]:
    """Latency statistics of timed runs.

    Args:
        latencies_ns: per-run latencies in ns (``time.perf_counter_ns`` around ``session.run``).
        batch_size: samples per run.

    Returns:
        dict with mean_ms, std_ms (sample std, ddof=1; 0 for one run), min_ms, p50_ms,
        p90_ms, p95_ms, p99_ms, max_ms (percentiles: numpy's default linear
        interpolation, Hyndman & Fan type 7), throughput (samples/s = batch_size * runs
        / total timed seconds), runs, ci_halfwidth_pct (see :func:`median_ci_halfwidth_pct`).
    """
    ms = np.sort(np.asarray(latencies_ns, dtype=np.float64) / 1e6)
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    total_s = float(ms.sum()) / 1e3
    return {
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "min_ms": float(ms[0]),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(ms[-1]),
        "throughput": batch_size * len(ms) / total_s if total_s > 0 else None,
        "runs": len(ms),
        "ci_halfwidth_pct": median_ci_halfwidth_pct(ms),
    }


#: ``/proc/cpuinfo`` flags that decide INT8 speed on x86, in report order -> feature name. VNNI
#: (``vpdpbusd``: u8 x s8 dot products) and AMX (tile matrix multiply) are what ONNX Runtime's
#: and OpenVINO's INT8 kernels use; without them INT8 GEMMs run on AVX2 / AVX-512 multiply-adds.
ISA_FLAGS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("amx_int8", "AMX"),
)


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The CPU model and INT8-relevant ISA features from the text of Linux ``/proc/cpuinfo``.

    Returns:
        ``{"model": str | None, "isa": [feature, ...]}``: ``model`` is the first ``model name``
        line; ``isa`` lists, in :data:`ISA_FLAGS` order, the features whose flag is on the first
        ``flags`` line (``AMX`` needs ``amx_int8`` and ``amx_tile``).
    """
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key == "flags" and not flags:
            flags = set(value.split())
    isa = [name for flag, name in ISA_FLAGS if flag in flags and (flag != "amx_int8" or "amx_tile" in flags)]
    return {"model": model, "isa": isa}


def cpu_info() -> dict[str, Any]:
    """The host CPU: :func:`parse_cpuinfo` of ``/proc/cpuinfo`` on Linux; elsewhere
    ``{"model": platform.processor() or None, "isa": []}`` (no portable flag source)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            info = parse_cpuinfo(fh.read())
    except OSError:
        info = {"model": None, "isa": []}
    if info["model"] is None:
        info["model"] = platform.processor() or None
    return info


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (``getrusage(RUSAGE_SELF).ru_maxrss``:
    KiB on Linux, bytes on macOS); None where the ``resource`` module is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def model_size_bytes(model_path: str) -> int | None:
    """Size of the .onnx file plus ``<model_path>.data`` (the external-data file torch's
    exporter writes) when present; None when the model file is missing."""
    try:
        size = os.path.getsize(model_path)
    except OSError:
        return None
    data = model_path + ".data"
    if os.path.isfile(data):
        size += os.path.getsize(data)
    return size


# --------------------------------------------------------------------------- request


def _normalize_providers(raw: Any) -> list[tuple[str, dict[str, str]]]:
    if raw is None:
        return [(_CPU, {})]
    if not isinstance(raw, list) or not raw:
        raise RequestError(f"providers must be a non-empty list, got {raw!r}")
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
            out.append((item[0], {str(k): str(v) for k, v in item[1].items()}))
        else:
            raise RequestError(f"a provider must be a name or [name, options], got {item!r}")
    return out


def load_request(path: str) -> dict[str, Any]:
    """Read and normalize a request file (defaults filled in, see the module docstring).

    Raises:
        RequestError: the file is unreadable, not JSON, or a field is invalid.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            req = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RequestError(f"cannot read request {path}: {exc}") from exc
    if not isinstance(req, dict) or not isinstance(req.get("model_path"), str):
        raise RequestError("the request must be a JSON object with a string 'model_path'")
    so = dict(req.get("session_options") or {})
    so.setdefault("intra_op_num_threads", 0)
    so.setdefault("inter_op_num_threads", 0)
    so.setdefault("graph_optimization_level", "all")
    so.setdefault("execution_mode", "sequential")
    so["allow_spinning"] = bool(so.get("allow_spinning", False))
    if so["graph_optimization_level"] not in _OPT_LEVELS:
        raise RequestError(f"graph_optimization_level must be one of {list(_OPT_LEVELS)}, got {so['graph_optimization_level']!r}")
    if so["execution_mode"] not in _EXEC_MODES:
        raise RequestError(f"execution_mode must be one of {list(_EXEC_MODES)}, got {so['execution_mode']!r}")
    out = {
        "model_path": req["model_path"],
        "providers": _normalize_providers(req.get("providers")),
        "session_options": so,
        "inputs": req.get("inputs") or None,
        "samples_path": req.get("samples_path"),
        "dim_values": dict(req.get("dim_values") or {}),
        "seed": int(req.get("seed", 0)),
        "batch_sizes": [int(b) for b in req.get("batch_sizes") or [1]],
        "warmup": int(req.get("warmup", 10)),
        "max_runs": int(req.get("max_runs", 100)),
        "min_runs": int(req.get("min_runs", 10)),
        "time_budget_s": float(req.get("time_budget_s", 10.0)),
        "target_ci_pct": float(req.get("target_ci_pct", 2.0)),
        "partial_path": req.get("partial_path"),
        "latencies_path": req.get("latencies_path"),
    }
    if any(b <= 0 for b in out["batch_sizes"]):
        raise RequestError(f"batch sizes must be positive, got {out['batch_sizes']}")
    if out["max_runs"] < 1 or out["warmup"] < 0 or out["min_runs"] < 1 or out["time_budget_s"] <= 0:
        raise RequestError("need max_runs >= 1, min_runs >= 1, warmup >= 0, time_budget_s > 0")
    return out


def session_options(opts: dict[str, Any]) -> ort.SessionOptions:
    """Build ``ort.SessionOptions``. ``allow_spinning`` false (the default) sets the config
    entries ``session.intra_op.allow_spinning`` and ``session.inter_op.allow_spinning`` to
    "0": idle worker threads sleep instead of busy-waiting, a bit slower per run but fair
    on a shared host."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(opts["intra_op_num_threads"])
    so.inter_op_num_threads = int(opts["inter_op_num_threads"])
    so.graph_optimization_level = _OPT_LEVELS[opts["graph_optimization_level"]]
    so.execution_mode = _EXEC_MODES[opts["execution_mode"]]
    spin = "1" if opts["allow_spinning"] else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


# --------------------------------------------------------------------------- inputs


def make_feeds(
    inputs: list[dict[str, Any]],
    samples: dict[str, np.ndarray] | None,
    batch_size: int,
    dim_values: dict[str, int],
    seed: int,
) -> dict[str, np.ndarray]:
    """One batch per input.

    From samples: rows ``0, 1, ..., batch_size - 1`` modulo n_samples (the samples are
    cycled/tiled to reach the batch size); named non-batch dims take the sample's size,
    static ones must match. Random (``samples`` None), from ``np.random.default_rng(seed)``:
    integers uniform in [0, 100), booleans uniform, floats N(0, 1); named non-batch dims
    take ``dim_values`` (default 1).

    Args:
        inputs: [{name, dtype, shape}] with shape[0] the batch dim (scalars: shape []).
        samples: {name: ndarray of shape (n_samples, *dims)} or None.

    Returns:
        {name: C-contiguous ndarray of shape (batch_size, *dims) and the input's dtype}.

    Raises:
        ValueError: a sample array is missing, empty, or of the wrong rank/static dims.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        name, dtype, shape = spec["name"], np.dtype(spec["dtype"]), list(spec["shape"])
        if samples is not None:
            if name not in samples:
                raise ValueError(f"samples file has no array {name!r} (has {sorted(samples)})")
            arr = samples[name]
            if not shape:
                feeds[name] = np.asarray(arr.reshape(-1)[0], dtype=dtype)
                continue
            if arr.ndim != len(shape) or arr.shape[0] == 0:
                raise ValueError(f"samples[{name!r}] has shape {arr.shape}; expected (n_samples>0, ...) matching {shape}")
            for axis, (dim, got) in enumerate(zip(shape[1:], arr.shape[1:]), start=1):
                if isinstance(dim, int) and dim != got:
                    raise ValueError(f"samples[{name!r}] dim {axis} is {got}, the input declares {dim}")
            rows = np.arange(batch_size) % arr.shape[0]
            feeds[name] = np.ascontiguousarray(arr[rows], dtype=dtype)
            continue
        dims = [batch_size] + [d if isinstance(d, int) else int(dim_values.get(d, 1)) for d in shape[1:]] if shape else []
        if dtype == np.bool_:
            data = rng.integers(0, 2, size=dims).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            data = rng.integers(0, 100, size=dims).astype(dtype)
        else:
            data = rng.standard_normal(size=dims).astype(dtype)
        feeds[name] = np.ascontiguousarray(data)
    return feeds


def _model_inputs(session: ort.InferenceSession) -> list[dict[str, Any]]:
    out = []
    for node in session.get_inputs():
        dtype = _ORT_TYPES.get(node.type)
        if dtype is None:
            raise ValueError(f"input {node.name!r} has unsupported type {node.type}")
        shape = [d if isinstance(d, int) else (d or f"dim{i}") for i, d in enumerate(node.shape)]
        out.append({"name": node.name, "dtype": dtype, "shape": shape})
    return out


def _static_batch_mismatch(session: ort.InferenceSession, batch_size: int) -> str | None:
    for node in session.get_inputs():
        if node.shape and isinstance(node.shape[0], int) and node.shape[0] != batch_size:
            return f"input {node.name!r} has a static batch dim of {node.shape[0]}; cannot run batch size {batch_size}"
    return None


# --------------------------------------------------------------------------- measurement


def _entry(batch_size: int, req: dict[str, Any], size: int | None, status: str, error: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    entry.update(
        batch_size=batch_size,
        status=status,
        error=error,
        providers_requested=[name for name, _ in req["providers"]],
        providers_bound=[],
        stable=False,
        model_size_bytes=size,
        allow_spinning=req["session_options"]["allow_spinning"],
        data="random" if req["samples_path"] is None else "samples",
        cpu=cpu_info(),
    )
    return entry


def _measure(session: ort.InferenceSession, feeds: dict[str, np.ndarray], req: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Warm up, then time ``session.run`` until the median's CI is tight enough, max_runs
    is reached or the time budget is spent (at least one timed run)."""
    for _ in range(req["warmup"]):
        session.run(None, feeds)
    max_runs, min_runs = req["max_runs"], min(req["min_runs"], req["max_runs"])
    budget_ns = int(req["time_budget_s"] * 1e9)
    latencies: list[int] = []
    next_check = min_runs
    stop_reason = "max_runs"
    perf = time.perf_counter_ns
    run = session.run
    gc.collect()
    gc.disable()
    try:
        start = last_check = perf()
        while len(latencies) < max_runs:
            t0 = perf()
            run(None, feeds)
            latencies.append(perf() - t0)
            n = len(latencies)
            # The check (a sort, ~0.1 ms) slows the run after it: for sub-ms models checking
            # every few runs biased p50 up by 4-12%, so checks are also at least CHECK_INTERVAL_NS apart.
            if n >= next_check and perf() - last_check >= CHECK_INTERVAL_NS:
                last_check = perf()
                next_check = n + max(5, n // 20)  # checks get rarer: O(20 log n) sorts in all
                ci = median_ci_halfwidth_pct(np.sort(np.asarray(latencies, dtype=np.float64)))
                if ci is not None and ci <= req["target_ci_pct"]:
                    stop_reason = "ci"
                    break
            if perf() - start >= budget_ns:
                stop_reason = "time_budget" if n < max_runs else "max_runs"
                break
    finally:
        gc.enable()
    stats = summarize(latencies, batch_size)
    stats["_latencies_ms"] = np.asarray(latencies, dtype=np.float64) / 1e6
    stats["stable"] = stats["ci_halfwidth_pct"] is not None and stats["ci_halfwidth_pct"] <= req["target_ci_pct"]
    stats["stop_reason"] = stop_reason
    return stats


def benchmark_batch(req: dict[str, Any], batch_size: int, samples: dict[str, np.ndarray] | None, size: int | None) -> dict[str, Any]:
    """Create a session, build the batch, measure; never raises (errors become the status)."""
    entry = _entry(batch_size, req, size, "ok")
    known = set(ort.get_all_providers())
    unknown = [name for name, _ in req["providers"] if name not in known]
    if unknown:
        entry.update(status="unsupported", error=f"unknown execution provider(s) {unknown}; this onnxruntime knows {sorted(known)}")
        return entry
    session = None
    try:
        t0 = time.perf_counter_ns()
        try:
            session = ort.InferenceSession(
                req["model_path"],
                sess_options=session_options(req["session_options"]),
                providers=[(name, opts) for name, opts in req["providers"]],
            )
        except Exception as exc:  # ORT raises pybind types (InvalidGraph, Fail, NotImplemented, ...)
            entry.update(status="unsupported", error=f"InferenceSession creation failed: {type(exc).__name__}: {exc}")
            return entry
        entry["session_create_ms"] = (time.perf_counter_ns() - t0) / 1e6
        entry["providers_bound"] = list(session.get_providers())
        mismatch = _static_batch_mismatch(session, batch_size)
        if mismatch:
            entry.update(status="unsupported", error=mismatch)
            return entry
        try:
            inputs = req["inputs"] or _model_inputs(session)
            feeds = make_feeds(inputs, samples, batch_size, req["dim_values"], req["seed"])
            t0 = time.perf_counter_ns()
            session.run(None, feeds)
            entry["first_inference_ms"] = (time.perf_counter_ns() - t0) / 1e6
            entry.update(_measure(session, feeds, req, batch_size))
        except Exception as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            return entry
        missing = [n for n in entry["providers_requested"] if n != _CPU and n not in entry["providers_bound"]]
        if missing:
            entry.update(
                status="fallback",
                error=f"requested provider(s) {missing} not bound (bound: {entry['providers_bound']}); numbers are for the bound providers",
            )
        return entry
    finally:
        del session
        entry["peak_rss_mb"] = peak_rss_mb()


def _clean(value: Any) -> Any:
    """Replace NaN/inf floats by None so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _write_partial(path: str, result: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(_clean(result), fh)
    os.replace(tmp, path)


def run_request(req: dict[str, Any]) -> dict[str, Any]:
    """Benchmark every batch size of a normalized request (see :func:`load_request`).

    Returns:
        The result object (see the module docstring). Per-batch errors are statuses,
        never exceptions.
    """
    size = model_size_bytes(req["model_path"])
    result: dict[str, Any] = {
        "runner_version": RUNNER_VERSION,
        "onnxruntime_version": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "model_path": req["model_path"],
        "results": [],
    }
    samples = None
    samples_error = None
    if req["samples_path"] is not None:
        try:
            with np.load(req["samples_path"], allow_pickle=False) as npz:
                samples = {k: npz[k] for k in npz.files}
        except Exception as exc:
            samples_error = f"cannot read samples {req['samples_path']}: {type(exc).__name__}: {exc}"
    raw: dict[str, np.ndarray] = {}
    for batch_size in req["batch_sizes"]:
        log.info("batch size %d: %s", batch_size, req["model_path"])
        if samples_error:
            entry = _entry(batch_size, req, size, "failed", samples_error)
        else:
            entry = benchmark_batch(req, batch_size, samples, size)
        latencies = entry.pop("_latencies_ms", None)
        if latencies is not None and req["latencies_path"]:
            raw[f"b{batch_size}"] = latencies
            np.savez(req["latencies_path"], **raw)
        log.info(
            "batch size %d: %s p50=%s ms runs=%s ci=%s%% %s",
            batch_size, entry["status"], entry["p50_ms"], entry["runs"], entry["ci_halfwidth_pct"], entry["error"] or "",
        )
        result["results"].append(entry)
        if req["partial_path"]:
            _write_partial(req["partial_path"], result)
    return _clean(result)


def main(argv: list[str]) -> int:
    """Entry point: ``runner.py REQUEST.json``; prints the result JSON as one stdout line."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="runner: %(message)s")
    if len(argv) != 1:
        print("usage: runner.py REQUEST.json", file=sys.stderr)
        return 2
    # Keep stdout for the result alone: anything else writing to fd 1 (ONNX Runtime's
    # native code, print() in its Python layer) goes to stderr.
    sys.stdout.flush()
    result_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        req = load_request(argv[0])
    except RequestError as exc:
        log.error("%s", exc)
        return 2
    result = run_request(req)
    result_out.write(json.dumps(result, allow_nan=False) + "\n")
    result_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
