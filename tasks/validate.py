"""Step 2, validate: ONNX Runtime against a reference, on real samples, at every validation batch size.

Three modes:

* reference = the PyTorch model (the FP32 export): a **gated** parity check. An element
  passes when ``|ort - torch| <= atol + rtol * |torch|`` (numpy.allclose's rule); one
  breach, a shape mismatch, or a NaN/Inf fails validation with a report of the worst element.
  Running every batch size in ``validation.batch_sizes`` catches a batch dim that the
  exporter silently made static.
* reference = the FP32 ONNX model (quantized variants): the same comparison is reported,
  not gated (the accuracy gate lives in the evaluation step), but the variant must load,
  run at every batch size with the reference's output shapes, and produce finite outputs.
* no reference (the FP32 model of an ``onnx`` model source: there is no PyTorch model): a
  **gated** run check. The model was checked with ``onnx.checker`` (full check) and shape
  inference by the export step; here it must run at every batch size and give finite outputs
  of the declared count.

A model whose batch dim is static (an ONNX source exported with a fixed batch) runs only at
that batch size: the other sizes are skipped with a reason (``report["skipped"]``), not failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from prefect import task

from edgeport.checkpoint import load_model
from edgeport.checks import model_samples
from edgeport.data import batch_arrays
from edgeport.errors import CheckpointError, RuntimeLoadError, ValidationFailed
from edgeport.sources import onnx_static_batch, source_sha256
from edgeport.spec import PipelineSpec
from tasks import cache as _cache

logger = logging.getLogger("edgeport.validate")

__all__ = ["compare_outputs", "ort_session", "shape_cases", "validate_onnx"]

#: Denominator floor for relative error, so |ref| ~ 0 does not blow it up.
REL_EPS = 1e-12


def ort_session(onnx_path: str | Path, intra_op_num_threads: int = 0):
    """An ONNX Runtime CPU session for ``onnx_path``.

    Raises:
        RuntimeLoadError: ONNX Runtime cannot load the model (opset, op type, corrupt file);
            the message names the file and the runtime's reason.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_num_threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeLoadError(
            f"onnxruntime {ort.__version__} cannot load {onnx_path}: {' '.join(str(exc).split())[:400]}"
        ) from None


def compare_outputs(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    """Compare one output tensor with its reference.

    Args:
        actual: ONNX Runtime output, any shape.
        expected: reference output, same shape.

    Returns:
        ``{"max_abs_err", "max_rel_err", "violations" (elements failing
        |a - e| <= atol + rtol*|e|), "nonfinite" (NaN/Inf count in actual), "worst":
        {"index", "actual", "expected", "abs_err"}}``; ``worst`` is the element with the
        largest ratio of error to its allowance.
    """
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nonfinite = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    diff = np.abs(a - e)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    allowance = atol + rtol * np.abs(e)
    ratio = diff / np.maximum(allowance, REL_EPS)
    flat = int(np.argmax(ratio)) if ratio.size else 0
    idx = tuple(int(i) for i in np.unravel_index(flat, ratio.shape)) if ratio.size else ()
    rel = diff / np.maximum(np.abs(e), REL_EPS)
    return {
        "max_abs_err": float(diff.max()) if diff.size else 0.0,
        "max_rel_err": float(rel.max()) if rel.size else 0.0,
        "violations": int(np.count_nonzero(diff > allowance)),
        "nonfinite": nonfinite,
        "worst": {
            "index": list(idx),
            "actual": float(a[idx]) if ratio.size else None,
            "expected": float(e[idx]) if ratio.size else None,
            "abs_err": float(diff[idx]) if ratio.size else None,
        },
    }


def _torch_reference(spec: PipelineSpec) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    import torch

    model = load_model(spec.model)

    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(*(torch.from_numpy(batch[i.name]) for i in spec.inputs))
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().numpy() for o in outs]

    return run


def _onnx_reference(path: str | Path, output_names: list[str]) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    session = ort_session(path)
    return lambda batch: session.run(output_names, batch)


