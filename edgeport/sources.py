"""Model sources other than ``checkpoint`` + ``factory``: Hugging Face folders, ``torch.export``
programs (``.pt2``) and ONNX files. Inspect them (inputs, outputs, dynamic dims), load them
safely, and fail with errors naming the spec field (``model.huggingface``, ``model.task``,
``model.exported_program``, ``model.onnx``) and the file.

What loading runs:

* ``huggingface``: ``transformers`` Auto classes with ``local_files_only=True`` (and
  ``HF_HUB_OFFLINE=1``), ``trust_remote_code=False``: a folder whose ``config.json`` asks for
  custom code is refused, nothing is downloaded. Weights come from ``model.safetensors`` (no
  pickle); a folder with only ``pytorch_model.bin`` is read by transformers with
  ``torch.load(weights_only=True)``.
* ``exported_program``: :func:`torch.export.load` deserializes the graph (JSON: ATen op
  names, resolved against ops already registered in the process; no module is imported) and
  the weights (raw tensor bytes). It also unpickles, with ``weights_only=False``, the
  archive's sample inputs when ``weights_only=True`` fails, tensor-subclass weights and
  custom-object constants. :func:`check_exported_program` therefore reads every pickle in the
  archive first with ``torch.load(weights_only=True)`` and refuses the archive if one needs
  code, or if it holds custom / opaque objects: only then is ``torch.export.load`` called.
* ``onnx``: a protobuf; nothing is executed beyond ONNX Runtime's kernels.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.errors import CheckpointError, EdgeportError, RuntimeLoadError
from edgeport.files import file_sha256

if TYPE_CHECKING:
    import onnx
    import torch

    from edgeport.spec import ModelSpec, PipelineSpec

__all__ = [
    "HF_OUTPUTS",
    "SAMPLE_SENTENCES",
    "SourceIO",
    "check_exported_program",
    "check_onnx_model",
    "describe_source",
    "example_inputs",
    "load_exported_program",
    "load_huggingface",
    "onnx_static_batch",
    "source_sha256",
]

logger = logging.getLogger("edgeport.sources")

#: Output names of a ``huggingface`` source, by ``model.task``.
HF_OUTPUTS: dict[str, list[str]] = {
    "feature-extraction": ["last_hidden_state"],
    "sentence-embedding": ["embeddings"],
    "text-classification": ["logits"],
    "image-classification": ["logits"],
}

#: Sentences tokenized into example inputs for a text model when the spec has no data.
SAMPLE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices run quantized models with ONNX Runtime.",
    "A sentence of moderate length, used only to trace the model.",
    "Short one.",
)

#: Tokens per example sequence built from :data:`SAMPLE_SENTENCES` (padded / truncated).
EXAMPLE_SEQUENCE = 16

_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


@dataclass(frozen=True)
class SourceIO:
    """Inputs and outputs read from a model source.

    Attributes:
        inputs: ``[{"name", "dtype", "shape"}]`` in the model's order, as the spec's ``inputs``
            (``shape``: ints for static dims, names for dynamic ones, first dim = batch).
        outputs: output names, in order.
        notes: remarks worth telling the user (e.g. a static batch dim).
    """

    inputs: list[dict[str, Any]]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)


def _fail(model: ModelSpec, message: str) -> CheckpointError:
    return CheckpointError(f"model.{model.source} {model.source_path}: {message}")


# ---------------------------------------------------------------------------- digests


def source_sha256(model: ModelSpec) -> str:
    """sha256 (hex) identifying the source's content: the file's sha256; for a folder (``huggingface``),
    sha256 over ``relative path NUL file sha256`` of every file, sorted; for ``onnx``, the model
    file and the external-data files next to it that it names.

    Raises:
        CheckpointError: the file or folder is missing.
    """
    path = model.source_path
    if model.source == "huggingface":
        if not path.is_dir():
            raise _fail(model, "folder not found")
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
            digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
        return digest.hexdigest()
    if not path.is_file():
        label = "model.checkpoint" if model.source == "checkpoint" else f"model.{model.source}"
        raise CheckpointError(f"{label}: file not found: {path}")
    if model.source != "onnx":
        return file_sha256(path)
    digest = hashlib.sha256(file_sha256(path).encode())
    try:
        external = _external_files(path)
    except Exception:  # noqa: BLE001 - not an ONNX file: check_onnx_model says so; the file's hash identifies it
        external = set()
    for name in sorted(external):
        if (path.parent / name).is_file():
            digest.update(f"{name}\0{file_sha256(path.parent / name)}".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- onnx


def _external_files(path: Path) -> set[str]:
    """File names (relative to the model's folder) of the external data an ONNX file refers to."""
    import onnx  # lazy: only ONNX sources need it here

    proto = onnx.load(str(path), load_external_data=False)
    names = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if onnx.external_data_helper.uses_external_data(tensor):
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            names.add(info.location)
    return names


def _onnx_dims(value_info: Any, fallback: str) -> list[int | str]:
    dims: list[int | str] = []
    for axis, dim in enumerate(value_info.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append("batch" if axis == 0 else _dim_name(dim.dim_param))
        else:
            dims.append("batch" if axis == 0 else f"{fallback}_dim{axis}")
    return dims


def _dim_name(text: str) -> str:
    """A dynamic dim's name usable in a spec (letters, digits, underscores)."""
    name = "".join(c if c.isalnum() else "_" for c in text).strip("_") or "dim"
    return name if not name[0].isdigit() else f"d{name}"


def check_onnx_model(path: str | Path, field: str = "model.onnx") -> onnx.ModelProto:
    """Check an ONNX file before anything uses it: the file and its external data exist,
    ``onnx.checker.check_model(path, full_check=True)`` (which also runs strict shape inference),
    ``onnx.shape_inference.infer_shapes_path`` and an ONNX Runtime CPU session load it.

    Returns:
        The model proto with its external data loaded and inferred value infos.

    Raises:
        CheckpointError: missing file or external data; the checker or shape inference rejects it.
        RuntimeLoadError: the model's opset is beyond the installed onnx, or ONNX Runtime cannot load it.
        All messages name ``field`` and the file.
    """
    import onnx  # lazy: see above
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{field}: file not found: {path}")
    try:
        header = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf parse errors of arbitrary bytes
        raise CheckpointError(f"{field} {path}: not an ONNX model ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    missing = sorted(n for n in _external_files(path) if not (path.parent / n).is_file())
    if missing:
        raise CheckpointError(
            f"{field} {path}: external data missing: {missing} (expected next to the model, in {path.parent})"
        )
    opset = next((o.version for o in header.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset > onnx.defs.onnx_opset_version():
        raise RuntimeLoadError(
            f"{field} {path}: opset {opset} is beyond the installed onnx {onnx.__version__} "
            f"(opsets up to {onnx.defs.onnx_opset_version()})"
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError
        raise CheckpointError(
            f"{field} {path}: onnx.checker (full check) rejected the model: {' '.join(str(exc).split())[:400]}"
        ) from None
    try:
        proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{field} {path}: shape inference failed: {' '.join(str(exc).split())[:400]}") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise RuntimeLoadError(
            f"{field} {path}: the installed onnxruntime {ort.__version__} cannot load it (opset {opset}): "
            f"{' '.join(str(exc).split())[:300]}"
        ) from None
    return proto


def _onnx_io(path: Path) -> SourceIO:
    import onnx  # lazy: see above

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    inputs = []
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        elem = vi.type.tensor_type.elem_type
        if elem not in _ONNX_DTYPES:
            raise CheckpointError(f"model.onnx {path}: input {vi.name!r} has an element type ({elem}) edgeport cannot feed")
        inputs.append({"name": vi.name, "dtype": _ONNX_DTYPES[elem], "shape": _onnx_dims(vi, _dim_name(vi.name))})
    notes = []
    static = onnx_static_batch(inputs)
    if static is not None:
        notes.append(f"the batch dim is static ({static}): only batch size {static} can run")
    return SourceIO(inputs, [o.name for o in proto.graph.output], notes)


def onnx_static_batch(inputs: list[Any]) -> int | None:
    """The batch size every input fixes (its first dim is an int), or None when the batch dim is dynamic.

    Args:
        inputs: :class:`~edgeport.spec.InputSpec` objects or ``{"shape": [...]}`` dicts.
    """
    firsts = [(i["shape"] if isinstance(i, dict) else i.shape)[:1] for i in inputs]
    values = {f[0] for f in firsts if f}
    if len(values) == 1 and all(f and isinstance(f[0], int) for f in firsts):
        return int(next(iter(values)))
    return None


# ---------------------------------------------------------------------------- huggingface


def _hf_folder(model: ModelSpec) -> Path:
    folder = model.source_path
    if not folder.is_dir():
        raise _fail(model, "folder not found (model.huggingface is a local transformers / sentence-transformers folder)")
    if not (folder / "config.json").is_file():
        raise _fail(model, f"no config.json in the folder (files: {sorted(p.name for p in folder.iterdir())[:12]}); "
                           "give the folder of a transformers or sentence-transformers model")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise _fail(model, f"config.json is not readable JSON ({exc})") from None
    if config.get("auto_map"):
        raise _fail(model, "config.json asks for custom code (auto_map); edgeport loads with trust_remote_code=False")
    return folder


def _hf_config(model: ModelSpec) -> dict[str, Any]:
    return json.loads((_hf_folder(model) / "config.json").read_text())


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _tokenizer(model: ModelSpec) -> Any:
    _offline()
    from transformers import AutoTokenizer  # lazy: transformers is heavy and optional

    folder = _hf_folder(model)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError from many places
        raise _fail(model, f"task {model.task} needs a tokenizer, which cannot be loaded from the folder: "
                           f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


def _image_processor(model: ModelSpec) -> Any:
    _offline()
    from transformers import AutoImageProcessor  # lazy: see above

    folder = _hf_folder(model)
    try:
        return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise _fail(model, f"task image-classification needs an image processor (preprocessor_config.json): "
                           f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


def _image_size(processor: Any) -> tuple[int, int]:
    """(height, width) the image processor produces: its crop size when it crops, else its size."""
    for attr in ("crop_size", "size"):
        size = getattr(processor, attr, None)
        if attr == "crop_size" and not getattr(processor, "do_center_crop", False):
            continue
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["height"]), int(size["width"])
            if "shortest_edge" in size:
                return int(size["shortest_edge"]), int(size["shortest_edge"])
        elif isinstance(size, int):
            return size, size
    return 224, 224


def _text_inputs(tokenizer: Any) -> list[str]:
    """Input names fed to a text model: the tokenizer's ``model_input_names`` but ``token_type_ids``
    (one segment: edgeport's wrapper passes zeros)."""
    return [n for n in tokenizer.model_input_names if n != "token_type_ids"]


def _hf_io(model: ModelSpec) -> SourceIO:
    if model.task == "image-classification":
        config = _hf_config(model)
        height, width = _image_size(_image_processor(model))
        channels = int(config.get("num_channels", 3))
        return SourceIO([{"name": "pixel_values", "dtype": "float32", "shape": ["batch", channels, height, width]}], ["logits"])
    names = _text_inputs(_tokenizer(model))
    return SourceIO([{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in names], list(HF_OUTPUTS[model.task]))


def _sentence_modules(folder: Path) -> tuple[dict[str, Any], bool]:
    """(pooling config, normalize) of a sentence-transformers folder, read from ``modules.json``
    and the pooling module's ``config.json``; without ``modules.json``: mean pooling, no
    normalization (what sentence-transformers builds for a plain transformers folder)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {"pooling_mode_mean_tokens": True}, False
    modules = json.loads(modules_file.read_text())
    pooling: dict[str, Any] = {"pooling_mode_mean_tokens": True}
    normalize = False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = folder / module.get("path", "") / "config.json"
            if cfg.is_file():
                pooling = json.loads(cfg.read_text())
        elif kind.endswith("Normalize"):
            normalize = True
        elif not kind.endswith("Transformer"):
            raise ValueError(f"modules.json: module {kind!r} is not supported (Transformer, Pooling and Normalize are)")
    return pooling, normalize


def _pooling_mode(pooling: dict[str, Any]) -> str:
    modes = [m for m in ("cls_token", "mean_tokens", "max_tokens") if pooling.get(f"pooling_mode_{m}")]
    others = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v and k.removeprefix("pooling_mode_") not in modes]
    if len(modes) != 1 or others:
        raise ValueError(f"pooling config {pooling}: one of cls_token, mean_tokens, max_tokens is supported")
    return modes[0]


def _hf_module_class(task: str) -> Any:
    from transformers import (
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    return {
        "feature-extraction": AutoModel,
        "sentence-embedding": AutoModel,
        "text-classification": AutoModelForSequenceClassification,
        "image-classification": AutoModelForImageClassification,
    }[task]


def load_huggingface(model: ModelSpec) -> torch.nn.Module:
    """Build the ``torch.nn.Module`` of a ``huggingface`` source, offline, in eval mode.

    The module's ``forward`` takes the inputs :func:`describe_source` lists, positionally
    (``input_ids``, ``attention_mask``: int64 ``(batch, sequence)``; or ``pixel_values``:
    float32 ``(batch, channels, height, width)``) and returns one tensor:
    ``last_hidden_state`` ``(batch, sequence, hidden)``, ``embeddings`` ``(batch, hidden)``,
    or ``logits`` ``(batch, num_labels)``. See :class:`edgeport.hf_module.HuggingFaceModule`.

    Raises:
        CheckpointError: no folder or config.json, custom code asked for, weights missing, an
            unsupported modules.json / pooling config; names ``model.huggingface``.
    """
    _offline()
    folder = _hf_folder(model)
    from transformers.utils import logging as hf_logging  # lazy: see _tokenizer

    hf_logging.disable_progress_bar()  # "Loading weights" bars in every step's log
    try:
        network = _hf_module_class(model.task).from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, attn_implementation="eager"
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/KeyError
        raise _fail(model, f"transformers cannot build a {model.task} model from the folder: "
                           f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    pooling, normalize = "mean_tokens", False
    if model.task == "sentence-embedding":
        try:
            config, normalize = _sentence_modules(folder)
            pooling = _pooling_mode(config)
        except (OSError, ValueError) as exc:
            raise _fail(model, str(exc)) from None
    names = ["pixel_values"] if model.task == "image-classification" else _text_inputs(_tokenizer(model))
    from edgeport.hf_module import HuggingFaceModule  # lazy: imports torch

    return HuggingFaceModule(network, model.task, names, pooling=pooling, normalize=normalize).eval()


# ---------------------------------------------------------------------------- exported programs


def check_exported_program(path: str | Path, field: str = "model.exported_program") -> None:
    """Refuse a ``.pt2`` archive that :func:`torch.export.load` would unpickle code from.

    Every ``torch.save`` payload inside the archive (sample inputs, pickled weights or
    constants, legacy ``.pt`` weight files) is read with ``torch.load(weights_only=True)``;
    custom-object / opaque-object constants (``pickle.loads`` in torch) are refused outright.

    Raises:
        CheckpointError: missing file, not a zip archive, or a payload that needs code to unpickle;
            names ``field``, the file and the entry.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{field}: file not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{field} {path}: not a torch.export.save archive ({exc})") from None
    with archive:
        names = archive.namelist()
        pickled = [n for n in names if n.endswith(".pt") or "/sample_inputs/" in n]
        for config_name in (n for n in names if n.endswith("_config.json") and ("/weights/" in n or "/constants/" in n)):
            config = json.loads(archive.read(config_name)).get("config", {})
            folder = config_name.rsplit("/", 1)[0]
            for fqn, meta in config.items():
                entry = f"{folder}/{meta.get('path_name', '')}"
                if meta.get("path_name", "").startswith(("custom_obj", "opaque_obj")):
                    raise CheckpointError(
                        f"{field} {path}: refused: constant {fqn!r} ({entry}) is a pickled custom object, which "
                        "torch.export.load unpickles with code; export the model without script / opaque objects"
                    )
                if meta.get("use_pickle"):
                    pickled.append(entry)
        for entry in pickled:
            try:
                torch.load(io.BytesIO(archive.read(entry)), map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - UnpicklingError or a damaged payload
                raise CheckpointError(
                    f"{field} {path}: refused: archive entry {entry} needs code to unpickle, and torch.export.load "
                    f"would load it with weights_only=False ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
                ) from None


def load_exported_program(model: ModelSpec) -> Any:
    """:func:`torch.export.load` the ``.pt2`` archive after :func:`check_exported_program`.

    Returns:
        The ``torch.export.ExportedProgram``.

    Raises:
        CheckpointError: see :func:`check_exported_program`; torch cannot deserialize it.
    """
    import torch

    check_exported_program(model.source_path)
    try:
        return torch.export.load(str(model.source_path))
    except Exception as exc:  # noqa: BLE001 - deserialization errors of many kinds
        raise _fail(model, f"torch.export.load failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None


_TORCH_DTYPES = {
    "torch.float32": "float32", "torch.float16": "float16", "torch.float64": "float64", "torch.int64": "int64",
    "torch.int32": "int32", "torch.int8": "int8", "torch.uint8": "uint8", "torch.bool": "bool",
}


def _program_io(model: ModelSpec) -> SourceIO:
    program = load_exported_program(model)
    names = list(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    symbols: dict[str, str] = {}
    inputs = []
    for name in names:
        value = placeholders[name].meta.get("val")
        if value is None or not hasattr(value, "shape"):
            raise _fail(model, f"input {name!r} is not a tensor; edgeport feeds tensors only")
        dims: list[int | str] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            key = str(dim)
            if key not in symbols:
                symbols[key] = "batch" if axis == 0 and "batch" not in symbols.values() else f"dim_{len(symbols)}"
            dims.append(symbols[key])
        dtype = _TORCH_DTYPES.get(str(value.dtype))
        if dtype is None:
            raise _fail(model, f"input {name!r} has dtype {value.dtype}, which edgeport cannot feed")
        inputs.append({"name": name, "dtype": dtype, "shape": dims})
    count = len(program.graph_signature.user_outputs)
    outputs = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    notes = [] if onnx_static_batch(inputs) is None else [f"the batch dim is static ({onnx_static_batch(inputs)})"]
    return SourceIO(inputs, outputs, notes)


# ---------------------------------------------------------------------------- all sources


def describe_source(model: ModelSpec) -> SourceIO:
    """Inputs and outputs of a ``huggingface``, ``exported_program`` or ``onnx`` source.

    Raises:
        CheckpointError: the source is missing or unreadable (the message names the field).
        RuntimeLoadError: (onnx) an opset beyond the installed onnx.
        ValueError: a ``checkpoint`` source (a state dict does not say its inputs).
    """
    if model.source == "onnx":
        if not model.source_path.is_file():
            raise CheckpointError(f"model.onnx: file not found: {model.source_path}")
        try:
            return _onnx_io(model.source_path)
        except EdgeportError:
            raise
        except Exception as exc:  # noqa: BLE001 - protobuf parse errors
            raise _fail(model, f"not an ONNX model ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if model.source == "huggingface":
        return _hf_io(model)
    if model.source == "exported_program":
        return _program_io(model)
    raise ValueError("a checkpoint source does not describe its inputs: declare `inputs` and `outputs` in the spec")


def example_inputs(spec: PipelineSpec, num_samples: int) -> dict[str, np.ndarray] | None:
    """Example inputs built by a ``huggingface`` source's tokenizer (:data:`SAMPLE_SENTENCES`,
    :data:`EXAMPLE_SEQUENCE` tokens, padded) or image processor (blank grey images), for a spec
    without data; None for other sources.

    Returns:
        ``{input name: ndarray of shape (num_samples, *dims)}`` in the inputs' dtypes, or None.
    """
    model = spec.model
    if model.source != "huggingface":
        return None
    if model.task == "image-classification":
        from PIL import Image  # lazy: Pillow comes with transformers' image extras

        shape = spec.inputs[0].shape
        height, width = (shape[2], shape[3]) if all(isinstance(d, int) for d in shape[2:4]) else (224, 224)
        images = [Image.new("RGB", (int(width), int(height)), (128 + i % 64, 128, 128)) for i in range(num_samples)]
        pixels = _image_processor(model)(images=images, return_tensors="np")["pixel_values"]
        return {spec.inputs[0].name: np.ascontiguousarray(pixels, dtype=np.float32)}
    tokenizer = _tokenizer(model)
    sentences = [SAMPLE_SENTENCES[i % len(SAMPLE_SENTENCES)] for i in range(num_samples)]
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=EXAMPLE_SEQUENCE, return_tensors="np")
    return {i.name: np.ascontiguousarray(encoded[i.name], dtype=np.dtype(i.dtype)) for i in spec.inputs}
