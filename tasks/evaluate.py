"""Step 4, evaluate: every variant (FP32 included) on the held-out evaluation set.

Metric ``top1``: the fraction of samples whose arg-max over the first output's last
axis equals the label. Each quantized variant is compared with FP32: ``drop`` =
FP32 top-1 - variant top-1 (absolute; 0.005 = 0.5 pp), ``agreement`` = fraction of
samples where the variant predicts the same class as FP32. The gate: ``drop <= max_drop``
and, when ``min_value`` is set, ``value >= min_value``.

Metric ``cosine`` (embedding models, no labels): the first output of each variant is
compared with reference embeddings by :func:`edgeport.fidelity.fidelity_report`
(``cosine_mean`` = ``value``, ``cosine_min``, ``nn_agreement``, ``spearman``). The reference
is the data's reference embeddings (an ``.npz``'s ``reference_key`` array, e.g. the FP32
PyTorch embeddings; a text source's ``reference`` file; a function's ``reference`` items),
for every variant FP32 included, or, when the data has none (``reference_key: null``), the
FP32 ONNX model's saved embeddings.

The evaluation set is streamed (:func:`edgeport.data.evaluation_source`), ``EVAL_BATCH_SIZE``
samples at a time: memory holds one batch of inputs plus the predictions (or embeddings). ``drop`` = FP32's mean cosine - the variant's; ``agreement`` = ``nn_agreement``.
The gate: ``cosine_mean >= min_cosine``, for every variant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from edgeport.data import evaluation_source
from edgeport.datasources import ArraySource, DataSource
from edgeport.errors import DataError, SpecError
from edgeport.spec import PipelineSpec
from tasks import cache as _cache
from tasks.validate import ort_session

logger = logging.getLogger("edgeport.evaluate")

__all__ = ["EVAL_BATCH_SIZE", "evaluate_model", "predict"]

#: Batch size used to embed the evaluation set for metric ``cosine``.
EMBED_BATCH_SIZE = 32

#: Batch size used to run the evaluation set (throughput only; results do not depend on it).
EVAL_BATCH_SIZE = 64


def predict(spec: PipelineSpec, onnx_path: str | Path, arrays: dict[str, np.ndarray] | DataSource) -> np.ndarray:
    """Class predictions of an ONNX model.

    Args:
        arrays: ``{input name: ndarray of shape (n_samples, *dims)}``, or a data source read
            ``EVAL_BATCH_SIZE`` samples at a time.

    Returns:
        int64 ndarray of shape ``(n_samples,)``: arg-max of the first output over its last axis.

    Raises:
        RuntimeLoadError: ONNX Runtime cannot load the model.
    """
    source = arrays if isinstance(arrays, DataSource) else ArraySource(arrays, field="evaluation data")
    session = ort_session(onnx_path)
    first = spec.outputs[0]
    preds = [np.argmax(session.run([first], batch)[0], axis=-1) for batch in source.iter_inputs(EVAL_BATCH_SIZE)]
    return np.concatenate(preds).astype(np.int64)


def evaluate_model(
    spec: PipelineSpec,
    onnx_path: str | Path,
    name: str,
    output_dir: str | Path,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate one variant; with ``reference`` (the FP32 result of this function), gate on the drop.

    Args:
        spec: needs an ``evaluation`` section.
        onnx_path: the variant's model.
        name: variant name (names the predictions file).
        output_dir: where ``predictions-<name>.npy`` (top1: int64, shape (n_samples,)) or
            ``embeddings-<name>.npy`` (cosine: float32, shape (n_samples, dim)) and
            ``evaluation-<name>.json`` are written.
        reference: FP32's evaluation dict; None when evaluating FP32 itself.

    Returns:
        top1: ``{"metric": "top1", "value", "drop", "agreement", "max_drop", "min_value",
        "passed", "num_samples", "predictions_path"}``.
        cosine: ``{"metric": "cosine", "value" (= cosine_mean), "cosine_mean", "cosine_min",
        "nn_agreement", "spearman", "nonfinite", "min_cosine", "reference", "passed", "drop",
        "agreement", "num_samples", "predictions_path"}`` (see :func:`edgeport.fidelity.fidelity_report`).

    Raises:
        SpecError: the spec has no ``evaluation`` section.
        DataError: evaluation file missing, no labels (top1) or reference embeddings (cosine),
            or labels/references and inputs of different lengths.
        RuntimeLoadError: ONNX Runtime cannot load the model.
    """
    ev = spec.evaluation
    if ev is None:
        raise SpecError("evaluation: the spec has no evaluation section")
    if ev.metric == "cosine":
        return _evaluate_cosine(spec, onnx_path, name, Path(output_dir), reference)
    session = ort_session(onnx_path)
    first = spec.outputs[0]
    batches, labelled = [], []
    for chunk in evaluation_source(spec).iter_chunks(EVAL_BATCH_SIZE):
        batches.append(np.argmax(session.run([first], chunk.inputs)[0], axis=-1))
        labelled.append(chunk.labels)
    preds, labels = np.concatenate(batches).astype(np.int64), np.concatenate(labelled)
    n = labels.shape[0]
    top1 = float(np.mean(preds == labels))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pred_path = output_dir / f"predictions-{name}.npy"
    np.save(pred_path, preds)
    if reference is None:
        drop, agreement = 0.0, 1.0
    else:
        ref_preds = np.load(reference["predictions_path"])
        drop = reference["value"] - top1
        agreement = float(np.mean(preds == ref_preds))
    result = {
        "metric": ev.metric,
        "value": top1,
        "drop": drop,
        "agreement": agreement,
        "max_drop": ev.max_drop,
        "min_value": ev.min_value,
        "passed": drop <= ev.max_drop + 1e-12 and (ev.min_value is None or top1 >= ev.min_value),
        "num_samples": n,
        "predictions_path": str(pred_path),
    }
    (output_dir / f"evaluation-{name}.json").write_text(json.dumps(result, indent=2))
    logger.info("evaluated %s: top-1 %.4f, drop %.4f, agreement %.4f", name, top1, drop, agreement)
    return result


