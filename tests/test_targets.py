"""Benchmark targets: profiles, resolution, managed environments, ``edgeport targets``.

The OpenVINO tests run only where the managed environment exists in the real
EDGEPORT_HOME (create it once, ~30-60 s and ~450 MB, with
``edgeport targets setup openvino`` or ``python -m edgeport.cli.targets setup openvino``);
elsewhere they are skipped with that command in the reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
import yaml
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from typer.testing import CliRunner

from edgeport import targets
from edgeport.cli import targets as cli_targets
from edgeport.errors import SpecError, TargetError
from edgeport.home import edgeport_home
from edgeport.spec import PipelineSpec, TargetSpec, load_spec
from edgeport.targets import (
    PROFILES,
    environment_python,
    environment_status,
    resolve_target,
    setup_environment,
    target_availability,
)
from tasks.benchmark import benchmark_variant, build_request

#: The state folder of the machine (read at import, before the autouse fixture of
#: conftest.py points EDGEPORT_HOME at a per-test folder): where `targets setup` put envs.
REAL_HOME = edgeport_home()
OV = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"


def make_matmul(path: Path) -> Path:
    """x (batch, 4) float32 -> Relu(x @ W) (batch, 3)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_conv_integer(folder: Path) -> Path:
    """A Conv (batch, 1, 8, 8) -> (batch, 4, 6, 6), dynamically quantized by onnxruntime.quantization
    (as tasks/quantize does for a ``mode: dynamic`` variant): DynamicQuantizeLinear + ConvInteger."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "B")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W", "B"], ["y"])], "conv", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "conv.onnx")
    out = folder / "conv-int8-dynamic.onnx"
    quantize_dynamic(folder / "conv.onnx", out, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    assert "ConvInteger" in {n.op_type for n in onnx.load(out).graph.node}
    return out


def make_spec(tmp_path: Path, inputs: list[dict], **benchmark) -> PipelineSpec:
    bench = {"batch_sizes": [1, 4], "warmup": 2, "repetitions": 50, "time_budget_s": 0.5, "timeout_s": 120.0, **benchmark}
    return PipelineSpec.model_validate(
        {
            "name": "tiny",
            "model": {"checkpoint": str(tmp_path / "unused.pt"), "factory": "m:f"},
            "inputs": inputs,
            "outputs": ["y"],
            "benchmark": bench,
            "registry": {"registered_model": "tiny"},
        }
    )


MATMUL_INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
CONV_INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]


def write_pipeline(tmp_path: Path, target_list: list) -> Path:
    data = {
        "name": "tiny",
        "model": {"checkpoint": "unused.pt", "factory": "m:f"},
        "inputs": MATMUL_INPUTS,
        "outputs": ["y"],
        "targets": target_list,
        "registry": {"registered_model": "tiny"},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- profiles and the spec


def test_builtin_profiles() -> None:
    assert list(PROFILES) == ["cpu", "cpu-1t", "openvino-cpu"]
    cpu = resolve_target("cpu")
    assert cpu.providers == [CPU] and cpu.intra_op_num_threads == 0 and cpu.env == "current"
    assert cpu.python == Path(sys.executable)
    one = resolve_target("cpu-1t")
    assert (one.intra_op_num_threads, one.inter_op_num_threads) == (1, 1)
    assert one.profile == "cpu-1t" and one.python == Path(sys.executable)


def test_name_of_a_profile_applies_it_and_spec_fields_win(tmp_path: Path) -> None:
    spec = load_spec(
        write_pipeline(
            tmp_path,
            [
                {"name": "cpu"},
                {"name": "cpu-1t", "graph_optimization_level": "basic"},
                {"name": "edge", "profile": "cpu-1t", "intra_op_num_threads": 2, "execution_mode": "parallel"},
                {"name": "gpu", "providers": ["CUDAExecutionProvider", CPU]},
            ],
        )
    )
    cpu, one, edge, gpu = spec.targets
    assert cpu.profile == "cpu" and cpu.providers == [CPU]  # existing `targets: [{name: cpu}]` specs
    assert one.profile == "cpu-1t" and one.intra_op_num_threads == 1 and one.graph_optimization_level == "basic"
    assert edge.profile == "cpu-1t" and edge.intra_op_num_threads == 2 and edge.inter_op_num_threads == 1
    assert edge.execution_mode == "parallel"
    assert gpu.profile is None and gpu.providers == ["CUDAExecutionProvider", CPU] and gpu.env == "current"
    request = build_request(tmp_path / "m.onnx", make_spec(tmp_path, MATMUL_INPUTS), edge, None)
    assert request["session_options"] == {
        "intra_op_num_threads": 2,
        "inter_op_num_threads": 1,
        "graph_optimization_level": "all",
        "execution_mode": "parallel",
        "allow_spinning": False,
    }
    assert TargetSpec().profile == "cpu"  # the default target is the cpu profile
    assert TargetSpec.model_validate(edge.model_dump(mode="json")) == edge  # dumps round-trip


def test_openvino_profile_and_provider_options(tmp_path: Path) -> None:
    ov = TargetSpec(name="openvino-cpu")
    assert ov.providers == [OV, CPU]  # still a list of names: what tasks/register.py reads
    assert ov.provider_options == {OV: {"device_type": "CPU"}} and ov.env == "openvino"
    assert ov.provider_list == [(OV, {"device_type": "CPU"}), CPU]
    resolved = resolve_target(ov, check_env=False)
    assert resolved.python == environment_python("openvino") == tmp_path / "edgeport-home" / "envs" / "openvino" / "bin" / "python"
    assert resolved.request_providers() == [[OV, {"device_type": "CPU"}], CPU]

    # a provider item may be a {name, options} mapping; options go to provider_options
    spec = load_spec(
        write_pipeline(
            tmp_path,
            [
                {
                    "name": "ov-tuned",
                    "profile": "openvino-cpu",
                    "providers": [{"name": OV, "options": {"device_type": "CPU", "num_of_threads": 2, "enable_qdq_optimizer": True}}, CPU],
                },
                {"name": "ov-plain", "profile": "openvino-cpu", "providers": [OV]},
            ],
        )
    )
    tuned, plain = spec.targets
    assert tuned.providers == [OV, CPU] and tuned.env == "openvino"
    assert tuned.provider_options == {OV: {"device_type": "CPU", "num_of_threads": 2, "enable_qdq_optimizer": True}}
    assert resolve_target(tuned, check_env=False).request_providers() == [
        [OV, {"device_type": "CPU", "num_of_threads": "2", "enable_qdq_optimizer": "true"}],
        CPU,
    ]
    assert plain.providers == [OV] and plain.provider_options == {}  # own providers drop the profile's options


def test_unknown_profile_names_it(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="unknown target profile 'tpu'"):
        resolve_target("tpu")
    with pytest.raises(TargetError, match=r"target 'edge'.*unknown profile 'tpu'"):
        resolve_target({"name": "edge", "profile": "tpu"})
    with pytest.raises(SpecError, match=r"targets\.0.*target 'edge': unknown profile 'tpu'.*cpu, cpu-1t, openvino-cpu"):
        load_spec(write_pipeline(tmp_path, [{"name": "edge", "profile": "tpu"}]))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"name": "ov", "providers": [{"name": OV, "options": "device_type=CPU"}]}, "options of provider 'OpenVINOExecutionProvider' must be a mapping"),
        ({"name": "ov", "providers": [{"name": OV, "options": {"device_type": {"nested": 1}}}]}, "provider_options"),
        ({"name": "ov", "providers": [{"provider": OV}]}, r"providers\[0\] must be a name or \{name: str, options: mapping\}"),
        ({"name": "ov", "provider_options": {OV: {"device_type": "CPU"}}}, "not in providers"),
        ({"name": "ov", "providers": [CPU, CPU]}, "providers must be unique"),
        ({"name": "ov", "env": "conda"}, "unknown env 'conda'"),
    ],
)
def test_bad_target_settings_are_errors_naming_the_target(tmp_path: Path, target: dict, message: str) -> None:
    with pytest.raises(TargetError, match=message) as info:
        resolve_target(target)
    assert "'ov'" in str(info.value)
    with pytest.raises(SpecError, match=message):
        load_spec(write_pipeline(tmp_path, [target]))


# --------------------------------------------------------------------------- managed environments


def test_missing_environment_is_reported_and_blocks_the_benchmark(tmp_path: Path) -> None:
    ok, reason = environment_status("openvino")
    assert not ok and "edgeport targets setup openvino" in reason
    ok, reason = target_availability("openvino-cpu")
    assert not ok and "edgeport targets setup openvino" in reason
    assert target_availability("cpu") == (True, f"onnxruntime {__import__('onnxruntime').__version__} in this environment")

    model = make_matmul(tmp_path / "tiny.onnx")
    with pytest.raises(TargetError, match=r"target 'openvino-cpu'.*`edgeport targets setup openvino`"):
        benchmark_variant(model, make_spec(tmp_path, MATMUL_INPUTS), TargetSpec(name="openvino-cpu"), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # raised before launching anything


@pytest.mark.slow
def test_explicit_python_overrides_the_target_environment(tmp_path: Path) -> None:
    # The caller's interpreter (here: this one, without OpenVINO) is used as is: the EP is
    # requested with its options, not bound, and the numbers are labelled "fallback".
    model = make_matmul(tmp_path / "tiny.onnx")
    spec = make_spec(tmp_path, MATMUL_INPUTS, batch_sizes=[2])
    (entry,) = benchmark_variant(model, spec, TargetSpec(name="openvino-cpu"), None, tmp_path / "out", python=sys.executable)
    assert entry["status"] == "fallback" and entry["providers_bound"] == [CPU]
    assert entry["providers_requested"] == [OV, CPU] and entry["target"] == "openvino-cpu"
    request = json.loads((tmp_path / "out" / "benchmark-openvino-cpu.request.json").read_text())
    assert request["providers"] == [[OV, {"device_type": "CPU"}], CPU]


def test_stale_marker_is_not_ready(tmp_path: Path) -> None:
    folder = tmp_path / "edgeport-home" / "envs" / "openvino"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").symlink_to(sys.executable)
    (folder / targets.MARKER_NAME).write_text(json.dumps({"packages": ["onnxruntime-openvino==1.0.0"], "constraints": [], "python": "3.11"}))
    ok, reason = environment_status("openvino")
    assert not ok and "packages" in reason and "onnxruntime-openvino==1.0.0" in reason
    with pytest.raises(TargetError, match="not ready"):
        resolve_target("openvino-cpu")


@pytest.mark.slow  # creates a virtual environment and runs pip
def test_environment_that_cannot_be_built_is_a_target_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip fails locally (a path that is not a project): no index is asked about a made-up name.
    broken = {"packages": [str(tmp_path / "not-a-project")], "constraints": [], "expects": []}
    monkeypatch.setattr(targets, "ENVIRONMENTS", {**targets.ENVIRONMENTS, "broken": broken})
    with pytest.raises(TargetError, match=r"environment 'broken': pip install failed") as info:
        setup_environment("broken")
    assert "not-a-project" in str(info.value)
    assert not (tmp_path / "edgeport-home" / "envs" / "broken").exists()  # no half-built env left
    with pytest.raises(TargetError, match="unknown managed environment 'nope'"):
        setup_environment("nope")


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> tuple[CliRunner, typer.Typer]:
    app = typer.Typer()
    app.add_typer(cli_targets.targets_app, name="targets")
    monkeypatch.setattr(cli_targets, "console", Console(width=400))
    return CliRunner(), app


def _rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) == 6 and cells[0] in PROFILES:
            rows[cells[0]] = cells
    return rows


def test_cli_targets_list(cli: tuple[CliRunner, typer.Typer]) -> None:
    runner, app = cli
    result = runner.invoke(app, ["targets", "list"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert list(rows) == ["cpu", "cpu-1t", "openvino-cpu"]
    assert rows["cpu"][1:5] == [CPU, "default/default", "current", "yes"]
    assert rows["cpu-1t"][2] == "1/1"
    ov = rows["openvino-cpu"]
    assert ov[1] == "OpenVINOExecutionProvider {device_type: CPU}" and ov[3:5] == ["openvino", "no"]
    assert "edgeport targets setup openvino" in ov[5]  # this test's EDGEPORT_HOME has no env


def test_cli_targets_setup_unknown_env(cli: tuple[CliRunner, typer.Typer]) -> None:
    runner, app = cli
    result = runner.invoke(app, ["targets", "setup", "nope"])
    assert result.exit_code == 1
    assert "unknown managed environment 'nope'" in result.output


# --------------------------------------------------------------------------- OpenVINO, for real


@pytest.fixture
def openvino_home(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real EDGEPORT_HOME when its openvino environment is ready, else skip."""
    ok, reason = environment_status("openvino", REAL_HOME)
    if not ok:
        pytest.skip(f"managed env 'openvino' not ready in {REAL_HOME} ({reason}); run: edgeport targets setup openvino")
    monkeypatch.setenv("EDGEPORT_HOME", str(REAL_HOME))
    return REAL_HOME