def shape_cases(spec: PipelineSpec, samples: dict[str, np.ndarray]) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """The input batches validation runs: every ``validation.batch_sizes`` (real samples cycled),
    plus, for each dynamic non-batch dim (e.g. ``sequence``), the largest batch size with that
    dim cut to about 2/3 of the samples' size: a length the exporter never traced.

    Returns:
        ``[(label, batch size, {input name: ndarray}), ...]``, e.g. ``("batch size 7", 7, {...})``
        or ``("batch size 32, sequence=86", 32, {...})``.
    """
    v = spec.validation
    cases = [(f"batch size {bs}", bs, batch_arrays(samples, bs)) for bs in v.batch_sizes]
    dynamic = set(spec.dynamic_dims)
    dims = {d for i in spec.inputs for axis, d in enumerate(i.shape) if axis > 0 and isinstance(d, str) and d in dynamic}
    bs = max(v.batch_sizes)
    for dim in sorted(dims):
        axes = {i.name: i.shape.index(dim) for i in spec.inputs if dim in i.shape[1:]}
        size = min(samples[name].shape[axis] for name, axis in axes.items())
        new = size * 2 // 3 + 1
        if new >= size:
            continue
        cut = {name: (np.take(a, np.arange(new), axis=axes[name]) if name in axes else a) for name, a in samples.items()}
        cases.append((f"batch size {bs}, {dim}={new}", bs, batch_arrays(cut, bs)))
    return cases


def validate_onnx(
    spec: PipelineSpec,
    onnx_path: str | Path,
    reference_onnx: str | Path | None = None,
    report_path: str | Path | None = None,
) -> dict[str, Any]:
    """Validate ``onnx_path`` against PyTorch (``reference_onnx=None``, gated) or against an
    FP32 ONNX model (reported, not gated on tolerance).

    Samples: ``validation.num_samples`` real samples (:func:`edgeport.data.reference_samples`),
    cycled to fill each batch size in ``validation.batch_sizes``; dynamic non-batch dims are
    also run at a size the exporter never traced (:func:`shape_cases`).

    Returns:
        The report: ``{"passed", "reference" ("torch"|"fp32"|"none": an ``onnx`` source), "gated", "rtol", "atol",
        "max_abs_err", "max_rel_err", "batch_sizes", "outputs": {output name: {"max_abs_err",
        "max_rel_err", "violations", "nonfinite", "worst": {"batch_size", "index",
        "actual", "expected", "abs_err"}}}, "error"}``, plus ``"skipped": [{"case", "reason"}]``
        for a static batch dim. Also written to ``report_path``.

    Raises:
        ValidationFailed: gated mode and a tolerance breach, a NaN/Inf, or an output shape
            that differs from the reference (e.g. a batch dim exported as static); the
            message names the output, batch size and worst element; ``.report`` holds the report.
        RuntimeLoadError: ONNX Runtime cannot load ``onnx_path`` (gated mode) or the reference.
        CheckpointError, ModelFactoryError, DataError: the reference cannot be built.
    """
    v = spec.validation
    gated = reference_onnx is None
    samples = model_samples(spec, v.num_samples)
    outputs = list(spec.outputs)
    if not gated:
        reference, kind = _onnx_reference(reference_onnx, outputs), "fp32"
    elif spec.model.source == "onnx":
        reference, kind = None, "none"
    else:
        reference, kind = _torch_reference(spec), "torch"
    report: dict[str, Any] = {
        "passed": False,
        "reference": kind,
        "gated": gated,
        "rtol": v.rtol,
        "atol": v.atol,
        "batch_sizes": list(v.batch_sizes),
        "max_abs_err": None,
        "max_rel_err": None,
        "outputs": {},
        "error": None,
    }

    def finish(error: str | None) -> dict[str, Any]:
        report["error"] = error
        report["passed"] = error is None
        errs = list(report["outputs"].values())
        if errs:
            report["max_abs_err"] = max(o["max_abs_err"] for o in errs)
            report["max_rel_err"] = max(o["max_rel_err"] for o in errs)
        if report_path is not None:
            Path(report_path).write_text(json.dumps(report, indent=2))
        if error is not None and gated:
            raise ValidationFailed(f"validation of {onnx_path} failed: {error}", report)
        return report

    try:
        session = ort_session(onnx_path)
    except RuntimeLoadError as exc:
        if gated:
            raise
        return finish(str(exc))

    first_error: str | None = None
    per_output: dict[str, list[dict[str, Any]]] = {name: [] for name in outputs}
    cases = shape_cases(spec, samples)
    static = onnx_static_batch(spec.inputs)
    if static is not None:
        report["skipped"] = [
            {"case": label, "reason": f"the model's batch dim is static ({static}): batch size {bs} cannot run"}
            for label, bs, _ in cases if bs != static
        ]
        for skipped in report["skipped"]:
            logger.warning("validation of %s: %s skipped: %s", onnx_path, skipped["case"], skipped["reason"])
        cases = [c for c in cases if c[1] == static] or [(f"batch size {static}", static, batch_arrays(samples, static))]
    report["shapes"] = [label for label, _, _ in cases]
    for where, bs, batch in cases:
        try:
            actual = session.run(outputs, batch)
        except Exception as exc:
            return finish(f"onnxruntime failed at {where}: {' '.join(str(exc).split())[:400]}")
        if reference is None:  # an ONNX source: no reference, the outputs must be finite
            for name, a in zip(outputs, actual):
                bad = int(np.size(a) - np.count_nonzero(np.isfinite(a))) if np.issubdtype(a.dtype, np.floating) else 0
                per_output[name].append(
                    {"max_abs_err": 0.0, "max_rel_err": 0.0, "violations": 0, "nonfinite": bad,
                     "worst": {"index": [], "actual": None, "expected": None, "abs_err": None, "batch_size": bs, "shape_case": where}}
                )
                if first_error is None and bad:
                    first_error = f"output {name!r} at {where} has {bad} NaN/Inf values"
                if first_error is None and a.ndim and a.shape[0] != bs:
                    first_error = f"output {name!r} at {where}: first dim {a.shape[0]} is not the batch size {bs}"
            continue
        expected = reference(batch)
        for name, a, e in zip(outputs, actual, expected):
            if a.shape != e.shape:
                return finish(
                    f"output {name!r} at {where}: shape {list(a.shape)} != reference {list(e.shape)} "
                    "(a dim exported as static?)"
                )
            cmp = compare_outputs(a, e, v.rtol, v.atol)
            cmp["worst"]["batch_size"] = bs
            cmp["worst"]["shape_case"] = where
            per_output[name].append(cmp)
            w = cmp["worst"]
            if first_error is None and cmp["nonfinite"]:
                first_error = f"output {name!r} at {where} has {cmp['nonfinite']} NaN/Inf values"
            elif first_error is None and gated and cmp["violations"]:
                first_error = (
                    f"output {name!r} at {where}: {cmp['violations']} elements beyond "
                    f"atol={v.atol} + rtol={v.rtol}*|ref|; worst at index {w['index']}: onnxruntime "
                    f"{w['actual']!r} vs reference {w['expected']!r} (abs err {w['abs_err']:.3g})"
                )
    for name, cmps in per_output.items():
        report["outputs"][name] = {
            "max_abs_err": max(c["max_abs_err"] for c in cmps),
            "max_rel_err": max(c["max_rel_err"] for c in cmps),
            "violations": sum(c["violations"] for c in cmps),
            "nonfinite": sum(c["nonfinite"] for c in cmps),
            "worst": max(cmps, key=lambda c: c["max_abs_err"])["worst"],
        }
    result = finish(first_error)
    logger.info(
        "validated %s vs %s: max abs err %.3g, max rel err %.3g",
        onnx_path,
        report["reference"],
        report["max_abs_err"],
        report["max_rel_err"],
    )
    return result


