"""Prefect cache keys of the pipeline's expensive deterministic steps, so that a re-run resumes.

A pipeline run that failed late (the MLflow server stayed down past ``registry.retry.window_s``)
is re-run with the same spec and output folder; the steps before registration then come back
as Prefect ``Cached`` states instead of running again. Each step's key is built from:

* the sha256 of every input file it reads (ONNX models, checkpoint, data sets): a changed file
  is a different key, an unchanged file in another place is the same content;
* the digests of the spec sections the step depends on (:func:`edgeport.spec.spec_digest`),
  not of the whole spec, so changing e.g. a benchmark setting keeps the quantized models;
* where it writes (the output folder or file), since the cached result names those paths;
* the versions of the libraries that produce the result (edgeport, onnx, onnxruntime, torch
  for steps that run PyTorch; the host name for benchmarks, which are measurements of a machine).

Results are persisted by Prefect (``persist_result=True``) in its result storage
(``PREFECT_LOCAL_STORAGE_PATH``, default ``$PREFECT_HOME/storage``). The flow checks a cached
result's output files before using it and runs the step again (``refresh_cache=True``) when
they were deleted or changed (:func:`files_intact`).
"""

from __future__ import annotations

import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

import edgeport
from edgeport.data import dataset_digest
from edgeport.files import file_sha256
from edgeport.spec import PipelineSpec, spec_digest

__all__ = ["data_digests", "file_digest", "files_intact", "library_versions", "sections", "step_key"]

_DIGESTS: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def file_digest(path: str | Path | None) -> str | None:
    """sha256 (hex) of a file; None when ``path`` is None or not a file.

    Memoized on (absolute path, size, mtime in ns): a key function may be asked several times
    per run for the same large model or data set.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    try:
        p = p.resolve()
        st = p.stat()
    except OSError:
        return None
    if not p.is_file():
        return None
    memo = (str(p), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if memo in _DIGESTS:
            return _DIGESTS[memo]
    value = file_sha256(p)
    with _LOCK:
        _DIGESTS[memo] = value
    return value


def sections(spec: PipelineSpec, *names: str) -> dict[str, str | None]:
    """``{section: spec_digest(section)}`` for the named top-level spec sections (None if unset)."""
    out: dict[str, str | None] = {}
    for name in names:
        value = getattr(spec, name)
        if value is None:
            out[name] = None
        elif isinstance(value, list):
            out[name] = spec_digest({"items": [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]})
        elif hasattr(value, "model_dump"):
            out[name] = spec_digest(value)
        else:
            out[name] = spec_digest({"value": value})
    return out


def data_digests(spec: PipelineSpec) -> dict[str, str | None]:
    """Content keys of the spec's calibration and evaluation data sets: an ``.npz`` file's sha256
    (memoized, :func:`file_digest`), else :func:`edgeport.data.dataset_digest` of the typed source."""

    def digest(section: Any) -> str | None:
        if section is None:
            return None
        return file_digest(section.dataset) if isinstance(section.dataset, Path) else dataset_digest(section.dataset)

    return {"calibration": digest(spec.calibration), "evaluation": digest(spec.evaluation)}


def library_versions(torch: bool = False, nncf: bool = False) -> dict[str, str]:
    """Versions of the libraries that shape a step's result (``torch`` for steps that run PyTorch,
    ``nncf`` for NNCF-built variants; both read from package metadata, no import)."""
    versions = {"edgeport": edgeport.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    if torch:  # from the package metadata (= torch.__version__): computing a key never imports torch
        versions["torch"] = version("torch")
    if nncf:
        versions["nncf"] = version("nncf")
    return versions


def step_key(step: str, **parts: Any) -> str:
    """The Prefect cache key ``edgeport-<step>-<sha256 of the parts' canonical JSON>``."""
    return f"edgeport-{step}-" + spec_digest(parts)


def files_intact(files: dict[str, str | None]) -> bool:
    """True when every file exists and, where a sha256 is given, still has that content."""
    for path, sha in files.items():
        if not Path(path).is_file():
            return False
        if sha is not None and file_digest(path) != sha:
            return False
    return True
