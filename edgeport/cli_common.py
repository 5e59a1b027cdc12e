"""What every ``edgeport`` sub-command shares: the rich consoles and the one way to fail.

Errors are printed as ``error: <ExceptionType>: <message>`` on stderr (markup in the message is
escaped: messages quote file names, lists and dotted spec fields) and exit with code 1; with
``--debug`` the exception propagates with its traceback instead.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["EXIT_ERROR", "console", "err_console", "fail"]

#: Exit code of a command that could not do its job (bad input, unreachable server, ...).
EXIT_ERROR = 1

# Wide enough for the summary tables when the output is not a terminal (CI logs, pipes).
console = Console(width=None if Console().is_terminal else 180)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 160)


def fail(exc: BaseException, debug: bool = False) -> None:
    """Print ``exc`` as one error line and exit with :data:`EXIT_ERROR`.

    Raises:
        typer.Exit: always (code 1); or ``exc`` itself when ``debug`` is true.
    """
    if debug:
        raise exc
    err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_ERROR)
