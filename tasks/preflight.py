"""Step 0, preflight: check every input the spec names before any expensive work.

Fails in seconds, with the culprit named, on: a missing/corrupt/unsafe checkpoint, a
factory that does not import or does not match the checkpoint, declared input shapes
that do not fit the model, an opset the installed ONNX Runtime cannot load, and
calibration/evaluation files that are missing, empty, unlabelled or of the wrong shape.

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

from edgeport.checkpoint import load_model
from edgeport.data import (
    batch_arrays,
    load_input_arrays,
    load_labels,
    load_reference_embeddings,
    num_samples_of,
    reference_samples,
)
from edgeport.errors import DataError
from edgeport.files import file_sha256
from edgeport.spec import PipelineSpec
from edgeport.targets import (
    CURRENT_ENV,
    EnvironmentReadiness,
    ensure_environment,
    resolve_target,
)
from tasks.export import EXAMPLE_BATCH, check_forward, check_opset_supported

__all__ = ["preflight", "prepare_targets", "preflight_task"]

logger = logging.getLogger("edgeport.preflight")


def preflight(spec: PipelineSpec) -> dict[str, Any]:
    """Check the spec's checkpoint, model, opset and data files.

    Returns:
        ``{"checkpoint_sha256", "calibration_samples", "evaluation_samples", "targets"}``
        (counts or None; ``targets``: see :func:`prepare_targets`).

    Raises:
        CheckpointError, ModelFactoryError: the model cannot be built from the checkpoint.
        SpecError: the declared input shapes do not fit the model.
        RuntimeLoadError: ``export.opset`` is beyond the installed onnx / ONNX Runtime.
        DataError: a data file is missing, empty, has no labels (top1) or reference embeddings
            of shape (n, dim) (cosine), or does not fit the inputs.
        TargetError: a target's profile or env is unknown, or ``EDGEPORT_ENV_SETUP`` is
            invalid. A managed environment that is missing, or whose setup fails, is not an
            error: the target is reported unavailable.
    """
    check_opset_supported(spec.export.opset)
    for target in spec.targets:
        if target.work_pool is None:  # a remote target's EPs and environment are the device's, checked there
            resolve_target(target, check_env=False)  # TargetError now, not after export: unknown profile or env
    model = load_model(spec.model)
    check_forward(spec, model, batch_arrays(reference_samples(spec, EXAMPLE_BATCH), EXAMPLE_BATCH))
    report: dict[str, Any] = {
        "checkpoint_sha256": file_sha256(spec.model.checkpoint),
        "calibration_samples": None,
        "evaluation_samples": None,
    }
    if spec.calibration is not None:
        cal = load_input_arrays(spec.calibration.dataset, spec.inputs, "calibration.dataset", spec.calibration.num_samples)
        report["calibration_samples"] = num_samples_of(cal)
    if spec.evaluation is not None:
        ev = spec.evaluation
        arrays = load_input_arrays(ev.dataset, spec.inputs, "evaluation.dataset", ev.max_samples)
        n = num_samples_of(arrays)
        if ev.metric == "cosine":
            if ev.reference_key is not None:
                ref = load_reference_embeddings(ev.dataset, ev.reference_key, "evaluation.dataset", ev.max_samples)
                if ref.shape[0] != n:
                    raise DataError(
                        f"evaluation.dataset: {ev.dataset}[{ev.reference_key!r}] has {ref.shape[0]} reference embeddings for {n} samples"
                    )
        else:
            labels = load_labels(ev.dataset, ev.labels_key, "evaluation.dataset", ev.max_samples)
            if labels.shape[0] != n:
                raise DataError(f"evaluation.dataset: {ev.dataset} has {labels.shape[0]} labels for {n} samples")
        report["evaluation_samples"] = int(n)
    report["targets"] = prepare_targets(spec)  # last: an environment's setup takes a while, bad input fails first
    return report


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
