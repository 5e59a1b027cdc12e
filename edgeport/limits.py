"""Prefect global concurrency limits that edgeport creates on demand.

Two are used: ``edgeport-benchmark-<host>`` (one benchmark sweep at a time per machine, so
concurrent pipeline runs do not share its cores) and ``edgeport-promote-<model>`` (one promotion
of a registered model at a time, since MLflow alias updates are last-writer-wins).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

__all__ = ["ensure_concurrency_limit", "hold_slot"]


def ensure_concurrency_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit ``name`` with ``limit`` slots unless it exists.

    Two runs racing to create it are fine: the loser's create error is ignored and it reads
    the winner's limit. Needs a Prefect API (a server, the ephemeral one, or the test harness).
    """
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(Exception):  # another run created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))


@contextlib.contextmanager
def hold_slot(name: str, lease_duration_s: float, timeout_s: float | None = None, strict: bool = False) -> Iterator[None]:
    """Hold one slot of the 1-slot limit ``name`` (created when missing) for the ``with`` block.

    Args:
        name: the global concurrency limit.
        lease_duration_s: seconds of the slot's lease; Prefect renews it while the block runs,
            so it only bounds how long a slot stays taken after its holder died.
        timeout_s: give up waiting after this many seconds (None: wait forever).
        strict: raise instead of running unserialised when the limit cannot be found.

    Raises:
        TimeoutError: the slot stayed taken for ``timeout_s`` seconds (Prefect's own error).
    """
    ensure_concurrency_limit(name, limit=1)
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=lease_duration_s, strict=strict):
        yield