def _evaluate_cosine(
    spec: PipelineSpec, onnx_path: str | Path, name: str, output_dir: Path, reference: dict[str, Any] | None
) -> dict[str, Any]:
    """Metric ``cosine``: fidelity of the first output's embeddings to the reference embeddings."""
    from edgeport.fidelity import fidelity_report

    ev = spec.evaluation
    assert ev is not None
    source = evaluation_source(spec)
    session = ort_session(onnx_path)
    embedded, references = [], []
    for chunk in source.iter_chunks(EMBED_BATCH_SIZE):
        embedded.append(session.run([spec.outputs[0]], chunk.inputs)[0].astype(np.float32))
        if chunk.reference is not None:
            references.append(chunk.reference)
    emb = np.concatenate(embedded)
    n = emb.shape[0]
    output_dir.mkdir(parents=True, exist_ok=True)
    emb_path = output_dir / f"embeddings-{name}.npy"
    np.save(emb_path, emb)
    if references:
        ref = np.concatenate(references)
        where = f"{ev.dataset}[{ev.reference_key!r}]" if isinstance(ev.dataset, Path) else source.description
        if ref.shape != emb.shape:
            raise DataError(f"evaluation.dataset: {where} has shape {ref.shape}, but {name} embeds the {n} samples as {emb.shape}")
        ref_name = f"{ev.reference_key} (dataset)" if isinstance(ev.dataset, Path) else "reference (dataset)"
    elif reference is None:  # FP32 itself, with FP32 as the reference: identical by definition
        ref, ref_name = emb, "fp32"
    else:
        ref, ref_name = np.load(reference["predictions_path"]), "fp32"
    report = fidelity_report(emb, ref, ev.min_cosine, reference_name=ref_name)
    ref_value = 1.0 if reference is None else reference["value"]
    result = {
        **report,
        "drop": (ref_value - report["value"]) if reference is not None else 0.0,
        "agreement": report["nn_agreement"],
        "num_samples": n,
        "predictions_path": str(emb_path),
    }
    (output_dir / f"evaluation-{name}.json").write_text(json.dumps(result, indent=2))
    logger.info(
        "evaluated %s: cosine mean %.4f, min %.4f, NN agreement %.3f, Spearman %.4f (%s)",
        name, report["cosine_mean"], report["cosine_min"], report["nn_agreement"], report["spearman"],
        "passed" if report["passed"] else f"FAILED min_cosine {ev.min_cosine}",
    )
    return result


# --- Prefect wrapper -------------------------------------------------------------------------



def _evaluate_cache_key(context: object, parameters: dict) -> str | None:
    """Prefect cache key: sha256 of the model, the inputs/outputs/evaluation sections, the
    evaluation data's sha256, the reference result and its predictions file's sha256, the
    variant name, the output folder and library versions. None (no caching) when the model or
    the reference predictions are missing."""
    spec: PipelineSpec = parameters["spec"]
    model_sha = _cache.file_digest(parameters["onnx_path"])
    reference = parameters.get("reference")
    ref = None
    if reference is not None:
        ref_file = reference.get("predictions_path")
        ref = {"result": _cache.spec_digest(reference), "predictions_sha256": _cache.file_digest(ref_file)}
        if ref["predictions_sha256"] is None:
            return None
    if model_sha is None:
        return None
    return _cache.step_key(
        "evaluate",
        model_sha256=model_sha,
        name=parameters["name"],
        reference=ref,
        sections=_cache.sections(spec, "inputs", "outputs", "evaluation"),
        data=_cache.data_digests(spec),
        output_dir=str(Path(parameters["output_dir"]).resolve()),
        versions=_cache.library_versions(),
    )


#: Deterministic: no retries. Cached (persisted result) on the model's sha256 + settings, so a
#: re-run resumes; the flow evaluates again when the cached predictions file is gone.
evaluate_task = task(
    evaluate_model,
    name="evaluate",
    retries=0,
    task_run_name="evaluate-{name}",
    cache_key_fn=_evaluate_cache_key,
    persist_result=True,
)
