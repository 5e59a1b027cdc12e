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

A target whose managed environment is not ready (missing, or its setup failed: see
:func:`edgeport.targets.ensure_environment`) is *unavailable*: :func:`benchmark_target`
returns ``status="unavailable"`` entries naming the reason and the ``setup_command``,
and launches nothing.

Give each variant its own ``output_dir``: the names depend on the target only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from prefect import task
from prefect.cache_policies import NO_CACHE

from edgeport import runner as _runner
from edgeport.errors import DataError, TargetError
from edgeport.limits import hold_slot
from edgeport.prefect_context import in_prefect_run
from edgeport.processes import signal_group
from edgeport.spec import PipelineSpec, TargetSpec
from edgeport.targets import (
    CURRENT_ENV,
    ENVIRONMENTS,
    ResolvedTarget,
    environment_fingerprint,
    environment_readiness,
    resolve_target,
    runtime_info,
    setup_command,
)
from tasks import cache as _cache

__all__ = [
    "RUNNER_PATH",
    "benchmark_target",
    "benchmark_target_task",
    "benchmark_task",
    "benchmark_variant",
    "build_request",
    "combine_rounds",
    "host_concurrency_limit",
    "load_latencies",
    "target_unavailable",
    "unavailable_entry",
]

logger = logging.getLogger("edgeport.benchmark")

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
    latencies_path = output_dir / f"{stem}.latencies.npz"
    latencies_path.unlink(missing_ok=True)
    request["latencies_path"] = str(latencies_path)
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
        signal_group(proc.pid)  # the runner and anything it started (it leads its own session)
        stdout, stderr = proc.communicate()
    except BaseException:  # Ctrl-C / SIGTERM: its own session got no signal from the terminal; stop it
        signal_group(proc.pid)
        proc.wait()
        raise
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
        raw = str(latencies_path) if latencies_path.is_file() and entry.get("runs") else None
        entries.append({**entry, "target": target.name, "provider": bound[0] if bound else None, "latencies_path": raw})
    return entries


#: Severity of a status when rounds disagree: the worst one wins.
_STATUS_RANK = {"ok": 0, "fallback": 1, "unsupported": 2, "unavailable": 3, "failed": 4}


def target_unavailable(target: TargetSpec) -> str | None:
    """Why ``target`` cannot be benchmarked here, or None when it can.

    A target in ``env: current`` is always available. A managed environment is
    unavailable when it is not set up (its marker is missing or records other pins;
    the last failed setup is named) or its python cannot import onnxruntime.

    Returns:
        None, or the reason, ending with the command that sets the environment up.

    Raises:
        TargetError: unknown profile or env (bad input, not unavailability).
    """
    resolved = resolve_target(target, check_env=False)
    if resolved.env == CURRENT_ENV:
        return None
    ready = environment_readiness(resolved.env)
    if not ready.available:
        return f"target {target.name!r}: {ready.reason}"
    try:
        runtime_info(resolved.env)
    except TargetError as exc:
        return f"target {target.name!r}: {exc}; rebuild it with `{setup_command(resolved.env)} --force`"
    return None


def unavailable_entry(
    target: TargetSpec, model_path: str | Path, batch_size: int, reason: str, samples_path: str | Path | None = None
) -> dict[str, Any]:
    """The benchmark entry of a variant on a target that could not run: the keys of
    :func:`benchmark_variant`'s entries (measurements None) plus those of
    :func:`combine_rounds`, ``status="unavailable"``, ``error`` = ``reason`` and
    ``setup_command`` (``edgeport targets setup <env>``, None for ``env: current``)."""
    resolved = resolve_target(target, check_env=False)
    entry: dict[str, Any] = dict.fromkeys(_runner.RESULT_KEYS)
    entry.update(
        batch_size=batch_size,
        status="unavailable",
        error=reason,
        providers_requested=list(resolved.providers),
        providers_bound=[],
        stable=False,
        model_size_bytes=_runner.model_size_bytes(str(model_path)),
        allow_spinning=False,
        data="random" if samples_path is None else "samples",
        target=target.name,
        provider=None,
        latencies_path=None,
        setup_command=setup_command(resolved.env) if resolved.env in ENVIRONMENTS else None,
        rounds=0,
        round_p50_ms=[],
        drift_pct=None,
    )
    return entry


