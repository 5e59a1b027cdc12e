"""Ctrl-C and SIGTERM for the commands that run work (``run``, ``promote``, ``bench``).

What stops what, and where:

- The flow's own clean-up is Prefect's: its engine turns ``KeyboardInterrupt`` (SIGINT) and
  ``TerminationSignal`` (SIGTERM, through ``prefect.utilities.engine.capture_sigterm``) into a
  ``Crashed`` flow run and runs the flow's ``on_crashed`` hooks (``flows.pipeline`` marks an
  interrupted run ``Cancelled`` there); the register step undoes its partial registration
  (``tasks.register``) and the benchmark step kills its runner's process group
  (``tasks.benchmark``) as the exception passes through them.
- This module keeps the command's Prefect API server alive long enough for that. Prefect's own
  ephemeral server is a plain child in the terminal's process group: the terminal's Ctrl-C would
  stop it at once and the engine would then retry its final state report against a server that
  is gone (about 2.5 min of ``ConnectError`` retries, the flow run left ``Running``). So, when no
  Prefect server is configured, :func:`interruptible` starts the run's server itself
  (:class:`edgeport.servers.RunPrefectServer`: ``prefect server start --no-services --no-ui`` on a
  free loopback port, in a session of its own), and it only stops when told to, at exit, after
  Prefect's log and event workers drained to it. Neither a Ctrl-C nor a SIGTERM to the whole
  process group (``kill -TERM -PGID``, systemd's control-group stop) reaches it.
- Python drops an exception raised in a weakref callback or ``__del__`` ("Exception ignored in
  ...", CPython issue #95959), and a signal handler runs wherever the main thread is: a Ctrl-C
  that lands in importlib's module-lock callback (``importlib._bootstrap._get_module_lock``'s
  ``cb``, run after every import) is lost, and the run goes on to the end (exit 0); landing just
  after that callback took the import lock, it also leaves the lock held, and the next import in
  another thread hangs. The command's SIGINT handler (:func:`_raise_interrupt`) therefore raises
  ``KeyboardInterrupt`` like Python's own, except inside the import machinery, and an interrupt
  dropped anywhere else (SIGTERM's ``TerminationSignal`` too) is re-delivered
  (:func:`_redeliver_dropped`, a ``sys.unraisablehook``): both re-send the signal a moment later.
- An exception that an interrupt turned into another one (Python 3.11 wraps one raised while a
  class is created in a ``RuntimeError``) is the interrupt (:func:`_interrupt_signal`).
- An interrupted command skips the interpreter's own teardown (:func:`_skip_interpreter_teardown`).
- SIGTERM outside a flow run raises ``TerminationSignal`` like Prefect's own handler does (inside a
  flow run Prefect's handler re-delivers the signal to this one after recording the crash).

The command then prints one line naming what was interrupted and how to resume, and exits
:data:`EXIT_SIGINT` (130) or :data:`EXIT_SIGTERM` (143): the shell's 128 + signal number.
"""

from __future__ import annotations

import _thread
import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import typer
from rich.markup import escape

from edgeport.cli.common import err_console
from edgeport.home import edgeport_home
from edgeport.servers import RunPrefectServer

__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "interruptible"]

#: Exit code after SIGINT (Ctrl-C) and SIGTERM: 128 + the signal number, as a shell reports them.
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM

_interrupted_exit: list[int] = []  # the exit code, once a command was interrupted


def _skip_interpreter_teardown() -> None:
    """The last ``atexit`` step of an interrupted command: exit now with its code.

    Registered when this module is imported (with the CLI, before Prefect, MLflow or torch), so
    every exit hook registered later has run first: Prefect drains its log and event workers to
    its server and the run's Prefect server is stopped, MLflow ends its runs. What is skipped is the
    interpreter's teardown of the modules (torch, ONNX Runtime, ...): measured at 3-12 s on a
    loaded 2-core host after an interrupted run, the difference between "exits in seconds" and not.
    A no-op unless interrupted.
    """
    if _interrupted_exit:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_interrupted_exit[0])


atexit.register(_skip_interpreter_teardown)


#: Seconds before a signal that could not be raised where it landed is sent again.
REDELIVER_AFTER_S = 0.02


def _interrupt_signal(exc: BaseException | None) -> int | None:
    """The signal behind ``exc`` (``KeyboardInterrupt``: SIGINT; Prefect's ``TerminationSignal``: its
    signal), or None for any other exception. An exception raised from or while handling one of
    those (its ``__cause__`` / ``__context__`` chain as a traceback shows it: ``raise ... from None``
    ends it) is that interrupt too. Looks Prefect up in
    ``sys.modules`` only: the pre-start checks run before Prefect may be imported."""
    termination = getattr(sys.modules.get("prefect.exceptions"), "TerminationSignal", None)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return signal.SIGINT
        if termination is not None and isinstance(exc, termination):
            return exc.signal
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return None


