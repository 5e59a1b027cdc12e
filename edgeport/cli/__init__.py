"""The ``edgeport`` command line: the top layer (it may import flows, tasks and deployments).

The entry point is ``edgeport.cli:app`` (``pyproject.toml``); ``python -m edgeport.cli`` runs it
too. Each module adds its commands to :data:`app` with a ``register(app)`` function:

- :mod:`edgeport.cli.pipeline`: ``run``, ``validate-spec``, ``schema``, ``home``
- :mod:`edgeport.cli.init`: ``init`` (a spec from a checkpoint, HF folder, ``.pt2`` or ``.onnx``)
- :mod:`edgeport.cli.bench`: ``bench`` (any ONNX file on any target)
- :mod:`edgeport.cli.targets`: ``targets list|setup``
- :mod:`edgeport.cli.servers`: ``servers up|status|env|down``
- :mod:`edgeport.cli.service`: ``deploy``, ``notify-checkpoint``
- :mod:`edgeport.cli.registry`: ``promote``, ``rollback``

Commands import flows and tasks inside their bodies, after
:func:`edgeport.runtime_env.configure_runtime_env` (Prefect reads its settings at import).

Exit codes of ``edgeport run``: 0 a challenger was registered; 2 the pipeline completed
but no variant passed its gates (nothing registered); 1 an error (message only, the
traceback with ``--debug``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """SIGINT while the command line's own modules import (the first ~0.5-1 s, before any command
    runs and before :mod:`edgeport.cli.interrupts` takes over): one line and exit 130, no traceback."""
    sys.stderr.write("interrupted (SIGINT): edgeport stopped while starting, before any command ran\n")
    sys.stderr.flush()
    os._exit(128 + signal.SIGINT)


# Only when Python's own handler is in place (not in a test runner's thread, not under nohup), and
# only for these imports: Python's handler is back once they are done.
_STARTING = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _STARTING:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import typer  # noqa: E402 - after the start-up handler

from edgeport.cli import bench, init, pipeline, registry, servers, service, targets  # noqa: E402
from edgeport.cli.pipeline import print_summary, why_nothing_passed  # noqa: E402

__all__ = ["app", "print_summary", "why_nothing_passed"]

app = typer.Typer(
    name="edgeport",
    help="Checkpoint -> validated, quantized, benchmarked ONNX variants -> MLflow registry, as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
pipeline.register(app)
init.register(app)
bench.register(app)
app.add_typer(targets.targets_app, name="targets", help="Hardware targets: list the profiles, set up managed environments.")
app.add_typer(servers.servers_app, name="servers", help="Local MLflow + Prefect servers: up, status, env, down.")
service.register(app)
registry.register(app)

if _STARTING:  # the commands install their own handlers (edgeport.cli.interrupts)
    signal.signal(signal.SIGINT, signal.default_int_handler)
