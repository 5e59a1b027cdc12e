"""Step 1, export: PyTorch checkpoint -> ONNX with dynamic dims, checked and stamped with metadata.

The export is content-addressed: its cache key is the sha256 of the checkpoint, the
model factory settings, the declared inputs/outputs and the export settings (plus the
torch and edgeport versions). A re-run with the same key reuses
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

import edgeport
from edgeport.checkpoint import load_model
from edgeport.checks import EXAMPLE_BATCH, check_forward, check_opset_supported
from edgeport.data import batch_arrays, benchmark_samples_path, reference_samples
from edgeport.errors import (
    CheckpointError,
    ExportError,
    ValidationFailed,
)
from edgeport.files import file_sha256
from edgeport.home import export_cache_dir
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
    "select_export",
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
        checkpoint_sha256: sha256 of the source checkpoint.
        opset: the default-domain opset of the exported model.
        exporter: ``dynamo`` or ``legacy``.
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
    """Content address of an export: sha256 over the checkpoint hash, model factory settings,
    inputs/outputs, export settings and the torch/edgeport versions (torch's from its package
    metadata, the same string as ``torch.__version__``: a cached re-run never imports torch)."""
    return spec_digest(
        {
            "checkpoint_sha256": checkpoint_sha256,
            "factory": spec.model.factory,
            "kwargs": spec.model.kwargs,
            "state_dict_key": spec.model.state_dict_key,
            "inputs": [i.model_dump(mode="json") for i in spec.inputs],
            "outputs": spec.outputs,
            "export": spec.export.model_dump(mode="json"),
            "dynamic_dims": spec.dynamic_dims,
            "torch": version("torch"),
            "edgeport": edgeport.__version__,
        }
    )


def _checkpoint_sha256(spec: PipelineSpec) -> str:
    path = Path(spec.model.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint: file not found: {path}")
    return file_sha256(path)


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
    """Check the exported model, stamp metadata props, save it as one file; return its opset."""
    model = onnx.load(str(path))
    names = [i.name for i in model.graph.input]
    initializers = {i.name for i in model.graph.initializer}
    names = [n for n in names if n not in initializers]
    expected = [i.name for i in spec.inputs]
    if names != expected:
        raise ExportError(f"exported model has inputs {names}, the spec declares {expected}")
    outputs = [o.name for o in model.graph.output]
    if outputs != list(spec.outputs):
        raise ExportError(f"exported model has outputs {outputs}, the spec declares {list(spec.outputs)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)
    if opset != spec.export.opset:  # the dynamo exporter falls back to its own opset with only a logged warning
        raise ExportError(
            f"export.opset {spec.export.opset}: the {spec.export.exporter} exporter wrote opset {opset} instead"
        )
    import torch

    onnx.helper.set_model_props(
        model,
        {
            "edgeport.version": edgeport.__version__,
            "edgeport.checkpoint_sha256": checkpoint_sha256,
            "edgeport.checkpoint": str(spec.model.checkpoint),
            "edgeport.factory": spec.model.factory,
            "edgeport.exporter": spec.export.exporter,
            "edgeport.opset": str(opset),
            "edgeport.torch_version": torch.__version__,
        },
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported model: {' '.join(str(exc).split())[:500]}") from exc
    onnx.save(model, str(path))
    return opset


def export_model(spec: PipelineSpec, cache_dir: str | Path | None = None) -> ExportResult:
    """Export the spec's checkpoint to ONNX (or reuse the cached export with the same key).

    The traced example is a batch of :data:`EXAMPLE_BATCH` real samples (see
    :func:`edgeport.data.reference_samples`); every name in ``spec.dynamic_dims`` is
    exported as a dynamic dim.

    Args:
        spec: the pipeline spec.
        cache_dir: root of the content-addressed cache (default ``$EDGEPORT_HOME/cache/export``).

    Returns:
        :class:`ExportResult`; ``cached`` tells whether the export was reused.

    Raises:
        CheckpointError, ModelFactoryError: the model cannot be built from the checkpoint.
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

    check_opset_supported(spec.export.opset)
    model = load_model(spec.model)
    example = batch_arrays(reference_samples(spec, EXAMPLE_BATCH), EXAMPLE_BATCH)
    cache_root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_root, prefix=".tmp-") as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        _torch_export(spec, model, example, tmp_path)
        opset = _finalize(tmp_path, spec, ckpt_sha)
        elapsed = time.perf_counter() - start
        result = ExportResult(
            onnx_path=str(onnx_path),
            size_bytes=tmp_path.stat().st_size,
            model_sha256=file_sha256(tmp_path),
            checkpoint_sha256=ckpt_sha,
            opset=opset,
            exporter=spec.export.exporter,
            cache_key=key,
            cached=False,
            export_s=round(elapsed, 3),
        )
        (Path(tmp) / "export.json").write_text(json.dumps(asdict(result), indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        Path(tmp).rename(folder)  # atomic publish: a half-written export is never visible
        Path(tmp).mkdir()  # TemporaryDirectory cleans up the (now empty) path
    logger.info("exported %s (opset %d, %s) in %.1f s -> %s", spec.model.checkpoint, opset, spec.export.exporter, elapsed, onnx_path)
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


def select_export(spec: PipelineSpec, output_dir: str | Path, cache_dir: str | Path | None = None) -> tuple[ExportResult, dict]:
    """``export.exporter: auto`` without Prefect (the pipeline runs :func:`flows.export.select_export_flow`,
    the same steps as Prefect tasks): export with every exporter, validate each against PyTorch, and
    keep the fastest valid one (:func:`compare_exports`).

    Speed: p50 (ms) on the spec's first target at the primary batch size, measured with
    :func:`tasks.benchmark.benchmark_target` (interleaved rounds, same settings as the pipeline's
    benchmarks) on the evaluation (else calibration) samples.

    Returns:
        (the winner's :class:`ExportResult`, the comparison: ``{"selected", "candidates": {exporter:
        {"onnx_path", "valid", "error", "p50_ms", "export_s", "cached"}}}``).

    Raises:
        ExportError: no exporter produced a valid model (the message lists each one's error).
    """
    from tasks.benchmark import benchmark_target
    from tasks.validate import validate_onnx

    candidates: dict[str, dict] = {}
    results: dict[str, ExportResult] = {}
    for exporter in EXPORTERS:
        variant_spec = with_exporter(spec, exporter)
        entry = candidates[exporter] = new_candidate()
        try:
            result = export_model(variant_spec, cache_dir)
            entry.update(onnx_path=result.onnx_path, export_s=result.export_s, cached=result.cached)
            validate_onnx(variant_spec, result.onnx_path)
        except (ExportError, ValidationFailed) as exc:  # bad input (checkpoint, data, opset) propagates
            entry["error"] = f"{type(exc).__name__}: {exc}"
            logger.warning("exporter %s rejected: %s", exporter, entry["error"])
            continue
        entry["valid"] = True
        results[exporter] = result
    if not results:
        raise no_valid_export(candidates)
    measured = benchmark_target(
        selection_benchmark_spec(spec), spec.targets[0], {e: r.onnx_path for e, r in results.items()},
        benchmark_samples_path(spec), Path(output_dir) / "export-selection",
    )
    selected = compare_exports(candidates, measured)
    return results[selected], {"selected": selected, "candidates": candidates}


# --- Prefect wrapper -------------------------------------------------------------------------
from prefect import task  # noqa: E402


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

