"""Where edgeport keeps its local state (``EDGEPORT_HOME``).

Default: ``<repo>/.edgeport`` when edgeport runs from a source checkout (git-ignored),
else ``~/.edgeport``. Override with the ``EDGEPORT_HOME`` environment variable.

Layout::

    $EDGEPORT_HOME/
      mlflow/mlflow.db      embedded MLflow backend store (sqlite)
      mlflow/artifacts/     embedded MLflow artifact root
      prefect/              PREFECT_HOME for the ephemeral Prefect server (its sqlite db)
      cache/export/<key>/   content-addressed ONNX exports (key = checkpoint sha256 + export settings)
      envs/<name>/          managed environments for EPs shipped as their own build (EDGEPORT_ENVS overrides)
      outputs/<spec name>/  default output folder of ``edgeport run`` (summary.json, variants, reports)
      servers/              ``edgeport servers up``: MLflow + Prefect servers' stores, logs, PIDs (edgeport.servers)
"""

from __future__ import annotations

import logging
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


def configure_runtime_env() -> None:
    """Defaults for a CLI process; must run before Prefect is imported.

    Unless the user points Prefect somewhere (``PREFECT_API_URL`` or ``PREFECT_HOME``): uses the
    Prefect server of ``edgeport servers up`` when it runs (sets ``PREFECT_API_URL``), else keeps
    the ephemeral Prefect server's database under ``EDGEPORT_HOME/prefect`` (so the Prefect UI can
    be opened on it later). Raises the ephemeral server's start-up timeout to 120 s (it takes 10-15 s on
    2 cores, more under load; Prefect's default is 20 s); turns telemetry off (Prefect, MLflow, NNCF); routes edgeport's
    loggers through Prefect's log handlers at INFO and quiets the exporters' INFO chatter.
    """
    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        from edgeport.servers import (
            running_servers,  # lazy: servers imports this module
        )

        state = running_servers()
        if state is not None:  # `edgeport servers up` runs a Prefect server: use it
            os.environ["PREFECT_API_URL"] = state.prefect_api_url
    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        prefect_home = edgeport_home() / "prefect"
        prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect's sqlite db cannot create its folder
        os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    # NNCF (openvino-telemetry) sends usage events unless NNCF_CI or NNCF_DEV is set
    # (nncf/telemetry/wrapper.py; the only other switch, `opt_in_out --opt_out`, writes to ~).
    os.environ.setdefault("NNCF_CI", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "edgeport")
    logging.getLogger("edgeport").setLevel(logging.INFO)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
