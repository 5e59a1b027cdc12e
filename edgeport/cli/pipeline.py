"""``edgeport run``, ``validate-spec``, ``schema`` and ``home``: the pipeline's own commands.

Exit codes of ``edgeport run``: 0 a challenger was registered; 2 the pipeline completed
but no variant passed its gates (nothing registered); 1 an error (message only, the
traceback with ``--debug``). When Prefect's API goes away after the registration completed
(``summary.json`` of this run says ``registration: done`` and the registry holds its versions),
the run is reported from those with a warning, not as an error
(:func:`completed_despite_orchestrator`).
Interrupted by Ctrl-C / SIGTERM: exit 130 / 143 (:mod:`edgeport.cli.interrupts`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.markup import escape

from edgeport.cli.common import console, err_console, fail, quiet_tracebacks
from edgeport.cli.interrupts import interruptible
from edgeport.errors import EdgeportError
from edgeport.home import (
    default_artifact_root,
    default_output_dir,
    default_tracking_uri,
    edgeport_home,
)
from edgeport.records import RunSummary, summary_json_schema
from edgeport.render import search_line, summary_table
from edgeport.runtime_env import configure_runtime_env
from edgeport.targets import ENV_SETUP_VAR

EXIT_OK, EXIT_ERROR, EXIT_NO_CHALLENGER = 0, 1, 2


def print_summary(summary: dict) -> None:
    """Print the variants of a summary (:func:`edgeport.render.summary_table`), the search and the challenger."""
    record = RunSummary.model_validate(summary)
    console.print(summary_table(record))
    if record.search:  # the quantization search (flows/search.py)
        console.print(search_line(record.search), soft_wrap=True)
    ch = record.challenger
    reused = [f"{v.name} (version {v.model_version})" for v in record.variants if v.reused]
    if reused:  # idempotent registration (docs/spec.md#idempotent-registration)
        console.print(
            f"identical to existing versions, reused (no new version): {', '.join(reused)}; --register-always registers anew",
            soft_wrap=True,
        )
    if ch:
        console.print(f"[green]challenger[/]: {record.registered_model} version {ch.version} ({ch.variant})")
    else:
        console.print(f"[yellow]no variant passed its gates: nothing registered[/] ({escape(why_nothing_passed(summary))})", soft_wrap=True)


def why_nothing_passed(summary: dict) -> str:
    """Why each variant of a summary failed: validation, the quality gate, or no ``ok`` benchmark
    (a benchmark that fell back names the provider that was not bound)."""
    reasons: dict[str, list[str]] = {}
    for v in summary["variants"]:
        ev = v.get("evaluation")
        if v.get("not_registered"):
            why = v["not_registered"]
        elif not (v.get("validation") or {}).get("passed"):
            why = "failed validation"
        elif ev and not ev.get("passed"):
            why = "failed the quality gate"
        else:
            bad = [b for b in v["benchmarks"] if b.get("status") != "ok"]
            why = (
                "; ".join(dict.fromkeys(f"target {b['target']}: {b['status']} ({b.get('error') or 'no error recorded'})" for b in bad))
                if bad else "no ok benchmark on the first target at the primary batch size"
            )
        reasons.setdefault(why, []).append(v["name"])
    return "; ".join(f"{', '.join(names)}: {why}" for why, names in reasons.items())


def orchestrator_gone(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a lost connection: an
    ``httpx.TransportError`` (refused, reset, timed out) or a ``ConnectionError``, as Prefect's
    client raises when its API server is gone."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (httpx.TransportError, ConnectionError)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def completed_despite_orchestrator(out: Path, started: float, exc: BaseException) -> dict[str, Any] | None:
    """The summary of a run whose work completed although the flow failed afterwards because
    Prefect's API went away (the embedded server died after the registration), else None.

    It is that summary only when all hold: ``exc`` is a lost connection (:func:`orchestrator_gone`);
    ``out/summary.json`` was written by this run (modified at or after ``started``, a
    ``time.time()`` taken before the flow began) and says ``registration: done``; and the
    registry (its ``tracking_uri``) holds every model version it names. Anything else (an
    earlier run's summary, a pending registration, versions missing, MLflow unreachable): None,
    and the caller reports the error.
    """
    path = out / "summary.json"
    if not orchestrator_gone(exc) or not path.is_file() or path.stat().st_mtime < started:
        return None
    # MLflow is heavy (3-5 s to import): only this path needs it, every other command starts without it
    from edgeport.registry import registry_client, version_exists

    try:
        summary = json.loads(path.read_text())
        if summary.get("registration") != "done":
            return None
        client = registry_client(summary["tracking_uri"])
        versions = {v["model_version"] for v in summary["variants"] if v.get("model_version")}
        if not all(version_exists(client, summary["registered_model"], version) for version in versions):
            return None
    except (OSError, ValueError, KeyError, TypeError, EdgeportError):
        return None
    return summary


def run(
    spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder (default $EDGEPORT_HOME/outputs/<name>).")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (overrides the spec).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    no_env_setup: Annotated[
        bool,
        typer.Option(
            "--no-env-setup",
            help="Do not create missing managed environments (the OpenVINO EP's): record their targets as "
            "`unavailable`, with the command that sets them up, and run the others.",
        ),
    ] = False,
    register_always: Annotated[
        bool,
        typer.Option(
            "--register-always",
            help="Register every passing variant as a new model version, even when an identical version exists "
            "(default: reuse it; the spec's registry.register_always).",
        ),
    ] = False,
) -> None:
    """Run the pipeline flow for SPEC and write summary.json.

    A target whose managed environment is missing gets it created first (pinned, with a
    progress display), unless --no-env-setup; a failed setup makes that target
    `unavailable`, never a failed run."""
    from edgeport.checks import check_inputs
    from edgeport.spec import load_spec

    command = f"edgeport run {spec}" + (f" --output {output}" if output else "")
    resume = f"resume with `{command}` (cached steps are reused)"
    try:  # the spec, files and data, before Prefect or MLflow is touched
        with interruptible(command, resume, prefect_server=False):
            parsed = load_spec(spec)
            check_inputs(parsed, output_dir=output)
    except EdgeportError as exc:
        fail(exc, debug)
    configure_runtime_env()
    out = (output or default_output_dir(parsed.name)).resolve()
    previous = os.environ.get(ENV_SETUP_VAR)
    if no_env_setup:  # read by the flow's preflight (edgeport.targets.env_setup_enabled)
        os.environ[ENV_SETUP_VAR] = "never"
    started = time.time()
    try:
        with interruptible(command, resume, cleaned="; nothing half-registered is kept", server_in_background=True) as wait_for_server:
            # imported while Prefect's server starts in its own process (docs/benchmarks.md, "Warm
            # re-run"); here, so that a Ctrl-C during this import (seconds) is an interrupt too
            from flows.pipeline import pipeline

            if not debug:  # imports Prefect: after the run's Prefect server started (it sets PREFECT_API_URL)
                quiet_tracebacks()
            wait_for_server()
            summary = pipeline(str(spec.resolve()), output_dir=str(out), tracking_uri=tracking_uri, register_always=register_always)
    except typer.Exit:  # interrupted
        raise
    except EdgeportError as exc:
        fail(exc, debug)
    except Exception as exc:  # an unexpected failure: still a message, not a traceback
        summary = completed_despite_orchestrator(out, started, exc)
        if summary is None:
            fail(exc, debug)
        err_console.print(
            f"[yellow]warning[/]: Prefect's API went away after the registration completed "
            f"({escape(type(exc).__name__)}: {escape(str(exc).splitlines()[0] if str(exc) else '')}); the flow run may "
            "still show as running. The result below is this run's summary.json, checked against the registry.",
            soft_wrap=True,
        )
    finally:
        if no_env_setup:  # an in-process caller (tests) keeps its own setting
            if previous is None:
                os.environ.pop(ENV_SETUP_VAR, None)
            else:
                os.environ[ENV_SETUP_VAR] = previous
    print_summary(summary)
    console.print(f"summary: {out / 'summary.json'}")
    raise typer.Exit(EXIT_OK if summary["challenger"] else EXIT_NO_CHALLENGER)


def validate_spec(spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML).")]) -> None:
    """Validate SPEC, its files and data (the checks `edgeport run` makes first), and print it with defaults filled in."""
    from edgeport.checks import check_inputs
    from edgeport.spec import load_spec

    try:
        parsed = load_spec(spec)
        check_inputs(parsed)
    except EdgeportError as exc:
        fail(exc, False)
    console.print_json(parsed.model_dump_json())
    err_console.print(f"[green]valid[/]: {spec}")


def schema(
    summary: Annotated[bool, typer.Option("--summary", help="The schema of summary.json instead of the spec's.")] = False,
) -> None:
    """Print the JSON schema of the pipeline spec (or, with --summary, of summary.json)."""
    from edgeport.spec import PipelineSpec

    document = summary_json_schema() if summary else PipelineSpec.model_json_schema()
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def home() -> None:
    """Print EDGEPORT_HOME and the default stores under it."""
    console.print(f"EDGEPORT_HOME      {edgeport_home()}")
    console.print(f"MLflow tracking    {default_tracking_uri()}")
    console.print(f"MLflow artifacts   {default_artifact_root()}")
    console.print(f"PREFECT_HOME       {edgeport_home() / 'prefect'}")


def register(app: typer.Typer) -> None:
    """Add ``run``, ``validate-spec``, ``schema`` and ``home`` to the main ``edgeport`` app."""
    app.command("run")(run)
    app.command("validate-spec")(validate_spec)
    app.command("schema")(schema)
    app.command("home")(home)
