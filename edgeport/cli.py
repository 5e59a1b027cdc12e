"""The ``edgeport`` command line.

Exit codes of ``edgeport run``: 0 a challenger was registered; 2 the pipeline completed
but no variant passed its gates (nothing registered); 1 an error (message only, the
traceback with ``--debug``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeport.cli_common import console, err_console, fail
from edgeport.errors import EdgeportError
from edgeport.home import configure_runtime_env, default_output_dir, edgeport_home
from edgeport.records import RunSummary, summary_json_schema
from edgeport.render import search_line, summary_table

app = typer.Typer(
    name="edgeport",
    help="Checkpoint -> validated, quantized, benchmarked ONNX variants -> MLflow registry, as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
from edgeport.cli_bench import register as _register_bench  # noqa: E402
from edgeport.cli_targets import targets_app  # noqa: E402

app.add_typer(targets_app, name="targets", help="Hardware targets: list the profiles, set up managed environments.")
from edgeport.cli_servers import servers_app  # noqa: E402

app.add_typer(servers_app, name="servers", help="Local MLflow + Prefect servers: up, status, env, down.")
_register_bench(app)
from edgeport.cli_service import register as _register_service  # noqa: E402

_register_service(app)
from edgeport.cli_registry import register as _register_registry  # noqa: E402

_register_registry(app)


EXIT_OK, EXIT_ERROR, EXIT_NO_CHALLENGER = 0, 1, 2


def _quiet_tracebacks() -> None:
    """Keep Prefect's console log lines but drop the tracebacks they carry: the CLI prints one
    clean error line instead (``--debug`` keeps them). Only Prefect's console formatter
    (``PrefectFormatter``, from its logging.yml) changes; the handler that ships logs to the
    Prefect API formats with its own formatter, so the UI still shows the traceback."""
    from prefect.logging.formatters import PrefectFormatter

    original = PrefectFormatter.format

    def format_without_traceback(self: PrefectFormatter, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None  # exc_text: another handler may have cached it
        try:
            return original(self, record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved

    PrefectFormatter.format = format_without_traceback  # type: ignore[method-assign]


def print_summary(summary: dict) -> None:
    """Print the variants of a summary (:func:`edgeport.render.summary_table`), the search and the challenger."""
    record = RunSummary.model_validate(summary)
    console.print(summary_table(record))
    if record.search:  # the quantization search (flows/search.py)
        console.print(search_line(record.search), soft_wrap=True)
    ch = record.challenger
    if ch:
        console.print(f"[green]challenger[/]: {record.registered_model} version {ch.version} ({ch.variant})")
    else:
        console.print("[yellow]no variant passed its gates: nothing registered[/]")


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder (default $EDGEPORT_HOME/outputs/<name>).")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (overrides the spec).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Run the pipeline flow for SPEC and write summary.json."""
    configure_runtime_env()
    from edgeport.spec import load_spec

    try:
        parsed = load_spec(spec)
    except EdgeportError as exc:
        fail(exc, debug)
    out = (output or default_output_dir(parsed.name)).resolve()
    from flows.pipeline import pipeline

    if not debug:
        _quiet_tracebacks()
    try:
        summary = pipeline(str(spec.resolve()), output_dir=str(out), tracking_uri=tracking_uri)
    except EdgeportError as exc:
        fail(exc, debug)
    except Exception as exc:  # an unexpected failure: still a message, not a traceback
        fail(exc, debug)
    print_summary(summary)
    console.print(f"summary: {out / 'summary.json'}")
    raise typer.Exit(EXIT_OK if summary["challenger"] else EXIT_NO_CHALLENGER)


@app.command("validate-spec")
def validate_spec(spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML).")]) -> None:
    """Validate SPEC and print it with defaults filled in."""
    from edgeport.spec import load_spec

    try:
        parsed = load_spec(spec)
    except EdgeportError as exc:
        fail(exc, False)
    console.print_json(parsed.model_dump_json())
    err_console.print(f"[green]valid[/]: {spec}")


@app.command()
def schema(
    summary: Annotated[bool, typer.Option("--summary", help="The schema of summary.json instead of the spec's.")] = False,
) -> None:
    """Print the JSON schema of the pipeline spec (or, with --summary, of summary.json)."""
    from edgeport.spec import PipelineSpec

    document = summary_json_schema() if summary else PipelineSpec.model_json_schema()
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


@app.command()
def home() -> None:
    """Print EDGEPORT_HOME and the default stores under it."""
    from edgeport.home import default_artifact_root, default_tracking_uri

    console.print(f"EDGEPORT_HOME      {edgeport_home()}")
    console.print(f"MLflow tracking    {default_tracking_uri()}")
    console.print(f"MLflow artifacts   {default_artifact_root()}")
    console.print(f"PREFECT_HOME       {edgeport_home() / 'prefect'}")


if __name__ == "__main__":  # pragma: no cover
    app()
