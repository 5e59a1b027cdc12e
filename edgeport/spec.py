"""The pipeline spec: one YAML file, validated by pydantic, that travels from the CLI to every step.

Relative paths in a spec resolve against the folder of the spec file (so
``edgeport run`` works from any working directory). Use :func:`load_spec` to read
one; it raises :class:`~edgeport.errors.SpecError` naming the file, the field and
the bad value.

Example (``examples/digits/pipeline.yaml``)::

    name: digits-cnn
    model:
      checkpoint: artifacts/digits_cnn.pt
      factory: model:DigitsCNN
    inputs:
      - {name: pixels, dtype: float32, shape: [batch, 1, 8, 8]}
    outputs: [logits]
    calibration: {dataset: artifacts/calibration.npz, method: MinMax}
    quantization:
      - {name: int8-static, mode: static, format: QDQ, per_channel: true}
    evaluation: {dataset: artifacts/eval.npz, metric: top1, max_drop: 0.005}
    registry: {registered_model: digits-cnn}
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edgeport.errors import EdgeportError, SpecError
from edgeport.profiles import CURRENT_ENV, ENVIRONMENTS, PROFILES
from edgeport.sources import describe_source

__all__ = [
    "DATA_KINDS",
    "IMAGE_EXTENSIONS",
    "SEARCH_MODES",
    "SEARCH_SPACE_FIELDS",
    "VARIANT_FIELD_SCOPE",
    "AccuracyControlSpec",
    "CalibrationSpec",
    "DatasetSpec",
    "EvaluationSpec",
    "ExportSpec",
    "FunctionDataSpec",
    "ImageFolderDataSpec",
    "ImagePreprocessingSpec",
    "HuggingFaceTask",
    "InputSpec",
    "MODEL_SOURCES",
    "ModelSpec",
    "NNCFIgnoredScopeSpec",
    "OptimizationSpec",
    "PipelineSpec",
    "PromotionSpec",
    "QuantizationVariantSpec",
    "RegistrySpec",
    "RetrySpec",
    "TargetSpec",
    "TextDataSpec",
    "BenchmarkSpec",
    "ValidationSpec",
    "load_spec",
    "search_field_applies",
    "spec_digest",
]

#: numpy dtype names accepted for model inputs (the ONNX tensor types ORT's CPU EP serves).
InputDType = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve a relative path against ``base_dir`` from the validation context (the spec's folder)."""
    if value is None:
        return None
    value = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value.resolve() if value.is_absolute() else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: The model sources of :class:`ModelSpec`: the field naming each, and the fields that go with it.
MODEL_SOURCES: dict[str, tuple[str, ...]] = {
    "checkpoint": ("checkpoint", "factory", "kwargs", "state_dict_key", "strip_prefix", "search_path"),
    "huggingface": ("huggingface", "task"),
    "exported_program": ("exported_program",),
    "onnx": ("onnx",),
}

#: ``model.task`` values of a ``huggingface`` source.
HuggingFaceTask = Literal["feature-extraction", "sentence-embedding", "text-classification", "image-classification"]

#: ``model.huggingface: "pkg:PACKAGE/SUBFOLDER"`` names a folder inside an installed Python package.
_PACKAGE_FOLDER = re.compile(r"^pkg:([A-Za-z_][\w.]*)(?:/(.*))?$")


def _package_folder(value: str) -> Path:
    """The folder of ``pkg:PACKAGE[/SUBFOLDER]``: found with :func:`importlib.util.find_spec`
    (the package is located, not imported)."""
    found = _PACKAGE_FOLDER.match(value)
    name, sub = found.group(1), found.group(2) or ""
    try:
        located = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        located = None
    if located is None or not located.submodule_search_locations:
        raise ValueError(f"{value!r}: no installed Python package {name!r}")
    return (Path(next(iter(located.submodule_search_locations))) / sub).resolve()


class ModelSpec(_Strict):
    """Where the model comes from: exactly one source, with the fields that go with it.

    ============================  ===============================================================
    source                        fields
    ============================  ===============================================================
    ``checkpoint`` + ``factory``  PyTorch weights (``torch.save`` state dict, training checkpoint
                                  such as Lightning's ``.ckpt``, or ``.safetensors``) and the
                                  ``module:callable`` building the ``nn.Module``; ``kwargs``,
                                  ``state_dict_key``, ``strip_prefix``, ``search_path``
    ``huggingface``               a local transformers / sentence-transformers folder; ``task``
    ``exported_program``          a ``torch.export.save`` archive (``.pt2``)
    ``onnx``                      an ONNX file (with its external data): not exported
    ============================  ===============================================================

    A field of another source is refused with an error naming it (e.g. ``model.task``).
    """

    checkpoint: Path | None = Field(
        default=None,
        description="PyTorch weights: a torch.save state dict or a dict holding one (e.g. a Lightning .ckpt), "
        "read with torch.load(weights_only=True); or a .safetensors file (no pickle). Needs `factory`.",
    )
    factory: str | None = Field(
        default=None,
        description='"module:callable" that builds the nn.Module, e.g. "model:DigitsCNN". '
        "The module is imported with `search_path` prepended to sys.path.",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")
    state_dict_key: str | None = Field(
        default=None,
        description='Key of the state dict inside the checkpoint dict (e.g. "model_state"); default: the checkpoint '
        "itself when it is a state dict, else the one of `state_dict`, `model_state_dict`, `model` that holds one.",
    )
    strip_prefix: str | None = Field(
        default=None,
        min_length=1,
        description='Prefix removed from every state-dict key, e.g. "model." for a LightningModule that holds '
        "the network as `self.model`.",
    )
    search_path: list[Path] = Field(
        default_factory=lambda: [Path(".")],
        validate_default=True,
        description="Folders prepended to sys.path to import the factory module (default: the spec's folder).",
    )
    huggingface: Path | None = Field(
        default=None,
        description="Local transformers or sentence-transformers model folder (config.json, weights, tokenizer or "
        'image processor), loaded offline with the Auto classes; "pkg:PACKAGE/SUBFOLDER" names a folder inside an '
        "installed Python package. Needs `task`.",
    )
    task: HuggingFaceTask | None = Field(
        default=None,
        description="What the `huggingface` model computes: feature-extraction (last_hidden_state), "
        "sentence-embedding (pooling + normalization per the folder's modules.json), text-classification "
        "or image-classification (logits).",
    )
    exported_program: Path | None = Field(
        default=None, description="A torch.export.save archive (.pt2), loaded with torch.export.load and exported to ONNX."
    )
    onnx: Path | None = Field(
        default=None,
        description="An ONNX model (external data next to it): not exported; checked with onnx.checker (full check), "
        "shape inference and a run at every validation batch size.",
    )

    @field_validator("huggingface", mode="before")
    @classmethod
    def _package_path(cls, value: Any) -> Any:
        if isinstance(value, str) and _PACKAGE_FOLDER.match(value):
            return _package_folder(value)
        return value

    _resolve = field_validator("checkpoint", "huggingface", "exported_program", "onnx", mode="after")(_resolve_path)

    @field_validator("search_path", mode="after")
    @classmethod
    def _resolve_search_path(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        return [_resolve_path(p, info) for p in value]  # type: ignore[misc]

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [s for s in MODEL_SOURCES if getattr(self, s) is not None]
        if len(given) != 1:
            named = " and ".join(f"model.{s}" for s in given) if given else "none"
            raise PydanticCustomError(
                "model_source",
                "{field}: give exactly one model source: checkpoint (+ factory), huggingface (+ task), "
                "exported_program or onnx (got {named})",
                {"field": given[1] if len(given) > 1 else "checkpoint", "named": named},
            )
        source = given[0]
        for name in sorted(self.model_fields_set):
            default = type(self).model_fields[name].get_default(call_default_factory=True)
            if name not in MODEL_SOURCES[source] and getattr(self, name) != default:  # a model_dump() round trip sets defaults
                owner = next(s for s, fields in MODEL_SOURCES.items() if name in fields)
                raise PydanticCustomError(
                    "model_source",
                    "{field}: belongs to the {owner} source, not to model.{source}",
                    {"field": name, "owner": owner, "source": source},
                )
        if source == "checkpoint" and self.factory is None:
            raise PydanticCustomError(
                "model_source",
                "{field}: model.checkpoint needs model.factory, the \"module:callable\" that builds the nn.Module",
                {"field": "factory"},
            )
        if source == "huggingface" and self.task is None:
            raise PydanticCustomError(
                "model_source",
                "{field}: model.huggingface needs model.task, one of {tasks}",
                {"field": "task", "tasks": ", ".join(get_args(HuggingFaceTask))},
            )
        return self

    @property
    def source(self) -> str:
        """``checkpoint``, ``huggingface``, ``exported_program`` or ``onnx``."""
        return next(s for s in MODEL_SOURCES if getattr(self, s) is not None)

    @property
    def source_path(self) -> Path:
        """The file or folder of the source (``model.<source>``)."""
        return Path(getattr(self, self.source))


class InputSpec(_Strict):
    """One model input. ``shape`` mixes ints (static dims) and names (dynamic dims, e.g. ``batch``)."""

    name: str = Field(min_length=1)
    dtype: InputDType = "float32"
    shape: list[int | str] = Field(min_length=0, description='e.g. ["batch", 1, 8, 8]; the first dim must be the batch dim.')

    @field_validator("shape")
    @classmethod
    def _positive_dims(cls, value: list[int | str]) -> list[int | str]:
        for dim in value:
            if isinstance(dim, int) and dim <= 0:
                raise ValueError(f"static dims must be positive, got {dim}")
        return value

    @property
    def dynamic_dims(self) -> list[str]:
        """Names of the dynamic dims, in order."""
        return [d for d in self.shape if isinstance(d, str)]


class ExportSpec(_Strict):
    """torch -> ONNX export settings."""

    opset: int = Field(
        default=18,
        ge=7,
        description="ONNX opset (default 18: the dynamo exporter's own default). The export step refuses an "
        "opset the installed onnx or ONNX Runtime cannot handle.",
    )
    exporter: Literal["dynamo", "legacy", "auto"] = Field(
        default="dynamo",
        description="torch.onnx.export(dynamo=True|False); `auto` exports with both, validates both, and keeps "
        "the faster valid one (p50 on the first target at the primary batch size) as the FP32 baseline.",
    )
    dynamic_dims: list[str] | None = Field(
        default=None, description="Dims exported as dynamic; default: every named dim in `inputs`."
    )


class ValidationSpec(_Strict):
    """ONNX Runtime vs PyTorch parity check. A breach fails the run.

    An element passes when ``|ort - torch| <= atol + rtol * |torch|`` (numpy.allclose's rule).
    """

    rtol: float = Field(default=1e-3, ge=0)
    atol: float = Field(default=1e-4, ge=0)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 7, 32], min_length=1)
    num_samples: int = Field(default=64, ge=1, description="Real samples (from evaluation, else calibration data).")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(b <= 0 for b in value):
            raise ValueError(f"batch sizes must be positive, got {value}")
        return value