def _redeliver(signum: int) -> None:
    """Have the main thread handle ``signum`` again in :data:`REDELIVER_AFTER_S` (from a timer
    thread: ``_thread.interrupt_main`` runs the signal's Python handler, a no-op once the signal is
    ignored or back to its default)."""
    timer = threading.Timer(REDELIVER_AFTER_S, _thread.interrupt_main, (signum,))
    timer.daemon = True
    timer.start()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT and SIGTERM handler: raise ``KeyboardInterrupt`` (SIGINT, as ``signal.default_int_handler``
    does) or Prefect's ``TerminationSignal`` (SIGTERM, as its own handler in a flow run does), except
    in the import machinery (``<frozen importlib._bootstrap...>`` code, where the exception can be
    dropped and leave the import lock held): there, :func:`_redeliver` it."""
    if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
        _redeliver(signum)
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    # Imported here: before configure_runtime_env (the pre-start checks) Prefect is not imported
    # yet; importing it then does not matter, the command is ending.
    from prefect.exceptions import TerminationSignal

    raise TerminationSignal(signal=signum)


def _redeliver_dropped(unraisable: Any) -> None:
    """``sys.unraisablehook``: an interrupt raised in a weakref callback or ``__del__`` (which Python
    drops) is sent again (:func:`_redeliver`); anything else goes to the hook that was installed before."""
    signum = _interrupt_signal(unraisable.exc_value)
    if signum is None:
        _previous_unraisablehook(unraisable)
    else:
        _redeliver(signum)


_previous_unraisablehook = sys.unraisablehook


def _start_run_server() -> RunPrefectServer | None:
    """Start this command's Prefect API server (:class:`edgeport.servers.RunPrefectServer`, in its own
    session: a Ctrl-C or a SIGTERM to this process group does not reach it); None when a Prefect API
    URL is configured (``PREFECT_API_URL``, ``edgeport servers up``: a server edgeport did not start,
    left alone) or Prefect is imported already (an in-process caller such as a test harness: Prefect
    starts what it needs itself).

    The caller must :meth:`~edgeport.servers.RunPrefectServer.wait` before the first Prefect API call.
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    return RunPrefectServer.start(os.environ.get("PREFECT_HOME") or edgeport_home() / "prefect")


def _no_wait() -> None:
    """Nothing to wait for (no server started here)."""


@contextmanager
def interruptible(
    what: str, resume: str, cleaned: str = "", prefect_server: bool = True, server_in_background: bool = False
) -> Iterator[Callable[[], None]]:
    """Run the body so that Ctrl-C or SIGTERM ends the command in seconds with one line and exit 130/143.

    Args:
        what: what is interrupted, for the message (``"edgeport run spec.yaml"``).
        resume: how to resume or redo it (``"resume with `edgeport run spec.yaml` ..."``).
        cleaned: what the command's own clean-up guarantees, appended to "stopped, with its child
            processes" (``"; nothing half-registered is kept"``).
        prefect_server: start the command's Prefect API server first (commands that run a flow;
            :func:`_start_run_server`; a configured ``PREFECT_API_URL`` is used as is).
        server_in_background: do not wait for that server before the body: the body (e.g. the
            import of the flows, 3-5 s of CPU) runs while the server starts in its own process,
            and must call the yielded function before its first Prefect API call.

    Yields:
        ``wait_for_server()``: blocks until the server started here answers (a no-op otherwise).

    Raises:
        typer.Exit: code :data:`EXIT_SIGINT` after SIGINT, :data:`EXIT_SIGTERM` after SIGTERM.
    """
    global _previous_unraisablehook
    in_main = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous = None
    if in_main:
        previous = (signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, _raise_interrupt), sys.unraisablehook)
        if previous[0] is signal.default_int_handler:  # Python's own; an ignored SIGINT (nohup) stays ignored
            signal.signal(signal.SIGINT, _raise_interrupt)
        if sys.unraisablehook is not _redeliver_dropped:  # not when nested
            _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _redeliver_dropped
    try:
        server = _start_run_server() if prefect_server else None  # stopped at exit (atexit), after Prefect's workers drained
        if server is not None and not server_in_background:
            server.wait()
        yield _no_wait if server is None else server.wait
    except BaseException as exc:
        signum = _interrupt_signal(exc)
        if signum is None:
            raise
        if in_main:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        name = signal.Signals(signum).name
        err_console.print(
            f"[bold yellow]interrupted[/] ({name}): {escape(what)} stopped, with its child processes{escape(cleaned)}; {escape(resume)}",
            soft_wrap=True, highlight=False,
        )
        code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        if in_main:  # an in-process caller in another thread (tests) is left its interpreter
            _interrupted_exit.append(code)
        raise typer.Exit(code) from None
    finally:
        if previous is not None:
            if previous[0] is not None:  # None: not set from Python
                signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
            sys.unraisablehook = previous[2]
