"""The one retry policy of every step that talks to MLflow (register, report, search logging,
promote, rollback): Prefect task retries of transient errors only
(:func:`~edgeport.registry.errors.is_transient`), exponential backoff from a
:class:`~edgeport.spec.RetrySpec`, within a time window from the first failure.

Pure apart from :func:`with_retry_window`, which calls the Prefect task's ``with_options``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgeport.errors import EdgeportError, RegistryUnavailable
from edgeport.registry.errors import is_transient
from edgeport.spec import RetrySpec

__all__ = [
    "DEFAULT_RETRY",
    "INTERACTIVE_RETRY",
    "PREFECT_MAX_RETRY_DELAYS",
    "prefect_retry_options",
    "retry_delays",
    "retry_if_transient",
    "retry_transient_within",
    "with_retry_window",
]

#: Prefect refuses more than 50 entries in ``retry_delay_seconds`` (it repeats the last one).
PREFECT_MAX_RETRY_DELAYS = 50

#: The window of the pipeline's MLflow steps unless the spec's ``registry.retry`` says otherwise
#: (5 minutes: a tracking-server restart or a short network outage).
DEFAULT_RETRY = RetrySpec()

#: A command a person waits for (``edgeport promote`` / ``rollback``): retries 2, 4, 4 s,
#: then the error.
INTERACTIVE_RETRY = RetrySpec(window_s=10.0, initial_delay_s=2.0, max_delay_s=8.0)


def retry_delays(retry: RetrySpec) -> list[float]:
    """The backoff delays (s) between attempts: ``initial_delay_s``, doubled after each failure,
    capped at ``max_delay_s``, the last one cut so that they add up to ``window_s`` (exponential
    backoff, AWS Architecture Blog "Exponential Backoff and Jitter", 2015). Empty for a 0 window.

    >>> retry_delays(RetrySpec(window_s=20, initial_delay_s=2, max_delay_s=5))
    [2.0, 4.0, 5.0, 5.0, 4.0]
    """
    delays: list[float] = []
    total, delay = 0.0, retry.initial_delay_s
    while total < retry.window_s - 1e-9 and len(delays) < 10_000:
        step = min(delay, retry.max_delay_s, retry.window_s - total)
        delays.append(round(step, 3))
        total += step
        delay *= 2
    return delays


def retry_if_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn`` (``(task, task_run, state) -> bool``): retry only when
    the failure is transient (RegistryUnavailable, connection errors, timeouts, sqlite busy);
    never an edgeport error other than ``RegistryUnavailable``."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - the failed state's exception
        if isinstance(exc, EdgeportError) and not isinstance(exc, RegistryUnavailable):
            return False
        return is_transient(exc)
    return False


def retry_transient_within(window_s: float) -> Callable[[Any, Any, Any], bool]:
    """A Prefect ``retry_condition_fn``: retry transient errors (:func:`retry_if_transient`)
    until ``window_s`` seconds have passed since that task run's first failure."""
    first_failure: dict[Any, float] = {}

    def retry_transient_within_window(task_: Any, task_run: Any, state: Any) -> bool:
        if not retry_if_transient(task_, task_run, state):
            return False
        start = first_failure.setdefault(getattr(task_run, "id", None), time.monotonic())
        return time.monotonic() - start < window_s

    return retry_transient_within_window


def prefect_retry_options(retry: RetrySpec) -> dict[str, Any]:
    """Keyword arguments of Prefect's ``task(...)`` / ``Task.with_options(...)`` for ``retry``:
    ``retries`` (one per delay), ``retry_delay_seconds`` (:func:`retry_delays`, at most
    :data:`PREFECT_MAX_RETRY_DELAYS`: Prefect repeats the last one, a capped delay anyway, and the
    window's time check ends the retries on schedule), ``retry_jitter_factor`` 0.2 (+-20 %, so
    concurrent runs do not hit a recovering server in step) and ``retry_condition_fn``
    (:func:`retry_transient_within`)."""
    delays = retry_delays(retry)
    return {
        "retries": len(delays),
        "retry_delay_seconds": delays[:PREFECT_MAX_RETRY_DELAYS] or 0,
        "retry_jitter_factor": 0.2 if delays else None,
        "retry_condition_fn": retry_transient_within(retry.window_s),
    }


def with_retry_window(task_: Any, retry: RetrySpec) -> Any:
    """``task_`` (a Prefect task) retrying transient errors for ``retry.window_s`` seconds with
    :func:`prefect_retry_options`. The caller sees the last attempt's exception when the window
    is exhausted."""
    return task_.with_options(**prefect_retry_options(retry))
