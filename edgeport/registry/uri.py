"""Where the MLflow store is: tracking-URI resolution and redaction, the artifact-location
policy of experiments edgeport creates, and pointing MLflow's process-global fluent API at one
store for a block (:func:`using_store`), through MLflow's public API only."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

import mlflow
from edgeport import home
from edgeport.servers import running_servers

__all__ = [
    "artifact_location_for",
    "is_http",
    "redact_uri",
    "resolve_tracking_uri",
    "run_url",
    "safe_name",
    "sqlite_db_path",
    "using_store",
]


def resolve_tracking_uri(spec_uri: str | None, override: str | None) -> str:
    """The MLflow tracking URI to use, first found of: ``override`` (CLI flag) > ``spec_uri``
    (``registry.tracking_uri``) > the ``MLFLOW_TRACKING_URI`` environment variable > the MLflow
    server started by ``edgeport servers up`` for this ``EDGEPORT_HOME``
    (:func:`edgeport.servers.running_servers`) > the embedded sqlite store under
    ``EDGEPORT_HOME`` (:func:`edgeport.home.default_tracking_uri`)."""
    for uri in (override, spec_uri, os.environ.get("MLFLOW_TRACKING_URI")):
        if uri is not None and str(uri).strip():
            return str(uri).strip()
    state = running_servers()
    if state is not None:
        return state.mlflow_url
    return home.default_tracking_uri()


_PASSWORD = re.compile(r"//([^/:@]*):[^/@]*@")
_SECRET_QUERY = re.compile(r"([?&](?:[^=&#]*(?:token|password|passwd|secret|key|signature|sig|credential)[^=&#]*)=)[^&#]*", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` without secrets: the password of a ``scheme://user:password@host`` part and the
    values of query parameters named like a secret (``token``, ``password``, ``secret``,
    ``key``, ``sig``, ``credential``: ``?access_token=abc`` -> ``?access_token=***``)."""
    return _SECRET_QUERY.sub(r"\1***", _PASSWORD.sub(r"//\1:***@", uri))


def is_http(uri: str) -> bool:
    """True for an ``http://`` or ``https://`` tracking URI (an MLflow tracking server)."""
    return uri.lower().startswith(("http://", "https://"))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run on an http(s) tracking server; None for other stores."""
    if not is_http(tracking_uri):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def sqlite_db_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None for other URIs / in-memory."""
    if not uri.lower().startswith("sqlite:"):
        return None
    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return Path(database).expanduser().resolve()


def safe_name(name: str) -> str:
    """``name`` as one folder name: runs of characters other than ``A-Za-z0-9_.-`` become ``_``
    (``"exp a"`` -> ``"exp_a"``); ``"experiment"`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"


def artifact_location_for(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go (a ``file://`` URI, folder created); None lets the
    store decide (http(s) server: its ``--default-artifact-root``; file store: its own root).

    sqlite: ``$EDGEPORT_HOME/mlflow/artifacts/<name>`` for the default store
    (:func:`edgeport.home.default_artifact_root`), ``<db folder>/artifacts/<name>`` for any other
    file; a database store used directly (postgresql, mysql, mssql): under the default artifact
    root, never ``./mlruns`` in the working directory.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    db = sqlite_db_path(uri)
    if db is not None:
        default_db = (home.edgeport_home() / "mlflow" / "mlflow.db").resolve()
        root = home.default_artifact_root() if db == default_db else db.parent / "artifacts"
    elif scheme.startswith(("postgresql", "mysql", "mssql")):
        root = home.default_artifact_root()
    else:
        return None
    path = root / safe_name(experiment)
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_STORE_STATE = threading.Condition()
_STORE_USERS: dict[str, Any] = {"uri": None, "count": 0, "saved": None}


@contextlib.contextmanager
def using_store(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (runs, ``log_model``, ``register_model``) at ``uri`` for the
    block, then restore the tracking and registry URIs that were in force before.

    Only MLflow's public API is used: ``mlflow.set_tracking_uri`` / ``mlflow.set_registry_uri``
    keep the ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` environment variables in step with
    the URIs they set, so the variables are the record of what was in force; at the end both are
    restored and a URI that was not set is unset again (``set_tracking_uri(None)``, as MLflow's
    own ``_use_tracking_uri`` restores it).

    MLflow's tracking URI is process-global (its active-run stack is per thread), so blocks in
    several threads share it: blocks on the same ``uri`` run together (reference-counted, the last
    one out restores), a block on another URI waits until they are done. Without this, the first
    registration to finish would repoint a concurrent one at the previous store mid-run.
    """
    with _STORE_STATE:
        _STORE_STATE.wait_for(lambda: _STORE_USERS["count"] == 0 or _STORE_USERS["uri"] == uri)
        if _STORE_USERS["count"] == 0:
            _STORE_USERS["saved"] = {k: os.environ.get(k) for k in _URI_ENV}
            _STORE_USERS["uri"] = uri
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
        _STORE_USERS["count"] += 1
    try:
        yield
    finally:
        with _STORE_STATE:
            _STORE_USERS["count"] -= 1
            if _STORE_USERS["count"] == 0:
                saved = _STORE_USERS["saved"]
                mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None: unset (the env var too)
                mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # None: the tracking URI's registry
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                _STORE_USERS.update(uri=None, saved=None)
                _STORE_STATE.notify_all()
