"""The MLflow tags edgeport writes and reads back across steps (register -> promote), and the
tags of a pipeline run's parent run and of a variant's nested run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

# the alias naming lives with the aliases (edgeport.promotion: pure, no MLflow)
from edgeport.files import file_sha256
from edgeport.promotion import target_alias
from edgeport.registry.params import git_commit, metric_key
from edgeport.spec import PipelineSpec, spec_digest

__all__ = [
    "LOGGED_PROVIDERS_TAG",
    "LOGGED_TARGET_TAG",
    "RANKED_BATCH_SIZE_TAG",
    "RANKED_TARGET_TAG",
    "REGISTRATION_TAG",
    "TARGET_ALIASES_BEFORE_TAG",
    "WON_TARGETS_TAG",
    "parent_run_tags",
    "ranked_on",
    "ranked_tags",
    "target_alias",
    "variant_run_tags",
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


def parent_run_tags(spec: PipelineSpec, spec_path: Path, flow_run: dict | None) -> dict[str, str]:
    """Tags of a pipeline run's parent MLflow run: the spec (path, name, digest, sha256), onnx and
    onnxruntime versions, the git commit, the Prefect flow run (id, name, url)."""
    tags = {
        "edgeport.spec": str(spec_path),
        "edgeport.spec_name": spec.name,
        "edgeport.spec_digest": spec_digest(spec),
        "edgeport.versions.onnx": version("onnx"),
        "edgeport.versions.onnxruntime": version("onnxruntime"),
    }
    if spec_path.is_file():
        tags["edgeport.spec_sha256"] = file_sha256(spec_path)
    commit = git_commit()
    if commit:
        tags["edgeport.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    for key in ("id", "name", "url"):
        if flow_run and flow_run.get(key):
            tags[f"edgeport.prefect.flow_run_{key}"] = str(flow_run[key])
    return tags


def variant_run_tags(variant: dict, registration_id: str | None) -> dict[str, str]:
    """The tags of a variant's nested run (verdicts, lineage, sha256, non-ok benchmarks)."""
    name, passed = variant["name"], bool(variant["passed"])
    lineage = variant.get("lineage") or {}
    tags = {
        "edgeport.variant": name,
        "edgeport.kind": str(variant["kind"]),
        "edgeport.passed": str(passed).lower(),
    }
    if registration_id:
        tags[REGISTRATION_TAG] = registration_id
    for key in ("parent", "step"):
        if lineage.get(key) is not None:
            tags[f"edgeport.lineage.{key}"] = str(lineage[key])
    for gate in ("validation", "evaluation"):  # the gates' verdicts, read by the promotion gate
        if isinstance(variant.get(gate), dict) and "passed" in variant[gate]:
            tags[f"edgeport.{gate}.passed"] = str(bool(variant[gate]["passed"])).lower()
    if isinstance(variant.get("evaluation"), dict) and variant["evaluation"].get("metric"):
        tags["edgeport.evaluation.metric"] = str(variant["evaluation"]["metric"])
    if variant.get("sha256"):
        tags["edgeport.sha256"] = str(variant["sha256"])
    for entry in variant.get("benchmarks") or []:
        if entry.get("status") != "ok":
            tags[metric_key(f"edgeport.benchmark.{entry.get('target')}.b{entry.get('batch_size')}")] = str(entry.get("status"))
    return tags
