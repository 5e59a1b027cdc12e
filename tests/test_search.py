"""Accuracy-aware quantization search (tasks/search.py) and per-node sensitivity (tasks/sensitivity.py).

Real components throughout: onnxruntime.quantization on real models, ONNX Runtime sessions, the
benchmark runner, Prefect's test harness (task caching with persisted results) and a sqlite MLflow
store. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeport.calibration import write_calibration_cache
from edgeport.data import load_input_arrays
from edgeport.errors import SpecError
from edgeport.spec import (
    PipelineSpec,
    QuantizationVariantSpec,
    SensitivitySpec,
    load_spec,
)
from mlflow import MlflowClient
from tasks.quantize import preprocess
from tasks.search import select_winner
from tasks.sensitivity import analyze_sensitivity, candidate_nodes, group_nodes
from tests.conftest import digits_spec_dict, write_spec

OUTLIER = 5000.0


# --------------------------------------------------------------------------- a model with one damaged node


def _outlier_model(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Four dense layers; the input of ``/layer.2/fc`` carries one channel at 5000 (an outlier the
    layer ignores: its weights for that channel are 0), made by a Sub that the quantizer leaves in
    float. Per-tensor INT8 of that input rounds every other channel to 0: only the quantization of
    the layer consuming it ruins the output. Labels are the FP32 model's own predictions."""
    rng = np.random.default_rng(seed)
    w = [rng.standard_normal(s).astype(np.float32) * 0.3 for s in [(16, 32), (32, 32), (32, 32), (32, 10)]]
    w[1][:, 0] = 0
    w[2][0, :] = 0
    inits = [numpy_helper.from_array(a, f"W{i}") for i, a in enumerate(w)]
    inits += [numpy_helper.from_array(np.zeros(n, np.float32), f"B{i}") for i, n in enumerate((32, 32, 32, 10))]
    inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, 32).astype(np.float32), "S1"))
    shift = np.zeros(32, np.float32)
    shift[0] = -OUTLIER
    inits.append(numpy_helper.from_array(shift, "C1"))
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["m0"], name="/layer.0/fc/MatMul"),
        helper.make_node("Add", ["m0", "B0"], ["a0"], name="/layer.0/fc/Add"),
        helper.make_node("Relu", ["a0"], ["r0"], name="/layer.0/act/Relu"),
        helper.make_node("MatMul", ["r0", "W1"], ["m1"], name="/layer.1/fc/MatMul"),
        helper.make_node("Div", ["m1", "S1"], ["s1"], name="/layer.1/fc/Div"),
        helper.make_node("Sub", ["s1", "C1"], ["outlier"], name="/layer.1/fc/Sub"),
        helper.make_node("MatMul", ["outlier", "W2"], ["m2"], name="/layer.2/fc/MatMul"),
        helper.make_node("Add", ["m2", "B2"], ["a2"], name="/layer.2/fc/Add"),
        helper.make_node("Relu", ["a2"], ["r2"], name="/layer.2/act/Relu"),
        helper.make_node("MatMul", ["r2", "W3"], ["m3"], name="/head/MatMul"),
        helper.make_node("Add", ["m3", "B3"], ["logits"], name="/head/Add"),
    ]
    graph = helper.make_graph(
        nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "outlier.onnx"
    onnx.save(model, path)
    import onnxruntime as ort

    x = rng.standard_normal((256, 16)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.savez(folder / "cal.npz", x=x[:128])
    np.savez(folder / "eval.npz", x=x[128:], labels=y[128:].argmax(1))
    return {"model": path, "calibration": folder / "cal.npz", "eval": folder / "eval.npz"}


@pytest.fixture
def outlier(tmp_path: Path) -> dict:
    files = _outlier_model(tmp_path / "outlier")
    spec = PipelineSpec.model_validate({
        "name": "outlier",
        "model": {"checkpoint": str(tmp_path / "unused.pt"), "factory": "unused:Model"},
        "inputs": [{"name": "x", "shape": ["batch", 16]}],
        "outputs": ["logits"],
        "calibration": {"dataset": str(files["calibration"])},
        "evaluation": {"dataset": str(files["eval"])},
        "registry": {"registered_model": "outlier"},
    })
    work = tmp_path / "work"
    work.mkdir()
    pre = preprocess(files["model"], work / "fp32-preprocessed.onnx")
    cache = work / "calibration.json"
    write_calibration_cache(pre, load_input_arrays(files["calibration"], spec.inputs, "calibration.dataset"), cache)
    # The damaged node: the one that consumes the outlier tensor (after quant_pre_process's fusions).
    damaged = next(n.name for n in onnx.load(pre).graph.node if "outlier" in n.input)
    return {**files, "spec": spec, "work": work, "pre": pre, "cache": cache, "damaged": damaged}


@pytest.mark.slow
def test_sensitivity_ranks_the_damaged_node_first(outlier):
    base = QuantizationVariantSpec(name="base", per_channel=True)
    report = analyze_sensitivity(
        outlier["spec"], base, outlier["model"], "fp32", outlier["work"], outlier["cache"], SensitivitySpec(num_samples=64)
    )
    assert report["fp32"]["metric"] == 1.0
    assert report["quantized"]["metric"] < 0.5, "the outlier should ruin the fully quantized model"
    top = report["ranking"][0]
    assert top["node"] == outlier["damaged"] and top["measured"]
    assert top["metric_impact"] > 0.5 and top["impact"] > 0.5 * report["quantized"]["nsr"]
    # every other node recovers (almost) nothing: the damage is not spread
    assert all(r["impact"] < 0.1 * top["impact"] for r in report["ranking"][1:])
    assert report["probes"] == 1 + report["candidates"]  # small model: every node alone


@pytest.mark.slow
def test_sensitivity_groups_first_then_refines_the_worst_group(outlier):
    base = QuantizationVariantSpec(name="base", per_channel=True)
    nodes = candidate_nodes(outlier["pre"], "QDQ", None)
    groups = group_nodes(nodes, ["block"])
    assert "block:/layer.2" in groups and outlier["damaged"] in groups["block:/layer.2"]
    settings = SensitivitySpec(num_samples=64, max_single_nodes=2, group_by=["block"], refine_groups=1)
    report = analyze_sensitivity(outlier["spec"], base, outlier["model"], "fp32", outlier["work"], outlier["cache"], settings)
    assert report["groups"][0]["group"] == "block:/layer.2"
    measured = [r["node"] for r in report["ranking"] if r["measured"]]
    assert set(measured) == set(groups["block:/layer.2"])  # only the worst group was refined
    assert report["probes"] == 1 + len(groups) + len(measured) < 1 + len(nodes) + len(groups)
    assert report["ranking"][0]["node"] == outlier["damaged"]


# --------------------------------------------------------------------------- selection


def test_select_winner_takes_the_fastest_passing_trial_not_the_first():
    trials = [
        {"trial_id": "first-pass-slow", "passed_quality": True, "p50_ms": 5.0, "evaluation": {"value": 0.99}},
        {"trial_id": "fails-gate", "passed_quality": False, "p50_ms": None, "evaluation": {"value": 0.5}},
        {"trial_id": "fast", "passed_quality": True, "p50_ms": 0.5, "evaluation": {"value": 0.985}},
        {"trial_id": "dominated", "passed_quality": True, "p50_ms": 6.0, "evaluation": {"value": 0.98}},
    ]
    winner, pareto = select_winner(trials)
    assert winner["trial_id"] == "fast"
    assert pareto == ["fast", "first-pass-slow"]
    assert select_winner([trials[1]]) == (None, [])


# --------------------------------------------------------------------------- the search in the pipeline (digits)


def _search_section(**space) -> dict:
    return {
        "name": "int8-search",
        "objective": {"target": "cpu", "batch_size": 32},
        "space": {
            "calibration_methods": ["MinMax"], "per_channel": [False], "activation_types": ["QInt8"],
            "weight_types": ["QInt8"], "op_types_to_quantize": [None], "exclude_top_k": [0, 1], **space,
        },
        "sensitivity": {"num_samples": 64},
        "max_trials": 6,
    }


@pytest.fixture(scope="module")
def digits_search(prefect_harness, digits_artifacts, tmp_path_factory):
    """The digits pipeline with a search, run twice on the same EDGEPORT_HOME and output folder.

    The space is built so the first trial to pass is slow: QOperator with S8S8 (ONNX Runtime's
    QLinearConv/QGemm S8S8 path, ~5-10x slower than FP32 on x64 without VNNI), then QDQ S8S8
    (fused into fast kernels). Both pass the 0.5 pp budget on digits.
    """
    root = tmp_path_factory.mktemp("search")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPORT_HOME", str(root / "home"))
    from flows.pipeline import pipeline

    data = digits_spec_dict(digits_artifacts, quantization=[], search=_search_section(formats=["QOperator", "QDQ"]))
    data["benchmark"] = {"batch_sizes": [32], "warmup": 5, "repetitions": 100, "time_budget_s": 0.6, "timeout_s": 120}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data["registry"]["tracking_uri"] = uri
    spec_path = write_spec(root / "spec", data)
    first = pipeline(str(spec_path), output_dir=str(root / "out"))
    second = pipeline(str(spec_path), output_dir=str(root / "out"))
    yield {"first": first, "second": second, "uri": uri, "root": root}
    mp.undo()


@pytest.mark.slow
def test_search_picks_the_faster_of_two_passing_trials(digits_search):
    search = digits_search["first"]["search"]
    trials = {t["trial_id"]: t for t in search["trials"]}
    passing = [t for t in search["trials"] if t["passed_quality"]]
    formats = {t["settings"]["format"] for t in passing}
    assert formats == {"QOperator", "QDQ"}, [(t["trial_id"], t["status"], t.get("error")) for t in search["trials"]]
    first_passing = passing[0]
    assert first_passing["settings"]["format"] == "QOperator"
    winner = trials[search["winner"]["trial_id"]]
    assert winner["settings"]["format"] == "QDQ"
    assert winner["p50_ms"] == min(t["p50_ms"] for t in passing)
    assert winner["p50_ms"] < 0.5 * first_passing["p50_ms"]
    assert winner["trial_id"] in search["pareto"]["cpu"]  # the pareto set per objective target
    # The FP32 reference was benchmarked in the same interleaved sweep.
    assert [r["name"] for r in search["references"]] == ["fp32"] and search["references"][0]["p50_ms"] > 0
    # Calibrated once (one method, one op-type set) for every trial.
    assert search["calibrations"] == 1 and search["calibrations_cached"] == 0
    # The winner joined the variants and was registered with its search provenance.
    record = next(v for v in digits_search["first"]["variants"] if v["name"] == "int8-search")
    assert record["passed"] and record["model_version"]
    mv = MlflowClient(digits_search["uri"]).get_model_version("digits-cnn", record["model_version"])
    assert mv.tags["edgeport.search.trial_id"] == winner["trial_id"]
    assert mv.tags["edgeport.search.settings_hash"] == winner["settings_hash"]
    assert mv.tags["edgeport.search.search_id"] == search["search_id"]
    assert mv.tags["edgeport.search.num_trials"] == str(len(search["trials"]))


@pytest.mark.slow
def test_search_logs_trials_as_nested_runs_and_plots(digits_search):
    first = digits_search["first"]
    client = MlflowClient(digits_search["uri"])
    run_id = first["mlflow_run_id"]
    exp = client.get_run(run_id).info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    trial_runs = {r.data.tags["edgeport.search.trial_id"]: r for r in children if "edgeport.search.trial_id" in r.data.tags}
    assert set(trial_runs) == {t["trial_id"] for t in first["search"]["trials"]}
    for t in first["search"]["trials"]:
        run = trial_runs[t["trial_id"]]
        assert run.data.params["format"] == t["settings"]["format"]
        assert run.data.metrics["quality"] == pytest.approx(t["evaluation"]["value"])
        if t["p50_ms"] is not None:
            assert run.data.metrics["p50_ms"] == pytest.approx(t["p50_ms"])
    logged = {a.path for a in client.list_artifacts(run_id, "search")}
    assert {"search/pareto.png", "search/sensitivity.png", "search/sensitivity.json", "search/search.json", "search/trials.json"} <= logged
    sens = json.loads((digits_search["root"] / "out" / "search" / "sensitivity.json").read_text())
    assert sens["ranking"] and {"node", "op_type", "impact", "metric_impact"} <= sens["ranking"][0].keys()


@pytest.mark.slow
def test_resumed_search_reuses_cached_trials(digits_search):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    first, second = digits_search["first"]["search"], digits_search["second"]["search"]
    assert [t["trial_id"] for t in second["trials"]] == [t["trial_id"] for t in first["trials"]]
    assert all(t["cached"] for t in second["trials"])
    assert second["calibrations"] == 0 and second["calibrations_cached"] == 1  # no recalibration
    assert second["winner"]["trial_id"] in {t["trial_id"] for t in second["trials"] if t["passed_quality"]}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            # the trials run in the search subflow: a child flow run of the pipeline run
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[digits_search["second"]["prefect_flow_run"]["id"]])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="search-trial-")),
        )
    assert len(runs) == len(second["trials"])
    assert {r.state.name for r in runs} == {"Cached"}