#: Image file extensions an ``image_folder`` dataset reads (lower case; Pillow decodes them all).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _size_pair(value: int | list[int] | None, what: str) -> int | list[int] | None:
    """An image size: one positive int, or ``[height, width]`` of positive ints."""
    if value is None:
        return None
    if isinstance(value, int):
        sizes = [value]
    else:
        sizes = list(value)
        if len(sizes) != 2:
            raise ValueError(f"{what} is one size or [height, width], got {value}")
    if any(s <= 0 for s in sizes):
        raise ValueError(f"{what} sizes must be positive, got {value}")
    return value


class ImagePreprocessingSpec(_Strict):
    """How an image file becomes a model input, in this order (torchvision's ``Resize`` /
    ``CenterCrop`` / ``Normalize`` semantics, done with Pillow and numpy):

    1. ``color``: Pillow ``convert`` to ``RGB`` or ``L`` (grayscale, one channel); ``BGR`` is
       RGB with the channels reversed (OpenCV-trained models);
    2. ``resize``: one int = the shorter side to that size, aspect kept (the longer side is
       ``int(size * long / short)``); ``[height, width]`` = exactly that size;
    3. ``center_crop``: one int = a square, or ``[height, width]``; the crop box's corner is
       ``round((size - crop) / 2)``;
    4. ``value = (pixel * scale - mean) / std`` per channel, float32 (pixels are 0..255);
    5. ``layout``: ``NCHW`` (channels first, PyTorch) or ``NHWC`` (channels last).

    Without ``resize`` and ``center_crop`` every image must have the same size.
    """

    resize: int | list[int] | None = Field(default=None, description="Shorter side (int) or [height, width]; default: no resize.")
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = Field(
        default="bilinear", description="Pillow resampling filter of `resize` (torchvision's default: bilinear)."
    )
    center_crop: int | list[int] | None = Field(default=None, description="Square side (int) or [height, width]; default: no crop.")
    color: Literal["RGB", "BGR", "L"] = Field(default="RGB", description="Channel order: RGB, BGR, or L (grayscale, 1 channel).")
    scale: float = Field(default=1 / 255, gt=0, description="Multiplies the 0..255 pixel values first (default 1/255: values in [0, 1]).")
    mean: list[float] | None = Field(default=None, description="Subtracted per channel after `scale` (one value, or one per channel).")
    std: list[float] | None = Field(default=None, description="Divides per channel after `mean` (one value, or one per channel).")
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Axis order of the input: channels first or last.")

    @field_validator("resize", "center_crop")
    @classmethod
    def _sizes(cls, value: int | list[int] | None, info: ValidationInfo) -> int | list[int] | None:
        return _size_pair(value, info.field_name)

    @model_validator(mode="after")
    def _channels(self) -> ImagePreprocessingSpec:
        channels = 1 if self.color == "L" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, channels):
                raise ValueError(f"{name}: {self.color} images have {channels} channel(s); give 1 or {channels} values, got {values}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std: values must be positive, got {self.std}")
        return self


class ImageFolderDataSpec(_Strict):
    """A folder of image files read with Pillow (``kind: image_folder``).

    Images are the files with an :data:`IMAGE_EXTENSIONS` suffix under ``path`` (recursively,
    in sorted order of their relative paths). Labels (top-1 evaluation):

    * ``labels: subfolders``: torchvision ``ImageFolder``'s layout, ``path/<class>/<image>``: the
      class folders sorted by name are the classes 0, 1, ...;
    * ``labels: FILE``: a CSV file of ``file,label`` rows (``file`` relative to ``path``, ``label``
      an integer; an optional ``file,label`` header): exactly those images, in that order.
    """

    kind: Literal["image_folder"]
    path: Path = Field(description="The folder of images.")
    input: str | None = Field(default=None, description="The model input the images feed; default: the spec's only input.")
    preprocessing: ImagePreprocessingSpec = Field(default_factory=ImagePreprocessingSpec)
    labels: Literal["subfolders"] | Path | None = Field(
        default=None, description="subfolders (class folders, sorted) or a CSV file of file,label rows; default: no labels."
    )
    shuffle: bool = Field(
        default=False, description="Shuffle the image order (seeded) before the first N are taken: class folders are sorted, "
        "so the first N of a sorted folder are the first classes only."
    )
    seed: int = Field(default=0, description="Seed of `shuffle` (numpy default_rng).")

    _resolve = field_validator("path", mode="after")(_resolve_path)

    @field_validator("labels", mode="after")
    @classmethod
    def _resolve_labels(cls, value: str | Path | None, info: ValidationInfo) -> str | Path | None:
        return value if value is None or value == "subfolders" else _resolve_path(Path(value), info)


