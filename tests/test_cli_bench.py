"""``edgeport bench``: the standalone benchmark command, on tiny real ONNX models (no mocks).

The command is registered on a local Typer app (as edgeport/cli/__init__.py mounts it) and run with
CliRunner; every measurement runs the real runner in a child process, with a short time budget.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeport.cli.bench import bench_inputs, model_inputs, register
from edgeport.errors import DataError
from tests.conftest import openvino_env_ready

QUICK = ["--warmup", "2", "--time-budget", "0.3", "--max-runs", "50"]
#: Set by the command (as by `edgeport run`) before it imports Prefect; restored after each test.
_ENV_KEYS = ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "MLFLOW_ENABLE_TELEMETRY", "PREFECT_LOGGING_EXTRA_LOGGERS")


@pytest.fixture(autouse=True)
def _restore_env():
    """The command points PREFECT_HOME at the per-test EDGEPORT_HOME: do not leak it to later tests."""
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def _main() -> None:
        """A group, like the edgeport app (a lone command would become the root command)."""

    register(app)
    return app


def invoke(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


def make_matmul(path: Path, batch: int | str = "batch") -> Path:
    """x (batch, 4) float32 -> Relu(x @ W) (batch, 3)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_sequence_model(path: Path) -> Path:
    """ids (batch, seq) int64 and x (batch, <unnamed>, 4) float32 -> sum(x * W) + sum(ids) per row;
    the weight W is also listed as a graph input (as IR < 4 models list their initializers)."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None, 4])
    w_in = helper.make_tensor_value_info("W", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
    inits = [
        numpy_helper.from_array(np.ones(4, np.float32), "W"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "W"], ["xw"]),
        helper.make_node("ReduceSum", ["xw", "axes12"], ["s1"], keepdims=0),
        helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["idsf", "axes1"], ["s2"], keepdims=0),
        helper.make_node("Add", ["s1", "s2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "seq", [ids, x, w_in], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the rich table, as lists of stripped cells."""
    return [[c.strip() for c in line.strip("│").split("│")] for line in output.splitlines() if line.startswith("│")]


@pytest.mark.slow
def test_cpu_table_and_json(app: typer.Typer, tmp_path: Path) -> None:
    model = make_matmul(tmp_path / "tiny.onnx")
    out = tmp_path / "bench.json"
    result = invoke(app, model, "--batch-sizes", "1,8", "--json", out, *QUICK)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("cpu", "1", "ok", "CPU"), ("cpu", "8", "ok", "CPU")]
    for row in rows:
        p50, p90, p99, throughput = map(float, row[4:8])
        assert 0 < p50 <= p90 <= p99 and throughput > 0
    raw = json.loads(out.read_text())
    assert [(e["target"], e["batch_size"], e["status"]) for e in raw["results"]] == [("cpu", 1, "ok"), ("cpu", 8, "ok")]
    assert all(e["providers_bound"] == ["CPUExecutionProvider"] and e["runs"] >= 1 for e in raw["results"])
    assert raw["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert raw["targets"][0]["onnxruntime_version"]
    assert all(e.get("latencies_path") is None for e in raw["results"])  # the temporary work folder is gone


@pytest.mark.slow
def test_default_batch_sizes_and_static_batch(app: typer.Typer, tmp_path: Path) -> None:
    dynamic = make_matmul(tmp_path / "dynamic.onnx")
    result = invoke(app, dynamic, *QUICK)
    assert result.exit_code == 0, result.output
    assert [r[1] for r in table_rows(result.stdout)] == ["1", "8"]

    static = make_matmul(tmp_path / "static.onnx", batch=1)
    result = invoke(app, static, *QUICK)  # a static batch of 1: measured at 1 only
    assert result.exit_code == 0, result.output
    assert [r[1] for r in table_rows(result.stdout)] == ["1"]

    result = invoke(app, static, "--batch-sizes", "1,4", *QUICK)  # asked for 4 anyway: unsupported, exit 2
    assert result.exit_code == 2, result.output
    assert [(r[1], r[2]) for r in table_rows(result.stdout)] == [("1", "ok"), ("4", "unsupported")]
    assert "static batch dim of 1" in result.stdout


@pytest.mark.slow
def test_dims_from_the_graph_and_dim_option(app: typer.Typer, tmp_path: Path) -> None:
    model = make_sequence_model(tmp_path / "seq.onnx")
    inputs, outputs = model_inputs(model)
    assert [(i.name, i.dtype, i.shape) for i in inputs] == [("ids", "int64", ["batch", "seq"]), ("x", "float32", ["batch", "dim_1", 4])]
    assert outputs == ["y"]
    fixed, defaulted = bench_inputs(inputs, {"seq": 16}, samples=False)
    assert [i.shape for i in fixed] == [["batch", 16], ["batch", 1, 4]] and defaulted == {"dim_1": 1}
    with pytest.raises(DataError, match="is the batch dim"):
        bench_inputs(inputs, {"batch": 4}, samples=False)

    out = tmp_path / "seq.json"
    result = invoke(app, model, "--dim", "seq=16", "--dim", "dim_1=3", "-b", "2", "--json", out, *QUICK)
    assert result.exit_code == 0, result.output
    raw = json.loads(out.read_text())
    assert [i["shape"] for i in raw["inputs"]] == [["batch", 16], ["batch", 3, 4]]
    assert raw["defaulted_dims"] == [] and raw["results"][0]["status"] == "ok"

    result = invoke(app, model, *QUICK)  # unset dims default to 1, and the command says so
    assert result.exit_code == 0, result.output
    assert re.search(r"dim\(s\) dim_1, seq set to 1", result.output)

    result = invoke(app, model, "--dim", "sequence=16")
    assert result.exit_code == 1
    assert "no dynamic dim 'sequence'" in result.output and "dim_1, seq" in result.output
    assert invoke(app, model, "--dim", "seq=zero").exit_code == 1


@pytest.mark.slow
def test_samples(app: typer.Typer, tmp_path: Path) -> None:
    model = make_matmul(tmp_path / "tiny.onnx")
    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    result = invoke(app, model, "--samples", good, "-b", "5", "--json", out, "--work-dir", work, *QUICK)
    assert result.exit_code == 0, result.output
    entry = json.loads(out.read_text())["results"][0]
    assert entry["data"] == "samples"
    assert (work / "benchmark-cpu.request.json").is_file() and (work / "benchmark-cpu.json").is_file()  # kept

    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((3, 4), np.float32))
    result = invoke(app, model, "--samples", bad)
    assert result.exit_code == 1 and "no array for input(s) ['x']" in result.output


