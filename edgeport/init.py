"""``edgeport init``: inspect a model source and write a commented pipeline spec that runs as written.

The source kind is read from the path: a folder is a ``huggingface`` model (``task`` from
``--task``, else guessed: ``modules.json`` -> sentence-embedding, a ``*ForSequenceClassification``
architecture -> text-classification, ``*ForImageClassification`` -> image-classification, else
feature-extraction); ``.pt2`` an ``exported_program``; ``.onnx`` an ``onnx`` file; any other
file a PyTorch ``checkpoint`` (``.pt``, ``.pth``, ``.ckpt``, ``.bin``, ``.safetensors``), which
needs ``factory`` and, since a state dict does not say its inputs, a ``.npz`` ``data`` file with
one array per input (names, dtypes, shapes are read from it).

Inputs and outputs come from the source (:func:`edgeport.sources.describe_source`) or, for a
checkpoint, from the data and one forward pass. Defaults written: variants ``int8-dynamic``
(always) and ``int8-static`` (with data: calibration from it); an ``evaluation`` section when
the data holds ``labels`` (top-1, ``max_drop`` >= 1 / samples, so the gate is resolvable) or
``embeddings`` (cosine, ``min_cosine`` 0.99); target ``cpu``; a short benchmark. The spec is
loaded back with :func:`edgeport.spec.load_spec` before it is returned.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeport.checkpoint import load_model
from edgeport.errors import DataError, OptionError
from edgeport.files import slug
from edgeport.sources import describe_source, onnx_static_batch
from edgeport.spec import ModelSpec, load_spec

__all__ = ["InitResult", "guess_task", "source_kind", "write_spec"]

#: Arrays of a data file that are not model inputs.
_NOT_INPUTS = ("labels", "embeddings", "text")


@dataclass(frozen=True)
class InitResult:
    """What :func:`write_spec` wrote.

    Attributes:
        path: the spec file.
        source: ``checkpoint``, ``huggingface``, ``exported_program`` or ``onnx``.
        inputs: the spec's inputs (``{"name", "dtype", "shape"}``).
        outputs: the spec's output names.
        notes: remarks for the user (static batch dim, what the data section holds).
    """

    path: Path
    source: str
    inputs: list[dict[str, Any]]
    outputs: list[str]
    notes: list[str]


def source_kind(path: Path) -> str:
    """The ``model`` source a path is: ``huggingface`` (folder), ``exported_program`` (``.pt2``),
    ``onnx`` (``.onnx``) or ``checkpoint`` (any other file).

    Raises:
        OptionError: the path does not exist.
    """
    if path.is_dir():
        return "huggingface"
    if not path.is_file():
        raise OptionError(f"SOURCE {path}: no such file or folder")
    return {".pt2": "exported_program", ".onnx": "onnx"}.get(path.suffix.lower(), "checkpoint")


def guess_task(folder: Path) -> str:
    """A Hugging Face folder's likely ``model.task`` (see the module doc)."""
    if (folder / "modules.json").is_file():
        return "sentence-embedding"
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "text-classification"
    if any(a.endswith("ForImageClassification") for a in architectures):
        return "image-classification"
    return "feature-extraction"


def _rel(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (the spec's), absolute when that needs more than two ``..``."""
    path = path.resolve()
    try:
        rel = os.path.relpath(path, folder.resolve())
    except ValueError:  # another drive
        return str(path)
    return str(path) if rel.startswith(os.path.join("..", "..", "..")) else rel


def _read_data(data: Path) -> dict[str, np.ndarray]:
    if data.suffix != ".npz":
        raise OptionError(f"--data {data}: edgeport init reads .npz data (one array per input, samples on axis 0)")
    if not data.is_file():
        raise OptionError(f"--data {data}: file not found")
    try:
        with np.load(data, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"--data {data}: not a readable .npz file ({exc})") from None


def _inputs_from_data(arrays: dict[str, np.ndarray], data: Path) -> list[dict[str, Any]]:
    inputs = []
    for name, arr in arrays.items():
        if name in _NOT_INPUTS or arr.dtype.kind not in "fiub" or arr.ndim == 0:
            continue
        dtype = "float32" if arr.dtype.kind == "f" else ("bool" if arr.dtype.kind == "b" else str(arr.dtype))
        inputs.append({"name": name, "dtype": dtype, "shape": ["batch", *(int(d) for d in arr.shape[1:])]})
    if not inputs:
        raise DataError(f"--data {data}: no input arrays (arrays: {list(arrays)})")
    return inputs


def _checkpoint_io(model: ModelSpec, inputs: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> list[str]:
    """Output names of a checkpoint's module: one forward pass on two samples of the data."""
    import torch  # lazy: only a checkpoint source needs it here

    module = load_model(model)
    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(arrays[i["name"]][:2]).astype(i["dtype"])) for i in inputs))
    count = len(out) if isinstance(out, (tuple, list)) else 1
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _flow(value: Any) -> str:
    """A value in YAML flow style (JSON is YAML)."""
    return json.dumps(value)