class TextDataSpec(_Strict):
    """Text tokenized with the model's tokenizer (``kind: text``): a text file with one sample
    per non-blank line, or a ``.jsonl`` file whose ``field`` holds each sample's text.

    Each chunk is tokenized with ``transformers.AutoTokenizer.from_pretrained(tokenizer,
    local_files_only=True)``, truncated and padded to ``max_length`` tokens; the tokenizer's
    outputs named like the spec's inputs (e.g. ``input_ids``, ``attention_mask``) are fed.
    """

    kind: Literal["text"]
    path: Path = Field(description="A .txt file (one sample per line) or a .jsonl file (one JSON object per line).")
    field: str | None = Field(default=None, description=".jsonl only (required there): the key holding the text.")
    label_field: str | None = Field(default=None, description=".jsonl only: the key holding an integer label (top1 evaluation).")
    max_length: int = Field(default=128, ge=1, description="Tokens per sample: truncated and padded to this length.")
    tokenizer: Path | None = Field(
        default=None, description="A local tokenizer folder (tokenizer.json / vocab); default: the model's Hugging Face folder."
    )
    reference: Path | None = Field(
        default=None,
        description="cosine evaluation: reference embeddings, a .npy of shape (n_lines, dim) or a .npz with the "
        "`evaluation.reference_key` array; default: the FP32 ONNX model's outputs.",
    )

    _resolve = field_validator("path", "tokenizer", "reference", mode="after")(_resolve_path)

    @model_validator(mode="after")
    def _jsonl_fields(self) -> TextDataSpec:
        jsonl = self.path.suffix.lower() == ".jsonl"
        if jsonl and self.field is None:
            raise ValueError(f"field: {self.path.name} is a .jsonl file; name the key holding the text (field: text)")
        if not jsonl:
            for name in ("field", "label_field"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: applies to .jsonl files only; {self.path.name} is read one sample per line")
        return self


class FunctionDataSpec(_Strict):
    """Samples from your own code (``kind: function``): ``callable`` is called with ``kwargs``
    once per pass over the data and returns an iterable of items, each one of

    * ``{input name: array}``: inputs only;
    * ``(inputs, target)``: inputs and a target;
    * ``{"inputs": {input name: array}, "label": ..., "reference": ...}``.

    An input array is one sample (the declared rank minus the batch axis) or a batch (the
    declared rank, samples along the first axis). A target is an integer label (``top1``) or a
    reference embedding (``cosine``), per sample: a scalar / a ``(dim,)`` array for one sample,
    ``(n,)`` / ``(n, dim)`` for a batch of n. See :mod:`edgeport.datasources`.
    """

    kind: Literal["function"]
    callable: str = Field(
        description='"module:function" returning an iterable of items, e.g. "data:calibration_samples". '
        "The module is imported with `search_path` prepended to sys.path.",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the callable.")
    search_path: list[Path] = Field(
        default_factory=lambda: [Path(".")],
        validate_default=True,
        description="Folders prepended to sys.path to import the module (default: the spec's folder).",
    )

    @field_validator("search_path", mode="after")
    @classmethod
    def _resolve_search_path(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        return [_resolve_path(p, info) for p in value]  # type: ignore[misc]


#: ``kind`` of each typed data source; a plain path is an ``.npz`` file (tag ``npz``).
DATA_KINDS = ("image_folder", "text", "function")


def _data_kind(value: Any) -> str | None:
    """The union tag of a dataset value: its ``kind`` for a mapping (or a typed spec), else ``npz``."""
    if isinstance(value, dict):
        kind = value.get("kind")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", "npz")


#: A data set: a path (an ``.npz`` with one array per input, the original form) or a typed source.
DatasetSpec = Annotated[
    Union[
        Annotated[Path, Tag("npz")],
        Annotated[ImageFolderDataSpec, Tag("image_folder")],
        Annotated[TextDataSpec, Tag("text")],
        Annotated[FunctionDataSpec, Tag("function")],
    ],
    Discriminator(
        _data_kind,
        custom_error_type="dataset_kind",
        custom_error_message="a dataset is an .npz path, or a mapping whose `kind` is one of image_folder, text, function",
    ),
]


def _resolve_dataset(value: Any, info: ValidationInfo) -> Any:
    """Resolve an ``.npz`` dataset path against the spec's folder (typed sources resolve their own)."""
    return _resolve_path(value, info) if isinstance(value, Path) else value


class CalibrationSpec(_Strict):
    """Calibration data for static quantization: ``dataset`` is an ``.npz`` with one array per
    input name, or a typed source (``image_folder``, ``text``, ``function``; :data:`DatasetSpec`).

    Calibration runs through :func:`edgeport.calibration.write_calibration_cache`:
    ``chunk_size`` samples per session run, so peak memory is set by the chunk, not by
    ``num_samples`` (ONNX Runtime's histogram calibrators otherwise keep every activation
    of every sample).
    """

    dataset: DatasetSpec = Field(description="An .npz path, or {kind: image_folder | text | function, ...}.")
    num_samples: int = Field(default=256, ge=1, description="Samples drawn (first N) from the dataset.")
    method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
    batch_size: int = Field(default=32, ge=1, description="Samples per batch (the chunk size when chunk_size is unset).")
    chunk_size: int | None = Field(
        default=None, ge=1, description="Samples per calibration session run (bounds peak memory); default: batch_size."
    )
    num_bins: int | None = Field(
        default=None, ge=1, description="Histogram bins (Entropy, Percentile); default: ONNX Runtime's (128 Entropy, 2048 Percentile)."
    )
    num_quantized_bins: int | None = Field(
        default=None, ge=1, description="Entropy only: quantized bins of the KL search (ONNX Runtime's default 128)."
    )
    percentile: float | None = Field(
        default=None, gt=0, le=100, description="Percentile only: the percentile kept (ONNX Runtime's default 99.999)."
    )

    _resolve = field_validator("dataset", mode="after")(_resolve_dataset)

    @property
    def effective_chunk_size(self) -> int:
        """Samples per calibration session run: ``chunk_size``, else ``batch_size``."""
        return self.chunk_size or self.batch_size

    @property
    def extra_options(self) -> dict[str, Any]:
        """``quantize_static``-style ``extra_options`` for the histogram settings that are set."""
        opts: dict[str, Any] = {}
        if self.num_bins is not None:
            opts["CalibNumBins"] = self.num_bins
        if self.num_quantized_bins is not None:
            opts["CalibNumQuantizedBins"] = self.num_quantized_bins
        if self.percentile is not None:
            opts["CalibPercentile"] = self.percentile
        return opts


class OptimizationSpec(_Strict):
    """ONNX Runtime's transformer optimizer (:mod:`tasks.optimize`), run on the validated FP32
    export; the fused model (variant ``fp32-optimized``) is the parent of every quantized variant.
    """

    model_type: Literal["bert"] = Field(default="bert", description="Optimizer model type (BERT-style encoders).")
    num_heads: int = Field(default=0, ge=0, description="Attention heads; 0 = detect from the graph (fails on transformers 5 graphs).")
    hidden_size: int = Field(default=0, ge=0, description="Hidden size; 0 = detect from the graph.")
    opt_level: Literal[0, 1, 2, 99] = Field(default=1, description="ONNX Runtime optimization level run before the fusions.")
    require: dict[str, int] = Field(
        default_factory=dict,
        description="Minimum count of each fused op type, e.g. {Attention: 6}; a fusion that applies fewer times fails the run.",
    )

    @field_validator("require")
    @classmethod
    def _positive_counts(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"required fusion counts must be >= 1, got {bad}")
        return value


class NNCFIgnoredScopeSpec(_Strict):
    """Nodes NNCF leaves in float (``nncf.IgnoredScope``): exact node names, op types, regex patterns
    over node names. A name or type that matches nothing makes NNCF fail (``validate=True``)."""

    names: list[str] = Field(default_factory=list, description="Exact ONNX node names.")
    types: list[str] = Field(default_factory=list, description='ONNX op types, e.g. ["Softmax"].')
    patterns: list[str] = Field(default_factory=list, description="Regular expressions matched against node names.")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return value


class AccuracyControlSpec(_Strict):
    """``nncf.quantize_with_accuracy_control``: quantize, then return the most harmful quantizers to
    float until the drop of edgeport's evaluation metric vs FP32 is within ``max_drop``.

    The validation function is the spec's ``evaluation`` metric on the evaluation set: top-1
    (drop = FP32 top-1 - variant top-1) or mean cosine to the reference embeddings. Default
    ``max_drop``: the evaluation gate, ``evaluation.max_drop`` (top1) or FP32's mean cosine minus
    ``evaluation.min_cosine`` (cosine), so the restoring stops exactly at the spec's budget.
    """

    max_drop: float | None = Field(
        default=None, ge=0, le=1, description="Absolute metric drop allowed; default: the evaluation gate's budget."
    )
    max_num_iterations: int | None = Field(
        default=None, ge=1, description="Quantizer groups restored at most (NNCF's default: no limit)."
    )
    ranking_subset_size: int | None = Field(
        default=None, ge=1, description="Evaluation samples used to rank quantizers (NNCF's default: subset_size)."
    )


#: ONNX Runtime's ``QuantType`` names accepted in ``tensor_quant_overrides`` (``quant_type``).
_OVERRIDE_QUANT_TYPES = ("QInt8", "QUInt8", "QInt16", "QUInt16", "QInt4", "QUInt4")


class QuantizationVariantSpec(_Strict):
    """One quantized variant, built by a ``backend``:

    * ``onnxruntime`` (default): INT8 with onnxruntime.quantization (``quantize_static`` /
      ``quantize_dynamic``), or INT4 weight-only (``MatMulNBits``, :mod:`tasks.quantize_int4`);
    * ``nncf``: static INT8 with ``nncf.quantize`` (``accuracy_control``:
      ``nncf.quantize_with_accuracy_control``), or weight-only INT8 / INT4 with
      ``nncf.compress_weights`` (:mod:`tasks.quantize_nncf`).

    A setting that does not apply to the variant's backend and mode is refused (a
    :class:`~edgeport.errors.SpecError` naming the field, e.g. ``quantization.2.smooth_quant_alpha``);
    :data:`VARIANT_FIELD_SCOPE` lists where each setting applies.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Variant name, e.g. int8-static.")
    backend: Literal["onnxruntime", "nncf"] = Field(
        default="onnxruntime", description="Quantizer: onnxruntime.quantization, or NNCF (nncf.quantize / compress_weights)."
    )
    mode: Literal["static", "dynamic", "weight_only_int8", "weight_only_int4"] = Field(
        default="static",
        description="static INT8 (both backends), dynamic INT8 (onnxruntime), weight-only INT8 (nncf), weight-only INT4 (both).",
    )
    format: Literal["QDQ", "QOperator"] = "QDQ"
    per_channel: bool = False
    activation_type: Literal["QInt8", "QUInt8"] = "QUInt8"
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    op_types_to_quantize: list[str] | None = Field(
        default=None,
        description="Op types to quantize (default: all the quantizer supports; weight_only_int4: [MatMul], "
        "add Gather to 4-bit the embedding tables).",
    )
    parent: Literal["fp32", "fp32-optimized"] | None = Field(
        default=None,
        description="FP32 model the variant is built from; default fp32-optimized when `optimization` is set, else fp32. "
        "(INT4 of embeddings needs the unfused fp32: the optimizer folds the embedding Gather into EmbedLayerNormalization.)",
    )
    nodes_to_exclude: list[str] = Field(default_factory=list)
    calibration_method: Literal["MinMax", "Entropy", "Percentile"] | None = Field(
        default=None, description="Overrides calibration.method for this variant."
    )
    reduce_range: bool = False
    activation_symmetric: bool = Field(
        default=False,
        description="onnxruntime static: symmetric activation ranges (extra_options ActivationSymmetric; zero point "
        "0 for QInt8, 128 for QUInt8).",
    )
    smooth_quant_alpha: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="SmoothQuant's migration strength alpha (Xiao et al., 2023). onnxruntime static: enables "
        "extra_options SmoothQuant with SmoothQuantAlpha (needs neural-compressor); nncf static with model_type "
        "transformer: the MatMul alpha (NNCF's default 0.95). Default: no SmoothQuant (onnxruntime), NNCF's default (nncf).",
    )
    tensor_quant_overrides: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict,
        description="onnxruntime static: per-tensor overrides (extra_options TensorQuantOverrides) for mixed precision, "
        'tensor name -> one override dict (or a list, one per channel), e.g. {"/fc/Gemm_output_0": {quant_type: QUInt16}}; '
        f"quant_type is one of {list(_OVERRIDE_QUANT_TYPES)}.",
    )
    block_size: int = Field(
        default=32, ge=16, description="onnxruntime weight_only_int4: weights per quantization block (a power of 2, >= 16)."
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4, description="onnxruntime weight_only_int4: MatMulNBits compute precision (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8)."
    )
    is_symmetric: bool = Field(
        default=True, description="weight-only: symmetric weights (no zero points); nncf: INT4_SYM / INT8_SYM vs *_ASYM."
    )
    # --- nncf -------------------------------------------------------------------------------
    preset: Literal["performance", "mixed"] | None = Field(
        default=None,
        description="nncf static: performance (symmetric weights and activations) or mixed (asymmetric activations); "
        "NNCF's default: mixed for model_type transformer, else performance.",
    )
    model_type: Literal["transformer"] | None = Field(
        default=None, description="nncf static: transformer adds NNCF's transformer patterns (and SmoothQuant)."
    )
    fast_bias_correction: bool = Field(
        default=True, description="nncf static: fast bias correction (NNCF's default); false = the slower, more accurate BiasCorrection."
    )
    subset_size: int | None = Field(
        default=None, ge=1, description="nncf: calibration samples used (NNCF's default: 300 for static, 128 for weight-only)."
    )
    target_device: Literal["ANY", "CPU", "GPU", "NPU"] = Field(
        default="ANY", description="nncf static: the device whose quantization scheme NNCF follows (nncf.TargetDevice)."
    )
    ignored_scope: NNCFIgnoredScopeSpec | None = Field(default=None, description="nncf: nodes left in float.")
    accuracy_control: AccuracyControlSpec | None = Field(
        default=None, description="nncf static: use nncf.quantize_with_accuracy_control with edgeport's evaluation metric."
    )
    group_size: int | None = Field(
        default=None,
        description="nncf weight-only: weights sharing one scale along the input dim (-1 = per output channel); "
        "NNCF's default: 128 for INT4, per-channel for INT8.",
    )
    ratio: float | None = Field(
        default=None, gt=0, le=1, description="nncf weight_only_int4: fraction of layers in INT4, the rest INT8 (NNCF's default 1)."
    )
    awq: bool = Field(default=False, description="nncf weight_only_int4: AWQ weight correction (needs calibration data).")
    scale_estimation: bool = Field(
        default=False, description="nncf weight_only_int4: scale estimation (needs calibration data)."
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"block_size must be a power of 2 (>= 16), got {value}")
        return value

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int | None) -> int | None:
        if value is not None and value != -1 and value < 1:
            raise ValueError(f"group_size must be positive or -1 (per channel), got {value}")
        return value

    @field_validator("tensor_quant_overrides", mode="before")
    @classmethod
    def _overrides_as_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, dict) else v for k, v in value.items()}
        return value

    @field_validator("tensor_quant_overrides")
    @classmethod
    def _override_types(cls, value: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        for tensor, overrides in value.items():
            if not overrides:
                raise ValueError(f"tensor {tensor!r}: give at least one override dict")
            for ov in overrides:
                for qt in (ov.get("quant_type"), (ov.get("convert") or {}).get("quant_type")):
                    if qt is not None and qt not in _OVERRIDE_QUANT_TYPES:
                        raise ValueError(f"tensor {tensor!r}: quant_type {qt!r} is not one of {list(_OVERRIDE_QUANT_TYPES)}")
        return value

    @model_validator(mode="after")
    def _fields_fit_the_mode(self) -> QuantizationVariantSpec:
        if self.mode not in _BACKEND_MODES[self.backend]:
            raise PydanticCustomError(
                "inapplicable_setting",
                "mode: backend {backend} has no mode {mode} (its modes: {modes})",
                {"field": "mode", "backend": self.backend, "mode": self.mode, "modes": ", ".join(_BACKEND_MODES[self.backend])},
            )
        for name in self.model_fields_set:
            scope = VARIANT_FIELD_SCOPE.get(name)
            if scope is not None and (self.backend, self.mode) not in scope:
                where = ", ".join(f"{b} {m}" for b, m in scope)
                raise PydanticCustomError(
                    "inapplicable_setting",
                    "{field}: does not apply to backend {backend}, mode {mode} (it applies to: {where})",
                    {"field": name, "backend": self.backend, "mode": self.mode, "where": where},
                )
        if self.mode == "dynamic" and self.calibration_method is not None:
            raise PydanticCustomError(
                "inapplicable_setting", "{field}: applies to static variants only", {"field": "calibration_method"}
            )
        if self.backend == "nncf" and self.smooth_quant_alpha is not None and self.model_type != "transformer":
            raise PydanticCustomError(
                "inapplicable_setting",
                "{field}: NNCF runs SmoothQuant only for model_type transformer; set model_type: transformer",
                {"field": "smooth_quant_alpha"},
            )
        return self

    @property
    def kind(self) -> str:
        """Summary kind: ``static_int8``, ``dynamic_int8``, ``weight_only_int8`` or ``weight_only_int4``."""
        if self.mode.startswith("weight_only"):
            return self.mode
        return f"{self.mode}_int8"

    @property
    def needs_calibration(self) -> bool:
        """True when building the variant reads ``calibration.dataset`` (static, or NNCF AWQ / scale estimation)."""
        return self.mode == "static" or (self.backend == "nncf" and (self.awq or self.scale_estimation))


#: Modes each backend builds.
_BACKEND_MODES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("static", "dynamic", "weight_only_int4"),
    "nncf": ("static", "weight_only_int8", "weight_only_int4"),
}

_ORT_INT8 = (("onnxruntime", "static"), ("onnxruntime", "dynamic"))
_ORT_STATIC = (("onnxruntime", "static"),)
_ORT_INT4 = (("onnxruntime", "weight_only_int4"),)
_NNCF_STATIC = (("nncf", "static"),)
_NNCF_WEIGHTS = (("nncf", "weight_only_int8"), ("nncf", "weight_only_int4"))
_NNCF_ALL = _NNCF_STATIC + _NNCF_WEIGHTS

#: Where each backend-/mode-specific variant setting applies: field -> ((backend, mode), ...).
#: Setting a field outside its scope is a spec error naming the field. Fields absent here
#: (name, backend, mode, parent) apply everywhere.
VARIANT_FIELD_SCOPE: dict[str, tuple[tuple[str, str], ...]] = {
    "format": _ORT_INT8,
    "per_channel": _ORT_INT8,
    "activation_type": _ORT_INT8,
    "weight_type": _ORT_INT8,
    "reduce_range": _ORT_INT8,
    "calibration_method": _ORT_INT8,
    "op_types_to_quantize": _ORT_INT8 + _ORT_INT4,
    "nodes_to_exclude": _ORT_INT8 + _ORT_INT4,
    "activation_symmetric": _ORT_STATIC,
    "tensor_quant_overrides": _ORT_STATIC,
    "smooth_quant_alpha": _ORT_STATIC + _NNCF_STATIC,
    "block_size": _ORT_INT4,
    "accuracy_level": _ORT_INT4,
    "is_symmetric": _ORT_INT4 + _NNCF_WEIGHTS,
    "preset": _NNCF_STATIC,
    "model_type": _NNCF_STATIC,
    "fast_bias_correction": _NNCF_STATIC,
    "target_device": _NNCF_STATIC,
    "accuracy_control": _NNCF_STATIC,
    "subset_size": _NNCF_ALL,
    "ignored_scope": _NNCF_ALL,
    "group_size": _NNCF_WEIGHTS,
    "ratio": (("nncf", "weight_only_int4"),),
    "awq": (("nncf", "weight_only_int4"),),
    "scale_estimation": (("nncf", "weight_only_int4"),),
}


class EvaluationSpec(_Strict):
    """Held-out evaluation set (an ``.npz`` with one array per input, or a typed source:
    :data:`DatasetSpec`) and the quality gate.

    * ``top1``: the set holds integer labels (``labels_key``); gate on the drop vs FP32
      (``max_drop``) and the floor ``min_value``.
    * ``cosine`` (embedding models, no labels): fidelity of the first output to reference
      embeddings (:mod:`edgeport.fidelity`): the set's ``reference_key`` array of shape
      (n_samples, dim), e.g. the FP32 PyTorch embeddings; with ``reference_key: null``, the
      FP32 ONNX model's own outputs. Gate: mean cosine >= ``min_cosine``, for every variant.
    """

    dataset: DatasetSpec = Field(description="An .npz path, or {kind: image_folder | text | function, ...}.")
    metric: Literal["top1", "cosine"] = "top1"
    labels_key: str = Field(default="labels", description="top1 only: the array of integer labels.")
    reference_key: str | None = Field(
        default="embeddings",
        description="cosine only: the array of reference embeddings, shape (n_samples, dim); null = the FP32 ONNX outputs.",
    )
    min_cosine: float = Field(default=0.99, ge=-1, le=1, description="cosine only: gate on the mean cosine similarity.")
    max_drop: float = Field(default=0.005, ge=0, le=1, description="top1 only: max absolute drop vs FP32 (0.005 = 0.5 pp).")
    min_value: float | None = Field(
        default=None, ge=0, le=1, description="top1 only: absolute floor on the metric (e.g. 0.95 top-1), applied to every variant, FP32 included."
    )
    max_samples: int | None = Field(default=None, ge=1)

    _resolve = field_validator("dataset", mode="after")(_resolve_dataset)

    @model_validator(mode="after")
    def _labelled(self) -> EvaluationSpec:
        if self.metric == "top1":
            if isinstance(self.dataset, ImageFolderDataSpec) and self.dataset.labels is None:
                raise ValueError("dataset.labels: metric top1 needs labels: subfolders (class folders) or a CSV file of file,label rows")
            if isinstance(self.dataset, TextDataSpec) and self.dataset.label_field is None:
                raise ValueError("dataset.label_field: metric top1 needs labels: a .jsonl file and the key of its integer label")
        return self


class TargetSpec(_Strict):
    """A benchmark target: execution providers (with options), session options, and the
    environment that runs them.

    A built-in profile (:data:`edgeport.targets.PROFILES`: ``cpu``, ``cpu-1t``,
    ``openvino-cpu``) gives the defaults: the one named by ``profile``, else the one
    whose name is ``name``. Fields the spec sets win over the profile's; ``providers``
    is one field, so listing providers also drops the profile's provider options.

    In YAML a provider is a name or a mapping ``{name: ..., options: {...}}``; the
    options are moved to ``provider_options`` (so ``providers`` stays a list of names)::

        targets:
          - {name: cpu}                                   # profile "cpu"
          - {name: edge, profile: cpu-1t, graph_optimization_level: basic}
          - name: ov
            env: openvino
            providers:
              - {name: OpenVINOExecutionProvider, options: {device_type: CPU}}
              - CPUExecutionProvider

    Provider names are checked against the target's own onnxruntime when it is
    benchmarked (:func:`tasks.benchmark.benchmark_variant`), not here.
    """

    name: str = Field(default="cpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    profile: str | None = Field(
        default=None,
        description="Built-in profile giving the defaults (cpu, cpu-1t, openvino-cpu); default: the profile named `name`, if any.",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="Execution provider names, in priority order. An item may be given as {name, options}.",
    )
    provider_options: dict[str, dict[str, str | int | float | bool]] = Field(
        default_factory=dict,
        description="Provider name -> {option: value}, e.g. {OpenVINOExecutionProvider: {device_type: CPU}}; "
        "every key must be one of `providers`.",
    )
    intra_op_num_threads: int = Field(default=0, ge=0, description="0 = ONNX Runtime's default (one per physical core).")
    inter_op_num_threads: int = Field(default=0, ge=0)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    env: str = Field(
        default="current",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description='"current" (the interpreter running edgeport) or a managed environment (e.g. "openvino", '
        "created by `edgeport targets setup openvino`).",
    )
    work_pool: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Prefect work pool whose worker runs this target's benchmark (e.g. jetson-orin: on the device itself), "
        "as the `edgeport-remote-benchmark` deployment `remote-benchmark-<pool>` (created by `edgeport deploy`); "
        "default: benchmarked in the pipeline run's own process. Models and data are passed as paths: the worker "
        "must see the same filesystem paths (shared mount or the same machine).",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """Split ``{name, options}`` provider items, then fill unset fields from the profile."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        label = data.get("name", "cpu")
        if isinstance(data.get("providers"), list):
            names: list[Any] = []
            inline: dict[str, Any] = {}
            for i, item in enumerate(data["providers"]):
                if isinstance(item, dict):
                    extra = set(item) - {"name", "options"}
                    if extra or not isinstance(item.get("name"), str):
                        raise ValueError(
                            f"target {label!r}: providers[{i}] must be a name or {{name: str, options: mapping}}, got {item!r}"
                        )
                    options = item.get("options") or {}
                    if not isinstance(options, dict):
                        raise ValueError(
                            f"target {label!r}: options of provider {item['name']!r} must be a mapping "
                            f"of option -> value, got {options!r}"
                        )
                    names.append(item["name"])
                    if options:
                        inline[item["name"]] = options
                else:
                    names.append(item)
            given = data.get("provider_options")
            if inline and isinstance(given, dict):
                both = sorted(set(inline) & set(given))
                if both:
                    raise ValueError(f"target {label!r}: options of {both} are given both inline and in provider_options")
                inline = {**given, **inline}
            data["providers"] = names
            if inline:
                data["provider_options"] = inline
        profile = data.get("profile")
        if profile is None and isinstance(label, str) and label in PROFILES:
            profile = label
        if profile is not None:
            if profile not in PROFILES:
                raise ValueError(f"target {label!r}: unknown profile {profile!r}; built-in profiles: {', '.join(PROFILES)}")
            data["profile"] = profile
            own_providers = "providers" in data
            for key, value in PROFILES[profile].settings.items():
                if key == "provider_options" and own_providers:
                    continue  # the spec's own provider list replaces the profile's, options included
                data.setdefault(key, json.loads(json.dumps(value)))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        if len(set(self.providers)) != len(self.providers):
            raise ValueError(f"target {self.name!r}: providers must be unique, got {self.providers}")
        stray = [p for p in self.provider_options if p not in self.providers]
        if stray:
            raise ValueError(f"target {self.name!r}: provider_options names {stray}, which are not in providers {self.providers}")
        if self.env != CURRENT_ENV and self.env not in ENVIRONMENTS:
            raise ValueError(f"target {self.name!r}: unknown env {self.env!r}; use {CURRENT_ENV!r} or one of {sorted(ENVIRONMENTS)}")
        if self.profile is None and "providers" not in self.model_fields_set:
            # A typo'd profile name (`tpu-v9`, `cpu-1`) would otherwise run on the default CPU EP, unnoticed.
            near = difflib.get_close_matches(self.name, list(PROFILES), n=1, cutoff=0.4)
            raise ValueError(
                f"name {self.name!r} is no built-in profile ({', '.join(PROFILES)})"
                + (f"; did you mean {near[0]!r}?" if near else "")
                + " A custom target sets `providers` (and `profile` for the defaults), e.g. "
                f"{{name: {self.name}, profile: cpu}} or {{name: {self.name}, providers: [CUDAExecutionProvider, CPUExecutionProvider]}}"
            )
        return self

    @property
    def provider_list(self) -> list[str | tuple[str, dict[str, Any]]]:
        """Providers as ``onnxruntime.InferenceSession(providers=...)`` takes them: a name, or
        ``(name, {option: value})`` when the provider has options."""
        return [(p, dict(self.provider_options[p])) if self.provider_options.get(p) else p for p in self.providers]


class BenchmarkSpec(_Strict):
    """Latency measurement settings (applied to every variant x target x batch size)."""

    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1)
    warmup: int = Field(default=10, ge=0, description="Untimed runs before measuring.")
    repetitions: int = Field(default=100, ge=1, description="Max timed runs per batch size.")
    time_budget_s: float = Field(default=10.0, gt=0, description="Max timed seconds per batch size.")
    primary_batch_size: int | None = Field(
        default=None, description="Batch size whose p50 picks the challenger; default: the first of batch_sizes."
    )
    timeout_s: float = Field(default=600.0, gt=0, description="Kill the runner process after this long.")
    rounds: int = Field(
        default=2,
        ge=1,
        description="Interleaved rounds (A B C, A B C, ...) over the variants of a target, pooled; "
        "guards comparisons against machine drift. Budget and repetitions are split across rounds.",
    )

    @model_validator(mode="after")
    def _primary_in_batch_sizes(self) -> BenchmarkSpec:
        if any(b <= 0 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes: must be positive, got {self.batch_sizes}")
        if self.primary_batch_size is not None and self.primary_batch_size not in self.batch_sizes:
            raise ValueError(f"primary_batch_size {self.primary_batch_size} is not in batch_sizes {self.batch_sizes}")
        return self

    @property
    def primary(self) -> int:
        return self.primary_batch_size or self.batch_sizes[0]


class PromotionSpec(_Strict):
    """The promotion gate (:mod:`tasks.promote`): when a candidate version replaces ``champion``.

    The candidate and the champion are compared on ONE target and batch size, from the p50 and
    its 95% CI half-width that registration recorded (metrics ``p50_ms.<target>.b<batch>`` and
    ``ci_halfwidth_pct.<target>.b<batch>`` of each version's run). With ``significance: ci95``
    (default), ``[p50 - h, p50 + h]`` is each version's CI of the median and:

    * ``min_p50_improvement_pct = 0`` (default): reject only when the candidate is
      *significantly* slower than allowed: its CI lower bound > the champion's CI upper bound
      x (1 + ``max_p50_regression_pct``/100). A candidate as fast as the champion within noise passes.
    * ``min_p50_improvement_pct > 0``: accept only when the candidate is *significantly* faster
      by that margin: its CI upper bound < the champion's CI lower bound x (1 - margin/100).

    Non-overlapping 95% CIs is a conservative test of a difference (Schenker & Gentleman,
    "On judging the significance of differences by examining the overlap between confidence
    intervals", The American Statistician 55(3), 2001). ``significance: point`` compares the
    p50s alone. A version without a recorded CI counts with half-width 0 (noted in the reason).
    """

    target: str | None = Field(
        default=None, description="Target the versions are compared on; default: the first of `targets`."
    )
    batch_size: int | None = Field(
        default=None, ge=1, description="Batch size compared; default: benchmark.primary_batch_size (the one that picks the challenger)."
    )
    max_p50_regression_pct: float = Field(
        default=0.0,
        ge=0,
        description="Allowed p50 slow-down vs the champion, in % (default 0: not significantly slower).",
    )
    min_p50_improvement_pct: float = Field(
        default=0.0,
        ge=0,
        lt=100,
        description="Required p50 speed-up vs the champion, in % (default 0: none); excludes max_p50_regression_pct.",
    )
    significance: Literal["ci95", "point"] = Field(
        default="ci95", description="ci95: compare the 95% CIs of the medians; point: the p50s alone."
    )
    max_quality_drop_vs_champion: float | None = Field(
        default=None,
        ge=0,
        description="Max drop of the evaluation metric (top-1 or cosine) vs the champion's, absolute "
        "(0.005 = 0.5 pp); default: not compared (each version's own gate applies).",
    )

    @model_validator(mode="after")
    def _one_margin(self) -> PromotionSpec:
        if self.max_p50_regression_pct > 0 and self.min_p50_improvement_pct > 0:
            raise ValueError(
                "set max_p50_regression_pct (allowed slow-down) or min_p50_improvement_pct (required speed-up), not both"
            )
        return self


class RetrySpec(_Strict):
    """How long the steps that talk to MLflow (register, report) keep retrying a transient error
    (server unreachable, timeout, HTTP 502/503/504, sqlite "database is locked").

    Retries use exponential backoff: ``initial_delay_s``, doubled after every failure, capped at
    ``max_delay_s`` (AWS Architecture Blog, "Exponential Backoff and Jitter", 2015; Prefect adds
    jitter). They stop once ``window_s`` seconds have passed since the first failure of that step;
    the run then fails with :class:`~edgeport.errors.RegistryUnavailable`, keeps its results in the
    output folder (``registration-pending.json``) and a re-run resumes from the cached steps.
    Default window: 5 minutes, enough for a tracking server restart or a short network outage.
    The start-up reachability check is not retried this long: with nothing done yet, failing in
    seconds costs nothing.
    """

    window_s: float = Field(default=300.0, ge=0, description="Retry window (s), from a step's first transient failure.")
    initial_delay_s: float = Field(default=2.0, gt=0, description="Delay before the first retry (s); doubled after each failure.")
    max_delay_s: float = Field(default=30.0, gt=0, description="Cap on the delay between two attempts (s).")
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="Timeout of one HTTP request to an MLflow server (s) (MLFLOW_HTTP_REQUEST_TIMEOUT)."
    )


class SearchObjectiveSpec(_Strict):
    """What the search minimises: p50 latency (ms) at one batch size, on every objective target; each
    target gets its own winner (the fastest passing trial there)."""

    targets: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Targets the passing trials are benchmarked on, each with its own winner (the first target's is "
        "`search.name`); default: every target of the spec.",
    )
    target: str | None = Field(default=None, description="Shorthand for `targets: [<target>]`.")
    batch_size: int | None = Field(default=None, ge=1, description="Batch size of the p50; default: benchmark.primary_batch_size.")

    @model_validator(mode="after")
    def _one_way(self) -> SearchObjectiveSpec:
        if self.target is not None and self.targets is not None:
            raise ValueError(f"target: give `targets` or its shorthand `target`, not both (targets {self.targets}, target {self.target!r})")
        if self.targets is not None and len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets: names must be unique, got {self.targets}")
        return self

    def target_names(self, spec_targets: list[str]) -> list[str]:
        """The objective targets in order: ``targets``, else ``[target]``, else ``spec_targets`` (all of the spec's)."""
        if self.targets is not None:
            return list(self.targets)
        if self.target is not None:
            return [self.target]
        return list(spec_targets)


#: Search-space list -> the :class:`QuantizationVariantSpec` field each of its values sets in a trial
#: (``backends`` / ``modes`` / ``exclude_top_k`` are handled apart). A trial's configuration holds a
#: field only where it applies to the trial's (backend, mode): :func:`search_field_applies`.
SEARCH_SPACE_FIELDS: tuple[tuple[str, str], ...] = (
    ("calibration_methods", "calibration_method"),
    ("per_channel", "per_channel"),
    ("activation_types", "activation_type"),
    ("weight_types", "weight_type"),
    ("formats", "format"),
    ("reduce_range", "reduce_range"),
    ("op_types_to_quantize", "op_types_to_quantize"),
    ("nncf_presets", "preset"),
    ("nncf_model_types", "model_type"),
    ("nncf_fast_bias_correction", "fast_bias_correction"),
    ("nncf_accuracy_control", "accuracy_control"),
)

#: The (backend, mode) pairs the search builds: ONNX Runtime static / dynamic INT8, NNCF static INT8.
SEARCH_MODES: tuple[tuple[str, str], ...] = (("onnxruntime", "static"), ("onnxruntime", "dynamic"), ("nncf", "static"))

#: Settings ``quantize_dynamic`` has no use for (it quantizes activations to uint8 at run time and
#: writes integer ops, no QDQ): absent from an ONNX Runtime dynamic configuration.
_DYNAMIC_UNUSED = ("calibration_method", "activation_type", "format")


def search_field_applies(field: str, backend: str, mode: str) -> bool:
    """Whether the variant setting ``field`` belongs in a search configuration of (``backend``, ``mode``):
    its :data:`VARIANT_FIELD_SCOPE` holds the pair, less what ONNX Runtime's dynamic INT8 ignores
    (``calibration_method``, ``activation_type``, ``format``)."""
    if backend == "onnxruntime" and mode == "dynamic" and field in _DYNAMIC_UNUSED:
        return False
    return (backend, mode) in VARIANT_FIELD_SCOPE.get(field, ())


class SearchSpaceSpec(_Strict):
    """The quantization settings the search combines, each a list of candidate values.

    ``backends`` x ``modes`` give the (backend, mode) pairs searched (:data:`SEARCH_MODES`: ONNX
    Runtime static and dynamic INT8, NNCF static INT8); each pair combines only the lists that
    apply to it (:func:`search_field_applies`): ONNX Runtime's lists (``calibration_methods`` ...
    ``op_types_to_quantize``; dynamic: without calibration method, activation type and format) or
    NNCF's (``nncf_*``). ``exclude_top_k`` applies to all but NNCF accuracy control (which reverts
    quantizers itself). The first value of every ONNX Runtime list is the static base configuration
    whose sensitivity ranking the exclusions follow.
    """

    backends: list[Literal["onnxruntime", "nncf"]] = Field(
        default_factory=lambda: ["onnxruntime"], min_length=1,
        description="Quantizers searched: onnxruntime (onnxruntime.quantization), nncf (nncf.quantize).",
    )
    modes: list[Literal["static", "dynamic"]] = Field(
        default_factory=lambda: ["static"], min_length=1,
        description="INT8 modes searched: static (calibrated activations, both backends), dynamic (onnxruntime only).",
    )
    calibration_methods: list[Literal["MinMax", "Entropy", "Percentile"]] = Field(
        default_factory=lambda: ["MinMax"], min_length=1, description="Calibration methods; ranges are computed once per method (and op types)."
    )
    per_channel: list[bool] = Field(default_factory=lambda: [True], min_length=1)
    activation_types: list[Literal["QInt8", "QUInt8"]] = Field(default_factory=lambda: ["QUInt8"], min_length=1)
    weight_types: list[Literal["QInt8", "QUInt8"]] = Field(default_factory=lambda: ["QInt8"], min_length=1)
    formats: list[Literal["QDQ", "QOperator"]] = Field(default_factory=lambda: ["QDQ"], min_length=1)
    reduce_range: list[bool] = Field(default_factory=lambda: [False], min_length=1)
    op_types_to_quantize: list[list[str] | None] = Field(
        default_factory=lambda: [None], min_length=1, description="Op-type sets, e.g. [null, [MatMul]] (null = all the quantizer supports)."
    )
    nncf_presets: list[Literal["performance", "mixed"] | None] = Field(
        default_factory=lambda: [None], min_length=1,
        description="nncf: `preset` values (null = NNCF's default: mixed for model_type transformer, else performance).",
    )
    nncf_model_types: list[Literal["transformer"] | None] = Field(
        default_factory=lambda: [None], min_length=1, description="nncf: `model_type` values (null = none, NNCF's default)."
    )
    nncf_fast_bias_correction: list[bool] = Field(
        default_factory=lambda: [True], min_length=1,
        description="nncf: `fast_bias_correction` values (true: NNCF's default; false: the full BiasCorrection).",
    )
    nncf_accuracy_control: list[bool] = Field(
        default_factory=lambda: [False], min_length=1,
        description="nncf: true = nncf.quantize_with_accuracy_control with the evaluation gate as its budget "
        "(it reverts quantizers itself: exclude_top_k does not apply).",
    )
    exclude_top_k: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 4, 8],
        min_length=1,
        description="How many of the most sensitive nodes (sensitivity ranking) stay in float "
        "(onnxruntime: nodes_to_exclude; nncf: its ignored scope).",
    )

    @field_validator("exclude_top_k")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if any(k < 0 for k in value):
            raise ValueError(f"exclude_top_k values must be >= 0, got {value}")
        return value

    @field_validator("op_types_to_quantize")
    @classmethod
    def _non_empty_sets(cls, value: list[list[str] | None]) -> list[list[str] | None]:
        if any(v is not None and not v for v in value):
            raise ValueError(f"an op-type set must name at least one op type (or be null for all), got {value}")
        return value

    @model_validator(mode="after")
    def _unique(self) -> SearchSpaceSpec:
        for name in type(self).model_fields:
            values = [json.dumps(v) for v in getattr(self, name)]
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: values must be unique, got {getattr(self, name)}")
        pairs = self.searched_modes()
        if not pairs:
            raise ValueError(
                f"modes: no (backend, mode) pair to search: backends {self.backends} x modes {self.modes} "
                f"(the search builds {', '.join(f'{b} {m}' for b, m in SEARCH_MODES)})"
            )
        for space_field, variant_field in SEARCH_SPACE_FIELDS:  # a list set for no searched pair is a mistake
            if space_field in self.model_fields_set and not any(search_field_applies(variant_field, b, m) for b, m in pairs):
                where = ", ".join(f"{b} {m}" for b, m in SEARCH_MODES if search_field_applies(variant_field, b, m))
                raise ValueError(
                    f"{space_field}: applies to {where}, which backends {self.backends} x modes {self.modes} do not search"
                )
        return self

    def searched_modes(self) -> list[tuple[str, str]]:
        """The (backend, mode) pairs searched, in ``backends`` then ``modes`` order (NNCF: static only)."""
        return [(b, m) for b in self.backends for m in self.modes if (b, m) in SEARCH_MODES]


