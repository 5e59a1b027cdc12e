"""The Prefect deployments of edgeport (the one source of truth; ``edgeport deploy`` applies them).

For each pipeline spec (default: the examples ``digits`` and ``minilm``):

``edgeport-pipeline/<spec name>-nightly``
    cron schedule (default :data:`NIGHTLY_CRON`, 02:00 every night): re-run the pipeline
    on the spec as it stands (with ``rebenchmark=True`` when the pipeline flow has that parameter).
``edgeport-pipeline/<spec name>-on-checkpoint``
    event trigger: runs when an ``edgeport.checkpoint.created`` event
    (:data:`CHECKPOINT_EVENT`, emitted by ``edgeport notify-checkpoint``) names this spec
    (resource label ``edgeport.spec-name``); the checkpoint path comes from the event's
    payload (``checkpoint="{{ event.payload.checkpoint }}"``).
``edgeport-promote/<registered model>``
    event trigger: runs ``flows/promote.py:promote_flow`` when an ``edgeport.pipeline.completed``
    event (emitted by a pipeline run that registered a challenger) concerns this registered model
    (resource ``edgeport.registered-model.<name>``); model, version, tracking URI and spec come
    from the payload. Promotions of one model take turns (``promote_flow`` holds the model's
    Prefect global concurrency limit: MLflow alias updates are last-writer-wins).
``edgeport-remote-benchmark/remote-benchmark-<pool>``
    one per work pool that a spec's ``targets[].work_pool`` names: the benchmark of such a
    target runs there (:mod:`flows.remote_benchmark`).

Every deployment goes to a Prefect ``process`` work pool (``edgeport`` by default; the remote
benchmarks to their own pools), created when missing. The code source is this repository: each
flow run's pull step is ``set_working_directory`` to the repo root
(``flow.from_source(source=<repo>, entrypoint=...)``), and a worker started with this repo's
``.venv/bin/prefect worker start --pool edgeport`` runs the flows with the repo's ``.venv`` python.

Deploy from the command line::

    edgeport deploy [--pool edgeport] [--spec SPEC ...] [--cron "0 2 * * *"]
    python -m deployments.deploy [same options]
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeport.errors import DeploymentError, EdgeportError
from edgeport.spec import PipelineSpec, load_spec

__all__ = [
    "CHECKPOINT_EVENT",
    "DEFAULT_POOL",
    "EXAMPLE_SPECS",
    "NIGHTLY_CRON",
    "PIPELINE_COMPLETED_EVENT",
    "REPO_DIR",
    "DeploymentPlan",
    "apply_deployments",
    "ensure_work_pool",
    "plan_deployments",
]

#: The repository root: the code source of every deployment (pull step ``set_working_directory``).
REPO_DIR = Path(__file__).resolve().parents[1]

#: Work pool of the pipeline and promotion deployments (a Prefect ``process`` pool).
DEFAULT_POOL = "edgeport"

#: Nightly at 02:00 (server time zone UTC unless the schedule says otherwise).
NIGHTLY_CRON = "0 2 * * *"

#: Specs deployed when none is given.
EXAMPLE_SPECS = (REPO_DIR / "examples" / "digits" / "pipeline.yaml", REPO_DIR / "examples" / "minilm" / "pipeline.yaml")

#: Emitted by ``edgeport notify-checkpoint``; triggers ``<spec name>-on-checkpoint``.
CHECKPOINT_EVENT = "edgeport.checkpoint.created"

#: Emitted by the pipeline flow when it registered a challenger; triggers ``edgeport-promote/<model>``.
PIPELINE_COMPLETED_EVENT = "edgeport.pipeline.completed"

#: Entry points, relative to :data:`REPO_DIR`.
PIPELINE_ENTRYPOINT = "flows/pipeline.py:pipeline"
PROMOTE_ENTRYPOINT = "flows/promote.py:promote_flow"
REMOTE_BENCHMARK_ENTRYPOINT = "flows/remote_benchmark.py:remote_benchmark"


def checkpoint_resource_id(sha256: str) -> str:
    """Resource id of a :data:`CHECKPOINT_EVENT`: ``edgeport.checkpoint.<sha256[:12]>``."""
    return f"edgeport.checkpoint.{sha256[:12]}"


def registered_model_resource_id(name: str) -> str:
    """Resource id of a :data:`PIPELINE_COMPLETED_EVENT`: ``edgeport.registered-model.<name>``."""
    return f"edgeport.registered-model.{name}"


@dataclass
class DeploymentPlan:
    """One deployment to apply: which flow (entry point), its name, work pool, schedule, trigger
    and parameters. Plain data (no Prefect objects), so the plan can be listed and tested
    without a server; :func:`to_runner_deployment` turns it into Prefect's ``RunnerDeployment``."""

    flow_name: str
    name: str
    entrypoint: str
    work_pool: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    trigger: dict[str, Any] | None = None
    description: str = ""
    tags: list[str] = field(default_factory=list)
    concurrency_limit: int | None = None

    @property
    def full_name(self) -> str:
        """``<flow name>/<deployment name>``, as ``prefect deployment run`` and ``run_deployment`` take it."""
        return f"{self.flow_name}/{self.name}"


