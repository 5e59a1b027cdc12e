"""Step 2b, optimize: fuse a transformer's FP32 ONNX graph with ONNX Runtime's transformer optimizer.

``onnxruntime.transformers.optimizer.optimize_model`` rewrites the exported graph's
sub-graphs into ONNX Runtime's contrib operators (``com.microsoft`` domain): the
embedding sum + LayerNorm becomes ``EmbedLayerNormalization``, each self-attention block
``Attention``, residual Add + LayerNorm ``SkipLayerNormalization``, MatMul bias + GELU
``BiasGelu``. What fused depends on how the exporter wrote the graph: the legacy
(TorchScript) exporter's BERT graph fuses fully, the dynamo exporter's only partly.
:func:`optimize_transformer` records the fusions, so a change of exporter or
transformers version that breaks them shows up in the lineage, and ``require`` turns
a missing fusion into an error.

The optimized graph keeps the FP32 model's inputs and outputs; its contrib operators
run on ONNX Runtime's CPU and CUDA providers only.

Measured on all-MiniLM-L6-v2 (2 cores, sequence 128): the fused FP32 graph runs no
faster than the plain export (ONNX Runtime's session optimizations get close), but it
is the better parent for quantization: dynamic INT8 of the fused graph quantizes
``Attention`` and ``EmbedLayerNormalization`` too (``QAttention``,
``QEmbedLayerNormalization``) and ran 4-8 % faster than from the plain export, and
``quant_pre_process`` needs ``auto_merge=True`` on the plain export only.
Give ``num_heads``/``hidden_size`` for transformers 5 models: their reshapes use -1
heads, from which the optimizer cannot detect them (then no ``Attention`` fuses).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
from prefect import task

from edgeport.errors import OptimizationError
from edgeport.files import file_sha256
from tasks import cache as _cache

logger = logging.getLogger("edgeport.optimize")

__all__ = ["DEFAULT_OPT_LEVEL", "OptimizationError", "OptimizeResult", "optimize_transformer", "result_dict"]

# OptimizationError lives in edgeport.errors; re-exported here for callers of this step.

#: ONNX Runtime graph optimization level run before the Python fusions (``optimize_model``'s
#: default for BERT). 1 ("basic": constant folding, redundant node removal) keeps the graph
#: portable; 99 may write hardware-specific ops (ONNX Runtime warns so). Levels 0-99 gave
#: the same fusions on MiniLM.
DEFAULT_OPT_LEVEL = 1


@dataclass(frozen=True)
class OptimizeResult:
    """A fused FP32 model on disk and how it was made.

    Attributes:
        path: absolute path of the optimized model.
        size_bytes: file size (bytes).
        sha256: sha256 of the file.
        parent_sha256: sha256 of the input (FP32) model.
        model_type: optimizer model type (``bert``, ``gpt2``, ...).
        num_heads: attention heads given to the optimizer (0 = detected from the graph).
        hidden_size: hidden size given to the optimizer (0 = detected from the graph).
        opt_level: ONNX Runtime optimization level run before the fusions.
        fusions: ``{fused op type: count}`` from ``get_fused_operator_statistics()``, zeros dropped,
            e.g. ``{"Attention": 6, "BiasGelu": 6, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 12}``.
        op_counts: ``{op_type: count}`` of the optimized main graph.
        nodes_before: node count of the input graph.
        nodes_after: node count of the optimized graph.
        onnxruntime_version: version of the optimizer that made it.
        optimize_s: wall seconds.
    """

    path: str
    size_bytes: int
    sha256: str
    parent_sha256: str
    model_type: str
    num_heads: int
    hidden_size: int
    opt_level: int
    fusions: dict[str, int] = field(default_factory=dict)
    op_counts: dict[str, int] = field(default_factory=dict)
    nodes_before: int = 0
    nodes_after: int = 0
    onnxruntime_version: str = ""
    optimize_s: float = 0.0


def optimize_transformer(
    fp32_path: str | Path,
    output_path: str | Path,
    model_type: str = "bert",
    num_heads: int = 0,
    hidden_size: int = 0,
    opt_level: int = DEFAULT_OPT_LEVEL,
    require: dict[str, int] | None = None,
) -> OptimizeResult:
    """Fuse ``fp32_path`` with ``onnxruntime.transformers.optimizer.optimize_model`` (CPU).

    Args:
        fp32_path: the FP32 ONNX model (validated export).
        output_path: where the optimized model is written (its folder is created); a
            ``<stem>.optimize.json`` with the result is written beside it.
        model_type: the optimizer's model type (``bert`` for BERT/MiniLM encoders).
        num_heads: attention heads; 0 = detect from the graph.
        hidden_size: hidden size; 0 = detect from the graph.
        opt_level: ONNX Runtime level run first (0 = Python fusions only, 1, 2 or 99).
        require: minimum count of each fused op type, e.g. ``{"Attention": 6}``; None = no check.

    Returns:
        :class:`OptimizeResult`.

    Raises:
        OptimizationError: the optimizer failed; ``require`` names a fusion that applied
            fewer times than asked (the message lists the fusions found).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    fp32_path, output_path = Path(fp32_path), Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    before = onnx.load(str(fp32_path), load_external_data=False)
    nodes_before = len(before.graph.node)
    del before
    try:
        optimized = optimize_model(
            str(fp32_path),
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=opt_level,
            use_gpu=False,
        )
        stats = optimized.get_fused_operator_statistics()
        tmp = output_path.with_name(f".{output_path.name}.tmp")
        optimized.save_model_to_file(str(tmp), use_external_data_format=False)
    except Exception as exc:
        raise OptimizationError(
            f"optimize_model({fp32_path}, model_type={model_type!r}, opt_level={opt_level}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    tmp.replace(output_path)
    elapsed = time.perf_counter() - start
    fusions = {op: int(n) for op, n in sorted(stats.items()) if n}
    op_counts = dict(sorted(collections.Counter(n.op_type for n in optimized.model.graph.node).items()))
    result = OptimizeResult(
        path=str(output_path.resolve()),
        size_bytes=output_path.stat().st_size,
        sha256=file_sha256(output_path),
        parent_sha256=file_sha256(fp32_path),
        model_type=model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=opt_level,
        fusions=fusions,
        op_counts=op_counts,
        nodes_before=nodes_before,
        nodes_after=len(optimized.model.graph.node),
        onnxruntime_version=onnxruntime.__version__,
        optimize_s=round(elapsed, 3),
    )
    output_path.with_name(f"{output_path.stem}.optimize.json").write_text(json.dumps(asdict(result), indent=2))
    missing = {op: want for op, want in (require or {}).items() if fusions.get(op, 0) < want}
    if missing:
        raise OptimizationError(
            f"optimize_model({fp32_path}): required fusions did not apply: "
            + ", ".join(f"{op} {fusions.get(op, 0)} < {want}" for op, want in missing.items())
            + f"; fusions found: {fusions or 'none'}. A different exporter (legacy fuses BERT fully) or "
            "attn_implementation='eager' usually restores them."
        )
    logger.info("optimized %s in %.1f s: %d -> %d nodes, fusions %s", fp32_path, elapsed, nodes_before, result.nodes_after, fusions)
    return result


def result_dict(result: OptimizeResult) -> dict[str, Any]:
    """The result as a JSON-able dict (for lineage, summaries, MLflow tags)."""
    return asdict(result)


# --- Prefect wrapper -------------------------------------------------------------------------


def _optimize_cache_key(context: object, parameters: dict) -> str | None:
    """Prefect cache key: sha256 of the FP32 model, the optimizer settings, the output path and
    library versions. None (no caching) when the input is missing."""
    parent_sha = _cache.file_digest(parameters["fp32_path"])
    if parent_sha is None:
        return None
    settings = {k: parameters.get(k) for k in ("model_type", "num_heads", "hidden_size", "opt_level", "require")}
    return _cache.step_key(
        "optimize",
        parent_sha256=parent_sha,
        settings=settings,
        output_path=str(Path(parameters["output_path"]).resolve()),
        versions=_cache.library_versions(),
    )


#: Deterministic: no retries. Cached (persisted result) on the input's sha256 + settings, so a
#: re-run resumes; the flow optimizes again when the cached model file is gone or changed.
optimize_task = task(
    optimize_transformer, name="optimize", retries=0, cache_key_fn=_optimize_cache_key, persist_result=True
)
