"""Sample data for validation, calibration, evaluation and benchmarks, from any data source.

A spec's ``calibration.dataset`` / ``evaluation.dataset`` is an ``.npz`` path or a typed
source (``image_folder``, ``text``, ``function``: :data:`edgeport.spec.DatasetSpec`). Every
consumer opens it here, as a :class:`edgeport.datasources.DataSource` (``iter_chunks(chunk_size)``,
``num_samples``), so memory stays bounded by the chunk:

* :func:`calibration_source`: the first ``calibration.num_samples`` samples, inputs only;
* :func:`evaluation_source`: the first ``evaluation.max_samples`` samples with integer labels
  (``top1``) or reference embeddings (``cosine``, when the data holds them);
* :func:`reference_samples`: a few real samples for export and validation;
* :func:`benchmark_samples_path`: the ``.npz`` of real samples the benchmark runner feeds.

An ``.npz`` data file holds one array per model input, keyed by the input's name, with the
samples along the first axis: for an input declared ``[batch, 1, 8, 8]`` the array has
shape ``(n_samples, 1, 8, 8)``. A labelled (evaluation) file also holds ``labels``,
an integer array of shape ``(n_samples,)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeport.datasources import (
    DataSource,
    FunctionSource,
    ImageSource,
    NpzSource,
    Targets,
    TextSource,
    load_labels,
    load_reference_embeddings,
    module_origin,
)
from edgeport.errors import DataError
from edgeport.files import file_sha256
from edgeport.home import edgeport_home
from edgeport.spec import (
    FunctionDataSpec,
    ImageFolderDataSpec,
    InputSpec,
    PipelineSpec,
    TextDataSpec,
    spec_digest,
)

__all__ = [
    "batch_arrays",
    "benchmark_samples_path",
    "calibration_source",
    "dataset_digest",
    "describe_dataset",
    "evaluation_source",
    "iter_batches",
    "load_input_arrays",
    "load_labels",
    "load_reference_embeddings",
    "num_samples_of",
    "open_dataset",
    "random_inputs",
    "reference_samples",
    "samples_cache_dir",
]


def open_dataset(
    dataset: Any,
    spec: PipelineSpec,
    field: str,
    *,
    limit: int | None = None,
    targets: Targets = None,
) -> DataSource:
    """The :class:`~edgeport.datasources.DataSource` of a spec's ``dataset`` value.

    Args:
        dataset: an ``.npz`` path, or an ``ImageFolderDataSpec`` / ``TextDataSpec`` / ``FunctionDataSpec``.
        spec: the pipeline spec (inputs; the model's Hugging Face folder is a text source's
            default tokenizer; ``evaluation.labels_key`` / ``reference_key`` name ``.npz`` arrays).
        field: the spec field, e.g. ``"evaluation.dataset"`` (first in every error message).
        limit: keep the first N samples (None: all).
        targets: ``"labels"``, ``"reference"`` or None (inputs only).

    Raises:
        DataError: the data cannot be opened (see each source's class).
    """
    ev = spec.evaluation
    labels_key = ev.labels_key if ev is not None else "labels"
    reference_key = ev.reference_key if ev is not None else None
    if isinstance(dataset, ImageFolderDataSpec):
        return ImageSource(dataset, spec.inputs, field, limit, targets)
    if isinstance(dataset, TextDataSpec):
        folder = getattr(spec.model, "huggingface", None)  # model.huggingface, where the spec has that model source
        return TextSource(dataset, spec.inputs, field, limit, targets, Path(folder) if folder else None, reference_key)
    if isinstance(dataset, FunctionDataSpec):
        return FunctionSource(dataset, spec.inputs, field, limit, targets)
    return NpzSource(dataset, spec.inputs, field, limit, targets, labels_key, reference_key)


def calibration_source(spec: PipelineSpec, limit: int | None = None) -> DataSource:
    """The calibration data: the first ``limit`` (default ``calibration.num_samples``) samples, inputs only.

    Raises:
        DataError: no ``calibration`` section, or the data cannot be opened.
    """
    cal = spec.calibration
    if cal is None:
        raise DataError("calibration: the spec has no calibration section")
    return open_dataset(cal.dataset, spec, "calibration.dataset", limit=limit or cal.num_samples)


def evaluation_source(spec: PipelineSpec, limit: int | None = None) -> DataSource:
    """The evaluation data: the first ``limit`` (default ``evaluation.max_samples``, else all)
    samples, with int64 labels (``top1``) or reference embeddings (``cosine``; an ``.npz``'s
    ``reference_key`` array, a text source's ``reference`` file, a function's ``reference``
    items). ``source.has_reference`` False: the FP32 model's outputs are the reference.

    Raises:
        DataError: no ``evaluation`` section, or the data cannot be opened (labels missing, of
            another length, ...).
    """
    ev = spec.evaluation
    if ev is None:
        raise DataError("evaluation: the spec has no evaluation section")
    targets: Targets = "labels" if ev.metric == "top1" else "reference"
    return open_dataset(ev.dataset, spec, "evaluation.dataset", limit=limit or ev.max_samples, targets=targets)


def describe_dataset(dataset: Any) -> str:
    """A one-line description of a ``dataset`` value for settings and summaries: the ``.npz``
    path, ``image_folder:<folder>``, ``text:<file>`` or ``function:<module:function>``."""
    if isinstance(dataset, (ImageFolderDataSpec, TextDataSpec)):
        return f"{dataset.kind}:{dataset.path}"
    if isinstance(dataset, FunctionDataSpec):
        return f"function:{dataset.callable}"
    return str(dataset)


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file under ``folder``, sorted."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        out.append((path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def dataset_digest(dataset: Any) -> str | None:
    """A content key of a ``dataset`` value, for cache keys: sha256 (hex), None when its file is missing.

    * ``.npz``: the file's sha256;
    * ``image_folder``: the settings, plus every file's relative path, size and mtime (not each
      image's content: hashing a large folder on every run would cost minutes);
    * ``text``: the settings and the sha256 of the text and reference files, plus the tokenizer
      folder's listing;
    * ``function``: the settings and the sha256 of the callable's module file (data the function
      reads from elsewhere is not part of the key).
    """
    if isinstance(dataset, ImageFolderDataSpec):
        if not dataset.path.is_dir():
            return None
        labels = dataset.labels
        extra = {"labels_sha256": file_sha256(labels) if isinstance(labels, Path) and labels.is_file() else None}
        return spec_digest({"spec": dataset.model_dump(mode="json"), "files": _listing(dataset.path), **extra})
    if isinstance(dataset, TextDataSpec):
        if not dataset.path.is_file():
            return None
        parts = {
            "spec": dataset.model_dump(mode="json"),
            "text_sha256": file_sha256(dataset.path),
            "reference_sha256": file_sha256(dataset.reference) if dataset.reference and dataset.reference.is_file() else None,
            "tokenizer": _listing(dataset.tokenizer) if dataset.tokenizer and dataset.tokenizer.is_dir() else None,
        }
        return spec_digest(parts)
    if isinstance(dataset, FunctionDataSpec):
        origin = module_origin(dataset)
        return spec_digest({"spec": dataset.model_dump(mode="json"), "module_sha256": file_sha256(origin) if origin else None})
    path = Path(dataset)
    return file_sha256(path) if path.is_file() else None


def load_input_arrays(
    path: Any, inputs: Sequence[InputSpec], field: str, num_samples: int | None = None
) -> dict[str, np.ndarray]:
    """Load the first ``num_samples`` samples of every model input, in memory, checked against the spec.

    For small subsets and callers that hold a path; pipeline steps stream through
    :func:`calibration_source` / :func:`evaluation_source` instead.

    Args:
        path: the ``.npz`` file, or a typed dataset (a ``text`` one needs its ``tokenizer`` set here).
        inputs: the spec's inputs; every name must be a key of the file.
        field: the spec field the file comes from (e.g. ``"calibration.dataset"``), used in errors.
        num_samples: keep the first N samples (all if None).

    Returns:
        ``{input name: ndarray of shape (n_samples, *dims)}`` cast to each input's dtype.

    Raises:
        DataError: missing/unreadable file; an input name absent (the message lists the keys
            present); zero samples; wrong rank or a static dim that differs from the spec;
            inputs with different sample counts; a float array for an integer input.
    """
    if isinstance(path, ImageFolderDataSpec):
        source: DataSource = ImageSource(path, inputs, field, num_samples)
    elif isinstance(path, TextDataSpec):
        source = TextSource(path, inputs, field, num_samples)
    elif isinstance(path, FunctionDataSpec):
        source = FunctionSource(path, inputs, field, num_samples)
    else:
        source = NpzSource(path, inputs, field, num_samples)
    return source.take().inputs


def num_samples_of(arrays: dict[str, np.ndarray]) -> int:
    """Number of samples (first-axis length) in a dict of input arrays."""
    return next(iter(arrays.values())).shape[0]


def batch_arrays(arrays: dict[str, np.ndarray], batch_size: int, offset: int = 0) -> dict[str, np.ndarray]:
    """A batch of exactly ``batch_size`` samples starting at ``offset``, cycling through the data
    when it holds fewer samples (so any batch size can be built from real samples)."""
    n = num_samples_of(arrays)
    idx = (np.arange(batch_size) + offset) % n
    return {name: np.ascontiguousarray(a[idx]) for name, a in arrays.items()}


def iter_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches of at most ``batch_size`` samples (the last one may be smaller), no cycling."""
    n = num_samples_of(arrays)
    for start in range(0, n, batch_size):
        yield {name: a[start : start + batch_size] for name, a in arrays.items()}


