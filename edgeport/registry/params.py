"""Values as MLflow logs them: dotted param keys, sanitised metric keys, finite floats, JSON-ready
objects, the git commit of the checkout. Pure (no MLflow import)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BENCHMARK_METRICS", "PARAM_VALUE_MAX", "finite", "flatten_params", "git_commit", "jsonable", "metric_key", "param_value", "variant_metrics",
]

#: MLflow's limit on a param value (characters); longer values are cut with ``...``.
PARAM_VALUE_MAX = 6000


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths and pydantic models (``model_dump``) turned into
    JSON types, anything else into ``str``."""

    def default(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, Path):
            return str(value)
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        return str(value)

    return json.loads(json.dumps(obj, default=default))


def param_value(value: Any) -> str:
    """A param value: strings as they are, anything else as sorted-key JSON; at most
    :data:`PARAM_VALUE_MAX` characters."""
    text = value if isinstance(value, str) else json.dumps(jsonable(value), sort_keys=True)
    return text if len(text) <= PARAM_VALUE_MAX else text[: PARAM_VALUE_MAX - 3] + "..."


def metric_key(key: str) -> str:
    """``key`` with characters MLflow refuses in metric/param keys (it allows alphanumerics and
    ``_ - . / : space``) replaced by ``_``, at most 250 characters."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", key)[:250]


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    """Dotted-key MLflow params from nested dicts (``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``); lists
    of named dicts are keyed by their name (``{"q": [{"name": "int8", "mode": "static"}]}`` ->
    ``{"q.int8.mode": "static"}``); other lists become JSON. Keys pass through :func:`metric_key`,
    values through :func:`param_value`."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_params(value, f"{prefix}{key}."))
    elif isinstance(data, list) and data and all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in data):
        for item in data:
            rest = {k: v for k, v in item.items() if k != "name"}
            out.update(flatten_params(rest, f"{prefix}{item['name']}."))
    else:
        out[metric_key(prefix.rstrip("."))] = param_value(data)
    return out


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool); None otherwise (None, NaN,
    inf, text that is no number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def git_commit(cwd: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd`` (40 or 64 hex characters), or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


#: Benchmark fields logged as metrics, one key per target and batch size: ``p50_ms.cpu.b1``
#: (``ci_halfwidth_pct``: 95% CI half-width of the median in % of p50, used by the promotion gate).
BENCHMARK_METRICS = (
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "peak_rss_mb", "session_create_ms", "ci_halfwidth_pct",
)


def variant_metrics(variant: dict) -> dict[str, float]:
    """A variant record's numbers as MLflow metrics: size (bytes), validation errors, accuracy and its
    drop, and :data:`BENCHMARK_METRICS` of every ``ok`` benchmark entry as ``<field>.<target>.b<batch>``
    (p50/p90/p99 and mean in ms, throughput in samples/s, peak RSS in MB); non-finite values are left out."""
    metrics: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        number = finite(value)
        if number is not None:
            metrics[metric_key(key)] = number

    put("size_bytes", variant.get("size_bytes"))
    validation = variant.get("validation") or {}
    put("validation.max_abs_err", validation.get("max_abs_err"))
    put("validation.max_rel_err", validation.get("max_rel_err"))
    evaluation = variant.get("evaluation") or {}
    put("accuracy", evaluation.get("value"))
    put("accuracy_drop", evaluation.get("drop"))
    for entry in variant.get("benchmarks") or []:
        if entry.get("status") != "ok":
            continue
        suffix = f"{entry.get('target')}.b{entry.get('batch_size')}"
        for field in BENCHMARK_METRICS:
            put(f"{field}.{suffix}", entry.get(field))
    return metrics