class SensitivitySpec(_Strict):
    """Per-node sensitivity analysis (:mod:`tasks.sensitivity`): leave a group / node in float,
    measure the recovery vs the fully quantized base configuration on a capped subset."""

    num_samples: int = Field(default=64, ge=1, description="Evaluation samples used (the first N).")
    max_single_nodes: int = Field(
        default=24, ge=1, description="Up to this many candidate nodes: measure every node alone, no grouping."
    )
    group_by: list[Literal["block", "role", "op_type"]] = Field(
        default_factory=lambda: ["block", "role"],
        min_length=1,
        description="Groupings measured first: block (name prefix up to `layer.N`), role (name with the block index "
        "wildcarded: the same layer in every block), op_type.",
    )
    refine_groups: int = Field(default=2, ge=1, description="Worst groups whose nodes are then measured one by one.")


class SearchSpec(_Strict):
    """Accuracy-aware search over INT8 configurations of one or more backends (:mod:`tasks.search`).

    The quality budget is the ``evaluation`` gate (``max_drop`` for top1, ``min_cosine`` for
    cosine); on every objective target the fastest trial within it wins: the first target's winner
    is added as variant ``name``, another target's (when a different trial) as ``<name>-<target>``.
    """

    name: str = Field(default="int8-search", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Variant name of the winner.")
    parent: Literal["fp32", "fp32-optimized"] | None = Field(
        default=None,
        description="FP32 model the onnxruntime trials quantize; default fp32-optimized when `optimization` is set, else fp32.",
    )
    nncf_parent: Literal["fp32", "fp32-optimized"] = Field(
        default="fp32",
        description="FP32 model the nncf trials quantize: the unfused export by default, whose plain MatMul/Add/Softmax "
        "NNCF's (transformer) patterns match; ONNX Runtime's fusions (Attention, SkipLayerNormalization) would hide them.",
    )
    objective: SearchObjectiveSpec = Field(default_factory=SearchObjectiveSpec)
    space: SearchSpaceSpec = Field(default_factory=SearchSpaceSpec)
    sensitivity: SensitivitySpec = Field(default_factory=SensitivitySpec)
    max_trials: int = Field(default=16, ge=1, description="Trials (quantize + evaluate) at most.")
    max_wall_time_s: float = Field(
        default=1200.0, gt=0, description="No new trial starts after this many seconds (sensitivity included); benchmarks follow."
    )


class RegistrySpec(_Strict):
    """Where results are recorded: an MLflow tracking URI, experiment and registered model."""

    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default: MLFLOW_TRACKING_URI, else the running `edgeport servers`, else the embedded sqlite store under EDGEPORT_HOME."
    )
    experiment: str = "edgeport"
    registered_model: str = Field(min_length=1)
    alias: str = Field(default="challenger", description="Alias set on the fastest passing variant.")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec, description="The gate of `edgeport promote`.")
    retry: RetrySpec = Field(default_factory=RetrySpec, description="Retry window of the steps that talk to MLflow.")
    register_always: bool = Field(
        default=False,
        description="Register every passing variant as a new model version, even when an identical one exists "
        "(same model file, settings, lineage and evaluation/benchmark sections: edgeport.registry.identity). "
        "Default: reuse the existing version (`edgeport run --register-always` sets it for one run).",
    )