def random_inputs(inputs: Sequence[InputSpec], batch_size: int, dim_size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic inputs (for shape checks only): floats ~ N(0, 1), integers in [0, 100).

    Named dims take ``batch_size`` for the first axis and ``dim_size`` elsewhere.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for inp in inputs:
        shape = [batch_size if i == 0 and isinstance(d, str) else (dim_size if isinstance(d, str) else d) for i, d in enumerate(inp.shape)]
        dtype = np.dtype(inp.dtype)
        if np.issubdtype(dtype, np.integer):
            out[inp.name] = rng.integers(0, 100, size=shape).astype(dtype)
        elif dtype == np.bool_:
            out[inp.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[inp.name] = rng.standard_normal(shape).astype(dtype)
    return out


def reference_samples(spec: PipelineSpec, num_samples: int) -> dict[str, np.ndarray]:
    """Real samples for export and validation: the first ``num_samples`` of the evaluation set,
    else of the calibration set; synthetic (:func:`random_inputs`) only when the spec has neither.

    Returns:
        ``{input name: ndarray of shape (n, *dims)}``, n <= ``num_samples``.

    Raises:
        DataError: the data cannot be read or does not fit the inputs (see :func:`open_dataset`).
    """
    if spec.evaluation is not None:
        return open_dataset(spec.evaluation.dataset, spec, "evaluation.dataset", limit=num_samples).take().inputs
    if spec.calibration is not None:
        return open_dataset(spec.calibration.dataset, spec, "calibration.dataset", limit=num_samples).take().inputs
    return random_inputs(spec.inputs, num_samples)


def samples_cache_dir() -> Path:
    """``$EDGEPORT_HOME/cache/samples``: benchmark samples written from non-``.npz`` data sources."""
    return edgeport_home() / "cache" / "samples"


def benchmark_samples_path(spec: PipelineSpec) -> str | None:
    """The ``.npz`` of real samples benchmarks feed: the evaluation set, else the calibration set,
    else None (the runner then uses seeded random data).

    An ``.npz`` dataset is returned as it is. Another kind is read once: its first
    ``max(benchmark.batch_sizes)`` samples are written to ``samples_cache_dir()/<key>.npz``
    (key: the data's :func:`dataset_digest` and the inputs), reused while the data is unchanged.

    Raises:
        DataError: a non-``.npz`` data source cannot be read.
    """
    if spec.evaluation is not None:
        dataset, field = spec.evaluation.dataset, "evaluation.dataset"
    elif spec.calibration is not None:
        dataset, field = spec.calibration.dataset, "calibration.dataset"
    else:
        return None
    if isinstance(dataset, Path):
        return str(dataset)
    count = max(spec.benchmark.batch_sizes)
    key = spec_digest({"data": dataset_digest(dataset), "inputs": [i.model_dump(mode="json") for i in spec.inputs], "count": count})
    path = samples_cache_dir() / f"{key[:24]}.npz"
    if not path.is_file():
        arrays = open_dataset(dataset, spec, field, limit=count).take().inputs
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez(out, **arrays)
            os.replace(tmp, path)  # atomic: a concurrent run never reads a partial file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return str(path)
