"""The ``edgeport`` command line.

Exit codes of ``edgeport run``: 0 a challenger was registered; 2 the pipeline completed
but no variant passed its gates (nothing registered); 1 an error (message only, the
traceback with ``--debug``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from edgeport.cli_common import console, err_console, fail
from edgeport.errors import EdgeportError
from edgeport.home import configure_runtime_env, default_output_dir, edgeport_home
from edgeport.targets import ENV_SETUP_VAR

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
from edgeport.cli_init import register as _register_init  # noqa: E402

_register_init(app)


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
    """Render the variants of a summary as a rich table; the metric columns are named after
    the evaluation metric (``top-1`` / ``drop pp``, ``cosine`` / ``cosine drop``)."""
    table = Table(title=f"edgeport: {summary.get('name', '')}")
    metric = next((v["evaluation"]["metric"] for v in summary["variants"] if v.get("evaluation")), "top1")
    top1 = metric == "top1"
    value_col, drop_col = ("top-1", "drop pp") if top1 else (metric, f"{metric} drop")
    cols = ("variant", "kind", "size KB", "valid", value_col, drop_col, "target", "batch", "status", "p50 ms", "p99 ms", "samples/s", "passed", "version")
    for col in cols:
        table.add_column(col, justify="left" if col in ("variant", "kind", "target", "status") else "right")

    def number(x: float | None, fmt: str) -> str:
        return "-" if x is None or x != x else format(x, fmt)  # x != x: NaN

    for v in summary["variants"]:
        ev = v.get("evaluation") or {}
        rows = v["benchmarks"] or [None]
        for i, bench in enumerate(rows):
            first = i == 0
            measured = bench is not None and bench.get("p50_ms") is not None
            table.add_row(
                v["name"] if first else "",
                v["kind"] if first else "",
                f"{v['size_bytes'] / 1024:.1f}" if first else "",
                ("yes" if (v.get("validation") or {}).get("passed") else "NO") if first else "",
                (number(ev.get("value"), ".4f") if ev else "-") if first else "",
                (
                    (number(100 * ev["drop"], ".2f") if top1 else number(ev["drop"], ".4f")) if ev and ev.get("drop") is not None else "-"
                ) if first else "",
                bench["target"] if bench else "-",
                str(bench["batch_size"]) if bench else "-",
                bench["status"] if bench else "-",
                f"{bench['p50_ms']:.3f}" if measured else "-",
                f"{bench['p99_ms']:.3f}" if measured else "-",
                f"{bench['throughput']:.0f}" if measured else "-",
                ("yes" if v["passed"] else "no") if first else "",
                str(v.get("model_version") or "-") if first else "",
            )
    console.print(table)
    search = summary.get("search")
    if search:  # the quantization search (tasks/search.py)
        won = search.get("winner")
        console.print(
            f"search {search['search_id']}: {len(search['trials'])} trials ({search['stopped']}); "
            + (
                f"winner {won['trial_id']} as {search['name']} ({search['metric']} {won['quality']:.4f}, p50 {won['p50_ms']:.3f} ms)"
                if won
                else "[yellow]no configuration meets the quality budget[/]"
            ),
            soft_wrap=True,
        )
    ch = summary.get("challenger")
    if ch:
        console.print(f"[green]challenger[/]: {summary['registered_model']} version {ch['version']} ({ch['variant']})")
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


@app.command()
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
) -> None:
    """Run the pipeline flow for SPEC and write summary.json.

    A target whose managed environment is missing gets it created first (pinned, with a
    progress display), unless --no-env-setup; a failed setup makes that target
    `unavailable`, never a failed run."""
    from edgeport.checks import check_inputs
    from edgeport.spec import load_spec

    try:  # the spec, files and data, before Prefect or MLflow is touched
        parsed = load_spec(spec)
        check_inputs(parsed, output_dir=output)
    except EdgeportError as exc:
        fail(exc, debug)
    configure_runtime_env()
    out = (output or default_output_dir(parsed.name)).resolve()
    from flows.pipeline import pipeline

    if not debug:
        _quiet_tracebacks()
    previous = os.environ.get(ENV_SETUP_VAR)
    if no_env_setup:  # read by the flow's preflight (edgeport.targets.env_setup_enabled)
        os.environ[ENV_SETUP_VAR] = "never"
    try:
        summary = pipeline(str(spec.resolve()), output_dir=str(out), tracking_uri=tracking_uri)
    except EdgeportError as exc:
        fail(exc, debug)
    except Exception as exc:  # an unexpected failure: still a message, not a traceback
        fail(exc, debug)
    finally:
        if no_env_setup:  # an in-process caller (tests) keeps its own setting
            if previous is None:
                os.environ.pop(ENV_SETUP_VAR, None)
            else:
                os.environ[ENV_SETUP_VAR] = previous
    print_summary(summary)
    console.print(f"summary: {out / 'summary.json'}")
    raise typer.Exit(EXIT_OK if summary["challenger"] else EXIT_NO_CHALLENGER)


@app.command("validate-spec")
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


@app.command()
def schema() -> None:
    """Print the JSON schema of the pipeline spec."""
    from edgeport.spec import PipelineSpec

    sys.stdout.write(json.dumps(PipelineSpec.model_json_schema(), indent=2) + "\n")


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
