"""Checks before anything starts: the spec, its files and its data, in about a second.

:func:`check_inputs` is what ``edgeport run`` and ``edgeport validate-spec`` call before Prefect
or MLflow is touched, and what the pipeline's preflight step (:mod:`tasks.preflight`) calls
inside the flow. Every failure raises an :mod:`edgeport.errors` subclass whose message names
the field, the file and the value:

==============================  ===================================================  ====================
what                            check                                                error
==============================  ===================================================  ====================
``export.opset``                within the chosen exporter's range (torch 2.x:       SpecError
                                dynamo >= 18, legacy 7-20) and loadable by the
                                installed onnx / ONNX Runtime                        RuntimeLoadError
``targets``                     local targets resolve (EPs, managed environment)     TargetError
``model``                       checkpoint readable with ``weights_only=True``       CheckpointError,
                                (or safetensors), factory imports; a Hugging Face    ModelFactoryError,
                                folder or ``.pt2`` program loads; one forward pass   SpecError
                                fits ``inputs``. ``onnx``: checker (full check),
                                shape inference, ONNX Runtime loads it, graph I/O    CheckpointError,
                                = ``inputs``/``outputs``, one run                    RuntimeLoadError
``calibration.dataset``,        every sample read once, in chunks, whatever the      DataError
``evaluation.dataset``          kind (``.npz``, image folder, text, function):
                                readable files, arrays per input, shapes, dtypes,
                                finite values, labels (top1) or reference
                                embeddings (cosine) per sample; images of one size,
                                text that is not empty, a function that runs
``evaluation.dataset`` labels   within the class count of the model's first output   DataError
``evaluation.max_drop``         resolvable with the evaluation set's sample count    DataError
``--output``                    a folder, or creatable as one                        OptionError
==============================  ===================================================  ====================

Nothing here imports Prefect, MLflow, tasks or flows; torch is imported only to load the
checkpoint. The checks that need torch (the exporter's opset range, the model's forward pass)
are remembered once passed, under ``$EDGEPORT_HOME/cache/checks/<key>.json``, keyed on
everything they depend on (:func:`model_check_key`): a re-run with unchanged inputs does not
import torch.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import math
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from edgeport.checkpoint import load_model
from edgeport.data import (
    batch_arrays,
    calibration_source,
    evaluation_source,
    reference_samples,
)
from edgeport.datasources import DataSource
from edgeport.errors import DataError, OptionError, RuntimeLoadError, SpecError
from edgeport.files import file_sha256
from edgeport.home import edgeport_home
from edgeport.sources import check_onnx_model, example_inputs, onnx_static_batch
from edgeport.spec import PipelineSpec, spec_digest
from edgeport.targets import resolve_target

__all__ = [
    "EXAMPLE_BATCH",
    "InputReport",
    "check_evaluation_size",
    "check_export_opset",
    "check_finite",
    "check_forward",
    "check_onnx_source",
    "check_inputs",
    "check_label_range",
    "check_opset_supported",
    "check_output_dir",
    "check_source",
    "exporter_opset_range",
    "example_batch_size",
    "min_evaluation_samples",
    "model_samples",
]

#: Samples in the example batch traced by the exporter: 2, because torch.export
#: specialises a dynamic dim whose example size is 0 or 1.
EXAMPLE_BATCH = 2


@dataclass(frozen=True)
class InputReport:
    """What :func:`check_inputs` found.

    Attributes:
        calibration_samples: samples used from ``calibration.dataset`` (None without calibration).
        evaluation_samples: samples used from ``evaluation.dataset`` (None without evaluation).
        num_classes: class count of the model's first output (top1 evaluation only, else None).
    """

    calibration_samples: int | None = None
    evaluation_samples: int | None = None
    num_classes: int | None = None


# ------------------------------------------------------------------------------ export


def exporter_opset_range(exporter: str) -> tuple[int, int | None]:
    """Opsets ``torch.onnx.export`` writes as asked with ``exporter`` (``dynamo`` or ``legacy``).

    The dynamo exporter builds from torchlib's opset (18 in torch 2.5-2.13,
    ``torch.onnx._internal.exporter._constants.TORCHLIB_OPSET``): below it, torch only *tries* a
    version conversion and otherwise keeps opset 18 with a logged warning, so lower opsets are
    refused here. The legacy (TorchScript) exporter has symbolic functions for opsets
    ``ONNX_MIN_OPSET``..``ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET`` of ``torch.onnx._constants``
    (7-20 in torch 2.13). Values are read from the installed torch when it has them.

    Returns:
        ``(lowest, highest)``; highest None = bounded by the installed onnx / ONNX Runtime only.
    """
    if exporter == "dynamo":
        try:
            from torch.onnx._internal.exporter import _constants as dynamo_constants

            return int(dynamo_constants.TORCHLIB_OPSET), None
        except (ImportError, AttributeError):  # another torch layout: the documented value
            return 18, None
    try:
        from torch.onnx import _constants as legacy_constants

        return int(legacy_constants.ONNX_MIN_OPSET), int(legacy_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return 7, 20


def _range_text(low: int, high: int | None) -> str:
    return f"{low}-{high}" if high is not None else f">= {low}"


def check_export_opset(spec: PipelineSpec) -> None:
    """Refuse an ``export.opset`` the chosen exporter would not honour (see :func:`exporter_opset_range`).

    ``exporter: auto`` needs one of the two exporters to support it (the other is skipped).

    Raises:
        SpecError: names ``export.opset``, the exporter and the opsets each exporter supports.
    """
    import torch

    opset, exporter = spec.export.opset, spec.export.exporter
    ranges = {name: exporter_opset_range(name) for name in ("dynamo", "legacy")}
    fits = {name: low <= opset and (high is None or opset <= high) for name, (low, high) in ranges.items()}
    if (exporter == "auto" and any(fits.values())) or fits.get(exporter, False):
        return
    supported = ", ".join(f"{name} {_range_text(*r)}" for name, r in ranges.items())
    hint = next((f"; use export.exporter: {name}" for name, ok in fits.items() if ok), "")
    raise SpecError(
        f"export.opset {opset}: the {exporter} exporter of the installed torch {torch.__version__} cannot write "
        f"opset {opset} (opsets it supports: {supported}){hint}"
    )


def check_opset_supported(opset: int) -> None:
    """Refuse an opset that the installed onnx or ONNX Runtime cannot handle, before exporting.

    Raises:
        RuntimeLoadError: names the opset, the field and the installed versions.
    """
    import onnx  # lazy: onnx and onnxruntime are needed only by this check here
    import onnxruntime as ort

    onnx_max = onnx.defs.onnx_opset_version()
    if opset > onnx_max:
        raise RuntimeLoadError(f"export.opset {opset}: the installed onnx {onnx.__version__} knows opsets up to {onnx_max}")
    probe = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "opset_probe",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        ir_version=min(onnx.IR_VERSION, 10),
    )
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeLoadError(
            f"export.opset {opset}: the installed onnxruntime {ort.__version__} cannot load this opset "
            f"({_opset_reason(str(exc))})"
        ) from None


def _opset_reason(message: str) -> str:
    """The informative tail of ORT's opset error (it opens with a long C++ signature)."""
    text = " ".join(message.split())
    marker = text.find("Current official support")
    return text[marker:][:300] if marker >= 0 else text[-300:]


