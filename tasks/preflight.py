"""Step 0, preflight: check every input the spec names before any expensive work.

Fails in seconds, with the culprit named, on: a missing/corrupt/unsafe checkpoint, a
factory that does not import or does not match the checkpoint, declared input shapes
that do not fit the model, an opset the installed ONNX Runtime cannot load, and
calibration/evaluation files that are missing, empty, unlabelled or of the wrong shape.
"""

from __future__ import annotations

from typing import Any

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
from edgeport.targets import resolve_target
from tasks.export import EXAMPLE_BATCH, check_forward, check_opset_supported

__all__ = ["preflight"]


def preflight(spec: PipelineSpec) -> dict[str, Any]:
    """Check the spec's checkpoint, model, opset and data files.

    Returns:
        ``{"checkpoint_sha256", "calibration_samples", "evaluation_samples"}`` (counts or None).

    Raises:
        CheckpointError, ModelFactoryError: the model cannot be built from the checkpoint.
        SpecError: the declared input shapes do not fit the model.
        RuntimeLoadError: ``export.opset`` is beyond the installed onnx / ONNX Runtime.
        DataError: a data file is missing, empty, has no labels (top1) or reference embeddings
            of shape (n, dim) (cosine), or does not fit the inputs.
        TargetError: a local target's managed environment is not set up (targets with a
            ``work_pool`` run on their device's worker and are checked there).
    """
    check_opset_supported(spec.export.opset)
    for target in spec.targets:
        if target.work_pool is None:  # a remote target's EPs and environment are the device's, checked there
            resolve_target(target)  # TargetError now, not after export: unknown EP, managed env not set up
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
    return report


# --- Prefect wrapper -------------------------------------------------------------------------
from prefect import task  # noqa: E402

preflight_task = task(preflight, name="preflight", retries=0)
