"""MLflow's errors translated into edgeport's, in one place and through one table.

The pattern of httpx's ``map_httpcore_exceptions`` (``httpx/_transports/default.py``): every
call into MLflow that should fail with an edgeport error runs inside :func:`map_mlflow_errors`,
which looks the exception up in :data:`ERROR_TABLE` (first matching row wins) and raises the
row's edgeport error, chained (``from``) to the original:

============================================  =========================  ============================
what failed                                   raised                     retried (:mod:`.retry`)
============================================  =========================  ============================
the store did not answer, timed out, was      RegistryUnavailable        yes
busy (:func:`is_transient`)
MLflow answered and refused (MlflowException)  RegistryError              no
anything else, with ``wrap_all=True``         RegistryError              no
anything else                                 re-raised unchanged        -
============================================  =========================  ============================
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterator

import requests
from mlflow.exceptions import MlflowException

from edgeport.errors import EdgeportError, RegistryError, RegistryUnavailable
from edgeport.registry.uri import redact_uri

__all__ = ["ERROR_TABLE", "first_line", "is_not_found", "is_transient", "map_mlflow_errors", "mlflow_error"]

#: Messages of MLflow / requests / urllib3 / SQLAlchemy errors that mean "try again later".
_TRANSIENT_PATTERNS = re.compile(
    r"connection refused|failed to establish a new connection|max retries exceeded|timed out|"
    r"timeout|temporarily unavailable|connection reset|connection aborted|remote end closed|"
    r"name or service not known|database is locked|error code 50[234]|50[234] server error|too many 50\d error responses",
    re.IGNORECASE,
)

#: ``MlflowException.error_code`` values (``mlflow.protos.databricks_pb2.ErrorCode``) of a busy or
#: restarting server (MLflow maps them to HTTP 503 / 429 / 504).
TRANSIENT_ERROR_CODES = frozenset({
    "TEMPORARILY_UNAVAILABLE",
    "SERVICE_UNDER_MAINTENANCE",
    "WORKSPACE_TEMPORARILY_UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "REQUEST_LIMIT_EXCEEDED",
})

_TRANSIENT_TYPES = (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the store did not answer, timed out, or was busy.

    Walks the ``__cause__`` / ``__context__`` chain; the first decisive link wins:
    :class:`~edgeport.errors.RegistryUnavailable` -> True, any other ``RegistryError`` -> False;
    builtin ``ConnectionError`` / ``TimeoutError`` and requests' ``ConnectionError`` / ``Timeout``
    -> True; an ``MlflowException`` whose ``error_code`` is in :data:`TRANSIENT_ERROR_CODES` or
    whose message says connection refused / timed out / HTTP 502-504 / database is locked -> True;
    an ``OperationalError`` (sqlite3's or SQLAlchemy's) saying "locked" (sqlite busy) -> True.
    """
    for item in _exception_chain(exc):
        if isinstance(item, RegistryUnavailable):
            return True
        if isinstance(item, RegistryError):
            return False
        if isinstance(item, _TRANSIENT_TYPES):
            return True
        if isinstance(item, MlflowException) and (
            item.error_code in TRANSIENT_ERROR_CODES or _TRANSIENT_PATTERNS.search(str(item))
        ):
            return True
        if isinstance(item, sqlite3.OperationalError) or type(item).__name__ == "OperationalError":
            if "locked" in str(item).lower():  # sqlite busy (SQLAlchemy wraps sqlite3's error)
                return True
    return False


def is_not_found(exc: BaseException) -> bool:
    """True for an MLflow "no such model / version / run / experiment" answer."""
    return isinstance(exc, MlflowException) and (
        exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()
    )


def first_line(exc: BaseException | None) -> str:
    """``"<ExceptionType>: <first line of the message>"`` (at most 500 characters), for error messages."""
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__


#: (matches, edgeport error, message template); first match wins. Template fields: ``uri``
#: (redacted), ``what`` (the operation), ``detail`` (appended by the caller), ``error``
#: (:func:`first_line` of the original).
ERROR_TABLE: tuple[tuple[Callable[[BaseException], bool], type[RegistryError], str], ...] = (
    (is_transient, RegistryUnavailable, "MLflow at {uri} did not answer ({what}){detail}: {error}"),
    (lambda exc: isinstance(exc, MlflowException), RegistryError, "MLflow at {uri} refused {what}{detail}: {error}"),
)
_WRAP_ALL = (lambda exc: True, RegistryError, "{what} at {uri} failed{detail}: {error}")


def mlflow_error(exc: BaseException, what: str, uri: str, *, wrap_all: bool = False, detail: str = "") -> RegistryError | None:
    """The edgeport error :data:`ERROR_TABLE` maps ``exc`` to, or None when no row matches
    (then the caller re-raises ``exc``). An :class:`~edgeport.errors.EdgeportError` other than a
    transient one is returned unchanged unless ``wrap_all`` (it already says what went wrong).

    Args:
        exc: the exception raised by MLflow (or requests, sqlite, ...).
        what: the operation, for the message (``"setting champion"``, ``"registering 'digits'"``).
        uri: the tracking URI (redacted in the message).
        wrap_all: map every other exception to ``RegistryError`` too.
        detail: text appended after the operation (e.g. what a rollback undid).
    """
    if isinstance(exc, EdgeportError) and not wrap_all and not isinstance(exc, RegistryUnavailable):
        return None
    rows = (*ERROR_TABLE, _WRAP_ALL) if wrap_all else ERROR_TABLE
    for matches, error, template in rows:
        if matches(exc):
            return error(template.format(uri=redact_uri(uri), what=what, detail=detail, error=first_line(exc)))
    return None


@contextlib.contextmanager
def map_mlflow_errors(what: str, uri: str, *, wrap_all: bool = False) -> Iterator[None]:
    """Run the block with MLflow's errors translated through :data:`ERROR_TABLE`.

    >>> with map_mlflow_errors("setting champion", "http://u:secret@mlflow:5000"):  # doctest: +SKIP
    ...     client.set_registered_model_alias(name, "champion", "3")

    Raises:
        RegistryUnavailable: the store did not answer (transient, worth retrying).
        RegistryError: MLflow refused the operation (or, with ``wrap_all``, anything else failed).
        Exception: any other exception, unchanged (unless ``wrap_all``).
    """
    try:
        yield
    except Exception as exc:
        mapped = mlflow_error(exc, what, uri, wrap_all=wrap_all)
        if mapped is None:
            raise
        raise mapped from exc