# ------------------------------------------------------------------------------ model


def check_forward(spec: PipelineSpec, model: Any, example: dict[str, np.ndarray]) -> tuple:
    """Run the torch model once on ``example`` (``{input name: ndarray (batch, *dims)}``).

    Returns:
        ``(args, outputs)``: the positional torch tensors in the spec's input order, and what the
        model returned.

    Raises:
        SpecError: the forward pass fails: the declared input shapes/dtypes do not fit the model.
    """
    import torch

    args = tuple(torch.from_numpy(example[i.name]) for i in spec.inputs)
    try:
        with torch.no_grad():
            outputs = model(*args)
    except Exception as exc:
        shapes = {i.name: i.shape for i in spec.inputs}
        raise SpecError(
            f"inputs: the declared shapes {shapes} do not fit the model: a forward pass on a batch of that "
            f"shape failed with {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from None
    return args, outputs


def example_batch_size(spec: PipelineSpec) -> int:
    """Samples in the example batch: :data:`EXAMPLE_BATCH`, or the batch size an ONNX model fixes
    (a static batch dim)."""
    return onnx_static_batch(spec.inputs) or EXAMPLE_BATCH


def model_samples(spec: PipelineSpec, num_samples: int) -> dict[str, np.ndarray]:
    """Samples for export, checks and validation: the spec's data (:func:`edgeport.data.reference_samples`);
    for a ``huggingface`` source without data, its tokenizer's / image processor's example inputs
    (:func:`edgeport.sources.example_inputs`).

    Returns:
        ``{input name: ndarray of shape (n, *dims)}``.
    """
    if spec.evaluation is None and spec.calibration is None:
        found = example_inputs(spec, num_samples)
        if found is not None:
            return found
    return reference_samples(spec, num_samples)


def check_onnx_source(spec: PipelineSpec, example: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Check an ``onnx`` model source (:func:`edgeport.sources.check_onnx_model`), that its graph's
    inputs and outputs are the spec's, and run it once on ``example``.

    Returns:
        The outputs of the run, in ``spec.outputs`` order.

    Raises:
        CheckpointError, RuntimeLoadError: see :func:`~edgeport.sources.check_onnx_model`.
        SpecError: the graph's inputs / outputs differ from the spec's, or the run fails on inputs
            of the declared shapes.
    """
    import onnxruntime as ort  # lazy: see check_opset_supported

    path = spec.model.onnx
    proto = check_onnx_model(path)
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    if names != [i.name for i in spec.inputs]:
        raise SpecError(f"inputs: model.onnx {path} has inputs {names}, the spec declares {[i.name for i in spec.inputs]}")
    outputs = [o.name for o in proto.graph.output]
    if not set(spec.outputs) <= set(outputs):
        raise SpecError(f"outputs: model.onnx {path} has outputs {outputs}, the spec declares {list(spec.outputs)}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    try:
        return session.run(list(spec.outputs), example)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        shapes = {i.name: i.shape for i in spec.inputs}
        raise SpecError(
            f"inputs: model.onnx {path} does not run on inputs of the declared shapes {shapes}: "
            f"{' '.join(str(exc).split())[:300]}"
        ) from None


def _first_output(outputs: Any) -> Any:
    """The first output of a forward pass: a tensor, or the first of a tuple/list/dict of them."""
    if isinstance(outputs, dict):
        return next(iter(outputs.values()), None)
    if isinstance(outputs, (tuple, list)):
        return outputs[0] if outputs else None
    return outputs


# ------------------------------------------------------------------------------ data


def check_finite(arrays: dict[str, np.ndarray], path: str | Path, field: str) -> None:
    """Refuse NaN or +-inf in floating-point input arrays.

    Args:
        arrays: ``{input name: ndarray of shape (n_samples, *dims)}``.
        path: the file they come from (named in the error).
        field: the spec field of the file (e.g. ``calibration.dataset``).

    Raises:
        DataError: names the field, file, array and how many values are NaN / infinite.
    """
    for name, arr in arrays.items():
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        nan = int(np.isnan(arr).sum())
        inf = int(np.isinf(arr).sum())
        if nan or inf:
            bad_samples = int((~np.isfinite(arr.reshape(arr.shape[0], -1))).any(axis=1).sum())
            raise DataError(
                f"{field}: {path}[{name!r}] holds non-finite values: {nan} NaN and {inf} infinite of {arr.size} "
                f"(in {bad_samples} of {arr.shape[0]} samples); replace or drop those samples"
            )


#: Samples per chunk when the pre-start checks read a data source.
CHECK_CHUNK = 256


@dataclass(frozen=True)
class SourceScan:
    """What :func:`check_source` read.

    Attributes:
        num_samples: samples read.
        labels: int64 ndarray of shape (num_samples,) (a source with labels), else None.
        has_reference: whether every chunk carried reference embeddings.
    """

    num_samples: int
    labels: np.ndarray | None
    has_reference: bool


def check_source(source: DataSource, chunk_size: int = CHECK_CHUNK) -> SourceScan:
    """Read every sample of ``source`` once, in chunks, and refuse NaN or +-inf in float inputs
    and reference embeddings (the source itself checks files, names, shapes and dtypes).

    Memory: one chunk plus the labels (8 bytes a sample).

    Raises:
        DataError: anything the source refuses (see :mod:`edgeport.datasources`); non-finite
            values, named like :func:`check_finite` with the counts over the whole data set.
    """
    counts: dict[str, list[int]] = {}  # name -> [nan, inf, size, bad samples]
    labels: list[np.ndarray] = []
    reference = True
    n = 0
    for chunk in source.iter_chunks(chunk_size):
        n += len(chunk)
        arrays = dict(chunk.inputs)
        if chunk.reference is not None:
            arrays[_reference_name(source)] = chunk.reference
        else:
            reference = False
        for name, arr in arrays.items():
            if not np.issubdtype(arr.dtype, np.floating):
                continue
            total = counts.setdefault(name, [0, 0, 0, 0])
            nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            total[0] += nan
            total[1] += inf
            total[2] += arr.size
            if nan or inf:
                total[3] += int((~np.isfinite(arr.reshape(arr.shape[0], -1))).any(axis=1).sum())
        if chunk.labels is not None:
            labels.append(chunk.labels)
    for name, (nan, inf, size, bad) in counts.items():
        if nan or inf:
            raise DataError(
                f"{source.field}: {source.description}[{name!r}] holds non-finite values: {nan} NaN and {inf} infinite of "
                f"{size} (in {bad} of {n} samples); replace or drop those samples"
            )
    return SourceScan(n, np.concatenate(labels) if labels else None, reference and n > 0)


def _reference_name(source: DataSource) -> str:
    return getattr(source, "reference_key", None) or "reference"


def check_label_range(labels: np.ndarray, num_classes: int, path: str | Path, key: str) -> None:
    """Refuse top-1 labels outside ``[0, num_classes)``.

    Args:
        labels: int64 ndarray of shape (n_samples,).
        num_classes: size of the last axis of the model's first output.

    Raises:
        DataError: names ``evaluation.dataset``, the file, the key, how many labels are out of
            range, their range and the class count.
    """
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(
            f"evaluation.dataset: {path}[{key!r}] has {int(bad.sum())} of {labels.shape[0]} labels outside the "
            f"model's {num_classes} classes [0, {num_classes - 1}] (labels range {int(labels.min())}..{int(labels.max())}; "
            "the class count is the last axis of the model's first output)"
        )


def min_evaluation_samples(max_drop: float) -> int:
    """The smallest evaluation set whose top-1 can resolve a drop of ``max_drop``.

    On n samples top-1 moves in steps of 1/n (one sample more or less misclassified), so a
    gate on a drop of ``max_drop`` is resolvable only when ``1/n <= max_drop``:
    ``n >= ceil(1 / max_drop)`` (0.005 -> 200 samples, 0.01 -> 100). ``max_drop = 0`` (no
    extra misclassification at all) is resolvable on any set.
    """
    if max_drop <= 0:
        return 1
    return math.ceil(1.0 / max_drop - 1e-9)  # 1e-9: 1/0.01 is 100.00000000000001 in binary floating point


def check_evaluation_size(n: int, max_drop: float, path: str | Path) -> None:
    """Refuse a top-1 evaluation set too small to resolve ``evaluation.max_drop`` (:func:`min_evaluation_samples`).

    Raises:
        DataError: names ``evaluation.max_drop``, the set size and the smallest set that resolves it.
    """
    need = min_evaluation_samples(max_drop)
    if n < need:
        raise DataError(
            f"evaluation.max_drop {max_drop:g}: evaluation.dataset {path} has {n} sample(s), so top-1 moves in steps "
            f"of 1/{n} = {1 / n:.4g} and cannot resolve a drop of {max_drop:g}; use at least {need} samples "
            f"(ceil(1 / max_drop)) or a max_drop >= {1 / n:.4g}"
        )


# ------------------------------------------------------------------------------ output


def check_output_dir(path: str | Path | None, option: str = "--output") -> None:
    """Refuse an output folder that cannot be one: an existing file, a path under a file, or
    a folder (or nearest existing parent) that is not writable. None = the default folder.

    Raises:
        OptionError: names ``option`` and the path.
    """
    if path is None:
        return
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise OptionError(f"{option} {path}: is an existing file, not a folder; give a folder (created if missing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OptionError(f"{option} {path}: {parent} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(f"{option} {path}: {parent} is not writable")


# ------------------------------------------------------------------------------ everything


def model_check_key(spec: PipelineSpec, example: dict[str, np.ndarray]) -> str | None:
    """The key (sha256 hex) under which the torch checks of ``spec`` are remembered, or None when
    they must run every time (a source other than ``checkpoint`` + ``factory``; the factory's module is not a file in ``model.search_path``, e.g. an
    installed package, or a file cannot be read).

    Covers: the checkpoint's sha256 (a checkpoint that passed the safe-loading check once has the
    same bytes), the factory module's file sha256, the ``model`` section, ``inputs``, ``outputs``,
    ``export``, the example batch (``{input name: ndarray}``) and the installed torch version.
    """
    if spec.model.source != "checkpoint":  # other sources are checked every time (no factory module to key on)
        return None
    module = spec.model.factory.partition(":")[0].split(".")[0]
    try:
        found = importlib.machinery.PathFinder.find_spec(module, [str(p) for p in spec.model.search_path])
        if found is None or not found.origin or not Path(found.origin).is_file():
            return None
        example_digest = hashlib.sha256()
        for name in sorted(example):
            array = np.ascontiguousarray(example[name])
            example_digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            example_digest.update(array.tobytes())
        return spec_digest({
            "checkpoint": _sha256(spec.model.checkpoint),
            "factory_source": _sha256(found.origin),
            "model": spec.model.model_dump(mode="json"),
            "inputs": [i.model_dump(mode="json") for i in spec.inputs],
            "outputs": spec.outputs,
            "export": spec.export.model_dump(mode="json"),
            "example": example_digest.hexdigest(),
            "torch": version("torch"),
        })
    except (OSError, ImportError, ValueError):
        return None


_SHA256: dict[tuple[str, int, int], str] = {}


def _sha256(path: str | Path) -> str:
    """:func:`edgeport.files.file_sha256`, memoized on (path, size, mtime in ns): the CLI's checks and
    preflight's run in one process and would otherwise hash a large checkpoint twice."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _SHA256:
        _SHA256[memo] = file_sha256(p)
    return _SHA256[memo]


def _check_memo(key: str) -> Path:
    return edgeport_home() / "cache" / "checks" / f"{key}.json"


def _remembered_output_shape(key: str | None) -> tuple | None:
    """The first output's shape recorded when the torch checks under ``key`` passed, or None."""
    if key is None:
        return None
    try:
        return tuple(json.loads(_check_memo(key).read_text())["first_output_shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_output_shape(key: str | None, shape: tuple) -> None:
    """Record that the torch checks under ``key`` passed (best effort: a read-only home only costs time)."""
    if key is None:
        return
    path = _check_memo(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"first_output_shape": [int(d) for d in shape]}))
        tmp.replace(path)
    except (OSError, TypeError, ValueError):
        pass


def check_inputs(spec: PipelineSpec, *, output_dir: str | Path | None = None, output_option: str = "--output") -> InputReport:
    """Check the spec's exporter settings, targets, checkpoint, model and data files, and the output folder.

    Runs in about a second on small models (one checkpoint load, one forward pass on 2 samples,
    the data files read once); touches neither Prefect nor MLflow. Writes nothing but the record
    that the torch checks passed (module docs), which lets a re-run skip them.

    Args:
        spec: the validated spec (:func:`edgeport.spec.load_spec`).
        output_dir: the output folder the run will write to (None: not checked).
        output_option: how the caller names ``output_dir`` in errors.

    Returns:
        An :class:`InputReport`.

    Raises:
        SpecError: ``export.opset`` the exporter cannot write; declared inputs that do not fit the model.
        RuntimeLoadError: ``export.opset`` beyond the installed onnx / ONNX Runtime.
        TargetError: a local target's EP or managed environment is not available (targets with a
            ``work_pool`` are checked on their device).
        CheckpointError, ModelFactoryError: the model cannot be built from its source (checkpoint and
            factory, Hugging Face folder, ``.pt2`` program), or the ONNX source fails the checker,
            shape inference or lacks its external data (the message names ``model.<source>``).
        RuntimeLoadError: also an ONNX source whose opset the installed onnx / ONNX Runtime cannot load.
        DataError: a data file is missing, unreadable, of the wrong shape or dtype, holds NaN/inf,
            has labels outside the model's classes or too few samples for ``evaluation.max_drop``.
        OptionError: ``output_dir`` cannot be a folder.
    """
    check_output_dir(output_dir, output_option)
    calibration_samples = evaluation_samples = num_classes = None
    if spec.calibration is not None:
        calibration_samples = check_source(calibration_source(spec)).num_samples
    labels = evaluation_description = None
    if spec.evaluation is not None:
        ev = spec.evaluation
        source = evaluation_source(spec)
        scan = check_source(source)
        evaluation_samples = scan.num_samples
        evaluation_description = source.description
        if ev.metric == "top1":
            labels = scan.labels
            check_evaluation_size(scan.num_samples, ev.max_drop, source.description)

    # torch, onnx and ONNX Runtime are imported from here on: the data checks above fail faster
    size = example_batch_size(spec)
    example = batch_arrays(model_samples(spec, size), size)
    key = model_check_key(spec, example)  # torch checks that passed before are remembered: a re-run skips torch
    shape = _remembered_output_shape(key)
    if spec.model.source != "onnx" and shape is None:  # an ONNX source is not exported: its own opset is checked below
        check_export_opset(spec)
    if spec.model.source != "onnx":
        check_opset_supported(spec.export.opset)
    for target in spec.targets:
        if target.work_pool is None:  # a remote target's EPs and environment are the device's, checked there
            resolve_target(target, check_env=False)  # a missing managed env is created on demand (prepare_targets)
    if spec.model.source == "onnx":
        shape = tuple(getattr(_first_output(check_onnx_source(spec, example)), "shape", ()))
    elif shape is None:
        _, outputs = check_forward(spec, load_model(spec.model), example)
        shape = tuple(getattr(_first_output(outputs), "shape", ()))
        _remember_output_shape(key, shape)
    if labels is not None:
        if len(shape) < 2:
            raise DataError(
                f"evaluation.metric top1: the model's first output {spec.outputs[0]!r} has shape {shape}, not "
                "(batch, num_classes); top-1 needs class scores"
            )
        num_classes = int(shape[-1])
        key = spec.evaluation.labels_key if isinstance(spec.evaluation.dataset, Path) else "labels"
        check_label_range(labels, num_classes, evaluation_description, key)
    return InputReport(calibration_samples, evaluation_samples, num_classes)