class PipelineSpec(_Strict):
    """The whole pipeline: model, I/O, export, validation, quantization, evaluation, targets, registry."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelSpec
    inputs: list[InputSpec] = Field(
        min_length=1,
        description="Model inputs; may be left out with a huggingface, exported_program or onnx model source "
        "(read from the source).",
    )
    outputs: list[str] = Field(min_length=1, description="Output names, in the model's order; may be left out like `inputs`.")
    export: ExportSpec = Field(default_factory=ExportSpec)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    optimization: OptimizationSpec | None = None
    calibration: CalibrationSpec | None = None
    quantization: list[QuantizationVariantSpec] = Field(default_factory=list)
    evaluation: EvaluationSpec | None = None
    targets: list[TargetSpec] = Field(default_factory=lambda: [TargetSpec()], min_length=1)
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    registry: RegistrySpec
    search: SearchSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _io_from_source(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill in ``inputs`` / ``outputs`` the spec leaves out from a ``huggingface``,
        ``exported_program`` or ``onnx`` source (:func:`edgeport.sources.describe_source`)."""
        if not isinstance(data, dict) or ("inputs" in data and "outputs" in data) or not isinstance(data.get("model"), dict):
            return data
        try:
            model = ModelSpec.model_validate(data["model"], context=info.context)
        except ValidationError:
            return data  # reported by the field's own validation
        if model.source == "checkpoint":
            return data  # a state dict does not say its inputs: `inputs` / `outputs` stay required
        try:
            found = describe_source(model)
        except EdgeportError as exc:
            field = f"model.{model.source}"
            message = str(exc).removeprefix(field).lstrip(": ")
            raise PydanticCustomError("model_source", "{field}: {message}", {"field": field, "message": message}) from None
        return {"inputs": found.inputs, "outputs": found.outputs, **data}

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        if self.model.source == "onnx" and self.export.exporter == "auto":
            raise ValueError("export.exporter: auto compares torch exporters; an onnx model source is not exported")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"inputs: names must be unique, got {names}")
        reserved = ["fp32", "fp32-optimized"] if self.optimization is not None else ["fp32"]
        variants = [*reserved, *(v.name for v in self.quantization)]
        if len(set(variants)) != len(variants):
            raise ValueError(f"quantization: variant names must be unique and not {' or '.join(map(repr, reserved))}, got {variants}")
        orphans = [v.name for v in self.quantization if v.parent == "fp32-optimized" and self.optimization is None]
        if orphans:
            raise ValueError(f"quantization: variants {orphans} name parent fp32-optimized, but the spec has no `optimization` section")
        static = [v.name for v in self.quantization if v.needs_calibration]
        if static and self.calibration is None:
            raise ValueError(f"quantization: variants {static} (static, or NNCF AWQ / scale estimation) need a `calibration` section")
        controlled = [v.name for v in self.quantization if v.accuracy_control is not None]
        if controlled and self.evaluation is None:
            raise ValueError(f"quantization: variants {controlled} set accuracy_control, which needs an `evaluation` section (the metric and the gate)")
        targets = [t.name for t in self.targets]
        if len(set(targets)) != len(targets):
            raise ValueError(f"targets: names must be unique, got {targets}")
        promotion = self.registry.promotion
        if promotion.target is not None and promotion.target not in targets:
            raise ValueError(f"registry.promotion.target {promotion.target!r} is not one of the targets {targets}")
        if promotion.batch_size is not None and promotion.batch_size not in self.benchmark.batch_sizes:
            raise ValueError(
                f"registry.promotion.batch_size {promotion.batch_size} is not in benchmark.batch_sizes {self.benchmark.batch_sizes}"
            )
        if self.search is not None:
            self._check_search(variants, targets)
        declared = {d for i in self.inputs for d in i.dynamic_dims}
        for dim in self.export.dynamic_dims or []:
            if dim not in declared:
                raise ValueError(f"export.dynamic_dims names {dim!r}, which no input shape declares ({sorted(declared)})")
        self._check_datasets(names)
        return self

    def _check_datasets(self, names: list[str]) -> None:
        """An image folder feeds one declared input: ``input``, else the spec's only input."""
        for section in ("calibration", "evaluation"):
            dataset = getattr(getattr(self, section), "dataset", None)
            if not isinstance(dataset, ImageFolderDataSpec):
                continue
            if dataset.input is None and len(names) != 1:
                raise ValueError(f"{section}.dataset.input: the spec has inputs {names}; name the one the images feed")
            if dataset.input is not None and dataset.input not in names:
                raise ValueError(f"{section}.dataset.input {dataset.input!r} is not one of the inputs {names}")

    def _check_search(self, variants: list[str], targets: list[str]) -> None:
        search = self.search
        if search.name in variants:
            raise ValueError(f"search.name {search.name!r} is already a variant name ({variants})")
        missing = [s for s in ("calibration", "evaluation") if getattr(self, s) is None]
        if missing:
            raise ValueError(f"search needs the sections {missing} (calibration data and the quality budget)")
        for field in ("parent", "nncf_parent"):
            if getattr(search, field) == "fp32-optimized" and self.optimization is None:
                raise ValueError(f"search.{field} is fp32-optimized, but the spec has no `optimization` section")
        if search.objective.target is not None and search.objective.target not in targets:
            raise ValueError(f"search.objective.target {search.objective.target!r} is not one of the targets {targets}")
        unknown = [t for t in search.objective.targets or [] if t not in targets]
        if unknown:
            raise ValueError(f"search.objective.targets: {unknown} are not among the targets {targets}")
        taken = [f"{search.name}-{t}" for t in search.objective.target_names(targets)[1:] if f"{search.name}-{t}" in variants]
        if taken:
            raise ValueError(f"search.name {search.name!r}: the per-target winner names {taken} are already variant names ({variants})")

    @property
    def dynamic_dims(self) -> list[str]:
        """Dims exported as dynamic (``export.dynamic_dims``, default every named dim)."""
        if self.export.dynamic_dims is not None:
            return list(self.export.dynamic_dims)
        return sorted({d for i in self.inputs for d in i.dynamic_dims})


