"""Talking to an MLflow store: HTTP client settings, the health check, an MLflow client, the
experiment edgeport logs to."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from edgeport.errors import RegistryError, RegistryUnavailable
from edgeport.registry.errors import first_line, is_transient
from edgeport.registry.uri import artifact_location_for, is_http, redact_uri

__all__ = [
    "alias_version",
    "check_tracking_uri",
    "ensure_experiment",
    "mlflow_http_settings",
    "registered_model_exists",
    "registry_client",
    "set_alias",
    "version_exists",
]

logger = logging.getLogger("edgeport.registry")

_ENV_LOCK = threading.Lock()
_HTTP_USERS: dict[str, Any] = {"count": 0, "saved": None}


@contextlib.contextmanager
def mlflow_http_settings(uri: str, timeout_s: float, max_retries: int = 2, backoff_factor: int = 1) -> Iterator[None]:
    """MLflow's HTTP client settings for a block that talks to an http(s) tracking server.

    MLflow's defaults (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7``, backoff factor 2,
    ``MLFLOW_HTTP_REQUEST_TIMEOUT=120`` s) make one request to a stopped server hang for minutes,
    longer than edgeport's own retry window (``registry.retry``), which then cannot keep its
    schedule. Inside the block a request gets ``max_retries`` quick retries (urllib3 backoff
    ``backoff_factor`` x 2^n s) for blips, and edgeport's retry window handles outages.
    Reference-counted, so concurrent blocks in several threads share the settings and the last
    one out restores the previous values. Other URIs: no-op.

    Args:
        uri: the tracking URI.
        timeout_s: per-request timeout in s (``MLFLOW_HTTP_REQUEST_TIMEOUT``, rounded up).
        max_retries: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (0: MLflow does not retry at all).
        backoff_factor: ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (MLflow reads an int).
    """
    if not is_http(uri):
        yield
        return
    names = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(max_retries)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(math.ceil(backoff_factor)),
    }
    with _ENV_LOCK:
        if _HTTP_USERS["count"] == 0:
            _HTTP_USERS["saved"] = {k: os.environ.get(k) for k in names}
        os.environ.update(names)
        _HTTP_USERS["count"] += 1
    try:
        yield
    finally:
        with _ENV_LOCK:
            _HTTP_USERS["count"] -= 1
            if _HTTP_USERS["count"] == 0:
                for key, value in _HTTP_USERS["saved"].items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                _HTTP_USERS["saved"] = None


@contextlib.contextmanager
def _short_http_timeouts(uri: str, timeout_s: float) -> Iterator[None]:
    """Override MLflow's HTTP timeout and disable its own retries for the block (http(s) URIs
    only), over any :func:`mlflow_http_settings` in force: the health check must fail in seconds."""
    if not is_http(uri):
        yield
        return
    names = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in names}
        os.environ.update(names)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _is_bad_uri(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not find a registered" in text or ("unsupported" in text and "uri" in text) or "invalid url" in text


def check_tracking_uri(uri: str, attempts: int = 3, backoff_s: float = 1.0, timeout_s: float = 5.0) -> None:
    """Make sure the MLflow tracking store at ``uri`` answers (one cheap ``search_experiments``).

    Its own short retry loop, not the retry window of :mod:`edgeport.registry.retry`: at start-up,
    with nothing done yet, failing in seconds costs nothing.

    Args:
        uri: MLflow tracking URI (``sqlite:///...``, ``http(s)://...``, ...).
        attempts: calls before giving up (>= 1).
        backoff_s: sleep before the 2nd attempt; doubled after each failure.
        timeout_s: per-request HTTP timeout for http(s) URIs (MLflow's own HTTP retries
            are disabled during the check), so an unreachable server fails within seconds.

    Raises:
        RegistryUnavailable: the store did not answer after ``attempts`` calls; the
            message names the URI and the last error.
        RegistryError: the URI cannot name a tracking store at all (unsupported scheme),
            which no retry can fix.
    """
    attempts = max(1, int(attempts))
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            with _short_http_timeouts(uri, timeout_s):
                MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
            return
        except Exception as exc:  # noqa: BLE001 - classified below
            last = exc
            if not is_transient(exc) and _is_bad_uri(exc):
                raise RegistryError(f"MLflow tracking URI {redact_uri(uri)!r} is not usable: {exc}") from exc
            logger.warning("MLflow at %s did not answer (attempt %d/%d): %s", redact_uri(uri), attempt, attempts, first_line(exc))
            if attempt < attempts:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    raise RegistryUnavailable(
        f"MLflow tracking server {redact_uri(uri)} is unreachable after {attempts} attempt(s): {first_line(last)}"
    ) from last


def registry_client(uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``uri`` (tracking and registry), after a quick health check.

    Raises:
        RegistryUnavailable: the store did not answer within seconds (2 attempts).
        RegistryError: the URI names no usable store.
    """
    check_tracking_uri(uri, attempts=2, backoff_s=0.5)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Get or create the MLflow experiment ``name``; returns its id.

    A new experiment's ``artifact_location`` follows
    :func:`~edgeport.registry.uri.artifact_location_for` (on a local sqlite store never
    ``./mlruns`` in the working directory). A deleted experiment of that name is restored.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=artifact_location_for(tracking_uri, name),
            tags={"edgeport.created_by": "edgeport"},
        )
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # created concurrently by another run
        if experiment is None:
            raise
        return experiment.experiment_id


def version_exists(client: MlflowClient, name: str, version: str) -> bool:
    """True when model version ``version`` of registered model ``name`` exists (any MLflow error: False)."""
    try:
        client.get_model_version(name, version)
        return True
    except MlflowException:
        return False


def registered_model_exists(client: MlflowClient, name: str) -> bool:
    """True when the registered model ``name`` exists.

    Raises:
        MlflowException: any answer but "does not exist" (e.g. the store is down).
    """
    try:
        client.get_registered_model(name)
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version behind ``alias`` of registered model ``name``, or None (no such alias, or any MLflow error)."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point ``alias`` of registered model ``name`` at ``version``, last writer wins.

    MLflow's SQL store upserts an alias with select-then-insert (SQLAlchemy ``session.merge``), so
    two registrations setting the same alias at the same moment can collide on its primary key
    (PostgreSQL: ``UniqueViolation ... registered_model_alias_pk``); the second try then updates
    the row the other one inserted.

    Raises:
        MlflowException: MLflow refused the alias (any other error, or the collision twice).
    """
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        if "unique" not in str(exc).lower():
            raise
        client.set_registered_model_alias(name, alias, version)
