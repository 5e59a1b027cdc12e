"""Sample data for validation, calibration and evaluation: ``.npz`` files, checked against the spec's inputs.

A data file holds one array per model input, keyed by the input's name, with the
samples along the first axis: for an input declared ``[batch, 1, 8, 8]`` the array has
shape ``(n_samples, 1, 8, 8)``. A labelled (evaluation) file also holds ``labels``,
an integer array of shape ``(n_samples,)``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edgeport.errors import DataError
from edgeport.spec import InputSpec, PipelineSpec

__all__ = [
    "batch_arrays",
    "benchmark_samples_path",
    "iter_batches",
    "load_input_arrays",
    "load_labels",
    "load_reference_embeddings",
    "num_samples_of",
    "random_inputs",
    "reference_samples",
]


def _open_npz(path: Path, field: str) -> np.lib.npyio.NpzFile:
    if not Path(path).is_file():
        raise DataError(f"{field}: file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{field}: {path} is not a readable .npz file ({type(exc).__name__}: {exc})") from None


def load_input_arrays(
    path: str | Path, inputs: Sequence[InputSpec], field: str, num_samples: int | None = None
) -> dict[str, np.ndarray]:
    """Load one array per model input from an ``.npz`` file and check it against the spec.

    Args:
        path: the ``.npz`` file.
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
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    with _open_npz(path, field) as npz:
        keys = list(npz.files)
        for inp in inputs:
            if inp.name not in keys:
                raise DataError(f"{field}: {path} has no array for input {inp.name!r} (arrays present: {keys})")
            arr = npz[inp.name]
            if arr.ndim != len(inp.shape):
                raise DataError(
                    f"{field}: {path}[{inp.name!r}] has shape {arr.shape} (rank {arr.ndim}), but input "
                    f"{inp.name!r} is declared {inp.shape} (rank {len(inp.shape)})"
                )
            for axis, (got, want) in enumerate(zip(arr.shape, inp.shape)):
                if isinstance(want, int) and axis > 0 and got != want:
                    raise DataError(
                        f"{field}: {path}[{inp.name!r}] has shape {arr.shape}; axis {axis} is {got}, "
                        f"but input {inp.name!r} is declared {inp.shape}"
                    )
            target = np.dtype(inp.dtype)
            if np.issubdtype(target, np.integer) and not np.issubdtype(arr.dtype, np.integer):
                raise DataError(f"{field}: {path}[{inp.name!r}] has dtype {arr.dtype}; input {inp.name!r} needs {inp.dtype}")
            arrays[inp.name] = np.ascontiguousarray(arr[:num_samples] if num_samples else arr, dtype=target)
    counts = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{field}: {path}: inputs have different sample counts {counts}")
    if next(iter(counts.values())) == 0:
        raise DataError(f"{field}: {path} holds no samples (empty arrays)")
    return arrays


def load_labels(path: str | Path, key: str, field: str, num_samples: int | None = None) -> np.ndarray:
    """Load integer class labels, shape ``(n_samples,)``, dtype int64.

    Raises:
        DataError: file missing/unreadable, ``key`` absent, not 1-D, or not integers.
    """
    path = Path(path)
    with _open_npz(path, field) as npz:
        if key not in npz.files:
            raise DataError(f"{field}: {path} has no {key!r} array (arrays present: {list(npz.files)}); labels are required")
        labels = npz[key]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{field}: {path}[{key!r}] must be 1-D integers, got shape {labels.shape} dtype {labels.dtype}")
    return labels[:num_samples].astype(np.int64) if num_samples else labels.astype(np.int64)


def load_reference_embeddings(path: str | Path, key: str, field: str, num_samples: int | None = None) -> np.ndarray:
    """Load reference embeddings, ndarray of shape ``(n_samples, dim)``, as float32.

    Raises:
        DataError: file missing/unreadable, ``key`` absent (the message lists the arrays
            present), not 2-D, empty, or not floating point.
    """
    path = Path(path)
    with _open_npz(path, field) as npz:
        if key not in npz.files:
            raise DataError(
                f"{field}: {path} has no {key!r} array (arrays present: {list(npz.files)}); "
                "metric cosine needs reference embeddings (evaluation.reference_key)"
            )
        ref = npz[key]
    if ref.ndim != 2 or ref.shape[0] == 0 or ref.shape[1] == 0 or not np.issubdtype(ref.dtype, np.floating):
        raise DataError(
            f"{field}: {path}[{key!r}] must be float embeddings of shape (n_samples, dim), got shape {ref.shape} dtype {ref.dtype}"
        )
    return (ref[:num_samples] if num_samples else ref).astype(np.float32)


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
        DataError: see :func:`load_input_arrays`.
    """
    if spec.evaluation is not None:
        return load_input_arrays(spec.evaluation.dataset, spec.inputs, "evaluation.dataset", num_samples)
    if spec.calibration is not None:
        return load_input_arrays(spec.calibration.dataset, spec.inputs, "calibration.dataset", num_samples)
    return random_inputs(spec.inputs, num_samples)


def benchmark_samples_path(spec: PipelineSpec) -> str | None:
    """The ``.npz`` of real samples benchmarks feed: the evaluation set, else the calibration set,
    else None (the runner then uses seeded random data)."""
    if spec.evaluation is not None:
        return str(spec.evaluation.dataset)
    if spec.calibration is not None:
        return str(spec.calibration.dataset)
    return None
