"""Whether code runs inside a Prefect flow or task run (artifacts, events and limits need one)."""

from __future__ import annotations

from prefect.context import FlowRunContext, TaskRunContext

__all__ = ["in_prefect_run"]


def in_prefect_run() -> bool:
    """True inside a Prefect flow run or task run; False when a step's plain function is called directly."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None
