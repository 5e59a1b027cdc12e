"""Stopping child processes: one process-group kill for the benchmark runner and the servers."""

from __future__ import annotations

import os
import signal

__all__ = ["signal_group"]


def signal_group(pid: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to the process group led by ``pid`` (a child started with ``start_new_session=True``).

    Falls back to the single process when it leads no group. Returns False when neither exists
    any more (already gone, or not ours: ``ProcessLookupError`` / ``PermissionError`` are swallowed).
    """
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