@pytest.mark.slow
def test_search_runs_as_a_child_flow_run_of_the_pipeline(digits_search):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentTaskRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    pipeline_id = digits_search["first"]["prefect_flow_run"]["id"]
    with get_client(sync_client=True) as client:
        parent_tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline_id])))
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in parent_tasks]))
        )
        names = {c.id: client.read_flow(c.flow_id).name for c in children}
        search_runs = [c for c in children if names[c.id] == "edgeport-search"]
        assert len(search_runs) == 1, sorted(names.values())
        child = search_runs[0]
        parent_task = next(t for t in parent_tasks if t.id == child.parent_task_run_id)
        assert str(parent_task.flow_run_id) == pipeline_id
        assert child.name == "search-digits-cnn" and child.state.is_completed()
        trials = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[child.id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="search-trial-")),
        )
        in_pipeline = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="search-trial-")),
        )
    assert len(trials) == len(digits_search["first"]["search"]["trials"]) > 0  # the trials run in the child
    assert in_pipeline == []  # not flattened into the pipeline run


# --------------------------------------------------------------------------- no passing trial


_FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class OutlierNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc0 = nn.Linear(16, 32)
            self.fc1 = nn.Linear(32, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 10)
            shift = torch.zeros(32)
            shift[0] = -5000.0
            self.register_buffer("shift", shift)

        def forward(self, x):
            h = self.fc1(torch.relu(self.fc0(x))) - self.shift  # channel 0 at 5000: fc2 ignores it
            return self.head(torch.relu(self.fc2(h)))
    """
)


@pytest.mark.slow
def test_no_passing_trial_registers_nothing_and_exits_2(tmp_path, cli_env):
    import torch

    (tmp_path / "outlier_net.py").write_text(_FACTORY)
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location("outlier_net", tmp_path / "outlier_net.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.OutlierNet().eval()
    with torch.no_grad():
        net.fc1.weight[0, :] = 0
        net.fc1.bias[0] = 0
        net.fc2.weight[:, 0] = 0
    torch.save(net.state_dict(), tmp_path / "net.pt")
    x = np.random.default_rng(0).standard_normal((192, 16)).astype(np.float32)
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "cal.npz", x=x[:64])
    np.savez(tmp_path / "eval.npz", x=x[64:], labels=labels[64:])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = {
        "name": "outlier-net",
        "model": {"checkpoint": "net.pt", "factory": "outlier_net:OutlierNet"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 16]}],
        "outputs": ["logits"],
        "validation": {"batch_sizes": [1, 4], "num_samples": 16},
        "calibration": {"dataset": "cal.npz", "num_samples": 64},
        "evaluation": {"dataset": "eval.npz", "metric": "top1", "max_drop": 0.01},
        "search": {"space": {"exclude_top_k": [0]}, "sensitivity": {"num_samples": 32}, "max_trials": 2},
        "targets": [{"name": "cpu"}],
        "benchmark": {"batch_sizes": [1], "warmup": 2, "repetitions": 20, "time_budget_s": 0.3, "rounds": 1},
        "registry": {"registered_model": "outlier-net", "tracking_uri": uri},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    from edgeport.cli import app

    result = CliRunner().invoke(app, ["run", str(spec_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "no configuration meets the quality budget" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    search = summary["search"]
    assert search["winner"] is None and summary["challenger"] is None
    assert search["trials"] and all(not t["passed_quality"] for t in search["trials"])
    assert all(t["evaluation"]["drop"] > 0.01 for t in search["trials"])  # every trial's numbers are kept
    assert not any(v["passed"] for v in summary["variants"])
    assert "int8-search" not in [v["name"] for v in summary["variants"]]
    client = MlflowClient(uri)
    assert client.search_model_versions("name = 'outlier-net'") == []
    run = client.get_run(summary["mlflow_run_id"])
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len([c for c in children if "edgeport.search.trial_id" in c.data.tags]) == len(search["trials"])


# --------------------------------------------------------------------------- spec validation


@pytest.mark.parametrize(
    ("search", "drop", "expected"),
    [
        ({"space": {"exclude_top_k": [0, -1]}}, None, "search.space.exclude_top_k"),
        ({"space": {"formats": ["QDQ", "QDQX"]}}, None, "search.space.formats.1"),
        ({"space": {"per_channel": [True, True]}}, None, "per_channel: values must be unique"),
        ({"space": {"op_types_to_quantize": [[]]}}, None, "an op-type set must name at least one op type"),
        ({"space": {"bits": [8]}}, None, "search.space.bits"),
        ({"objective": {"target": "gpu"}}, None, "search.objective.target 'gpu' is not one of the targets"),
        ({"max_trials": 0}, None, "search.max_trials"),
        ({"max_wall_time_s": -5}, None, "search.max_wall_time_s"),
        ({"name": "int8-static"}, None, "search.name 'int8-static' is already a variant name"),
        ({}, "calibration", "search needs the sections ['calibration']"),
        ({"parent": "fp32-optimized"}, None, "search.parent is fp32-optimized"),
    ],
)
def test_search_section_validation_names_the_field(tmp_path, digits_paths, search, drop, expected):
    data = digits_spec_dict(digits_paths, search=search)
    if drop:
        data.pop(drop)
        data["quantization"] = [q for q in data["quantization"] if q["mode"] != "static"]
    path = write_spec(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert expected in str(info.value)


def test_search_section_defaults(tmp_path, digits_paths):
    spec = load_spec(write_spec(tmp_path, digits_spec_dict(digits_paths, search={})))
    s = spec.search
    assert s.name == "int8-search" and s.space.exclude_top_k == [0, 1, 2, 4, 8]
    assert s.space.formats == ["QDQ"] and s.space.op_types_to_quantize == [None]
    assert s.max_trials == 16 and s.max_wall_time_s == 1200