def test_missing_file(app: typer.Typer, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model.onnx"
    result = invoke(app, missing)
    assert result.exit_code == 1
    assert str(missing) in result.output and "not found" in result.output
    assert "Traceback" not in result.output


def test_not_an_onnx_file(app: typer.Typer, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a protobuf" * 10)
    result = invoke(app, junk)
    assert result.exit_code == 1 and "not a readable ONNX model" in result.output


@pytest.mark.parametrize("args", [["--batch-sizes", "1,x"], ["--batch-sizes", "0"]])
def test_bad_batch_sizes(app: typer.Typer, tmp_path: Path, args: list[str]) -> None:
    result = invoke(app, make_matmul(tmp_path / "tiny.onnx"), *args)
    assert result.exit_code == 1 and "--batch-sizes" in result.output


def test_unknown_target(app: typer.Typer, tmp_path: Path) -> None:
    model = make_matmul(tmp_path / "tiny.onnx")
    result = invoke(app, model, "--target", "cpu", "--target", "tpu-9000")
    assert result.exit_code == 1
    assert "TargetError" in result.output and "'tpu-9000'" in result.output
    assert "cpu, cpu-1t, openvino-cpu" in result.output  # the message lists the profiles there are
    assert not table_rows(result.stdout)  # checked before anything ran


def test_openvino_env_missing_is_a_target_error(app: typer.Typer, tmp_path: Path) -> None:
    """With no managed environments (the per-test EDGEPORT_HOME is empty) openvino-cpu names the fix."""
    result = invoke(app, make_matmul(tmp_path / "tiny.onnx"), "-t", "openvino-cpu")
    assert result.exit_code == 1
    assert "TargetError" in result.output and "edgeport targets setup openvino" in result.output


@pytest.mark.slow
@pytest.mark.skipif(not openvino_env_ready(), reason="run `edgeport targets setup openvino` to create the OpenVINO environment")
def test_openvino_target(app: typer.Typer, tmp_path: Path, real_envs: Path) -> None:
    model = make_matmul(tmp_path / "tiny.onnx")
    out = tmp_path / "bench.json"
    result = invoke(app, model, "-t", "cpu", "-t", "openvino-cpu", "-b", "1,8", "--json", out, *QUICK)
    assert result.exit_code == 0, result.output
    raw = json.loads(out.read_text())
    ov = [e for e in raw["results"] if e["target"] == "openvino-cpu"]
    assert [e["batch_size"] for e in ov] == [1, 8]
    assert all(e["status"] == "ok" and "OpenVINOExecutionProvider" in e["providers_bound"] for e in ov)
    assert [r[3] for r in table_rows(result.stdout) if r[0] == "openvino-cpu"] == ["OpenVINO, CPU"] * 2
