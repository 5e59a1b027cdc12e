"""Where edgeport keeps its local state (``EDGEPORT_HOME``).

Default: ``<repo>/.edgeport`` when edgeport runs from a source checkout (git-ignored),
else ``~/.edgeport``. Override with the ``EDGEPORT_HOME`` environment variable.

Layout::

    $EDGEPORT_HOME/
      mlflow/mlflow.db      embedded MLflow backend store (sqlite)
      mlflow/artifacts/     embedded MLflow artifact root
      prefect/              PREFECT_HOME of the Prefect server a command starts (its sqlite db)
      cache/export/<key>/   content-addressed ONNX exports (key = checkpoint sha256 + export settings)
      envs/<name>/          managed environments for EPs shipped as their own build (EDGEPORT_ENVS overrides)
      outputs/<spec name>/  default output folder of ``edgeport run`` (summary.json, variants, reports)
      servers/              ``edgeport servers up``: MLflow + Prefect servers' stores, logs, PIDs (edgeport.servers)
"""

from __future__ import annotations

import os
from pathlib import Path


def edgeport_home() -> Path:
    """The state folder (absolute); not created here."""
    env = os.environ.get("EDGEPORT_HOME")
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():
        return repo / ".edgeport"
    return Path.home() / ".edgeport"


def default_tracking_uri() -> str:
    """``sqlite:///$EDGEPORT_HOME/mlflow/mlflow.db`` (the folder is created)."""
    folder = edgeport_home() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def default_artifact_root() -> Path:
    """``$EDGEPORT_HOME/mlflow/artifacts``: artifact location of experiments edgeport creates on a local store."""
    return edgeport_home() / "mlflow" / "artifacts"


def default_output_dir(spec_name: str) -> Path:
    """``$EDGEPORT_HOME/outputs/<spec_name>``."""
    return edgeport_home() / "outputs" / spec_name


def export_cache_dir() -> Path:
    """``$EDGEPORT_HOME/cache/export``."""
    return edgeport_home() / "cache" / "export"


def managed_envs_dir() -> Path:
    """Where managed target environments live: ``$EDGEPORT_ENVS``, else ``$EDGEPORT_HOME/envs``."""
    env = os.environ.get("EDGEPORT_ENVS")
    return Path(env).expanduser().resolve() if env else edgeport_home() / "envs"
