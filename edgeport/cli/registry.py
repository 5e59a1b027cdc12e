"""``edgeport promote`` and ``edgeport rollback``: move the ``champion`` alias of a registered model.

Both run a Prefect flow (``edgeport-promote``, ``edgeport-rollback`` from :mod:`flows.promote`),
so each decision shows in the Prefect UI with its markdown artifact, and both hold the model's
promotion slot (a Prefect global concurrency limit)::

    edgeport promote digits-cnn                      # the version behind `challenger`
    edgeport promote digits-cnn --version 7 --target cpu-1t --batch-size 1
    edgeport promote digits-cnn --spec examples/digits/pipeline.yaml   # its registry.promotion gate
    edgeport rollback digits-cnn
    edgeport promote digits-cnn --target cpu-1t      # challenger-cpu-1t -> champion-cpu-1t, compared on cpu-1t
    edgeport rollback digits-cnn --target cpu-1t

Exit codes of ``promote``: 0 promoted; 2 rejected by the gate (the reason is printed; no alias
changed); 1 error (unknown model/version/alias, metrics missing for the target and batch size,
MLflow unreachable, bad spec). ``rollback``: 0 rolled back; 1 error (e.g. no previous champion).

Mounted by the main CLI with :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgeport.cli.common import console, err_console, fail, quiet_tracebacks
from edgeport.cli.interrupts import interruptible
from edgeport.errors import EdgeportError
from edgeport.runtime_env import configure_runtime_env

__all__ = ["print_decision", "promote", "register", "rollback"]

EXIT_PROMOTED, EXIT_ERROR, EXIT_REJECTED = 0, 1, 2


def _prepare(debug: bool) -> None:
    configure_runtime_env()
    if not debug:
        quiet_tracebacks()


def print_decision(decision: dict[str, Any]) -> None:
    """The comparison table (candidate vs champion) and the checks of a decision dict."""
    cand, champ = decision["candidate"], decision.get("champion")
    table = Table(
        title=f"promotion of {decision['registered_model']}: target {decision['target']}, batch {decision['batch_size']}"
    )
    table.add_column("")
    table.add_column("candidate", justify="right")
    table.add_column("champion", justify="right")

    def cell(rec: dict | None, key: str, fmt: str = "") -> str:
        if rec is None or rec.get(key) is None:
            return "-"
        return format(rec[key], fmt) if fmt else str(rec[key])

    table.add_row("version", cell(cand, "version"), cell(champ, "version") if champ else "none")
    table.add_row("variant", cell(cand, "variant"), cell(champ, "variant"))
    table.add_row("p50 ms", cell(cand, "p50_ms", ".4f"), cell(champ, "p50_ms", ".4f"))
    table.add_row("95% CI of p50 ± %", cell(cand, "ci_halfwidth_pct", ".2f"), cell(champ, "ci_halfwidth_pct", ".2f"))
    table.add_row("validation", "passed" if cand["validation_passed"] else "FAILED",
                  "-" if champ is None else ("passed" if champ["validation_passed"] else "FAILED"))
    table.add_row(cand.get("metric") or "quality", cell(cand, "metric_value", ".4f"), cell(champ, "metric_value", ".4f"))
    if decision.get("change_pct") is not None:
        table.add_row("p50 change", f"{decision['change_pct']:+.1f}%", "")
    console.print(table)
    for check in decision["checks"]:
        mark = "[green]ok[/]" if check["passed"] else "[red]FAIL[/]"
        console.print(f"  {mark} {check['name']}: {escape(check['detail'])}", soft_wrap=True)
    if decision["accepted"]:
        prev = decision.get("previous_champion_version")
        champion = decision.get("champion_alias", "champion")
        tail = f"; {decision.get('previous_champion_alias', 'previous-champion')} -> version {prev}" if prev else ""
        console.print(f"[green]promoted[/]: {decision['registered_model']} {champion} -> version {decision['candidate_version']}{tail}")
    else:
        console.print(f"[yellow]not promoted[/] (no alias changed): {escape(decision['reason'])}", soft_wrap=True)


def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str | None, typer.Option("--version", "-v", help="Candidate model version.")] = None,
    alias: Annotated[str | None, typer.Option("--alias", "-a", help="Alias naming the candidate (default challenger).")] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Promote to champion-TARGET (candidate default challenger-TARGET), compared on TARGET."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, help="Batch size to compare at.")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Pipeline spec whose registry.promotion sets the gate.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Promote a version of MODEL to `champion` (with --target T: `champion-T`, compared on T) if it passes
    the gate (quality, validation, p50 vs the champion)."""
    if version is not None and alias is not None:
        err_console.print("[bold red]error:[/] give --version or --alias, not both")
        raise typer.Exit(EXIT_ERROR)
    configure_runtime_env()

    try:
        with interruptible(  # Ctrl-C/SIGTERM: 130/143
            f"edgeport promote {model}", f"re-run `edgeport promote {model}` to decide again", server_in_background=True
        ) as wait_for_server:
            # imported while the run's Prefect server starts
            from flows.promote import promote_flow

            if not debug:  # imports Prefect: after the run's Prefect server started (it sets PREFECT_API_URL)
                quiet_tracebacks()
            wait_for_server()
            decision = promote_flow(
                model,
                version=version,
                alias=alias,
                target=target,
                batch_size=batch_size,
                tracking_uri=tracking_uri,
                spec_path=str(spec.expanduser().resolve()) if spec else None,
                per_target=target is not None,
            )
    except typer.Exit:  # interrupted
        raise
    except EdgeportError as exc:
        fail(exc, debug)
    except Exception as exc:  # noqa: BLE001 - unexpected: still a message, not a traceback
        fail(exc, debug)
    print_decision(decision)
    raise typer.Exit(EXIT_PROMOTED if decision["accepted"] else EXIT_REJECTED)


def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Pipeline spec (for its registry.tracking_uri).")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Roll back champion-TARGET instead of champion.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Move `champion` (with --target T: `champion-T`) of MODEL back to the version behind
    `previous-champion` (`previous-champion-T`); that alias is then removed."""
    _prepare(debug)
    from flows.promote import rollback_flow

    try:
        result = rollback_flow(
            model, tracking_uri=tracking_uri, spec_path=str(spec.expanduser().resolve()) if spec else None, target=target
        )
    except Exception as exc:  # noqa: BLE001 - EdgeportError or unexpected: a message, not a traceback
        fail(exc, debug)
    console.print(
        f"[green]rolled back[/]: {model} {result['champion_alias']} version {result['from_version']} -> version "
        f"{result['to_version']}; {result['previous_champion_alias']} removed"
    )
    raise typer.Exit(EXIT_PROMOTED)


def register(app: typer.Typer) -> None:
    """Add ``promote`` and ``rollback`` to ``app`` (the main CLI: ``register(app)`` in edgeport/cli/__init__.py)."""
    app.command("promote")(promote)
    app.command("rollback")(rollback)
