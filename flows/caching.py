"""The flows' cache policy: when a step's ``Cached`` Prefect result is used, and what the run records
about it (``summary.json`` ``cache`` and ``timings_s``).

The cache keys themselves are the steps' (:mod:`tasks.cache`). A ``Cached`` result is used only
when its output files are still there and unchanged (an ``intact`` check); otherwise the step runs
again with ``refresh_cache=True``, which also replaces the cache entry.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from edgeport.spec import PipelineSpec
from tasks.cache import files_intact
from tasks.export import ExportResult, export_task

__all__ = ["RunLog", "cached_export", "latencies_kept", "report_restored", "run_cached"]


def run_cached(
    task_: Any, *args: Any, intact: Callable[[Any], bool] | None = None, refresh: bool = False, **kwargs: Any
) -> tuple[Any, bool]:
    """Call a cached step; returns ``(result, came from the cache)``.

    A ``Cached`` result is used only when ``intact(result)`` says its output files are still there
    (and unchanged); otherwise, or with ``refresh``, the step runs again with ``refresh_cache=True``.

    Raises:
        the step's exception when it failed.
    """
    if refresh:
        return task_.with_options(refresh_cache=True)(*args, **kwargs), False
    state = task_(*args, return_state=True, **kwargs)
    result = state.result()
    if state.name != "Cached":
        return result, False
    if intact is None or intact(result):
        return result, True
    get_run_logger().warning("%s: cached result's output files are gone or changed: running it again", task_.name)
    return task_.with_options(refresh_cache=True)(*args, **kwargs), False


def report_restored(report_path: str) -> Callable[[dict[str, Any]], bool]:
    """``intact`` check of a cached validation: (re)write its report file from the cached result."""

    def restore(report: dict[str, Any]) -> bool:
        Path(report_path).write_text(json.dumps(report, indent=2))
        return True

    return restore


def latencies_kept(results: dict[str, list[dict[str, Any]]]) -> bool:
    """``intact`` check of cached benchmarks: every raw-latency file they name still exists, and
    no runner crashed or timed out (a ``failed`` entry is measured again, not reused)."""
    entries = [e for group in results.values() for e in group]
    if any(e.get("status") == "failed" for e in entries):
        return False
    paths = [p for e in entries for p in (e.get("latencies_paths") or [e.get("latencies_path")]) if p]
    return files_intact(dict.fromkeys(paths))


def cached_export(spec: PipelineSpec, cache_dir: str | None = None) -> ExportResult:
    """:data:`tasks.export.export_task`; a ``Cached`` result says ``cached=True, export_s=0`` and is
    exported again when its ONNX file was deleted since (the cache folder was cleaned)."""
    state = export_task(spec, cache_dir, return_state=True)
    export = state.result()
    if state.name != "Cached":
        return export
    if Path(export.onnx_path).is_file():
        return dataclasses.replace(export, cached=True, export_s=0.0)
    return export_task.with_options(refresh_cache=True)(spec, cache_dir)


@dataclasses.dataclass
class RunLog:
    """What a run records about its steps: seconds per step (``timings_s``) and, per step and item,
    whether the result came from the cache (``cache``)."""

    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    cache: dict[str, dict[str, bool]] = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the seconds spent in the ``with`` block to ``timings[step]`` (rounded to ms)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = round(self.timings.get(step, 0.0) + time.perf_counter() - start, 3)

    def hit(self, step: str, item: str, cached: bool) -> None:
        """Record whether ``item`` of ``step`` came from the cache."""
        self.cache.setdefault(step, {})[item] = bool(cached)

    def run(self, step: str, item: str, task_: Any, *args: Any, **kwargs: Any) -> Any:
        """:func:`run_cached`, recording the cache hit under ``step`` / ``item``; returns the result."""
        result, hit = run_cached(task_, *args, **kwargs)
        self.hit(step, item, hit)
        return result

    def total(self) -> None:
        """``timings["total"]``: seconds since the run started."""
        self.timings["total"] = round(time.perf_counter() - self.started, 3)
