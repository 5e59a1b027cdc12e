"""Step 0, preflight: check every input the spec names before any expensive work.

The checks are :func:`edgeport.checks.check_inputs` (the same ones ``edgeport run`` and
``edgeport validate-spec`` run before Prefect or MLflow is touched); inside the flow they
also guard runs started by a deployment or trigger. Fails in seconds, with the culprit named,
on: an ``export.opset`` the exporter, onnx or ONNX Runtime cannot handle; a local target that
cannot run; a missing/corrupt/unsafe checkpoint; a factory that does not import or does not
match the checkpoint; declared input shapes that do not fit the model; calibration/evaluation
files that are missing, empty, unlabelled, of the wrong shape, non-finite, labelled outside
the model's classes, or too small for ``evaluation.max_drop``.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from edgeport.checks import check_inputs
from edgeport.errors import CheckpointError
from edgeport.files import file_sha256
from edgeport.spec import PipelineSpec

__all__ = ["preflight", "preflight_task"]


def preflight(spec: PipelineSpec) -> dict[str, Any]:
    """Check the spec's exporter settings, targets, checkpoint, model and data files.

    Returns:
        ``{"checkpoint_sha256", "calibration_samples", "evaluation_samples", "num_classes"}``
        (counts or None).

    Raises:
        See :func:`edgeport.checks.check_inputs`: SpecError, RuntimeLoadError, TargetError,
        CheckpointError, ModelFactoryError, DataError.
    """
    report = check_inputs(spec)
    try:
        sha = file_sha256(spec.model.checkpoint)
    except OSError as exc:  # the file went away or became unreadable since it loaded
        raise CheckpointError(f"model.checkpoint {spec.model.checkpoint}: cannot be read ({exc})") from None
    return {
        "checkpoint_sha256": sha,
        "calibration_samples": report.calibration_samples,
        "evaluation_samples": report.evaluation_samples,
        "num_classes": report.num_classes,
    }


preflight_task = task(preflight, name="preflight", retries=0)