@pytest.mark.slow
def test_openvino_cpu_binds_the_openvino_ep(tmp_path: Path, openvino_home: Path) -> None:
    assert target_availability("openvino-cpu") == (True, "onnxruntime 1.24.1 in env 'openvino'")
    model = make_matmul(tmp_path / "tiny.onnx")
    entries = benchmark_variant(model, make_spec(tmp_path, MATMUL_INPUTS), TargetSpec(name="openvino-cpu"), None, tmp_path / "out")
    assert [e["batch_size"] for e in entries] == [1, 4]
    for entry in entries:
        assert entry["status"] == "ok", entry["error"]
        assert OV in entry["providers_bound"] and entry["provider"] == OV
        assert entry["target"] == "openvino-cpu" and entry["p50_ms"] > 0
    raw = json.loads((tmp_path / "out" / "benchmark-openvino-cpu.json").read_text())
    assert raw["onnxruntime_version"] == "1.24.1" and OV in raw["available_providers"]


@pytest.mark.slow
def test_openvino_rejects_conv_integer_as_unsupported(tmp_path: Path, openvino_home: Path) -> None:
    model = make_conv_integer(tmp_path)
    spec = make_spec(tmp_path, CONV_INPUTS)
    entries = benchmark_variant(model, spec, TargetSpec(name="openvino-cpu"), None, tmp_path / "ov")
    for entry in entries:
        assert entry["status"] == "unsupported"
        assert entry["error"].startswith("InferenceSession creation failed:") and "ONNXRuntimeError" in entry["error"]
        assert entry["providers_bound"] == [] and entry["provider"] is None
    # the same model runs on this environment's CPU EP: the rejection is the OpenVINO EP's
    assert [e["status"] for e in benchmark_variant(model, spec, TargetSpec(), None, tmp_path / "cpu")] == ["ok", "ok"]


