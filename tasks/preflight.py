"""Step 0, preflight: check every input the spec names before any expensive work.

The checks are :func:`edgeport.checks.check_inputs` (the same ones ``edgeport run`` and
``edgeport validate-spec`` run before Prefect or MLflow is touched); inside the flow they
also guard runs started by a deployment or trigger. Fails in seconds, with the culprit named,
on: an ``export.opset`` the exporter, onnx or ONNX Runtime cannot handle; a local target that
cannot run; a missing/corrupt/unsafe checkpoint; a factory that does not import or does not
match the checkpoint; a Hugging Face folder, ``.pt2`` program or ONNX file that does not load
or fails the checks of its source; declared input shapes that do not fit the model; calibration/evaluation
files that are missing, empty, unlabelled, of the wrong shape, non-finite, labelled outside
the model's classes, or too small for ``evaluation.max_drop``.

Then it prepares the targets: a local target's managed environment (the OpenVINO EP's)
that is missing is created on demand (:func:`edgeport.targets.ensure_environment`),
unless ``EDGEPORT_ENV_SETUP=never`` (``edgeport run --no-env-setup``). A target whose
environment is missing or failed to build is *unavailable*: reported here, recorded as
``status: unavailable`` benchmark entries by the benchmark step, never a failed run.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import task

from edgeport.checks import check_inputs
from edgeport.errors import CheckpointError
from edgeport.sources import source_sha256
from edgeport.spec import PipelineSpec
from edgeport.targets import (
    CURRENT_ENV,
    EnvironmentReadiness,
    ensure_environment,
    resolve_target,
)

__all__ = ["preflight", "prepare_targets", "preflight_task"]

logger = logging.getLogger("edgeport.preflight")


def preflight(spec: PipelineSpec) -> dict[str, Any]:
    """Check the spec's exporter settings, targets, checkpoint, model and data files.

    Returns:
        ``{"checkpoint_sha256" (of the model source: :func:`edgeport.sources.source_sha256`), "calibration_samples", "evaluation_samples", "num_classes", "targets"}``
        (counts or None; ``targets``: see :func:`prepare_targets`).

    Raises:
        See :func:`edgeport.checks.check_inputs`: SpecError, RuntimeLoadError, TargetError,
        CheckpointError, ModelFactoryError, DataError.
    """
    report = check_inputs(spec)
    try:
        sha = source_sha256(spec.model)
    except OSError as exc:  # the file went away or became unreadable since it loaded
        raise CheckpointError(f"model.{spec.model.source} {spec.model.source_path}: cannot be read ({exc})") from None
    return {
        "checkpoint_sha256": sha,
        "calibration_samples": report.calibration_samples,
        "evaluation_samples": report.evaluation_samples,
        "num_classes": report.num_classes,
        "targets": prepare_targets(spec),  # last: an environment's setup takes a while, bad input fails first
    }


def prepare_targets(spec: PipelineSpec, *, setup: bool | None = None) -> dict[str, dict[str, Any]]:
    """Make the local targets' managed environments ready, creating missing ones on demand.

    Each managed environment is checked (and, when missing and ``setup`` allows, built:
    :func:`edgeport.targets.ensure_environment`) once, however many targets use it.
    Targets with a ``work_pool`` are skipped (their device checks them).

    Args:
        setup: create missing environments; default ``EDGEPORT_ENV_SETUP`` (``auto``
            unless ``never``; ``edgeport run --no-env-setup`` sets ``never``).

    Returns:
        target name -> ``{"env", "available", "reason", "setup_command", "created",
        "setup_s"}`` (``setup_command`` None and ``available`` True for ``env: current``).

    Raises:
        TargetError: unknown profile or env, or an invalid ``EDGEPORT_ENV_SETUP``.
    """
    checked: dict[str, EnvironmentReadiness] = {}
    report: dict[str, dict[str, Any]] = {}
    for target in spec.targets:
        if target.work_pool is not None:
            continue
        env = resolve_target(target, check_env=False).env
        if env == CURRENT_ENV:
            report[target.name] = {"env": env, "available": True, "reason": "this environment",
                                   "setup_command": None, "created": False, "setup_s": None}
            continue
        if env not in checked:
            checked[env] = ensure_environment(env, setup=setup)
        ready = checked[env]
        if not ready.available:
            logger.warning("target %r is unavailable: %s", target.name, ready.reason)
        report[target.name] = {"env": env, **{k: v for k, v in ready.to_dict().items() if k != "name"}}
    return report


preflight_task = task(preflight, name="preflight", retries=0)
