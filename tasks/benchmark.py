"""Benchmark step: measure one ONNX variant's latency on one target, in a child process.

The measurement itself is :mod:`edgeport.runner`, a self-contained script (stdlib,
numpy, onnxruntime) run as ``python runner.py request.json``. Running it in a child
process isolates the pipeline from ONNX Runtime crashes and hangs: a segfault, a
kill or a timeout turns into ``status="failed"`` entries, never into an exception.

Files written to ``output_dir``:

- ``benchmark-<target>.request.json``: the request sent to the runner;
- ``benchmark-<target>.json``: the runner's result object (or, when the runner died,
  an object of the same shape with the salvaged/failed entries and ``runner_error``);
- ``benchmark-<target>.stderr.log``: the runner's stderr.

Give each variant its own ``output_dir``: the names depend on the target only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import onnxruntime as ort
from prefect import task
from prefect.cache_policies import NO_CACHE

from edgeport import runner as _runner
from edgeport.errors import DataError, TargetError
from edgeport.spec import PipelineSpec, TargetSpec
from edgeport.targets import CURRENT_ENV, ResolvedTarget, resolve_target, runtime_info

__all__ = ["RUNNER_PATH", "benchmark_task", "benchmark_variant", "build_request"]

#: The runner script launched in the child process (copy it to run elsewhere).
RUNNER_PATH = Path(_runner.__file__).resolve()

#: Characters of the runner's stderr kept in a failed entry's ``error``.
STDERR_TAIL_CHARS = 2000


def build_request(
    model_path: str | Path,
    spec: PipelineSpec,
    target: TargetSpec | ResolvedTarget,
    samples_path: str | Path | None,
) -> dict[str, Any]:
    """The runner request (see :mod:`edgeport.runner`) for one model on one target.

    ``spec.benchmark`` gives batch_sizes, warmup, max_runs (= repetitions) and
    time_budget_s (seconds of timed runs per batch size); ``target`` (resolved with
    :func:`edgeport.targets.resolve_target`: its profile applied) gives the providers,
    as names or ``[name, {option: str}]`` pairs when a provider has options, and the
    session options (threads, graph optimization level, execution mode); the inputs
    come from ``spec.inputs``. ``min_runs`` (10) and ``target_ci_pct`` (2.0) are the
    runner's defaults, ``min_runs`` capped at ``repetitions``.

    Raises:
        TargetError: the target's profile or env is unknown (a TargetSpec is resolved
            without requiring its managed environment to exist).
    """
    resolved = target if isinstance(target, ResolvedTarget) else resolve_target(target, check_env=False)
    bench = spec.benchmark
    return {
        "model_path": str(Path(model_path).resolve()),
        "providers": resolved.request_providers(),
        "session_options": resolved.session_options(),
        "inputs": [i.model_dump(mode="json") for i in spec.inputs],
        "samples_path": None if samples_path is None else str(Path(samples_path).resolve()),
        "batch_sizes": list(bench.batch_sizes),
        "warmup": bench.warmup,
        "max_runs": bench.repetitions,
        "min_runs": min(10, bench.repetitions),
        "time_budget_s": bench.time_budget_s,
        "target_ci_pct": 2.0,
    }


def benchmark_variant(
    model_path: str | Path,
    spec: PipelineSpec,
    target: TargetSpec,
    samples_path: str | Path | None,
    output_dir: str | Path,
    *,
    python: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Measure ``model_path`` on ``target`` at every ``spec.benchmark.batch_sizes``.

    Launches ``python runner.py request.json`` and waits at most
    ``spec.benchmark.timeout_s`` seconds (then kills the runner's process group).

    Args:
        model_path: the .onnx file.
        spec: the pipeline spec (``inputs`` and ``benchmark`` are used).
        target: execution providers and session options.
        samples_path: ``.npz`` with one array of shape (n_samples, *dims) per input
            name (real data, cycled to fill a batch), or None for seeded random data.
        output_dir: where the request, result and stderr log are written (created).
        python: interpreter that runs the runner; default: the target's own
            (:func:`edgeport.targets.resolve_target`): ``sys.executable`` for
            ``env: current``, the managed environment's python otherwise (e.g.
            ``$EDGEPORT_HOME/envs/openvino/bin/python`` for ``openvino-cpu``).

    Returns:
        One dict per batch size, in ``batch_sizes`` order: the runner's entry (keys
        :data:`edgeport.runner.RESULT_KEYS`: latencies ``*_ms`` in milliseconds,
        ``throughput`` in samples/s, ``peak_rss_mb`` in MiB, ``model_size_bytes`` in
        bytes, ``ci_halfwidth_pct`` in percent of p50, ``status`` one of ok, fallback,
        unsupported, failed) plus ``target`` (the target's name) and ``provider`` (the
        first bound execution provider, e.g. "CPUExecutionProvider"; None when no
        session was created). A runner crash, signal, timeout or unparsable output
        gives ``status="failed"`` entries with the stderr tail in ``error``; batch
        sizes the runner finished before dying are kept.

    Raises:
        TargetError: unknown profile or env; the target's managed environment is not
            set up (run ``edgeport targets setup <env>``) or its python cannot import
            onnxruntime; a provider name unknown to the target's onnxruntime
            (``get_all_providers()`` of the managed environment; of this process when
            ``env`` is "current" or ``python`` is given).
        DataError: ``samples_path`` is given but is not a file.
    """
    resolved = resolve_target(target, check_env=python is None)
    if python is None and resolved.env != CURRENT_ENV:
        known = runtime_info(resolved.env)["all"]
        where = f"onnxruntime of env {resolved.env!r}"
    else:
        known = ort.get_all_providers()
        where = f"onnxruntime {ort.__version__}"
    unknown = [p for p in resolved.providers if p not in known]
    if unknown:
        raise TargetError(f"target {target.name!r}: unknown execution provider(s) {unknown}; {where} knows {known}")
    if samples_path is not None and not Path(samples_path).is_file():
        raise DataError(f"benchmark samples file not found: {samples_path}")

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"benchmark-{target.name}"
    request = build_request(model_path, spec, resolved, samples_path)
    partial_path = output_dir / f"{stem}.partial.json"
    partial_path.unlink(missing_ok=True)
    request["partial_path"] = str(partial_path)
    request_path = output_dir / f"{stem}.request.json"
    request_path.write_text(json.dumps(request, indent=2))

    timeout_s = spec.benchmark.timeout_s
    cmd = [str(python or resolved.python), str(RUNNER_PATH), str(request_path)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        stdout, stderr = proc.communicate()
    (output_dir / f"{stem}.stderr.log").write_text(stderr or "")

    result, problem = None, None
    if timed_out:
        problem = f"runner killed after timeout_s={timeout_s:g} s"
    elif proc.returncode < 0:
        problem = f"runner killed by signal {_signal_name(-proc.returncode)}"
    elif proc.returncode != 0:
        problem = f"runner exited with code {proc.returncode}"
    else:
        result = _parse_result(stdout, len(request["batch_sizes"]))
        if result is None:
            problem = f"runner printed no valid result JSON (stdout tail: {stdout[-200:]!r})"

    if result is None:
        result = _salvage(request, partial_path, problem, stderr or "")
        for entry in result["results"]:  # salvaged entries name providers as the runner does
            entry["providers_requested"] = [p if isinstance(p, str) else p[0] for p in entry["providers_requested"]]
    partial_path.unlink(missing_ok=True)
    (output_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))

    entries = []
    for entry in result["results"]:
        bound = entry.get("providers_bound") or []
        entries.append({**entry, "target": target.name, "provider": bound[0] if bound else None})
    return entries


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the runner and anything it started (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _parse_result(stdout: str, n_batch_sizes: int) -> dict[str, Any] | None:
    """The result object from the last non-empty stdout line, or None if it is not one."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        result = json.loads(lines[-1])
    except ValueError:
        return None
    if not isinstance(result, dict) or not isinstance(result.get("results"), list):
        return None
    if len(result["results"]) != n_batch_sizes or not all(isinstance(e, dict) for e in result["results"]):
        return None
    return result


def _salvage(request: dict[str, Any], partial_path: Path, problem: str, stderr: str) -> dict[str, Any]:
    """A result object after a runner death: entries finished before it (from the
    partial file) plus ``failed`` entries for the other batch sizes."""
    try:
        partial = json.loads(partial_path.read_text())
        done = {e["batch_size"]: e for e in partial["results"]}
    except (OSError, ValueError, KeyError, TypeError):
        partial, done = {}, {}
    tail = stderr.strip()[-STDERR_TAIL_CHARS:]
    error = f"{problem}; stderr tail:\n{tail}" if tail else problem
    results = []
    for batch_size in request["batch_sizes"]:
        if batch_size in done:
            results.append(done[batch_size])
            continue
        entry: dict[str, Any] = dict.fromkeys(_runner.RESULT_KEYS)
        entry.update(
            batch_size=batch_size,
            status="failed",
            error=error,
            providers_requested=list(request["providers"]),
            providers_bound=[],
            stable=False,
            model_size_bytes=_runner.model_size_bytes(request["model_path"]),
            allow_spinning=request["session_options"]["allow_spinning"],
            data="random" if request["samples_path"] is None else "samples",
        )
        results.append(entry)
    return {
        "runner_version": partial.get("runner_version"),
        "onnxruntime_version": partial.get("onnxruntime_version"),
        "available_providers": partial.get("available_providers"),
        "model_path": request["model_path"],
        "results": results,
        "runner_error": problem,
    }


#: Prefect task. Benchmarks must not overlap on one host (they would share cores and
#: skew each other's latencies): the tag ``edgeport-benchmark`` is expected to carry a
#: tag concurrency limit of 1 (``prefect concurrency-limit create edgeport-benchmark 1``),
#: and flows call this task sequentially anyway. Results are measurements, never cached.
benchmark_task = task(
    benchmark_variant,
    name="benchmark",
    tags=["edgeport-benchmark"],
    retries=0,
    cache_policy=NO_CACHE,
)
