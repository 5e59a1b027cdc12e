"""What every ``edgeport`` sub-command shares: the rich consoles and the one way to fail.

Errors are printed as ``error: <ExceptionType>: <message>`` on stderr (markup in the message is
escaped: messages quote file names, lists and dotted spec fields) and exit with code 1; with
``--debug`` the exception propagates with its traceback instead.
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["EXIT_ERROR", "console", "err_console", "fail", "quiet_tracebacks"]

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


def quiet_tracebacks() -> None:
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
