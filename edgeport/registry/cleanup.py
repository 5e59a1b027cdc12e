"""Undoing a registration: the versions, runs and aliases an attempt created or moved.

:func:`roll_back` undoes the current attempt when it fails (best effort); the next attempt of the
same registration id calls :func:`remove_interrupted_attempt` for what a rollback could not reach
(the store was gone, the process was killed). Both only touch what carries the attempt's
:data:`~edgeport.registry.tags.REGISTRATION_TAG` or what it recorded before moving it.
"""

from __future__ import annotations

import contextlib
import json
import logging

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from edgeport.registry.client import alias_version, version_exists
from edgeport.registry.identity import IDENTITY_TAG
from edgeport.registry.tags import REGISTRATION_TAG, TARGET_ALIASES_BEFORE_TAG

__all__ = ["remove_interrupted_attempt", "roll_back"]

logger = logging.getLogger("edgeport.registry")


def remove_interrupted_attempt(client: MlflowClient, name: str, experiment_id: str, registration_id: str, alias: str) -> None:
    """Delete the model versions and runs an earlier attempt of ``registration_id`` left behind
    (its rollback could not reach the server), and give ``alias`` back to the version it named
    before that attempt when the deletion removed it (MLflow drops an alias with its version).

    A version tagged :data:`~edgeport.registry.identity.IDENTITY_TAG` belongs to an attempt that
    completed (only its local bookkeeping was lost), and other runs may have reused it since: it
    is kept, with the runs it names (``edgeport.mlflow_run_id``, ``edgeport.parent_run_id``)."""
    quoted = registration_id.replace("'", "")
    found = client.search_model_versions(f"name = '{name}' and tags.`{REGISTRATION_TAG}` = '{quoted}'")
    completed = [mv for mv in found if (mv.tags or {}).get(IDENTITY_TAG)]
    leftovers = [mv for mv in found if not (mv.tags or {}).get(IDENTITY_TAG)]
    keep_runs = {(mv.tags or {}).get(key) for mv in completed for key in ("edgeport.mlflow_run_id", "edgeport.parent_run_id")}
    runs = [
        run for run in client.search_runs(
            [experiment_id], filter_string=f"tags.`{REGISTRATION_TAG}` = '{quoted}'", run_view_type=ViewType.ACTIVE_ONLY
        )
        if run.info.run_id not in keep_runs
    ]
    if not leftovers and not runs:
        return
    aliased = alias_version(client, name, alias)
    for mv in leftovers:
        client.delete_model_version(name, mv.version)
    restore = None
    if aliased is not None and aliased in {str(mv.version) for mv in leftovers}:
        restore = next((r.data.tags.get("edgeport.alias_before") for r in runs if r.data.tags.get("edgeport.alias_before")), None)
    deleted = {str(mv.version) for mv in leftovers}
    target_restore: dict[str, str] = {}  # per-target aliases the earlier attempt had moved onto a deleted version
    for run in runs:
        try:
            before = json.loads(run.data.tags.get(TARGET_ALIASES_BEFORE_TAG) or "{}")
        except ValueError:
            before = {}
        for target_alias_name, version in before.items():
            if version is not None and target_alias_name not in target_restore:
                target_restore[target_alias_name] = str(version)
    target_restore = {a: v for a, v in target_restore.items() if alias_version(client, name, a) in (None, *deleted)}
    for run in runs:
        client.delete_run(run.info.run_id)
    if restore is not None and version_exists(client, name, restore):
        client.set_registered_model_alias(name, alias, restore)
    for target_alias_name, version in target_restore.items():
        if version not in deleted and version_exists(client, name, version):
            client.set_registered_model_alias(name, target_alias_name, version)
    logger.warning(
        "registration %s: removed what an interrupted attempt left behind: %d model version(s) of %r, %d run(s)",
        registration_id, len(leftovers), name, len(runs),
    )


def roll_back(
    client: MlflowClient,
    name: str,
    created: list[str],
    model_existed: bool | None,
    alias: str,
    alias_before: str | None,
    alias_set: bool,
    target_aliases_before: dict[str, str | None] | None = None,
) -> None:
    """Best effort: delete the versions this call created, restore the aliases (``alias`` and the
    per-target ones in ``target_aliases_before``: alias -> version before, None = none), drop a
    model it created."""
    for version in reversed(created):
        try:
            client.delete_model_version(name, version)
        except Exception:  # noqa: BLE001
            logger.warning("rollback: could not delete %s version %s", name, version, exc_info=True)
    if alias_set and alias_before is not None and alias_before not in created:
        with contextlib.suppress(Exception):
            client.set_registered_model_alias(name, alias, alias_before)
    for target_alias_name, before in (target_aliases_before or {}).items():
        with contextlib.suppress(Exception):
            if before is not None and before not in created:
                client.set_registered_model_alias(name, target_alias_name, before)
            elif before is None and alias_version(client, name, target_alias_name) is not None:
                client.delete_registered_model_alias(name, target_alias_name)
    if model_existed is False and created:
        try:
            if not client.search_model_versions(f"name = '{name}'"):
                client.delete_registered_model(name)
        except Exception:  # noqa: BLE001
            logger.warning("rollback: could not delete registered model %s", name, exc_info=True)
