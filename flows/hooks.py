"""Prefect state hooks shared by edgeport's flows."""

from __future__ import annotations

import sys
from typing import Any

from prefect import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled, State

__all__ = ["cancel_when_interrupted"]


def cancel_when_interrupted(flow: Any, run: FlowRun, state: State) -> None:
    """``on_crashed`` hook: a run stopped by Ctrl-C or SIGTERM (Prefect records ``Crashed``) is the
    user's cancellation: mark it ``Cancelled``, with the resume hint. Other crashes stay ``Crashed``.

    Prefect calls crash hooks while it handles the exception (``sys.exc_info()`` is the interrupt).
    """
    if not isinstance(sys.exc_info()[1], (KeyboardInterrupt, TerminationSignal)):
        return
    message = f"Interrupted ({state.message}); re-run the same command to resume: cached steps are reused."
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
