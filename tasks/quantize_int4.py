"""Step 3b, INT4 weight-only quantization: MatMul weights -> block-wise 4-bit ``MatMulNBits``.

ONNX Runtime's ``MatMulNBitsQuantizer`` (``onnxruntime.quantization.matmul_nbits_quantizer``,
default RTN algorithm) replaces each ``MatMul`` whose second input is a constant weight
with a ``com.microsoft.MatMulNBits`` node: the weight is stored as 4-bit integers in
blocks of ``block_size`` values along the input dim, each block with its own scale (and
zero point when asymmetric). Activations stay float. ``accuracy_level`` sets the
precision the CPU kernel computes in (0 = unset, 1 = fp32, 2 = fp16, 3 = bf16, 4 = int8:
activations quantized to int8 block-wise at run time, the fast path on x86).

Only MatMuls are quantized: a fused ``Attention`` (Q/K/V weights) or
``EmbedLayerNormalization`` (word embeddings) keeps its FP32 weights. A model with no
constant-weight MatMul would come out unchanged: that fails loudly.
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
from prefect import task

from edgeport.errors import QuantizationError
from edgeport.files import file_sha256

logger = logging.getLogger("edgeport.quantize_int4")

__all__ = ["ACCURACY_LEVELS", "Int4Result", "quantize_int4"]

#: ``MatMulNBits`` accuracy levels: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Int4Result:
    """An INT4 weight-only variant on disk and how it was made.

    Attributes:
        name: variant name.
        kind: ``weight_only_int4``.
        onnx_path: absolute path of the quantized model.
        size_bytes: file size (bytes).
        sha256: sha256 of the file.
        parent_sha256: sha256 of the input model.
        settings: ``{"bits", "block_size", "is_symmetric", "accuracy_level", "algorithm",
            "nodes_to_exclude"}``: the exact quantizer settings.
        matmul_nbits: count of ``MatMulNBits`` nodes written.
        matmul_float: constant-weight ``MatMul`` nodes left in float (excluded or unsupported).
        op_counts: ``{op_type: count}`` of the quantized main graph.
        quantize_s: wall seconds.
    """

    name: str
    kind: str
    onnx_path: str
    size_bytes: int
    sha256: str
    parent_sha256: str
    settings: dict[str, Any]
    matmul_nbits: int
    matmul_float: int
    op_counts: dict[str, int] = field(default_factory=dict)
    quantize_s: float = 0.0


def _constant_weight_matmuls(model) -> int:
    initializers = {i.name for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in initializers)


def quantize_int4(
    fp32_path: str | Path,
    output_path: str | Path,
    name: str = "int4",
    block_size: int = 32,
    is_symmetric: bool = True,
    accuracy_level: int = 4,
    nodes_to_exclude: list[str] | None = None,
    op_types: list[str] | None = None,
) -> Int4Result:
    """Quantize the MatMul weights of ``fp32_path`` to 4 bits, block-wise (``MatMulNBits``).

    Args:
        fp32_path: the FP32 model (plain export, or optimized: only its MatMuls are quantized).
        output_path: where the INT4 model is written (folder created); a
            ``<stem>.quantization.json`` with the result is written beside it.
        name: variant name (recorded in the result).
        block_size: weights per quantization block along the input dim: a power of 2, >= 16
            (default 32; 128 is ONNX Runtime's default: smaller blocks, better accuracy, larger file).
        is_symmetric: symmetric blocks (no zero points), default True.
        accuracy_level: ``MatMulNBits`` compute precision (:data:`ACCURACY_LEVELS`), default 4 (int8).
        nodes_to_exclude: MatMul node names kept in float.

    Returns:
        :class:`Int4Result`.

    Raises:
        QuantizationError: bad ``block_size``/``accuracy_level``; the quantizer failed; or the
            result holds no ``MatMulNBits`` node (the model has no constant-weight MatMul,
            or all were excluded).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizationError(f"int4 variant {name!r}: block_size must be a power of 2 >= 16, got {block_size}")
    if accuracy_level not in ACCURACY_LEVELS:
        raise QuantizationError(f"int4 variant {name!r}: accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level}")
    fp32_path, output_path = Path(fp32_path), Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "bits": 4,
        "block_size": block_size,
        "is_symmetric": is_symmetric,
        "accuracy_level": accuracy_level,
        "algorithm": "RTN (DEFAULT)",
        "nodes_to_exclude": sorted(nodes_to_exclude or []),
        "op_types": list(op_types or ["MatMul"]),
        "source": str(fp32_path),
    }
    unknown = set(settings["op_types"]) - {"MatMul", "Gather"}
    if unknown:
        raise QuantizationError(f"int4 variant {name!r}: op types {sorted(unknown)} cannot be 4-bit quantized (MatMul, Gather)")
    start = time.perf_counter()
    try:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(fp32_path)),
            bits=4,
            block_size=block_size,
            is_symmetric=is_symmetric,
            accuracy_level=accuracy_level,
            nodes_to_exclude=list(nodes_to_exclude or []),
            # Gather (embedding tables) is quantized along its hidden axis into GatherBlockQuantized.
            op_types_to_quantize=tuple(settings["op_types"]),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer.process()
        model = quantizer.model.model
        tmp = output_path.with_name(f".{output_path.name}.tmp")
        onnx.save(model, str(tmp))
    except Exception as exc:
        raise QuantizationError(f"MatMulNBitsQuantizer on {fp32_path} (variant {name!r}) failed: {type(exc).__name__}: {exc}") from exc
    elapsed = time.perf_counter() - start
    op_counts = dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))
    nbits = op_counts.get("MatMulNBits", 0)
    if nbits == 0:
        tmp.unlink(missing_ok=True)
        raise QuantizationError(
            f"int4 variant {name!r}: MatMulNBitsQuantizer wrote no MatMulNBits node for {fp32_path} "
            f"(constant-weight MatMuls: {_constant_weight_matmuls(model)}, excluded: {len(nodes_to_exclude or [])}); "
            f"ops found: {op_counts}"
        )
    tmp.replace(output_path)
    result = Int4Result(
        name=name,
        kind="weight_only_int4",
        onnx_path=str(output_path.resolve()),
        size_bytes=output_path.stat().st_size,
        sha256=file_sha256(output_path),
        parent_sha256=file_sha256(fp32_path),
        settings=settings,
        matmul_nbits=nbits,
        matmul_float=_constant_weight_matmuls(model),
        op_counts=op_counts,
        quantize_s=round(elapsed, 3),
    )
    output_path.with_name(f"{output_path.stem}.quantization.json").write_text(json.dumps(asdict(result), indent=2))
    logger.info(
        "int4 %s: %d MatMulNBits, %d GatherBlockQuantized (block %d, accuracy level %d), %d bytes in %.1f s",
        name, nbits, op_counts.get("GatherBlockQuantized", 0), block_size, accuracy_level, result.size_bytes, elapsed,
    )
    return result


# --- Prefect wrapper -------------------------------------------------------------------------

quantize_int4_task = task(quantize_int4, name="quantize-int4", retries=0, task_run_name="quantize-{name}")
