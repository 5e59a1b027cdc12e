"""``edgeport deploy`` and ``edgeport notify-checkpoint``: edgeport as a service on a Prefect server.

Registered on the main CLI by :func:`register`; both need a Prefect server: ``PREFECT_API_URL``,
else the one ``edgeport servers up`` started (:func:`edgeport.runtime_env.configure_runtime_env`).

    edgeport deploy [--pool edgeport] [--spec SPEC ...] [--cron "0 2 * * *"]
        create the work pools and apply the deployments of :mod:`deployments.deploy`
    edgeport notify-checkpoint PATH --spec SPEC
        emit ``edgeport.checkpoint.created`` (a training job calls it when it saved PATH): the
        ``<spec name>-on-checkpoint`` deployment then runs the pipeline on PATH

Exit codes: 0 success; 1 an error (missing file, invalid spec, no Prefect server, refused).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgeport.cli.common import console, fail
from edgeport.errors import CheckpointError, DeploymentError, EdgeportError

__all__ = ["emit_checkpoint_created", "emit_confirmed", "register"]


#: Seconds to wait for the Prefect server to take the event.
EMIT_TIMEOUT_S = 30.0


def _require_prefect_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise DeploymentError(
            "no Prefect server: set PREFECT_API_URL or start one with `edgeport servers up` "
            "(an ephemeral server would drop the event and the deployments with it)"
        )
    return url


async def emit_confirmed(event: Any) -> None:
    """Send ``event`` over Prefect's events websocket and wait for the server to acknowledge it.

    ``checkpoint_every=1``: the client pings after the event and waits for the pong, so the
    server has read the event before this returns (the websocket is ordered). ``emit_event``
    instead queues it in a background worker a short-lived process may exit before flushing.
    """
    from prefect.events.clients import PrefectEventsClient

    async with PrefectEventsClient(reconnection_attempts=2, checkpoint_every=1) as client:
        await client.emit(event)


def emit_checkpoint_created(checkpoint: str | Path, spec_path: str | Path) -> dict[str, Any]:
    """Emit the ``edgeport.checkpoint.created`` event for ``checkpoint`` and wait until the
    Prefect server has it.

    Event: resource ``{"prefect.resource.id": "edgeport.checkpoint.<sha256[:12]>",
    "prefect.resource.name": <file name>, "edgeport.spec-name": <spec name>}`` (the
    ``<spec name>-on-checkpoint`` trigger matches the label); payload ``checkpoint`` (absolute
    path), ``spec`` (absolute path), ``sha256`` (of the checkpoint file, hex), ``spec_name``.

    Returns:
        ``{"event_id", "event", "resource", "payload"}``.

    Raises:
        CheckpointError: ``checkpoint`` is not a file.
        SpecError: the spec does not load.
        DeploymentError: no Prefect server (``PREFECT_API_URL`` unset) or it did not take the event.
    """
    from prefect.events import Event

    from deployments.deploy import CHECKPOINT_EVENT, checkpoint_resource_id
    from edgeport.files import file_sha256
    from edgeport.spec import load_spec

    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise CheckpointError(f"checkpoint: file not found: {path}")
    spec_file = Path(spec_path).expanduser().resolve()
    spec = load_spec(spec_file)
    url = _require_prefect_api()
    sha = file_sha256(path)
    event = Event(
        event=CHECKPOINT_EVENT,
        resource={
            "prefect.resource.id": checkpoint_resource_id(sha),
            "prefect.resource.name": path.name,
            "edgeport.spec-name": spec.name,
        },
        payload={"checkpoint": str(path), "spec": str(spec_file), "sha256": sha, "spec_name": spec.name},
    )
    try:
        asyncio.run(asyncio.wait_for(emit_confirmed(event), EMIT_TIMEOUT_S))
    except Exception as exc:
        raise DeploymentError(f"Prefect server {url} did not take the event {CHECKPOINT_EVENT}: {type(exc).__name__}: {exc}") from exc
    return {"event_id": str(event.id), "event": event.event, "resource": dict(event.resource), "payload": event.payload}


def register(app: typer.Typer) -> None:
    """Add ``deploy`` and ``notify-checkpoint`` to the main ``edgeport`` app."""

    @app.command("deploy")
    def deploy(
        spec: Annotated[
            list[Path] | None, typer.Option("--spec", metavar="SPEC", help="Pipeline spec (repeatable; default: examples/digits and examples/minilm).")
        ] = None,
        pool: Annotated[str, typer.Option("--pool", help="Process work pool of the pipeline and promotion deployments.")] = "edgeport",
        cron: Annotated[str, typer.Option("--cron", help="Schedule of the nightly deployments (cron).")] = "0 2 * * *",
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    ) -> None:
        """Create the work pools and apply the deployments (schedules, checkpoint and promotion triggers,
        remote benchmarks). Start a worker with `prefect worker start --pool POOL`."""
        from edgeport.runtime_env import configure_runtime_env

        configure_runtime_env()
        from deployments.deploy import apply_deployments, plan_deployments

        try:
            _require_prefect_api()
            rows = apply_deployments(plan_deployments(spec, pool, cron))
        except EdgeportError as exc:
            fail(exc, debug)
        table = Table(title="edgeport deployments")
        for col in ("deployment", "work pool", "schedule", "trigger"):
            table.add_column(col)
        for row in rows:
            pool_note = f"{row['work_pool']} (created)" if row["pool_created"] else row["work_pool"]
            table.add_row(row["deployment"], pool_note, row["cron"] or "-", row["trigger"] or "-")
        console.print(table)
        for p in sorted({r["work_pool"] for r in rows}):
            console.print(f"worker: .venv/bin/prefect worker start --pool {p}")

    @app.command("notify-checkpoint")
    def notify_checkpoint(
        path: Annotated[Path, typer.Argument(help="The new PyTorch checkpoint.")],
        spec: Annotated[Path, typer.Option("--spec", help="Pipeline spec the checkpoint is for.")],
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    ) -> None:
        """Emit `edgeport.checkpoint.created` for PATH: the deployment `<spec name>-on-checkpoint`
        runs the pipeline on it."""
        from edgeport.runtime_env import configure_runtime_env

        configure_runtime_env()
        try:
            sent = emit_checkpoint_created(path, spec)
        except EdgeportError as exc:
            fail(exc, debug)
        console.print(
            f"emitted {sent['event']} {sent['resource']['prefect.resource.id']} "
            f"(spec {sent['payload']['spec_name']}, event id {sent['event_id']})",
            highlight=False,
        )
