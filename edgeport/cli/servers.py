"""``edgeport servers``: a local MLflow tracking server and Prefect server (see :mod:`edgeport.servers`).

Mounted by the main CLI as ``app.add_typer(servers_app, name="servers")``; also runs alone
as ``python -m edgeport.cli.servers``.

    edgeport servers up [--host H] [--mlflow-port P] [--prefect-port P] [--timeout S]
    edgeport servers status [--json]     health of each server (exit 1 when not running)
    edgeport servers env                 `export` lines for a shell: eval "$(edgeport servers env)"
    edgeport servers down                stop both, no process left

Exit codes: 0 success; 1 an error (port in use, start-up failure with the log tail, not running).
"""

from __future__ import annotations

import json
import shlex
from typing import Annotated

import typer
from rich.table import Table

from edgeport.cli.common import console, fail
from edgeport.errors import EdgeportError
from edgeport.servers import (
    running_servers,
    servers_dir,
    servers_down,
    servers_env,
    servers_status,
    servers_up,
)

__all__ = ["servers_app"]

servers_app = typer.Typer(
    name="servers",
    help="Local MLflow tracking server + Prefect server on loopback, state under $EDGEPORT_HOME/servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@servers_app.command("up")
def up(
    host: Annotated[str, typer.Option(help="Interface both servers bind (no authentication: keep loopback).")] = "127.0.0.1",
    mlflow_port: Annotated[int, typer.Option(help="MLflow tracking server port.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for both health checks.")] = 120.0,
) -> None:
    """Start both servers (or report the running ones) and wait until they are healthy."""
    already = running_servers()
    try:
        state = servers_up(host=host, mlflow_port=mlflow_port, prefect_port=prefect_port, timeout_s=timeout)
    except EdgeportError as exc:
        fail(exc)
    word = "already running" if already is not None else "started"
    console.print(f"edgeport servers {word} (state: {servers_dir()})", highlight=False)
    console.print(f"  MLflow   {state.mlflow_url}   (pid {state.mlflow_pid})", highlight=False)
    console.print(f"  Prefect  {state.prefect_ui_url}   (API {state.prefect_api_url}, pid {state.prefect_pid})", highlight=False)
    console.print('edgeport commands use them; for other tools: eval "$(edgeport servers env)"', highlight=False)


@servers_app.command("down")
def down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")] = 30.0,
) -> None:
    """Stop both servers (whole process groups) and remove the state files; stores and logs stay."""
    try:
        servers_down(timeout_s=timeout)
    except EdgeportError as exc:
        fail(exc)
    console.print("edgeport servers stopped", highlight=False)


@servers_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Health of each server; exit code 1 when they are not both running and healthy."""
    result = servers_status()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    elif result["mlflow"] is None:
        console.print(f"no edgeport servers recorded for EDGEPORT_HOME={result['home']}", highlight=False)
    else:
        table = Table(title=f"edgeport servers ({result['home']})")
        for col in ("server", "url", "pid", "alive", "healthy"):
            table.add_column(col)
        for name in ("mlflow", "prefect"):
            info = result[name]
            table.add_row(name, info["url"], str(info["pid"]), "yes" if info["alive"] else "no", "yes" if info["healthy"] else "no")
        console.print(table)
    if not result["running"]:
        raise typer.Exit(1)


@servers_app.command("env")
def env() -> None:
    """Print the export lines (PREFECT_API_URL, MLFLOW_TRACKING_URI) for a shell: eval "$(edgeport servers env)"."""
    try:
        variables = servers_env()
    except EdgeportError as exc:
        fail(exc)
    for key, value in variables.items():
        typer.echo(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    servers_app()