# --- Prefect wrapper -------------------------------------------------------------------------



def _validate_cache_key(context: object, parameters: dict) -> str | None:
    """Prefect cache key: sha256 of the model and of its reference (the FP32 ONNX model, or the
    checkpoint and model section for the PyTorch reference), the inputs/outputs/validation
    sections, the sample data's sha256, the report path and library versions. None (no
    caching) when a file is missing: the step then fails with its own error."""
    spec: PipelineSpec = parameters["spec"]
    model_sha = _cache.file_digest(parameters["onnx_path"])
    reference_onnx = parameters.get("reference_onnx")
    if reference_onnx is None:
        try:
            digest = source_sha256(spec.model)
        except CheckpointError:
            return None
        reference = {"torch": digest, **_cache.sections(spec, "model")}
    else:
        reference = {"onnx": _cache.file_digest(reference_onnx)}
        if reference["onnx"] is None:
            return None
    if model_sha is None:
        return None
    report_path = parameters.get("report_path")
    return _cache.step_key(
        "validate",
        model_sha256=model_sha,
        reference=reference,
        sections=_cache.sections(spec, "inputs", "outputs", "validation"),
        data=_cache.data_digests(spec),
        report_path=str(Path(report_path).resolve()) if report_path else None,
        versions=_cache.library_versions(torch=reference_onnx is None),
    )


#: Deterministic: a tolerance breach is not retried (and, a failure, never cached). Cached
#: (persisted result) on the models' sha256 + settings, so a re-run resumes.
validate_task = task(
    validate_onnx, name="validate", retries=0, cache_key_fn=_validate_cache_key, persist_result=True
)
