"""Benchmark step against real ONNX Runtime (no mocks): a tiny MatMul + Relu model."""

from __future__ import annotations

import ast
import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeport import runner
from edgeport.errors import TargetError
from edgeport.spec import PipelineSpec, TargetSpec
from tasks.benchmark import RUNNER_PATH, benchmark_variant

N_FEATURES = 4


def make_model(path: Path, *, opset: int = 17, op: str = "Relu") -> Path:
    """x (batch, 4) float32 -> Relu(x @ W) (batch, 3); ``op``/``opset`` to break it on purpose."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    w = numpy_helper.from_array(np.linspace(-1, 1, N_FEATURES * 3, dtype=np.float32).reshape(N_FEATURES, 3), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], [w]), opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_spec(tmp_path: Path, **benchmark) -> PipelineSpec:
    bench = {"batch_sizes": [1, 8], "warmup": 2, "repetitions": 200, "time_budget_s": 1.0, "timeout_s": 60.0, **benchmark}
    return PipelineSpec.model_validate(
        {
            "name": "tiny",
            "model": {"checkpoint": str(tmp_path / "unused.pt"), "factory": "m:f"},
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", N_FEATURES]}],
            "outputs": ["y"],
            "benchmark": bench,
            "registry": {"registered_model": "tiny"},
        }
    )


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "tiny.onnx")


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    path = tmp_path / "samples.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((5, N_FEATURES)).astype(np.float32))
    return path


def assert_sane(entry: dict) -> None:
    assert entry["min_ms"] <= entry["p50_ms"] <= entry["max_ms"]
    assert entry["p50_ms"] <= entry["p90_ms"] <= entry["p95_ms"] <= entry["p99_ms"] <= entry["max_ms"]
    assert entry["min_ms"] <= entry["mean_ms"] <= entry["max_ms"]
    assert entry["std_ms"] >= 0
    assert entry["runs"] >= 10
    assert entry["throughput"] > 0
    assert entry["throughput"] == pytest.approx(entry["batch_size"] * 1000 / entry["mean_ms"], rel=1e-6)
    assert entry["session_create_ms"] > 0 and entry["first_inference_ms"] > 0
    assert entry["peak_rss_mb"] > 10
    assert entry["model_size_bytes"] > 0
    assert entry["ci_halfwidth_pct"] is not None and entry["ci_halfwidth_pct"] >= 0
    assert entry["stable"] == (entry["ci_halfwidth_pct"] <= 2.0)
    assert entry["stop_reason"] in {"ci", "max_runs", "time_budget"}


@pytest.mark.slow
def test_cpu_benchmark_ok(tmp_path: Path, model: Path, samples: Path) -> None:
    out = tmp_path / "out"
    entries = benchmark_variant(model, make_spec(tmp_path), TargetSpec(), samples, out)

    assert [e["batch_size"] for e in entries] == [1, 8]
    for entry in entries:
        assert entry["status"] == "ok", entry["error"]
        assert entry["error"] is None
        assert entry["providers_bound"] == ["CPUExecutionProvider"]
        assert entry["target"] == "cpu" and entry["provider"] == "CPUExecutionProvider"
        assert entry["data"] == "samples" and entry["allow_spinning"] is False
        assert set(runner.RESULT_KEYS) <= set(entry)
        assert entry["cpu"] == runner.cpu_info() and isinstance(entry["cpu"]["isa"], list)
        assert_sane(entry)
    raw = json.loads((out / "benchmark-cpu.json").read_text())
    assert raw["onnxruntime_version"] and "CPUExecutionProvider" in raw["available_providers"]
    assert [e["batch_size"] for e in raw["results"]] == [1, 8]
    assert not (out / "benchmark-cpu.partial.json").exists()


@pytest.mark.slow
def test_random_data_and_session_options(tmp_path: Path, model: Path) -> None:
    target = TargetSpec(name="cpu-1t", intra_op_num_threads=1, inter_op_num_threads=1, graph_optimization_level="basic")
    (entry,) = benchmark_variant(model, make_spec(tmp_path, batch_sizes=[3]), target, None, tmp_path / "out")
    assert entry["status"] == "ok" and entry["data"] == "random" and entry["target"] == "cpu-1t"
    assert_sane(entry)
    request = json.loads((tmp_path / "out" / "benchmark-cpu-1t.request.json").read_text())
    assert request["session_options"]["intra_op_num_threads"] == 1
    assert request["session_options"]["graph_optimization_level"] == "basic"


@pytest.mark.slow
def test_unavailable_provider_falls_back_to_cpu(tmp_path: Path, model: Path, samples: Path) -> None:
    target = TargetSpec(name="gpu", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    entries = benchmark_variant(model, make_spec(tmp_path, batch_sizes=[2]), target, samples, tmp_path / "out")
    (entry,) = entries
    assert entry["status"] == "fallback"
    assert entry["providers_requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert entry["providers_bound"] == ["CPUExecutionProvider"]
    assert entry["provider"] == "CPUExecutionProvider"
    assert "CUDAExecutionProvider" in entry["error"]
    assert_sane(entry)  # the numbers are kept, labelled


def test_unknown_provider_raises_before_launch(tmp_path: Path, model: Path) -> None:
    target = TargetSpec(name="bogus", providers=["FooExecutionProvider"])
    with pytest.raises(TargetError, match="FooExecutionProvider"):
        benchmark_variant(model, make_spec(tmp_path), target, None, tmp_path / "out")
    assert not (tmp_path / "out" / "benchmark-bogus.request.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("opset", "op", "message"), [(17, "FooBar", "FooBar"), (99, "Relu", "opset")])
def test_unloadable_model_is_unsupported(tmp_path: Path, opset: int, op: str, message: str) -> None:
    model = make_model(tmp_path / "bad.onnx", opset=opset, op=op)
    entries = benchmark_variant(model, make_spec(tmp_path), TargetSpec(), None, tmp_path / "out")
    assert [e["status"] for e in entries] == ["unsupported", "unsupported"]
    for entry in entries:
        assert message in entry["error"] and entry["provider"] is None and entry["p50_ms"] is None


@pytest.mark.slow
def test_static_batch_dim_is_unsupported_for_other_batch_sizes(tmp_path: Path, samples: Path) -> None:
    model = onnx.load(make_model(tmp_path / "static.onnx"))
    for value_info in (*model.graph.input, *model.graph.output):
        value_info.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, tmp_path / "static.onnx")
    ok, too_big = benchmark_variant(tmp_path / "static.onnx", make_spec(tmp_path), TargetSpec(), samples, tmp_path / "out")
    assert ok["status"] == "ok"
    assert too_big["status"] == "unsupported" and "static batch dim" in too_big["error"]


@pytest.mark.slow
def test_wrong_sample_shape_fails(tmp_path: Path, model: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((5, N_FEATURES + 1), np.float32))
    entries = benchmark_variant(model, make_spec(tmp_path), TargetSpec(), bad, tmp_path / "out")
    assert [e["status"] for e in entries] == ["failed", "failed"]
    assert "dim 1 is 5" in entries[0]["error"] and entries[0]["provider"] == "CPUExecutionProvider"


@pytest.mark.slow
def test_timeout_kills_runner_and_reports_failed(tmp_path: Path, model: Path) -> None:
    # A warmup that would take hours: the wrapper must kill the runner at timeout_s.
    spec = make_spec(tmp_path, warmup=10**9, timeout_s=2.0)
    entries = benchmark_variant(model, spec, TargetSpec(), None, tmp_path / "out")
    assert [e["status"] for e in entries] == ["failed", "failed"]
    assert all("timeout_s=2" in e["error"] for e in entries)
    assert entries[0]["provider"] is None and entries[0]["target"] == "cpu"
    raw = json.loads((tmp_path / "out" / "benchmark-cpu.json").read_text())
    assert "timeout" in raw["runner_error"]


def _fake_python(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-python.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("echo 'ort: fatal' >&2; kill -SEGV $$", "signal SIGSEGV"),
        ("echo 'ort: oom' >&2; kill -KILL $$", "signal SIGKILL"),
        ("echo 'bad' >&2; exit 3", "exited with code 3"),
        ("echo 'not json'", "no valid result JSON"),
    ],
)
def test_runner_crash_reports_failed(tmp_path: Path, model: Path, body: str, message: str) -> None:
    python = _fake_python(tmp_path, body)
    entries = benchmark_variant(model, make_spec(tmp_path), TargetSpec(), None, tmp_path / "out", python=python)
    assert [e["status"] for e in entries] == ["failed", "failed"]
    assert all(message in e["error"] for e in entries)
    assert all(e["cpu"] == runner.cpu_info() for e in entries)  # a dead runner's entries still name the CPU
    if "ort:" in body:
        assert "ort: " in entries[0]["error"]  # the stderr tail


@pytest.mark.slow
def test_finished_batch_sizes_survive_a_later_crash(tmp_path: Path, model: Path) -> None:
    # The real runner finishes (writing the partial file), then the process is killed.
    python = _fake_python(tmp_path, f'"{sys.executable}" "$@" >/dev/null; kill -KILL $$')
    entries = benchmark_variant(model, make_spec(tmp_path), TargetSpec(), None, tmp_path / "out", python=python)
    assert [e["status"] for e in entries] == ["ok", "ok"]
    for entry in entries:
        assert_sane(entry)


@pytest.mark.slow
def test_runner_standalone_stdout_is_one_json_line(tmp_path: Path, model: Path) -> None:
    """The runner works as a copied file, prints exactly one stdout line, and honours the request."""
    copy = tmp_path / "runner.py"
    copy.write_text(RUNNER_PATH.read_text())
    request = {
        "model_path": str(model),
        "providers": [["CPUExecutionProvider", {}]],
        "session_options": {"intra_op_num_threads": 1, "allow_spinning": True, "execution_mode": "parallel"},
        "samples_path": None,
        "batch_sizes": [4],
        "warmup": 0,
        "max_runs": 7,
        "min_runs": 3,
        "time_budget_s": 5,
    }
    (tmp_path / "req.json").write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, str(copy), str(tmp_path / "req.json")], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    (entry,) = json.loads(proc.stdout)["results"]
    assert entry["status"] == "ok" and entry["allow_spinning"] is True
    assert entry["runs"] <= 7 and entry["data"] == "random"


def test_runner_rejects_a_bad_request(tmp_path: Path) -> None:
    (tmp_path / "req.json").write_text(json.dumps({"model_path": "m.onnx", "session_options": {"graph_optimization_level": "max"}}))
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), str(tmp_path / "req.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and "graph_optimization_level" in proc.stderr


def test_runner_imports_only_stdlib_numpy_onnxruntime() -> None:
    tree = ast.parse(RUNNER_PATH.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    assert modules - set(sys.stdlib_module_names) <= {"numpy", "onnxruntime"}


@pytest.mark.parametrize(("n", "ranks"), [(5, None), (6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (30, (10, 21)), (100, (40, 61))])
def test_median_ci_ranks_match_le_boudec_table(n: int, ranks: tuple[int, int] | None) -> None:
    assert runner.median_ci_ranks(n) == ranks


def test_median_ci_halfwidth_pct() -> None:
    values = np.arange(1.0, 11.0)  # n=10: CI = [x_(2), x_(9)] = [2, 9], median 5.5
    assert runner.median_ci_halfwidth_pct(values) == pytest.approx(100 * 3.5 / 5.5)
    assert runner.median_ci_halfwidth_pct(np.ones(5)) is None


def test_prefect_task_is_tagged_for_a_concurrency_limit() -> None:
    from tasks.benchmark import benchmark_task

    assert benchmark_task.fn is benchmark_variant
    assert "edgeport-benchmark" in benchmark_task.tags and benchmark_task.retries == 0


#: Abridged /proc/cpuinfo of a 2-socket host (one core per socket shown), Sapphire Rapids-like.
_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx_vnni avx512_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx_vnni avx512_vnni amx_bf16 amx_tile amx_int8
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_CPUINFO, {"model": "Intel(R) Xeon(R) Platinum 8480+", "isa": ["AVX2", "AVX-512", "AVX-VNNI", "AVX-512 VNNI", "AMX"]}),
        ("model name\t: AMD EPYC 7763 64-Core Processor\nflags\t\t: sse2 avx2 fma\n", {"model": "AMD EPYC 7763 64-Core Processor", "isa": ["AVX2"]}),
        # amx_int8 without the tile state (amx_tile) is not usable: not reported
        ("model name\t: X\nflags\t\t: avx2 avx512f avx512_vnni amx_int8\n", {"model": "X", "isa": ["AVX2", "AVX-512", "AVX-512 VNNI"]}),
        ("processor\t: 0\nFeatures\t: fp asimd\n", {"model": None, "isa": []}),  # aarch64: no model name line
        ("", {"model": None, "isa": []}),
    ],
)
def test_parse_cpuinfo(text: str, expected: dict) -> None:
    assert runner.parse_cpuinfo(text) == expected
