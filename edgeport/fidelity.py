"""Quality of a model without labels: fidelity of its embeddings to a reference model's.

For an embedding model (e.g. a sentence encoder) there is no top-1 to compare: the
quality of a variant (quantized, fused, another exporter) is how closely its embeddings
follow the reference's (the FP32 PyTorch model's, or the FP32 ONNX model's) on held-out
inputs. Four views, from local to global:

* ``cosine_mean`` / ``cosine_min``: cosine similarity of each sample's variant embedding
  with its reference embedding, averaged and at its worst;
* ``nn_agreement``: the fraction of samples whose nearest neighbour among the *other*
  samples (arg-max of cosine similarity) is the same under the variant as under the
  reference: what a retrieval index would return;
* ``spearman``: Spearman rank correlation of all pairwise similarities (i < j), variant
  vs reference: whether the variant ranks pairs of texts the same way.

The gate is on the mean cosine (``min_cosine``, default 0.99): quantization can wreck a
transformer's output while every step "succeeds", and a mean cosine below 0.99 is
already visible in retrieval (see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeport.data import iter_batches
from edgeport.errors import DataError, RuntimeLoadError

logger = logging.getLogger("edgeport.fidelity")

__all__ = ["DEFAULT_MIN_COSINE", "embed_onnx", "fidelity_metrics", "fidelity_report", "pairwise_cosine", "rowwise_cosine", "write_report"]

#: Default gate on the mean cosine similarity to the reference embeddings.
DEFAULT_MIN_COSINE = 0.99
#: Norm floor, so an all-zero embedding gives cosine 0 instead of NaN.
_EPS = 1e-12


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def _check(embeddings: np.ndarray, reference: np.ndarray) -> None:
    if embeddings.ndim != 2 or reference.ndim != 2:
        raise DataError(
            f"embeddings must be 2-D (n_samples, dim): got {embeddings.shape} and reference {reference.shape}"
        )
    if embeddings.shape != reference.shape:
        raise DataError(f"embeddings of shape {embeddings.shape} do not match the reference's {reference.shape}")
    if embeddings.shape[0] == 0:
        raise DataError("no samples: embeddings are empty")


def rowwise_cosine(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample with its reference.

    Args:
        embeddings: ndarray of shape (n_samples, dim).
        reference: ndarray of shape (n_samples, dim).

    Returns:
        float64 ndarray of shape (n_samples,), in [-1, 1] (NaN where ``embeddings`` has NaN).

    Raises:
        DataError: shapes differ or are not 2-D.
    """
    _check(embeddings, reference)
    return np.sum(_unit(embeddings) * _unit(reference), axis=1)


