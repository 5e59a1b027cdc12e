"""The report step's plots: a re-run with unchanged numbers keeps the files already drawn."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.report import make_plots
from tests.test_register import _spec, _tiny_onnx, _variant


def test_unchanged_numbers_keep_the_plots_changed_numbers_redraw_them(tmp_path):
    spec = _spec("tiny-plots", tmp_path)
    model = _tiny_onnx(tmp_path / "m.onnx", 1.0)
    variants = [_variant("fp32", "fp32", model, True, 2.0), _variant("int8-dynamic", "dynamic_int8", model, True, 1.0)]
    first = make_plots(spec, variants, tmp_path / "out")
    assert [Path(p).name for p in first] == ["latency_vs_accuracy.png"]
    png = Path(first[0])
    os.utime(png, ns=(1_000_000_000, 1_000_000_000))  # so a redraw shows
    assert make_plots(spec, variants, tmp_path / "out") == first
    assert png.stat().st_mtime_ns == 1_000_000_000  # not drawn again
    variants[1]["benchmarks"][0]["p50_ms"] = 0.25  # another number: drawn again
    assert make_plots(spec, variants, tmp_path / "out") == first
    assert png.stat().st_mtime_ns > 1_000_000_000
    png.unlink()  # a file gone: drawn again
    assert make_plots(spec, variants, tmp_path / "out") == first and png.is_file()