# --------------------------------------------------------------------------- on demand


def test_env_setup_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(targets.ENV_SETUP_VAR, raising=False)
    assert targets.env_setup_enabled() is True
    monkeypatch.setenv(targets.ENV_SETUP_VAR, "never")
    assert targets.env_setup_enabled() is False
    monkeypatch.setenv(targets.ENV_SETUP_VAR, "sometimes")
    with pytest.raises(TargetError, match="EDGEPORT_ENV_SETUP='sometimes'"):
        targets.env_setup_enabled()


def test_missing_environment_without_setup_is_unavailable_and_names_the_fix(tmp_path: Path) -> None:
    from tasks.benchmark import benchmark_target

    ready = targets.ensure_environment("openvino", setup=False)
    assert not ready.available and ready.setup_s is None and not ready.created
    assert ready.setup_command == "edgeport targets setup openvino" and "`edgeport targets setup openvino`" in ready.reason
    assert not targets.environment_dir("openvino").exists()
    model = make_matmul(tmp_path / "tiny.onnx")
    spec = make_spec(tmp_path, MATMUL_INPUTS, batch_sizes=[1, 4])
    results = benchmark_target(spec, TargetSpec(name="openvino-cpu"), {"tiny": str(model)}, None, tmp_path / "out")
    assert [(e["batch_size"], e["status"], e["setup_command"]) for e in results["tiny"]] == [
        (1, "unavailable", "edgeport targets setup openvino"),
        (4, "unavailable", "edgeport targets setup openvino"),
    ]
    assert results["tiny"][0]["providers_requested"] == [OV, CPU] and results["tiny"][0]["p50_ms"] is None
    assert not (tmp_path / "out").exists()  # no runner launched


def test_last_failed_setup_is_named_until_a_setup_succeeds(tmp_path: Path) -> None:
    envs = tmp_path / "edgeport-home" / "envs"
    envs.mkdir(parents=True)
    (envs / ".openvino.setup-error.json").write_text(json.dumps({"time": "T0", "setup_s": 3.0, "error": "pip install failed: no index"}))
    ready = targets.environment_readiness("openvino")
    assert not ready.available and "the setup at T0 failed: pip install failed: no index" in ready.reason
    assert targets.last_setup_error("openvino")["setup_s"] == 3.0
    assert targets.environment_fingerprint("openvino") is None


def test_cli_targets_list_shows_the_managed_environments(cli: tuple[CliRunner, typer.Typer]) -> None:
    runner, app = cli
    result = runner.invoke(app, ["targets", "list"])
    assert result.exit_code == 0, result.output
    assert "managed environments" in result.output
    row = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("openvino "))
    cells = [c.strip() for c in row.strip().strip("│").split("│")]
    assert cells[0] == "openvino" and cells[1].startswith("no") and "edgeport targets setup openvino" in cells[1]