def _flow_parameters(entrypoint: str) -> set[str]:
    """Parameter names of the flow at ``entrypoint`` (imports the module)."""
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(REPO_DIR / entrypoint))
    return set(inspect.signature(flow.fn).parameters)


def plan_deployments(
    spec_paths: list[str | Path] | None = None,
    pool: str = DEFAULT_POOL,
    cron: str = NIGHTLY_CRON,
) -> list[DeploymentPlan]:
    """The deployments for ``spec_paths`` (default :data:`EXAMPLE_SPECS`).

    Args:
        spec_paths: pipeline specs; each must load.
        pool: work pool of the pipeline and promotion deployments.
        cron: schedule of the ``<spec name>-nightly`` deployments (cron syntax).

    Returns:
        Per spec: ``<name>-nightly``, ``<name>-on-checkpoint``; per registered model:
        ``edgeport-promote/<model>``; per work pool a target names: ``remote-benchmark-<pool>``.

    Raises:
        SpecError: a spec does not load.
        DeploymentError: two specs share a name (their checkpoint triggers would collide).
    """
    from flows.remote_benchmark import REMOTE_BENCHMARK_FLOW, remote_deployment_name

    specs: list[tuple[Path, PipelineSpec]] = []
    for p in spec_paths or EXAMPLE_SPECS:
        path = Path(p).expanduser().resolve()
        specs.append((path, load_spec(path)))
    names = [s.name for _, s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DeploymentError(f"specs share the name(s) {dupes}: each spec's checkpoint trigger matches on its name")
    nightly_params = {"rebenchmark": True} if "rebenchmark" in _flow_parameters(PIPELINE_ENTRYPOINT) else {}

    plans: list[DeploymentPlan] = []
    models: dict[str, Path] = {}
    pools: set[str] = set()
    for path, spec in specs:
        tags = ["edgeport", spec.name]
        plans.append(
            DeploymentPlan(
                flow_name="edgeport-pipeline",
                name=f"{spec.name}-nightly",
                entrypoint=PIPELINE_ENTRYPOINT,
                work_pool=pool,
                parameters={"spec_path": str(path), **nightly_params},
                cron=cron,
                description=f"Nightly run of {path} ({cron}).",
                tags=tags,
            )
        )
        plans.append(
            DeploymentPlan(
                flow_name="edgeport-pipeline",
                name=f"{spec.name}-on-checkpoint",
                entrypoint=PIPELINE_ENTRYPOINT,
                work_pool=pool,
                parameters={"spec_path": str(path)},
                trigger={
                    "expect": [CHECKPOINT_EVENT],
                    "match": {"prefect.resource.id": "edgeport.checkpoint.*", "edgeport.spec-name": spec.name},
                    "parameters": {"spec_path": str(path), "checkpoint": "{{ event.payload.checkpoint }}"},
                },
                description=f"Runs {path} on the checkpoint of each {CHECKPOINT_EVENT} event naming spec {spec.name}.",
                tags=tags,
            )
        )
        models.setdefault(spec.registry.registered_model, path)
        pools.update(t.work_pool for t in spec.targets if t.work_pool)
    for model, path in models.items():
        plans.append(
            DeploymentPlan(
                flow_name="edgeport-promote",
                name=model,
                entrypoint=PROMOTE_ENTRYPOINT,
                work_pool=pool,
                parameters={"registered_model": model, "spec_path": str(path)},
                trigger={
                    "expect": [PIPELINE_COMPLETED_EVENT],
                    "match": {"prefect.resource.id": registered_model_resource_id(model)},
                    "parameters": {
                        "registered_model": "{{ event.payload.registered_model }}",
                        "version": "{{ event.payload.version }}",
                        "tracking_uri": "{{ event.payload.tracking_uri }}",
                        "spec_path": "{{ event.payload.spec_path }}",
                    },
                },
                description=f"Promotion gate of registered model {model}, on each {PIPELINE_COMPLETED_EVENT} event.",
                tags=["edgeport", model],
            )
        )
    for remote_pool in sorted(pools):
        plans.append(
            DeploymentPlan(
                flow_name=REMOTE_BENCHMARK_FLOW,
                name=remote_deployment_name(remote_pool),
                entrypoint=REMOTE_BENCHMARK_ENTRYPOINT,
                work_pool=remote_pool,
                description=f"Benchmarks of targets with work_pool {remote_pool}, run by a worker of that pool.",
                tags=["edgeport", f"pool:{remote_pool}"],
            )
        )
    return plans


def to_runner_deployment(plan: DeploymentPlan, source: Path = REPO_DIR) -> Any:
    """Prefect's ``RunnerDeployment`` for ``plan``: ``flow.from_source(source, entrypoint)
    .to_deployment(...)`` (imports the flow's module to read its parameter schema)."""
    from prefect import flow
    from prefect.events import DeploymentEventTrigger

    loaded = flow.from_source(source=str(source), entrypoint=plan.entrypoint)
    triggers = [DeploymentEventTrigger(name=f"{plan.full_name}: {', '.join(plan.trigger['expect'])}", **plan.trigger)] if plan.trigger else None
    return loaded.to_deployment(
        name=plan.name,
        work_pool_name=plan.work_pool,
        cron=plan.cron,
        triggers=triggers,
        parameters=plan.parameters,
        description=plan.description,
        tags=plan.tags,
        concurrency_limit=plan.concurrency_limit,
    )


def ensure_work_pool(name: str) -> bool:
    """Create the Prefect ``process`` work pool ``name`` unless it exists.

    Returns:
        True when it was created.

    Raises:
        DeploymentError: the pool exists with another type, or the Prefect API refused.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
            )
            return True
    if existing.type != "process":
        raise DeploymentError(f"work pool {name!r} exists with type {existing.type!r}; edgeport deploys to process pools")
    return False


def apply_deployments(plans: list[DeploymentPlan], source: Path = REPO_DIR) -> list[dict[str, Any]]:
    """Create the work pools and create/update the deployments (idempotent: re-applying replaces
    a deployment's schedule and trigger automations).

    Returns:
        One ``{"deployment", "id", "work_pool", "pool_created", "cron", "trigger"}`` per plan.

    Raises:
        DeploymentError: no Prefect API to deploy to, or it refused a deployment.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise DeploymentError(
            "no Prefect server: set PREFECT_API_URL or start one with `edgeport servers up` "
            "(deployments on an ephemeral server would vanish with it)"
        )
    created: dict[str, bool] = {}
    out = []
    for plan in plans:
        try:
            if plan.work_pool not in created:
                created[plan.work_pool] = ensure_work_pool(plan.work_pool)
            deployment_id = to_runner_deployment(plan, source).apply(work_pool_name=plan.work_pool)
        except EdgeportError:
            raise
        except Exception as exc:  # Prefect's HTTP / apply errors: one clear message
            raise DeploymentError(f"deployment {plan.full_name}: {type(exc).__name__}: {exc}") from exc
        out.append(
            {
                "deployment": plan.full_name,
                "id": str(deployment_id),
                "work_pool": plan.work_pool,
                "pool_created": created[plan.work_pool],
                "cron": plan.cron,
                "trigger": ", ".join(plan.trigger["expect"]) if plan.trigger else None,
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m deployments.deploy``: apply the deployments (see the module docstring)."""
    from edgeport.runtime_env import configure_runtime_env

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", action="append", type=Path, help="pipeline spec (repeatable; default: the examples)")
    parser.add_argument("--pool", default=DEFAULT_POOL, help=f"work pool (default {DEFAULT_POOL})")
    parser.add_argument("--cron", default=NIGHTLY_CRON, help=f"nightly schedule (default {NIGHTLY_CRON!r})")
    args = parser.parse_args(argv)
    configure_runtime_env()
    for row in apply_deployments(plan_deployments(args.spec, args.pool, args.cron)):
        print(f"{row['deployment']}  pool={row['work_pool']}  cron={row['cron']}  trigger={row['trigger']}")


if __name__ == "__main__":
    main()
