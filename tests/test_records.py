"""edgeport/records.py and edgeport/render.py: typed records of summary.json (fast, pure).

The fixtures under tests/data are real ``summary.json`` files of digits runs (one with the
quantization search), paths rewritten and the search's trials cut to two.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from edgeport.cli import app
from edgeport.records import (
    NO_SEARCH_WINNER,
    BenchmarkEntry,
    RunSummary,
    VariantRecord,
    gate_verdict,
    primary_benchmark,
    summary_json_schema,
)
from edgeport.render import variant_rows
from edgeport.spec import PipelineSpec

DATA = Path(__file__).parent / "data"
SUMMARIES = ["summary-digits.json", "summary-digits-search.json"]


def _spec(batch_sizes: list[int], targets: list[str]) -> PipelineSpec:
    return PipelineSpec.model_validate({
        "name": "digits-cnn",
        "model": {"checkpoint": "unused.pt", "factory": "unused:Model"},
        "inputs": [{"name": "pixels", "shape": ["batch", 1, 8, 8]}],
        "outputs": ["logits"],
        "evaluation": {"dataset": "eval.npz"},
        "targets": [{"name": t} for t in targets],
        "benchmark": {"batch_sizes": batch_sizes},
        "registry": {"registered_model": "digits-cnn"},
    })


@pytest.mark.parametrize("name", SUMMARIES)
def test_summary_round_trip_is_identical(name):
    text = (DATA / name).read_text()
    raw = json.loads(text)
    record = RunSummary.model_validate(raw)
    dumped = record.model_dump()
    assert dumped == raw
    assert json.dumps(dumped, indent=2) == text  # same keys in the same order, same values
    assert RunSummary.model_validate(dumped).model_dump() == raw
    for variant in record.variants:  # the entries of the steps keep every key, typed or not
        assert all(isinstance(b, BenchmarkEntry) and "latencies_paths" in b.model_extra for b in variant.benchmarks)


@pytest.mark.parametrize("name", SUMMARIES)
def test_real_summary_validates_against_the_published_schema(name):
    raw = json.loads((DATA / name).read_text())
    jsonschema.validate(raw, summary_json_schema())
    broken = copy.deepcopy(raw)
    del broken["variants"][0]["sha256"]
    with pytest.raises(jsonschema.ValidationError, match="sha256"):
        jsonschema.validate(broken, summary_json_schema())


def test_optional_variant_fields_are_written_only_when_set():
    record = VariantRecord(name="int8", kind="static_int8", path="/m.onnx", size_bytes=10, sha256="ab", opset=18, lineage={"parent": "fp32"})
    assert list(record.model_dump()) == [
        "name", "kind", "path", "size_bytes", "sha256", "opset", "passed", "validation", "evaluation",
        "benchmarks", "model_version", "quantization", "op_counts", "lineage",
    ]
    record.not_registered = NO_SEARCH_WINNER
    assert record.model_dump()["not_registered"] == NO_SEARCH_WINNER
    fp32 = VariantRecord(name="fp32", kind="fp32", path="/f.onnx", size_bytes=1, sha256="cd", opset=18, lineage={}, export_selection=None)
    assert "export_selection" in fp32.model_dump() and "fusions" not in fp32.model_dump()


def test_benchmark_entries_keep_extra_keys_in_order():
    raw = {"batch_size": 1, "status": "ok", "p50_ms": 2, "target": "cpu", "cpu": {"model": "x", "isa": ["avx2"]}}
    entry = BenchmarkEntry.model_validate(raw)
    assert entry.p50_ms == 2 and isinstance(entry.model_dump()["p50_ms"], int)  # an int stays an int
    assert list(entry.model_dump()) == list(raw) and entry.model_dump() == raw


def _variant(benchmarks: list[dict], validation: bool = True, evaluation: bool | None = True) -> VariantRecord:
    return VariantRecord.model_validate({
        "name": "v", "kind": "static_int8", "path": "/v.onnx", "size_bytes": 1, "sha256": "ab", "opset": 18,
        "validation": {"passed": validation},
        "evaluation": None if evaluation is None else {"metric": "top1", "value": 0.98, "drop": 0.001, "passed": evaluation},
        "benchmarks": benchmarks, "lineage": {},
    })


def test_primary_benchmark_is_the_ok_entry_on_the_first_target_at_the_primary_batch():
    spec = _spec([1, 32], ["cpu", "cpu-1t"])
    entries = [
        {"target": "cpu-1t", "batch_size": 1, "status": "ok", "p50_ms": 1.0},
        {"target": "cpu", "batch_size": 32, "status": "ok", "p50_ms": 2.0},
        {"target": "cpu", "batch_size": 1, "status": "fallback", "p50_ms": 3.0},
        {"target": "cpu", "batch_size": 1, "status": "ok", "p50_ms": 4.0},
    ]
    assert spec.benchmark.primary == 1
    assert primary_benchmark(_variant(entries), spec).p50_ms == 4.0
    assert primary_benchmark({"benchmarks": entries}, spec)["p50_ms"] == 4.0  # a dict record works too
    assert primary_benchmark({"benchmarks": entries}, spec, target="cpu", batch_size=32)["p50_ms"] == 2.0
    assert primary_benchmark(_variant(entries[:3]), spec) is None  # only a fallback at the primary batch


def test_gate_verdict():
    spec = _spec([1], ["cpu"])
    ok = [{"target": "cpu", "batch_size": 1, "status": "ok", "p50_ms": 1.0}]
    assert gate_verdict(_variant(ok), spec) == (True, None)
    assert gate_verdict(_variant(ok, evaluation=None), spec) == (True, None)  # no evaluation section
    assert gate_verdict(_variant(ok, validation=False), spec) == (False, None)
    assert gate_verdict(_variant(ok, evaluation=False), spec) == (False, None)
    assert gate_verdict(_variant([{**ok[0], "status": "failed"}]), spec) == (False, None)
    assert gate_verdict(_variant(ok), spec, search={"winner": None}) == (False, NO_SEARCH_WINNER)
    assert gate_verdict(_variant(ok), spec, search={"winner": {"trial_id": "t"}}) == (True, None)


def test_variant_rows_name_the_metric_and_the_primary_p50():
    summary = RunSummary.model_validate(json.loads((DATA / "summary-digits.json").read_text()))
    rows = variant_rows(_spec([1, 32], ["cpu"]), summary.variants)
    assert [r["variant"] for r in rows] == ["fp32", "int8-static", "int8-dynamic"]
    fp32 = summary.variants[0]
    assert rows[0]["p50_ms@b1"] == round(primary_benchmark(fp32, _spec([1, 32], ["cpu"])).p50_ms, 4)
    assert rows[1]["drop_pp"] == round(100 * summary.variants[1].evaluation.drop, 2)


def test_cli_schema_summary_prints_the_summary_schema():
    result = CliRunner().invoke(app, ["schema", "--summary"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == summary_json_schema()
    assert {"variants", "challenger", "cache", "timings_s"} <= set(summary_json_schema()["properties"])