def pairwise_cosine(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of samples.

    Args:
        embeddings: ndarray of shape (n_samples, dim).

    Returns:
        float64 ndarray of shape (n_samples, n_samples), symmetric, ones on the diagonal.
    """
    unit = _unit(embeddings)
    return unit @ unit.T


def fidelity_metrics(embeddings: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The four fidelity measures of ``embeddings`` against ``reference``.

    Args:
        embeddings: the variant's embeddings, ndarray of shape (n_samples, dim).
        reference: the reference embeddings of the same samples, shape (n_samples, dim).

    Returns:
        ``{"cosine_mean", "cosine_min", "nn_agreement", "spearman", "num_samples",
        "nonfinite"}``. ``nn_agreement`` and ``spearman`` need at least 2 and 3 samples
        (NaN below). Non-finite embeddings make every measure NaN (``nonfinite`` counts
        the elements).

    Raises:
        DataError: shapes differ, are not 2-D, or hold no samples.
    """
    from scipy.stats import spearmanr

    _check(embeddings, reference)
    n = embeddings.shape[0]
    nonfinite = int(embeddings.size - np.count_nonzero(np.isfinite(embeddings)))
    if nonfinite:
        nan = float("nan")
        return {"cosine_mean": nan, "cosine_min": nan, "nn_agreement": nan, "spearman": nan, "num_samples": n, "nonfinite": nonfinite}
    cos = rowwise_cosine(embeddings, reference)
    nn_agreement = spearman = float("nan")
    if n >= 2:
        sim, ref_sim = pairwise_cosine(embeddings), pairwise_cosine(reference)
        np.fill_diagonal(sim, -np.inf)
        np.fill_diagonal(ref_sim, -np.inf)
        nn_agreement = float(np.mean(np.argmax(sim, axis=1) == np.argmax(ref_sim, axis=1)))
        if n >= 3:
            upper = np.triu_indices(n, k=1)
            spearman = float(spearmanr(sim[upper], ref_sim[upper]).statistic)
    return {
        "cosine_mean": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "nn_agreement": nn_agreement,
        "spearman": spearman,
        "num_samples": n,
        "nonfinite": 0,
    }


def fidelity_report(
    embeddings: np.ndarray,
    reference: np.ndarray,
    min_cosine: float = DEFAULT_MIN_COSINE,
    reference_name: str = "torch",
) -> dict[str, Any]:
    """Fidelity metrics and the gate, in the shape of an evaluation result.

    Args:
        embeddings: the variant's embeddings, ndarray of shape (n_samples, dim).
        reference: the reference embeddings, ndarray of shape (n_samples, dim).
        min_cosine: gate on the mean cosine similarity (default :data:`DEFAULT_MIN_COSINE`).
        reference_name: what the reference is (``torch`` = FP32 PyTorch, ``fp32`` = FP32 ONNX).

    Returns:
        ``{"metric": "cosine", "value" (= cosine_mean), "cosine_mean", "cosine_min",
        "nn_agreement", "spearman", "num_samples", "nonfinite", "min_cosine", "reference",
        "passed"}``; ``passed`` is ``cosine_mean >= min_cosine`` (False for NaN).

    Raises:
        DataError: see :func:`fidelity_metrics`.
    """
    metrics = fidelity_metrics(embeddings, reference)
    passed = bool(np.isfinite(metrics["cosine_mean"]) and metrics["cosine_mean"] >= min_cosine)
    return {
        "metric": "cosine",
        "value": metrics["cosine_mean"],
        **metrics,
        "min_cosine": min_cosine,
        "reference": reference_name,
        "passed": passed,
    }


def embed_onnx(
    onnx_path: str | Path,
    arrays: dict[str, np.ndarray],
    input_names: Sequence[str] | None = None,
    output_name: str | None = None,
    batch_size: int = 32,
    intra_op_num_threads: int = 0,
) -> np.ndarray:
    """Run an ONNX embedding model over samples, in batches.

    Args:
        onnx_path: the model.
        arrays: ``{input name: ndarray of shape (n_samples, *dims)}``.
        input_names: inputs to feed (default: the model's inputs, all of which must be in ``arrays``).
        output_name: the embedding output (default: the model's first output).
        batch_size: samples per run.
        intra_op_num_threads: ONNX Runtime threads (0 = its default).

    Returns:
        float32 ndarray of shape (n_samples, dim).

    Raises:
        RuntimeLoadError: ONNX Runtime cannot load the model.
        DataError: an input the model needs is missing from ``arrays``.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_num_threads
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeLoadError(f"onnxruntime {ort.__version__} cannot load {onnx_path}: {' '.join(str(exc).split())[:400]}") from None
    names = list(input_names) if input_names is not None else [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{onnx_path} needs inputs {missing}; the data has {sorted(arrays)}")
    output = output_name or session.get_outputs()[0].name
    feeds = {n: arrays[n] for n in names}
    out = [session.run([output], batch)[0] for batch in iter_batches(feeds, batch_size)]
    return np.concatenate(out).astype(np.float32)


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write a report as JSON (NaN written as ``NaN``, as Python's json does)."""
    Path(path).write_text(json.dumps(report, indent=2))
