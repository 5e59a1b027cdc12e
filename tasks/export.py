"""Step 1, export: the model source -> ONNX with dynamic dims, checked and stamped with metadata.

Sources (``model``): a PyTorch checkpoint + factory, a Hugging Face folder or a ``.pt2``
program are exported with ``torch.onnx.export``; an ``onnx`` source is not exported: it is
checked (:func:`edgeport.sources.check_onnx_model`) and copied into the cache with edgeport's
metadata, and it is the FP32 model.

The export is content-addressed: its cache key is the sha256 of the source (checkpoint,
folder, program or ONNX file), the model settings, the declared inputs/outputs and the
export settings (plus the torch and edgeport versions). A re-run with the same key reuses
``$EDGEPORT_HOME/cache/export/<key>/model.onnx`` instead of exporting again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import onnx
from prefect import task

import edgeport
from edgeport.checkpoint import load_model
from edgeport.checks import (
    EXAMPLE_BATCH,
    check_forward,
    check_onnx_source,
    check_opset_supported,
    example_batch_size,
    model_samples,
)
from edgeport.data import batch_arrays
from edgeport.errors import (
    CheckpointError,
    ExportError,
)
from edgeport.files import file_sha256
from edgeport.home import export_cache_dir
from edgeport.sources import source_sha256
from edgeport.spec import PipelineSpec, spec_digest

logger = logging.getLogger("edgeport.export")

__all__ = [
    "EXAMPLE_BATCH",
    "EXPORTERS",
    "ExportResult",
    "check_forward",
    "check_opset_supported",
    "compare_exports",
    "export_cache_key",
    "export_model",
    "export_task",
    "new_candidate",
    "no_valid_export",
    "selection_benchmark_spec",
    "with_exporter",
]

@dataclass(frozen=True)
class ExportResult:
    """Where the FP32 ONNX model is, and how it was made.

    Attributes:
        onnx_path: absolute path of the exported model.
        size_bytes: file size in bytes.
        model_sha256: sha256 of the ONNX file.
        checkpoint_sha256: sha256 of the model source (:func:`edgeport.sources.source_sha256`).
        opset: the default-domain opset of the exported model.
        exporter: ``dynamo`` or ``legacy``; ``onnx`` for an ONNX source (not exported).
        cache_key: the content address (hex sha256).
        cached: True when the export was reused from the cache.
        export_s: seconds spent exporting (0 when cached).
    """

    onnx_path: str
    size_bytes: int
    model_sha256: str
    checkpoint_sha256: str
    opset: int
    exporter: str
    cache_key: str
    cached: bool
    export_s: float


def export_cache_key(spec: PipelineSpec, checkpoint_sha256: str) -> str:
    """Content address of an export: sha256 over the source's hash (``checkpoint_sha256``: see
    :func:`edgeport.sources.source_sha256`), the model section, inputs/outputs, export settings
    and the torch/edgeport versions (torch's from its package metadata, the same string as
    ``torch.__version__``: a cached re-run never imports torch)."""
    model = spec.model
    return spec_digest(
        {
            "checkpoint_sha256": checkpoint_sha256,
            **(
                {"factory": model.factory, "kwargs": model.kwargs, "state_dict_key": model.state_dict_key}
                if model.source == "checkpoint"
                else {"source": model.source, "task": model.task}
            ),
            **({"strip_prefix": model.strip_prefix} if model.strip_prefix is not None else {}),
            "inputs": [i.model_dump(mode="json") for i in spec.inputs],
            "outputs": spec.outputs,
            "export": spec.export.model_dump(mode="json"),
            "dynamic_dims": spec.dynamic_dims,
            "torch": version("torch"),
            "edgeport": edgeport.__version__,
        }
    )


def _checkpoint_sha256(spec: PipelineSpec) -> str:
    return source_sha256(spec.model)


def _torch_export(spec: PipelineSpec, model, example: dict, out: Path) -> None:
    import torch

    args, _ = check_forward(spec, model, example)
    dynamic = set(spec.dynamic_dims)
    input_names = [i.name for i in spec.inputs]
    try:
        if spec.export.exporter == "dynamo":
            dims = {name: torch.export.Dim(name, min=1) for name in dynamic}
            dynamic_shapes = tuple(
                {axis: dims[d] for axis, d in enumerate(i.shape) if isinstance(d, str) and d in dynamic} or None
                for i in spec.inputs
            )
            torch.onnx.export(
                model,
                args,
                str(out),
                dynamo=True,
                opset_version=spec.export.opset,
                input_names=input_names,
                output_names=list(spec.outputs),
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                verbose=False,
            )
        else:
            dynamic_axes = {
                i.name: {axis: d for axis, d in enumerate(i.shape) if isinstance(d, str) and d in dynamic} for i in spec.inputs
            }
            torch.onnx.export(
                model,
                args,
                str(out),
                dynamo=False,
                opset_version=spec.export.opset,
                input_names=input_names,
                output_names=list(spec.outputs),
                dynamic_axes={k: v for k, v in dynamic_axes.items() if v},
            )
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export (exporter={spec.export.exporter}, opset={spec.export.opset}) failed: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
        ) from exc


def _finalize(path: Path, spec: PipelineSpec, checkpoint_sha256: str) -> int:
    """Check the exported (or, for an ``onnx`` source, copied) model, stamp metadata props, save
    it as one file (external data when it is over 2 GB); return its opset."""
    model = onnx.load(str(path))
    source = spec.model.source
    names = [i.name for i in model.graph.input]
    initializers = {i.name for i in model.graph.initializer}
    names = [n for n in names if n not in initializers]
    expected = [i.name for i in spec.inputs]
    if names != expected:
        raise ExportError(f"exported model has inputs {names}, the spec declares {expected}")
    outputs = [o.name for o in model.graph.output]
    if outputs != list(spec.outputs) and not (source == "onnx" and set(spec.outputs) <= set(outputs)):
        raise ExportError(f"exported model has outputs {outputs}, the spec declares {list(spec.outputs)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)
    if opset != spec.export.opset and source != "onnx":  # the dynamo exporter falls back to its own opset with only a logged warning
        raise ExportError(
            f"export.opset {spec.export.opset}: the {spec.export.exporter} exporter wrote opset {opset} instead"
        )
    import torch

    onnx.helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in model.metadata_props},  # an ONNX source's own props are kept
            "edgeport.version": edgeport.__version__,
            "edgeport.checkpoint_sha256": checkpoint_sha256,
            "edgeport.source": source,
            "edgeport.checkpoint": str(spec.model.source_path),
            "edgeport.factory": spec.model.factory or "",
            "edgeport.exporter": "onnx" if source == "onnx" else spec.export.exporter,
            "edgeport.opset": str(opset),
            "edgeport.torch_version": torch.__version__,
        },
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported model: {' '.join(str(exc).split())[:500]}") from exc
    _save(model, path)
    return opset


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Save as one file, or with the weights in ``<name>.data`` next to it above protobuf's 2 GB limit."""
    if model.ByteSize() < _PROTOBUF_LIMIT:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")