#: A model-level message that opens with a field name ("primary_batch_size 8 is not in ...",
#: "inputs: names must be unique"): the field is appended to the error's location.
_LEADING_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*)(:\s*|\s)")


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class at ``loc`` (field names and list indices) under :class:`PipelineSpec`."""

    def model_in(annotation: Any) -> type[BaseModel] | None:  # Model, Model | None, list[Model]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        return next((m for a in get_args(annotation) if (m := model_in(a)) is not None), None)

    model: type[BaseModel] | None = PipelineSpec
    for part in loc:
        if isinstance(part, int):
            continue
        if part in _DATA_SPECS and loc.index(part) and loc[loc.index(part) - 1] == "dataset":  # a data source's union tag
            model = _DATA_SPECS[part]
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = model_in(field.annotation) if field is not None else None
        if model is None:
            return None
    return model


def _field_of(loc: tuple[Any, ...], msg: str) -> tuple[str, str]:
    """(dotted location, message) with a model-level error moved onto the field its message names."""
    model = _model_at(loc)
    found = _LEADING_FIELD.match(msg)
    if model is not None and found and found.group(1).split(".")[0] in model.model_fields:
        path = found.group(1)
        rest = msg[found.end():] if found.group(2).startswith(":") else msg
        prefix = ".".join(str(p) for p in loc)
        # a message naming the full dotted path from the root ("registry.promotion.target ...") is kept as is
        return (f"{prefix}.{path}" if prefix else path), rest
    return ".".join(str(p) for p in loc) or "<root>", msg


#: The typed data source of each union tag pydantic puts in an error's location after ``dataset``.
_DATA_SPECS: dict[str, type[BaseModel]] = {"image_folder": ImageFolderDataSpec, "text": TextDataSpec, "function": FunctionDataSpec}

#: ``.dataset.<tag>`` in a dotted location: the tag is dropped from the field shown to the user.
_DATA_TAG = re.compile(r"(\bdataset)\.(?:npz|" + "|".join(DATA_KINDS) + r")\b")


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid pipeline spec ({err.error_count()} error(s))"]
    for e in err.errors():
        field = (e.get("ctx") or {}).get("field")  # a setting a model validator refused (e.g. smooth_quant_alpha)
        if field:
            loc = ".".join([*(str(p) for p in e["loc"]), str(field)])
            msg = e["msg"].removeprefix(f"{field}: ")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            loc, msg = _field_of(tuple(e["loc"]), msg)
        value = e.get("input")
        for part in loc.split(".")[len(e["loc"]):]:  # a model-level error moved onto a field: show that field's value
            value = value.get(part, value) if isinstance(value, dict) else value
        loc = _DATA_TAG.sub(r"\1", loc)
        shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {loc}: {msg} (got {shown})")
    return "\n".join(lines)


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a pipeline spec.

    Args:
        path: the YAML file. Relative paths inside it resolve against its folder.

    Returns:
        The validated, frozen :class:`PipelineSpec` with absolute paths.

    Raises:
        SpecError: the file is missing, a folder, unreadable, not YAML, or a field is invalid. The message
            names the file, the field (dotted path, e.g. ``quantization.0.format``) and the value.
    """
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file (give the YAML file, e.g. {path / 'pipeline.yaml'})")
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot be read as a text file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a YAML mapping, got {type(data).__name__}")
    try:
        return PipelineSpec.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise SpecError(_format_errors(path, exc)) from None


def spec_digest(obj: BaseModel | dict[str, Any]) -> str:
    """sha256 (hex) of a pydantic model's or dict's canonical JSON: a stable cache key."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
