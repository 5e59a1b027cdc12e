"""The MLflow tags edgeport writes and reads back across steps (register -> promote). Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["RANKED_BATCH_SIZE_TAG", "RANKED_TARGET_TAG", "REGISTRATION_TAG", "ranked_on", "ranked_tags"]

#: Tag on every run and model version of one registration (the same across its attempts).
REGISTRATION_TAG = "edgeport.registration_id"
#: Model-version tags naming where the pipeline ranked the version (first target, primary batch size).
RANKED_TARGET_TAG = "edgeport.ranked_target"
RANKED_BATCH_SIZE_TAG = "edgeport.ranked_batch_size"

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
