"""``edgeport targets``: the built-in benchmark target profiles and managed environments.

Mounted by the main CLI as ``app.add_typer(targets_app, name="targets")``; also runs
alone as ``python -m edgeport.cli.targets``.

    edgeport targets list              profiles, providers, env, available here (and why not);
                                       managed environments: exist?, folder, versions or problem
    edgeport targets setup openvino    create (or reuse) $EDGEPORT_HOME/envs/openvino

Exit codes: 0 success; 1 an error (the message names the environment).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgeport.cli.common import console, err_console
from edgeport.errors import EdgeportError
from edgeport.targets import (
    ENVIRONMENTS,
    PROFILES,
    environment_dir,
    environment_status,
    last_setup_error,
    runtime_info,
    setup_command,
    setup_environment,
    setup_progress,
    target_availability,
)

__all__ = ["targets_app"]

targets_app = typer.Typer(
    name="targets",
    help="Benchmark target profiles and the managed environments some of them run in.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _providers_text(settings: dict) -> str:
    options = settings.get("provider_options") or {}
    parts = []
    for name in settings.get("providers", []):
        opts = options.get(name)
        parts.append(f"{name} {{{', '.join(f'{k}: {v}' for k, v in opts.items())}}}" if opts else name)
    return "\n".join(parts)


def _threads_text(settings: dict) -> str:
    intra, inter = settings.get("intra_op_num_threads", 0), settings.get("inter_op_num_threads", 0)
    return f"{intra or 'default'}/{inter or 'default'}"


@targets_app.command("list")
def list_targets() -> None:
    """Show the built-in profiles and whether each can run here (the reason when not), then the
    managed environments: whether each exists, where, and its versions or what is wrong."""
    table = Table(title="edgeport target profiles", show_lines=True)
    for col in ("profile", "providers", "threads (intra/inter)", "env", "available", "reason"):
        table.add_column(col, overflow="fold")
    for name, profile in PROFILES.items():
        settings = dict(profile.settings)
        available, reason = target_availability(name)
        table.add_row(
            name,
            _providers_text(settings),
            _threads_text(settings),
            settings.get("env", "current"),
            "[green]yes[/]" if available else "[red]no[/]",
            reason,
        )
    console.print(table)
    envs = Table(title="managed environments (created on demand by `edgeport run`)", show_lines=True)
    for col in ("env", "exists", "folder", "status"):
        envs.add_column(col, overflow="fold")
    for name in ENVIRONMENTS:
        folder = environment_dir(name)
        ok, reason = environment_status(name)
        failed = last_setup_error(name)
        if not ok and failed:
            reason += f"; last setup failed at {failed.get('time')}"
        exists = "[green]yes[/]" if ok else ("[yellow]broken[/]" if folder.is_dir() else f"[red]no[/] ({setup_command(name)})")
        envs.add_row(name, exists, str(folder), reason)
    console.print(envs)


@targets_app.command("setup")
def setup(
    name: Annotated[str, typer.Argument(help=f"Managed environment to create: {', '.join(ENVIRONMENTS)}.")],
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the environment is up to date.")] = False,
) -> None:
    """Create (or reuse) a managed environment under $EDGEPORT_HOME/envs and print its python and versions."""
    try:
        folder = environment_dir(name)  # TargetError for an unknown name
        console.print(f"setting up {name!r} in {folder} (pins: {', '.join(ENVIRONMENTS[name]['packages'])})")
        lines: list[str] = []
        with setup_progress(name, console) as show:
            python = setup_environment(name, force=force, log=lambda line: (lines.append(line), show(line)))
        console.print(lines[-1] if lines else f"{name}: ready", markup=False, highlight=False)  # reused / created in N s
        info = runtime_info(name)
    except EdgeportError as exc:
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"python: {python}")
    console.print(f"python version: {info['python']}")
    for dist, version in (info.get("distribution") or {}).items():
        if version:
            console.print(f"{dist}: {version}")
    console.print(f"onnxruntime module: {info['onnxruntime']}")
    console.print(f"available providers: {', '.join(info['available'])}")


if __name__ == "__main__":
    targets_app()
