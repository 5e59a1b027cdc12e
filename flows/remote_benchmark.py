"""Remote targets: a target's benchmark run by a worker of the work pool the target names.

A target with ``work_pool: jetson-orin`` is benchmarked on the device itself: the pipeline
run calls :func:`run_remote_benchmark`, which runs the deployment
``edgeport-remote-benchmark/remote-benchmark-jetson-orin`` (created by ``edgeport deploy``)
with :func:`prefect.deployments.run_deployment` and waits for it. A worker of that pool
(``prefect worker start --pool jetson-orin`` on the device) runs :func:`remote_benchmark`,
i.e. :func:`tasks.benchmark.benchmark_target` (interleaved rounds in isolated runner
processes), and writes the benchmark records to ``<output_dir>/remote-results.json``;
the pipeline run reads them back and carries on as for a local target.

Assumption: models, data and the spec are passed as paths, so the worker must see the same
paths as the pipeline run: the same machine (the tests), or a shared mount / synced artifact
store on a real device. The flow run is a child of the pipeline's ``benchmark-<target>``
task run, so the Prefect UI shows it inside the pipeline run.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Cancelled

from edgeport.errors import BenchmarkError, SpecError
from edgeport.spec import TargetSpec, load_spec
from tasks.benchmark import benchmark_target_task

__all__ = [
    "REMOTE_BENCHMARK_FLOW",
    "RESULTS_FILE",
    "remote_benchmark",
    "remote_benchmark_task",
    "remote_deployment_name",
    "run_remote_benchmark",
]

#: Flow name of the remote benchmark (deployments are ``<this>/remote-benchmark-<pool>``).
REMOTE_BENCHMARK_FLOW = "edgeport-remote-benchmark"

#: File (under the flow's ``output_dir``) holding the benchmark records the worker produced.
RESULTS_FILE = "remote-results.json"

#: Seconds a remote run may wait for a worker to pick it up, on top of the benchmark's own bound.
QUEUE_ALLOWANCE_S = 300.0


def remote_deployment_name(work_pool: str) -> str:
    """Deployment name of the remote benchmark on ``work_pool``: ``remote-benchmark-<pool>``."""
    return f"remote-benchmark-{work_pool}"


@flow(name=REMOTE_BENCHMARK_FLOW, description="Benchmark the variants of one target on a worker of the target's work pool.")
def remote_benchmark(
    spec_path: str,
    target_name: str,
    models: dict[str, str],
    samples_path: str | None,
    output_dir: str,
) -> dict[str, Any]:
    """Benchmark ``models`` on the spec's target ``target_name``, here (on the worker).

    Args:
        spec_path: the pipeline spec (YAML); its ``benchmark`` settings and ``inputs`` apply.
        target_name: one of the spec's ``targets[].name``.
        models: variant name -> .onnx path (paths the worker can read).
        samples_path: ``.npz`` of real samples, or None (seeded random data).
        output_dir: receives the runner files and :data:`RESULTS_FILE`.

    Returns:
        ``{"results_path", "host", "target", "results"}``; ``results`` is variant name -> one
        benchmark record per batch size (:func:`tasks.benchmark.benchmark_target`).

    Raises:
        SpecError: the spec does not load or has no target ``target_name``.
        TargetError, DataError: see :func:`tasks.benchmark.benchmark_target`.
    """
    logger = get_run_logger()
    spec = load_spec(spec_path)
    target = next((t for t in spec.targets if t.name == target_name), None)
    if target is None:
        raise SpecError(f"{spec_path}: targets: no target named {target_name!r} (have {[t.name for t in spec.targets]})")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    logger.info("benchmarking %d variant(s) on target %s, host %s", len(models), target_name, host)
    results = benchmark_target_task(spec, target, models, samples_path, str(out))
    record = {
        "target": target_name,
        "host": host,
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "results": results,
    }
    path = out / RESULTS_FILE
    path.write_text(json.dumps(record, indent=2, default=str))
    return {"results_path": str(path), **record}


def run_remote_benchmark(
    spec_path: str,
    target: TargetSpec,
    models: dict[str, str],
    samples_path: str | None,
    output_dir: str,
    timeout_s: float | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run the benchmark of ``target`` on a worker of ``target.work_pool`` and wait for it.

    Args:
        spec_path: the pipeline spec (a path the worker can read).
        target: a target with ``work_pool`` set.
        models, samples_path, output_dir: as for :func:`remote_benchmark`.
        timeout_s: seconds to wait for the remote flow run, queueing included; default
            ``benchmark.timeout_s`` x rounds x variants + :data:`QUEUE_ALLOWANCE_S` (the runner's
            own bound per process, plus time for a worker to pick the run up).

    Returns:
        variant name -> benchmark records, as :func:`tasks.benchmark.benchmark_target` returns.

    Raises:
        BenchmarkError: no deployment for the pool (run ``edgeport deploy``), no worker picked the
            run up in time (the run is then cancelled), or the remote run failed.
    """
    pool = target.work_pool
    if pool is None:
        raise BenchmarkError(f"target {target.name!r} names no work_pool: benchmark it locally")
    name = f"{REMOTE_BENCHMARK_FLOW}/{remote_deployment_name(pool)}"
    if timeout_s is None:
        spec = load_spec(spec_path)
        timeout_s = spec.benchmark.timeout_s * spec.benchmark.rounds * max(1, len(models)) + QUEUE_ALLOWANCE_S
    parameters = {
        "spec_path": str(Path(spec_path).resolve()),
        "target_name": target.name,
        "models": models,
        "samples_path": samples_path,
        "output_dir": str(Path(output_dir).resolve()),
    }
    (Path(output_dir) / RESULTS_FILE).unlink(missing_ok=True)  # never read a previous run's results
    try:
        run = run_deployment(name=name, parameters=parameters, timeout=timeout_s, tags=["edgeport", f"target:{target.name}"])
    except ObjectNotFound:
        raise BenchmarkError(
            f"target {target.name!r}: work_pool {pool!r} has no deployment {name!r}; run `edgeport deploy --spec {spec_path}`"
        ) from None
    state = run.state
    if state is None or not state.is_final():
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelled(message=f"no result after {timeout_s:.0f} s"), force=True)
        raise BenchmarkError(
            f"target {target.name!r}: the remote benchmark (flow run {run.name}) on work pool {pool!r} did not finish "
            f"within {timeout_s:.0f} s (state {state.name if state else 'none'}); is a worker running? "
            f"`prefect worker start --pool {pool}`"
        )
    if not state.is_completed():
        raise BenchmarkError(
            f"target {target.name!r}: the remote benchmark (flow run {run.name}) on work pool {pool!r} ended "
            f"{state.name}: {state.message or ''}"
        )
    path = Path(output_dir) / RESULTS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"target {target.name!r}: cannot read the remote results {path}: {exc}") from exc
    if record.get("flow_run_id") not in (None, str(run.id)):
        raise BenchmarkError(f"target {target.name!r}: {path} was written by flow run {record['flow_run_id']}, not {run.id}")
    return record["results"]


#: Prefect task (in the pipeline run) wrapping :func:`run_remote_benchmark`; measurements, never cached.
remote_benchmark_task = task(
    run_remote_benchmark,
    name="remote-benchmark",
    tags=["edgeport-benchmark"],
    retries=0,
    cache_policy=NO_CACHE,
    task_run_name="benchmark-{target.name}@{target.work_pool}",
)
