"""The promotion flows: ``edgeport-promote`` (candidate -> ``champion`` through the gate of
:mod:`tasks.promote`) and ``edgeport-rollback``.

MLflow alias updates are last-writer-wins, so every promotion or rollback of one registered
model holds the slot of a Prefect global concurrency limit named
``edgeport-promote-<model>`` (1 slot, created on first use): two promotions of the same model
take turns, and the second one compares its candidate with the champion the first one set.
The deployment that runs ``promote_flow`` when a pipeline run completes lives in
``deployments/``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from prefect import flow, get_run_logger

from edgeport.errors import PromotionError
from edgeport.limits import hold_slot
from edgeport.registry import resolve_tracking_uri
from edgeport.spec import PromotionSpec, load_spec
from tasks.promote import promote_task, rollback_task

__all__ = ["promote_flow", "promotion_limit_name", "promotion_lock", "rollback_flow"]

#: Seconds a promotion holds its slot before the lease must be renewed (Prefect renews it
#: while the block runs; the lease only matters when the process dies holding it).
LEASE_S = 120.0


def promotion_limit_name(registered_model: str) -> str:
    """``edgeport-promote-<model>``: the global concurrency limit of one registered model (the
    model name lower-cased, runs of other characters than ``a-z0-9._-`` replaced by ``-``)."""
    return "edgeport-promote-" + (re.sub(r"[^a-z0-9._-]+", "-", registered_model.lower()).strip("-") or "model")


@contextlib.contextmanager
def promotion_lock(registered_model: str, timeout_s: float | None = 600.0) -> Iterator[None]:
    """Hold the registered model's promotion slot (created with 1 slot when missing).

    Raises:
        TimeoutError: the slot stayed taken for ``timeout_s`` seconds (Prefect's own error).
    """
    # strict: never run unserialised if the limit could not be created
    with hold_slot(promotion_limit_name(registered_model), lease_duration_s=LEASE_S, timeout_s=timeout_s, strict=True):
        yield


def _settings(spec_path: str | None, tracking_uri: str | None) -> tuple[PromotionSpec, str, Any]:
    """(gate settings, tracking URI, spec or None): the spec's ``registry.promotion`` and
    ``registry.tracking_uri`` when a spec is given, else the defaults."""
    spec = load_spec(spec_path) if spec_path else None
    policy = spec.registry.promotion if spec else PromotionSpec()
    uri = resolve_tracking_uri(spec.registry.tracking_uri if spec else None, tracking_uri)
    return policy, uri, spec


@flow(name="edgeport-promote", description="Compare a candidate model version with the champion and promote it through the gate.")
def promote_flow(
    registered_model: str,
    version: str | None = None,
    alias: str | None = None,
    target: str | None = None,
    batch_size: int | None = None,
    tracking_uri: str | None = None,
    spec_path: str | None = None,
    per_target: bool = False,
) -> dict:
    """Promote ``version`` (or the version behind ``alias``) of ``registered_model`` to ``champion``
    if it passes the gate (:func:`tasks.promote.promote`), serialised per registered model.

    Args:
        registered_model: MLflow registered model name.
        version: candidate model version; None = the version behind ``alias``.
        alias: alias naming the candidate (default ``challenger``, or ``challenger-<target>`` with
            ``per_target``; both set by the pipeline).
        target, batch_size: override ``registry.promotion.target`` / ``batch_size`` of the spec.
            Defaults: with a spec, the first target and ``benchmark.primary_batch_size``; without,
            the target and batch size the candidate was ranked on.
        tracking_uri: MLflow tracking URI (overrides the spec's ``registry.tracking_uri``).
        spec_path: pipeline spec whose ``registry.promotion`` sets the gate; None = defaults.
        per_target: promote to ``champion-<target>`` (previous: ``previous-champion-<target>``),
            comparing on ``target`` (required then); default ``champion``.

    Returns:
        The decision (:meth:`tasks.promote.PromotionDecision.to_dict`): ``accepted``, ``reason``,
        both versions' numbers, ``checks``. A rejection completes the flow; it is not a failure.

    Raises:
        PromotionError: unknown model/version/alias, metrics missing for the target/batch size,
            ``per_target`` without ``target``.
        RegistryUnavailable: MLflow unreachable (after the task's retries).
        SpecError: ``spec_path`` is invalid.
    """
    logger = get_run_logger()
    policy, uri, spec = _settings(spec_path, tracking_uri)
    if per_target and not target:
        raise PromotionError(f"{registered_model}: a per-target promotion needs the target (--target)")
    if spec is not None:
        target = target or policy.target or spec.targets[0].name
        batch_size = batch_size or policy.batch_size or spec.benchmark.primary
    with promotion_lock(registered_model):
        decision = promote_task(
            registered_model, uri, version=version, alias=alias, target=target, batch_size=batch_size, policy=policy,
            per_target=per_target,
        )
    logger.info("%s: %s", "promoted" if decision.accepted else "not promoted", decision.reason)
    return decision.to_dict()


@flow(name="edgeport-rollback", description="Move the champion alias back to the previous champion.")
def rollback_flow(
    registered_model: str, tracking_uri: str | None = None, spec_path: str | None = None, target: str | None = None
) -> dict:
    """Roll ``champion`` of ``registered_model`` back to ``previous-champion``
    (:func:`tasks.promote.rollback`), under the same per-model lock as promotions; with ``target``,
    ``champion-<target>`` back to ``previous-champion-<target>``.

    Returns:
        ``{"registered_model", "from_version", "to_version", "rolled_back_at", "tracking_uri",
        "champion_alias", "previous_champion_alias"}``.

    Raises:
        PromotionError: no ``previous-champion`` (or unknown model).
        RegistryUnavailable: MLflow unreachable.
    """
    _, uri, _ = _settings(spec_path, tracking_uri)
    with promotion_lock(registered_model):
        result = rollback_task(registered_model, uri, target=target)
    get_run_logger().info(
        "rolled back %s: %s %s -> %s", registered_model, result.champion_alias, result.from_version, result.to_version
    )
    return result.to_dict()