#: Largest ONNX model saved as one file (protobuf's 2 GB limit, with a margin).
_PROTOBUF_LIMIT = 1_800_000_000


def export_model(spec: PipelineSpec, cache_dir: str | Path | None = None) -> ExportResult:
    """Export the spec's checkpoint to ONNX (or reuse the cached export with the same key).

    The traced example is a batch of :data:`EXAMPLE_BATCH` real samples (see
    :func:`edgeport.checks.model_samples`); every name in ``spec.dynamic_dims`` is
    exported as a dynamic dim. An ``onnx`` source is checked and copied, not exported.

    Args:
        spec: the pipeline spec.
        cache_dir: root of the content-addressed cache (default ``$EDGEPORT_HOME/cache/export``).

    Returns:
        :class:`ExportResult`; ``cached`` tells whether the export was reused.

    Raises:
        CheckpointError, ModelFactoryError: the model cannot be built from its source; an ONNX
            source fails the checker or lacks its external data.
        RuntimeLoadError: ``export.opset`` is beyond the installed onnx / ONNX Runtime.
        SpecError: the declared input shapes do not fit the model.
        DataError: the sample data does not fit the declared inputs.
        ExportError: the exporter or ``onnx.checker`` failed, inputs/outputs differ from the spec, or
            the model's opset is not ``export.opset``.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else export_cache_dir()
    ckpt_sha = _checkpoint_sha256(spec)
    key = export_cache_key(spec, ckpt_sha)
    folder = cache_root / key
    onnx_path = folder / "model.onnx"
    meta_path = folder / "export.json"
    if onnx_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("model_sha256") == file_sha256(onnx_path):
            logger.info("export cache hit %s: reusing %s", key[:12], onnx_path)
            return ExportResult(**{**meta, "onnx_path": str(onnx_path), "cached": True, "export_s": 0.0})
        logger.warning("export cache entry %s is corrupt; exporting again", key[:12])

    size = example_batch_size(spec)
    example = batch_arrays(model_samples(spec, size), size)
    if spec.model.source == "onnx":
        check_onnx_source(spec, example)
        model = None
    else:
        check_opset_supported(spec.export.opset)
        model = load_model(spec.model)
    cache_root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_root, prefix=".tmp-") as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        if model is None:  # an ONNX source: not exported, copied (its external data inlined below 2 GB)
            _save(onnx.load(str(spec.model.onnx)), tmp_path)
        else:
            _torch_export(spec, model, example, tmp_path)
        opset = _finalize(tmp_path, spec, ckpt_sha)
        elapsed = time.perf_counter() - start
        result = ExportResult(
            onnx_path=str(onnx_path),
            size_bytes=tmp_path.stat().st_size,
            model_sha256=file_sha256(tmp_path),
            checkpoint_sha256=ckpt_sha,
            opset=opset,
            exporter="onnx" if spec.model.source == "onnx" else spec.export.exporter,
            cache_key=key,
            cached=False,
            export_s=round(elapsed, 3),
        )
        (Path(tmp) / "export.json").write_text(json.dumps(asdict(result), indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        Path(tmp).rename(folder)  # atomic publish: a half-written export is never visible
        Path(tmp).mkdir()  # TemporaryDirectory cleans up the (now empty) path
    logger.info("exported %s (opset %d, %s) in %.1f s -> %s", spec.model.source_path, opset, result.exporter, elapsed, onnx_path)
    return result


EXPORTERS = ("legacy", "dynamo")


def with_exporter(spec: PipelineSpec, exporter: str) -> PipelineSpec:
    """A copy of ``spec`` whose ``export.exporter`` is ``exporter``."""
    return spec.model_copy(update={"export": spec.export.model_copy(update={"exporter": exporter})})


def new_candidate() -> dict:
    """The comparison entry of one exporter before it ran: ``{"onnx_path", "valid", "error", "p50_ms",
    "export_s", "cached"}`` (all None / False)."""
    return {"onnx_path": None, "valid": False, "error": None, "p50_ms": None, "export_s": None, "cached": None}


def selection_benchmark_spec(spec: PipelineSpec) -> PipelineSpec:
    """The spec the exporters are benchmarked with: the primary batch size only."""
    primary = spec.benchmark.primary
    return spec.model_copy(update={"benchmark": spec.benchmark.model_copy(update={"batch_sizes": [primary], "primary_batch_size": None})})


def no_valid_export(candidates: dict[str, dict]) -> ExportError:
    """The error of ``export.exporter: auto`` when no exporter produced a valid model (lists each one's error)."""
    return ExportError("export.exporter auto: no exporter produced a valid model: " + "; ".join(
        f"{e}: {c['error']}" for e, c in candidates.items()))


def compare_exports(candidates: dict[str, dict], measured: dict[str, list[dict]]) -> str:
    """Fill each valid candidate's ``p50_ms`` (ms, from its benchmark entry when ``ok``) and return the
    selected exporter: the lowest p50, or the first valid one when none was measured ok.

    Args:
        candidates: exporter -> :func:`new_candidate` entry (``valid`` set); at least one valid.
        measured: exporter -> benchmark entries (:func:`tasks.benchmark.benchmark_target`), one batch size.
    """
    for exporter, entries in measured.items():
        candidates[exporter]["p50_ms"] = entries[0]["p50_ms"] if entries[0]["status"] == "ok" else None
    timed = {e: c["p50_ms"] for e, c in candidates.items() if c["valid"] and c["p50_ms"] is not None}
    selected = min(timed, key=timed.get) if timed else next(e for e, c in candidates.items() if c["valid"])
    logger.info("export.exporter auto: %s selected (p50 ms: %s)", selected, timed)
    return selected


# --- Prefect wrapper -------------------------------------------------------------------------


def _export_task_cache_key(context: object, parameters: dict) -> str | None:
    """Prefect cache key: the export's content address plus its cache root (None, i.e. no
    caching, when the checkpoint is missing: the task then fails with its own error)."""
    spec: PipelineSpec = parameters["spec"]
    root = Path(parameters.get("cache_dir") or export_cache_dir()).resolve()
    try:
        key = export_cache_key(spec, _checkpoint_sha256(spec))
    except CheckpointError:
        return None
    return "edgeport-export-" + spec_digest({"key": key, "root": str(root)})


#: Deterministic: no retries. Cached (persisted result) on checkpoint sha256 + export settings.
#: A cached result whose file was deleted meanwhile is refreshed by the flow
#: (``export_task.with_options(refresh_cache=True)``).
export_task = task(
    export_model,
    name="export",
    cache_key_fn=_export_task_cache_key,
    persist_result=True,
    retries=0,
)