def write_spec(
    source: str | Path,
    output: str | Path = "pipeline.yaml",
    *,
    data: str | Path | None = None,
    factory: str | None = None,
    task: str | None = None,
    name: str | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
    search_path: str | Path | None = None,
    force: bool = False,
) -> InitResult:
    """Inspect ``source`` and write a commented, runnable pipeline spec to ``output``.

    Args:
        source: checkpoint file, Hugging Face folder, ``.pt2`` program or ``.onnx`` file.
        output: the spec file to write (its folder is created).
        data: ``.npz`` with one array per input (samples on axis 0), optionally ``labels`` (int,
            ``(n,)``) or ``embeddings`` (``(n, dim)``): calibration and evaluation data.
        factory: ``"module:callable"`` building the ``nn.Module`` (checkpoint sources; the module
            is imported from the spec's folder).
        task: ``model.task`` of a Hugging Face folder (default: :func:`guess_task`).
        name: pipeline and registered model name (default: from the source's name).
        state_dict_key, strip_prefix: written to the ``model`` section of a checkpoint source.
        search_path: folder the factory's module is imported from (default: the working directory).
        force: overwrite an existing ``output``.

    Returns:
        :class:`InitResult`.

    Raises:
        OptionError: missing source, ``output`` exists (without ``force``), a checkpoint without
            ``factory`` or ``data``, options that do not apply to the source.
        DataError: unreadable ``data`` or one without input arrays.
        SpecError, CheckpointError, ModelFactoryError, RuntimeLoadError: the source cannot be
            inspected (the message names the ``model`` field and the file).
    """
    source = Path(source).expanduser().resolve()
    output = Path(output).expanduser().absolute()
    kind = source_kind(source)
    if output.exists() and not force:
        raise OptionError(f"-o {output}: exists; give another path or --force")
    if kind != "checkpoint" and (factory or state_dict_key or strip_prefix or search_path):
        raise OptionError(f"--factory, --state-dict-key and --strip-prefix apply to checkpoints, not to a {kind} source")
    if kind != "huggingface" and task:
        raise OptionError(f"--task applies to Hugging Face folders, not to a {kind} source")
    folder = output.parent
    arrays = _read_data(Path(data).expanduser().resolve()) if data is not None else None
    data_path = Path(data).expanduser().resolve() if data is not None else None
    notes: list[str] = []

    model: dict[str, Any]
    if kind == "checkpoint":
        if not factory:
            raise OptionError(f"SOURCE {source}: a checkpoint needs --factory module:callable (the code building the nn.Module)")
        if arrays is None:
            raise OptionError(f"SOURCE {source}: a checkpoint does not say its inputs; give --data FILE.npz (one array per input)")
        model = {"checkpoint": _rel(source, folder), "factory": factory}
        if state_dict_key:
            model["state_dict_key"] = state_dict_key
        if strip_prefix:
            model["strip_prefix"] = strip_prefix
        model["search_path"] = [_rel(Path(search_path or Path.cwd()).expanduser().resolve(), folder)]
        spec_model = ModelSpec.model_validate({**model, "checkpoint": str(source)}, context={"base_dir": folder})
        inputs = _inputs_from_data(arrays, data_path)
        outputs = _checkpoint_io(spec_model, inputs, arrays)
    else:
        model = {kind: _rel(source, folder)}
        if kind == "huggingface":
            model["task"] = task or guess_task(source)
        found = describe_source(ModelSpec.model_validate({**model, kind: str(source)}))
        inputs, outputs, notes = found.inputs, found.outputs, list(found.notes)

    static = onnx_static_batch(inputs)
    batch_sizes = [static] if static else [1, 8]
    name = name or slug(source.stem if kind != "huggingface" else source.name, "model")
    if not name[0].isalnum():
        name = f"m{name}"
    lines = [
        f"# edgeport pipeline for {source.name}, written by `edgeport init` ({kind} source).",
        "# Run it:            edgeport run " + output.name,
        "# Check it quickly:  edgeport validate-spec " + output.name,
        "# Every field: docs/spec.md. Relative paths resolve against this file's folder.",
        f"name: {name}",
        "",
        "model:",
    ]
    comments = {
        "checkpoint": "PyTorch weights (torch.load(weights_only=True), or .safetensors)",
        "factory": "module:callable building the nn.Module, imported from search_path",
        "search_path": "folders the factory's module is imported from",
        "huggingface": "local transformers / sentence-transformers folder, loaded offline",
        "task": "feature-extraction | sentence-embedding | text-classification | image-classification",
        "exported_program": "torch.export.save archive",
        "onnx": "used as the FP32 model: not exported",
    }
    for key, value in model.items():
        comment = f"   # {comments[key]}" if key in comments else ""
        lines.append(f"  {key}: {_flow(value)}{comment}")
    lines += ["", "# Read from the source" + (" and the data" if kind == "checkpoint" else "") + "; edit names/dims if needed."]
    lines.append("inputs:")
    lines += [f"  - {_flow(i)}" for i in inputs]
    lines.append(f"outputs: {_flow(outputs)}")
    if kind != "onnx":
        exporter = "legacy" if kind == "huggingface" else "dynamo"
        why = "TorchScript exporter: ONNX Runtime's transformer optimizer fuses its graph" if exporter == "legacy" else "torch.onnx.export(dynamo=True)"
        lines += ["", "export:", "  opset: 18", f"  exporter: {exporter}   # {why}"]
    lines += ["", "validation:", f"  batch_sizes: {_flow(batch_sizes if static else [1, 7])}" + (
        f"   # the model's batch dim is static ({static})" if static else "")]
    for note in notes:
        lines.append(f"# note: {note}")

    has_static = arrays is not None
    if arrays is not None:
        n = len(next(a for k, a in arrays.items() if k == inputs[0]["name"]))
        rel = _rel(data_path, folder)
        lines += [
            "",
            "calibration:          # static quantization ranges (the first num_samples samples)",
            f"  dataset: {_flow(rel)}",
            f"  num_samples: {min(256, n)}",
            "  method: MinMax",
        ]
        if "labels" in arrays:
            max_drop = max(0.01, math.ceil(1000 / n) / 1000)
            lines += [
                "",
                "evaluation:           # use a held-out set here when you have one",
                f"  dataset: {_flow(rel)}",
                "  metric: top1",
                f"  max_drop: {max_drop:g}   # absolute top-1 drop vs FP32 allowed (>= 1/{n} samples)",
            ]
            notes.append(f"evaluation: top-1 on {rel} (labels), max_drop {max_drop:g}")
        elif "embeddings" in arrays:
            lines += [
                "",
                "evaluation:           # fidelity of each variant's embeddings to the reference ones",
                f"  dataset: {_flow(rel)}",
                "  metric: cosine",
                "  reference_key: embeddings",
                "  min_cosine: 0.99",
            ]
            notes.append(f"evaluation: cosine to {rel}['embeddings'], min_cosine 0.99")
        else:
            notes.append(f"{rel} has no labels or embeddings: no evaluation section (accuracy is not gated)")
    lines += ["", "quantization:", "  - {name: int8-dynamic, mode: dynamic, per_channel: true}   # weights INT8, no data needed"]
    if has_static:
        lines.append("  - {name: int8-static, mode: static, format: QDQ, per_channel: true}   # calibrated on calibration.dataset")
    lines += [
        "",
        "targets:",
        "  - {name: cpu}          # ONNX Runtime CPU EP, all cores; `edgeport targets list` shows the others",
        "",
        "benchmark:",
        f"  batch_sizes: {_flow(batch_sizes)}",
        "  warmup: 5",
        "  repetitions: 50",
        "  time_budget_s: 2      # timed seconds per variant and batch size",
        "",
        "registry:",
        f"  registered_model: {name}   # MLflow registered model; tracking URI: MLFLOW_TRACKING_URI, `edgeport servers`, or the local store",
        "",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))
    spec = load_spec(output)  # what was written must load as written
    return InitResult(output, kind, [i.model_dump(mode="json") for i in spec.inputs], list(spec.outputs), notes)
