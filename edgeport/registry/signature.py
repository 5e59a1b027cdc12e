"""The ONNX model as MLflow logs it: an input example, a signature inferred from one ONNX Runtime
call, and ``mlflow.onnx.log_model``. The only module of :mod:`edgeport.registry` that imports
``onnx`` / ``onnxruntime``; not imported by the package ``__init__`` (so the promotion flow,
which never logs a model, does not load ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from edgeport.data import reference_samples
from edgeport.spec import PipelineSpec, TargetSpec

__all__ = ["input_example", "log_onnx", "mlflow_providers", "mlflow_session_options", "onnx_signature"]

#: ``graph_optimization_level`` of a target as MLflow's ONNX flavour takes it (ONNX Runtime's
#: ``GraphOptimizationLevel`` values: ORT_DISABLE_ALL 0, ORT_ENABLE_BASIC 1, ORT_ENABLE_EXTENDED 2, ORT_ENABLE_ALL 99).
_OPT_LEVELS = {"disable": 0, "basic": 1, "extended": 2, "all": 99}

#: Above this file size (bytes) the model is logged with external data (protobuf's limit is 2 GiB).
EXTERNAL_DATA_ABOVE_BYTES = 1_500_000_000


def input_example(model: onnx.ModelProto, spec: PipelineSpec) -> dict[str, np.ndarray]:
    """Batch-1 example per graph input (initializers excluded), of the input's dtype: the first
    real sample from the spec's evaluation or calibration data (any kind) when it has a matching array
    (same rank and non-batch dims), else zeros (named or unknown dims -> 1)."""
    initializers = {t.name for t in model.graph.initializer}
    samples: dict[str, np.ndarray] = {}
    if spec.evaluation is not None or spec.calibration is not None:
        try:  # any data kind (edgeport.data): the first evaluation sample, else the first calibration sample
            samples = reference_samples(spec, 1)
        except Exception:  # noqa: BLE001 - a sample is a nicety; zeros will do
            samples = {}
    example: dict[str, np.ndarray] = {}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        tensor = graph_input.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim]
        sample = samples.get(graph_input.name)
        if sample is not None and sample.ndim == len(shape) and sample.shape[1:] == tuple(shape[1:]):
            example[graph_input.name] = sample.astype(dtype, copy=False)
        else:
            example[graph_input.name] = np.zeros(shape, dtype=dtype)
    return example


def _dynamic_axes(values: Any) -> dict[str, set[int] | None]:
    """Per graph value, the axes that are not a fixed positive size; None when no shape is recorded."""
    axes: dict[str, set[int] | None] = {}
    for value in values:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            axes[value.name] = None
            continue
        axes[value.name] = {i for i, d in enumerate(tensor.shape.dim) if not (d.HasField("dim_value") and d.dim_value > 0)}
    return axes


def onnx_signature(model: onnx.ModelProto, path: Path, example: dict[str, np.ndarray]) -> ModelSignature:
    """Signature inferred from one ONNX Runtime (CPU EP) call of the model at ``path`` on
    ``example``: dtypes and sizes from the arrays, -1 for every axis that is symbolic in the graph
    (e.g. ``batch``); axis 0 is taken as dynamic for outputs whose shape the graph does not record."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, example)))

    def schema(arrays: dict[str, np.ndarray], dynamic: dict[str, set[int] | None]) -> Schema:
        specs = []
        for name, array in arrays.items():
            array = np.asarray(array)
            axes = dynamic.get(name)
            if axes is None or (array.ndim and len(axes) > array.ndim):
                axes = {0} if array.ndim else set()
            shape = tuple(-1 if i in axes else int(n) for i, n in enumerate(array.shape))
            specs.append(TensorSpec(array.dtype, shape, name))
        return Schema(specs)

    return ModelSignature(
        inputs=schema(example, _dynamic_axes(model.graph.input)),
        outputs=schema(outputs, _dynamic_axes(model.graph.output)),
    )


def mlflow_providers(target: TargetSpec) -> list[str | list[Any]]:
    """The target's execution providers as ``mlflow.onnx.log_model(onnx_execution_providers=...)``
    takes them: a name, or ``[name, {option: str}]`` when the target sets options for it (a list,
    not a tuple: it round-trips through the MLmodel YAML; MLflow's loader turns it back into the
    ``(name, options)`` tuple ONNX Runtime wants). ``CPUExecutionProvider`` is appended when
    missing, so a model always has a provider to fall back on.

    Providers the loading environment's onnxruntime lacks (e.g. the OpenVINO EP, which edgeport runs
    in a managed environment) do not make loading fail: MLflow's loader (``mlflow.onnx``,
    ``_OnnxModelWrapper``) drops unavailable providers with a warning and keeps the others.
    """
    out: list[str | list[Any]] = []
    for name in target.providers:
        options = target.provider_options.get(name)
        if options:
            out.append([name, {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in options.items()}])
        else:
            out.append(name)
    if "CPUExecutionProvider" not in target.providers:
        out.append("CPUExecutionProvider")
    return out


def mlflow_session_options(target: TargetSpec) -> dict[str, Any]:
    """The target's ONNX Runtime session options as ``mlflow.onnx.log_model(onnx_session_options=...)``
    takes them, i.e. as the benchmark runner (:func:`edgeport.runner.session_options`) set them:
    thread counts (0 = ONNX Runtime's default; MLflow then leaves the default), execution mode,
    graph optimization level (0 / 1 / 2 / 99) and the config entries
    ``session.intra_op.allow_spinning`` / ``session.inter_op.allow_spinning`` = ``"0"``.

    Note: MLflow's loader skips a falsy value, so ``graph_optimization_level: disable`` (0) is
    recorded in the MLmodel file but a pyfunc load applies ONNX Runtime's default (all).
    """
    return {
        "intra_op_num_threads": target.intra_op_num_threads,
        "inter_op_num_threads": target.inter_op_num_threads,
        "execution_mode": target.execution_mode,
        "graph_optimization_level": _OPT_LEVELS[target.graph_optimization_level],
        "extra_session_config": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
    }


def log_onnx(spec: PipelineSpec, path: Path, target: TargetSpec | None = None) -> Any:
    """``mlflow.onnx.log_model`` (into the active run, artifact ``model``) of a FRESH ModelProto
    loaded from ``path`` (log_model moves tensors to external data in place, so a proto must not
    be reused), with :func:`onnx_signature`, :func:`input_example`, pinned onnx / onnxruntime
    requirements, and ``target``'s execution providers (:func:`mlflow_providers`) and session
    options (:func:`mlflow_session_options`), so a pyfunc load runs the model as that target was
    benchmarked. ``target`` defaults to the spec's first target. Returns MLflow's ModelInfo."""
    target = target or spec.targets[0]
    model = onnx.load(str(path))
    example = input_example(model, spec)
    signature = onnx_signature(model, path, example)
    return mlflow.onnx.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        onnx_execution_providers=mlflow_providers(target),
        onnx_session_options=mlflow_session_options(target),
        # one self-contained model.onnx unless protobuf's 2 GiB limit forces external data
        save_as_external_data=path.stat().st_size > EXTERNAL_DATA_ABOVE_BYTES,
    )