def load_latencies(entry: dict[str, Any]) -> np.ndarray | None:
    """Raw timed latencies (ms, float64, shape (runs,)) of a benchmark entry, or None."""
    path = entry.get("latencies_path")
    if not path or not Path(path).is_file():
        return None
    with np.load(path) as npz:
        key = f"b{entry['batch_size']}"
        return npz[key] if key in npz.files else None


def combine_rounds(rounds: list[dict[str, Any]], target_ci_pct: float = 2.0) -> dict[str, Any]:
    """Pool the rounds of one (variant, target, batch size) into one entry.

    The statistics are recomputed (:func:`edgeport.runner.summarize`) over the raw
    latencies of every round that measured; ``session_create_ms`` and
    ``first_inference_ms`` are the medians over rounds, ``peak_rss_mb`` the max. The
    status is the worst of the rounds' (ok < fallback < unsupported < failed), with its
    error. ``drift_pct`` = 100 x (max - min) / median of the per-round p50s: how much the
    machine drifted between rounds; ``stable`` requires the pooled median's 95% CI
    half-width <= ``target_ci_pct`` and ``drift_pct`` <= 2 x ``target_ci_pct``.

    Args:
        rounds: entries of :func:`benchmark_variant` for the same batch size, one per round.

    Returns:
        One entry with the keys of the inputs plus ``rounds`` (count), ``round_p50_ms`` and ``drift_pct``.
    """
    worst = max(rounds, key=lambda e: _STATUS_RANK.get(e["status"], 3))
    measured = [(e, lat) for e in rounds if (lat := load_latencies(e)) is not None and len(lat)]
    combined = dict(rounds[-1])
    combined.update(status=worst["status"], error=worst["error"], rounds=len(rounds))
    if not measured:
        combined.update(round_p50_ms=[], drift_pct=None)
        return combined
    pooled = np.concatenate([lat for _, lat in measured])
    stats = _runner.summarize((pooled * 1e6).tolist(), combined["batch_size"])
    p50s = [float(e["p50_ms"]) for e, _ in measured]
    drift = 100.0 * (max(p50s) - min(p50s)) / float(np.median(p50s)) if len(p50s) > 1 else 0.0
    ci = stats["ci_halfwidth_pct"]
    combined.update(stats)
    combined.update(
        session_create_ms=float(np.median([e["session_create_ms"] for e, _ in measured])),
        first_inference_ms=float(np.median([e["first_inference_ms"] for e, _ in measured])),
        peak_rss_mb=max((e["peak_rss_mb"] or 0.0) for e, _ in measured),
        round_p50_ms=p50s,
        drift_pct=drift,
        stable=ci is not None and ci <= target_ci_pct and drift <= 2 * target_ci_pct,
        latencies_path=None,
        latencies_paths=[e["latencies_path"] for e, _ in measured],
    )
    return combined


def host_concurrency_limit() -> str:
    """Name of the Prefect global concurrency limit (1 slot) that serialises benchmarks on this host."""
    return f"edgeport-benchmark-{socket.gethostname()}"


@contextlib.contextmanager
def _one_benchmark_per_host():
    """Hold this host's benchmark slot while inside a Prefect run (no-op outside one).

    The limit is created with 1 slot when missing, so two pipeline runs on one machine
    take turns instead of sharing its cores.
    """
    if not in_prefect_run():
        yield
        return

    with hold_slot(host_concurrency_limit(), lease_duration_s=300.0):
        yield


