"""The MLflow tags edgeport writes and reads back across steps (register -> promote). Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping

# the alias naming lives with the aliases (edgeport.promotion: pure, no MLflow)
from edgeport.promotion import target_alias

__all__ = [
    "LOGGED_PROVIDERS_TAG",
    "LOGGED_TARGET_TAG",
    "RANKED_BATCH_SIZE_TAG",
    "RANKED_TARGET_TAG",
    "REGISTRATION_TAG",
    "TARGET_ALIASES_BEFORE_TAG",
    "WON_TARGETS_TAG",
    "ranked_on",
    "ranked_tags",
    "target_alias",
    "won_tags",
]

#: Tag on every run and model version of one registration (the same across its attempts).
REGISTRATION_TAG = "edgeport.registration_id"
#: Model-version tags naming where the pipeline ranked the version (first target, primary batch size).
RANKED_TARGET_TAG = "edgeport.ranked_target"
RANKED_BATCH_SIZE_TAG = "edgeport.ranked_batch_size"

#: Model-version tag: the targets whose ``<alias>-<target>`` the version got, comma-separated, in spec order.
WON_TARGETS_TAG = "edgeport.won_targets"
#: Model-version tags: the target whose execution providers and session options the logged MLflow
#: model carries (the first target it won, else the spec's first target), and those providers as
#: JSON (``[name | [name, {option: value}], ...]``, as written to the MLmodel file).
LOGGED_TARGET_TAG = "edgeport.logged_target"
LOGGED_PROVIDERS_TAG = "edgeport.logged_providers"
#: Parent-run tag: ``{alias: version or null}`` of the per-target aliases before a registration
#: moved them (JSON), so a later attempt can put them back after an outage.
TARGET_ALIASES_BEFORE_TAG = "edgeport.target_aliases_before"

#: The older record of the same: a version tag ``p50_ms.<target>.b<batch>`` (still written).
_RANKED_P50_TAG = re.compile(r"^p50_ms\.(?P<target>.+)\.b(?P<batch>\d+)$")


def ranked_tags(target: str, batch_size: int, p50_ms: float | None) -> dict[str, str]:
    """The model-version tags recording where a version was ranked: the explicit
    :data:`RANKED_TARGET_TAG` / :data:`RANKED_BATCH_SIZE_TAG` and ``p50_ms.<target>.b<batch>``
    (p50 in ms, ``"n/a"`` without one)."""
    return {
        RANKED_TARGET_TAG: target,
        RANKED_BATCH_SIZE_TAG: str(int(batch_size)),
        f"p50_ms.{target}.b{int(batch_size)}": str(p50_ms) if p50_ms is not None else "n/a",
    }


def ranked_on(tags: Mapping[str, str] | None) -> tuple[str, int] | None:
    """(target, batch size) a version was ranked on, from its tags: the explicit
    :data:`RANKED_TARGET_TAG` / :data:`RANKED_BATCH_SIZE_TAG` when both are there and the batch
    size is a positive integer, else parsed from a ``p50_ms.<target>.b<batch>`` key (versions
    registered before the explicit tags); None when neither is there."""
    tags = tags or {}
    target, batch = tags.get(RANKED_TARGET_TAG), str(tags.get(RANKED_BATCH_SIZE_TAG) or "")
    if target and batch.isdigit() and int(batch) > 0:
        return target, int(batch)
    for key in tags:
        match = _RANKED_P50_TAG.match(key)
        if match:
            return match["target"], int(match["batch"])
    return None


def won_tags(wins: Mapping[str, tuple[int, float]], providers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The model-version tags recording which targets a version won.

    Args:
        wins: target -> (batch size, p50 in ms) for every target whose fastest passing variant this
            version is, in spec order.
        providers: target -> that target's execution providers as JSON (the real ones, also for
            targets whose EP the registering environment lacks); optional.

    Returns:
        :data:`WON_TARGETS_TAG` (comma list) and, per won target, ``edgeport.won.<target>.batch_size``,
        ``edgeport.won.<target>.p50_ms`` (and ``edgeport.won.<target>.providers`` when given).
    """
    tags = {WON_TARGETS_TAG: ",".join(wins)}
    for target, (batch_size, p50_ms) in wins.items():
        tags[f"edgeport.won.{target}.batch_size"] = str(int(batch_size))
        tags[f"edgeport.won.{target}.p50_ms"] = str(p50_ms)
        if providers and target in providers:
            tags[f"edgeport.won.{target}.providers"] = providers[target]
    return tags
