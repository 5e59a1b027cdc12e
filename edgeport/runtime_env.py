"""The process environment of an edgeport command: where Prefect runs, telemetry off, log routing.

:func:`configure_runtime_env` must run before Prefect is imported (Prefect reads its settings
at import), so the CLI calls it first and imports flows afterwards.
"""

from __future__ import annotations

import logging
import os

from edgeport.home import edgeport_home
from edgeport.servers import running_servers

__all__ = ["configure_runtime_env"]


def configure_runtime_env() -> None:
    """Defaults for a CLI process; must run before Prefect is imported.

    Unless the user points Prefect somewhere (``PREFECT_API_URL`` or ``PREFECT_HOME``): uses the
    Prefect server of ``edgeport servers up`` when it runs (sets ``PREFECT_API_URL``), else keeps
    the database of the Prefect server a command starts for itself
    (:class:`edgeport.servers.RunPrefectServer`, or Prefect's own ephemeral server for the commands
    that do not start one) under ``EDGEPORT_HOME/prefect`` (so the Prefect UI can be opened on it
    later). Raises the ephemeral server's start-up timeout to 120 s (it takes 10-15 s on 2 cores,
    more under load; Prefect's default is 20 s); turns telemetry off (Prefect, MLflow, NNCF); routes edgeport's
    loggers through Prefect's log handlers at INFO and quiets the exporters' INFO chatter.
    """
    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
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