def benchmark_target(
    spec: PipelineSpec,
    target: TargetSpec,
    models: dict[str, str],
    samples_path: str | Path | None,
    output_dir: str | Path,
    on_progress: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Benchmark several variants on one target, interleaved in rounds to cancel drift.

    Method: ``spec.benchmark.rounds`` rounds; each round runs every variant once
    (A B C, A B C, ...), each in its own runner process (one live session at a time,
    intra-op spinning off), with ``time_budget_s / rounds`` seconds and
    ``repetitions / rounds`` runs per batch size. A slow drift of the machine (thermal,
    a background job) then hits every variant alike instead of favouring whichever
    ran first. Rounds are pooled by :func:`combine_rounds`. A variant the target
    cannot load (``unsupported``) is not retried in later rounds. The whole sweep holds
    this host's benchmark slot (:func:`host_concurrency_limit`).

    Args:
        models: variant name -> .onnx path, in the order to run them.
        output_dir: ``<output_dir>/<variant>/round-<r>/`` receives each runner's files.
        on_progress: optional callable(fraction_done: float) for progress reporting.

    Returns:
        variant name -> one pooled entry per batch size (see :func:`benchmark_variant`);
        every entry is ``status="unavailable"`` (:func:`unavailable_entry`) when the
        target's managed environment is not ready (:func:`target_unavailable`).

    Raises:
        TargetError, DataError: see :func:`benchmark_variant` (before anything runs).
    """
    reason = target_unavailable(target)
    if reason is not None:
        logger.warning("%s: recorded as unavailable", reason)
        if on_progress is not None:
            on_progress(1.0)
        return {
            name: [unavailable_entry(target, path, bs, reason, samples_path) for bs in spec.benchmark.batch_sizes]
            for name, path in models.items()
        }
    b = spec.benchmark
    rounds = b.rounds
    per_round = spec.model_copy(
        update={
            "benchmark": b.model_copy(
                update={"time_budget_s": b.time_budget_s / rounds, "repetitions": max(1, -(-b.repetitions // rounds))}
            )
        }
    )
    collected: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in models}
    done, total = 0, rounds * len(models)
    with _one_benchmark_per_host():
        for r in range(rounds):
            for name, path in models.items():
                previous = collected[name]
                if previous and all(e["status"] == "unsupported" for e in previous[-1]):
                    done += 1
                    continue
                collected[name].append(
                    benchmark_variant(path, per_round, target, samples_path, Path(output_dir) / name / f"round-{r}")
                )
                done += 1
                if on_progress is not None:
                    on_progress(done / total)
    return {
        name: [combine_rounds([entries[i] for entries in runs], 2.0) for i in range(len(runs[0]))]
        for name, runs in collected.items()
    }


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
            cpu=_runner.cpu_info(),
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


#: Prefect task for one (variant, target). Results are measurements, never cached. The flow
#: uses :data:`benchmark_target_task`, which also holds the host's benchmark slot.
benchmark_task = task(
    benchmark_variant,
    name="benchmark",
    tags=["edgeport-benchmark"],
    retries=0,
    cache_policy=NO_CACHE,
)


def _benchmark_target_cache_key(context: object, parameters: dict) -> str | None:
    """Prefect cache key of one target's sweep: the sha256 of every model and of the sample
    data, the benchmark and target settings, the output folder, the host name (a measurement
    belongs to a machine) and library versions. None (no caching) when a model is missing.

    A re-run that resumes after a failure reuses the measurements; a scheduled re-benchmark
    must not: the flow's ``rebenchmark=True`` runs it with ``refresh_cache=True``.
    """
    spec: PipelineSpec = parameters["spec"]
    target: TargetSpec = parameters["target"]
    env = resolve_target(target, check_env=False).env
    env_built = environment_fingerprint(env) if env in ENVIRONMENTS else CURRENT_ENV
    if env_built is None:  # unavailable now: never cache that, the environment may be set up before the re-run
        return None
    models = {name: _cache.file_digest(path) for name, path in parameters["models"].items()}
    if any(sha is None for sha in models.values()):
        return None
    return _cache.step_key(
        "benchmark",
        models=list(models.items()),  # order matters: rounds interleave in this order
        samples_sha256=_cache.file_digest(parameters.get("samples_path")),
        benchmark=_cache.sections(spec, "benchmark"),
        target=target.model_dump(mode="json"),
        env=env_built,  # a rebuilt managed environment measures again
        output_dir=str(Path(parameters["output_dir"]).resolve()),
        host=socket.gethostname(),
        versions=_cache.library_versions(),
    )


#: Prefect task for a whole target (all variants, interleaved rounds); holds the host's slot.
#: Cached (persisted result) so that a re-run resumes; ``refresh_cache=True`` measures again.
benchmark_target_task = task(
    benchmark_target,
    name="benchmark-target",
    tags=["edgeport-benchmark"],
    retries=0,
    cache_key_fn=_benchmark_target_cache_key,
    persist_result=True,
    task_run_name="benchmark-{target.name}",
)
