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

import typer

from edgeport.cli import bench, init, pipeline, registry, servers, service, targets
from edgeport.cli.pipeline import print_summary, why_nothing_passed

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
