"""The quantization search across backends (ONNX Runtime, NNCF), modes and targets (issue 11), end to end.

Real components: onnxruntime.quantization and NNCF on the digits CNN (real load_digits data), the
benchmark runner on two CPU targets (all cores, one thread), Prefect's test harness (cached trial
tasks with persisted results), a sqlite MLflow store. About 2 minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlflow import MlflowClient
from tests.conftest import digits_spec_dict, write_spec

pytestmark = pytest.mark.slow

TARGETS = [{"name": "cpu"}, {"name": "cpu-1t"}]


@pytest.fixture(scope="module")
def backends_search(prefect_harness, digits_artifacts, tmp_path_factory):
    """The digits pipeline with a search over [onnxruntime (static, dynamic), nncf (defaults,
    accuracy control)] x targets [cpu, cpu-1t], run twice on the same EDGEPORT_HOME."""
    root = tmp_path_factory.mktemp("search-backends")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPORT_HOME", str(root / "home"))
    from flows.pipeline import pipeline

    search = {
        "name": "int8-search",
        "objective": {"batch_size": 32},  # targets: default, every target of the spec
        "space": {
            "backends": ["onnxruntime", "nncf"],
            "modes": ["static", "dynamic"],
            "calibration_methods": ["MinMax"], "per_channel": [True], "activation_types": ["QUInt8"],
            "weight_types": ["QInt8"], "op_types_to_quantize": [None],
            "nncf_accuracy_control": [False, True],
            "exclude_top_k": [0],
        },
        "max_trials": 8,
    }
    data = digits_spec_dict(digits_artifacts, quantization=[], search=search)
    data["targets"] = TARGETS
    data["benchmark"] = {"batch_sizes": [32], "warmup": 5, "repetitions": 60, "time_budget_s": 0.4, "rounds": 2, "timeout_s": 120}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data["registry"]["tracking_uri"] = uri
    spec_path = write_spec(root / "spec", data)
    first = pipeline(str(spec_path), output_dir=str(root / "out"))
    second = pipeline(str(spec_path), output_dir=str(root / "out"))
    yield {"first": first, "second": second, "uri": uri}
    mp.undo()


def _by_backend(search: dict) -> dict[tuple, dict]:
    return {
        (t["settings"]["backend"], t["settings"]["mode"], bool(t["settings"].get("accuracy_control"))): t for t in search["trials"]
    }


def test_every_backend_and_mode_is_tried_and_benchmarked_on_every_target(backends_search):
    search = backends_search["first"]["search"]
    assert search["objective"]["targets"] == ["cpu", "cpu-1t"] and search["objective"]["target"] == "cpu"
    trials = _by_backend(search)
    assert set(trials) == {("onnxruntime", "static", False), ("onnxruntime", "dynamic", False), ("nncf", "static", False), ("nncf", "static", True)}, [
        (t["trial_id"], t["status"], t.get("error")) for t in search["trials"]
    ]
    assert "calibration_method" not in trials["onnxruntime", "dynamic", False]["settings"]  # inapplicable settings dropped
    assert "per_channel" not in trials["nncf", "static", False]["settings"]
    assert search["sensitivity"] is None  # exclude_top_k [0]: no ranking needed
    for t in search["trials"]:
        assert set(t["p50_ms_by_target"]) == {"cpu", "cpu-1t"}
        if t["passed_quality"]:
            assert all(p50 > 0 for p50 in t["p50_ms_by_target"].values()), t
            assert t["p50_ms"] == t["p50_ms_by_target"]["cpu"]
    # FP32 measured on both targets in the same sweeps; the speed-up is vs the fastest FP32 anywhere
    fp32 = next(r for r in search["references"] if r["name"] == "fp32")
    assert all(p50 > 0 for p50 in fp32["p50_ms_by_target"].values())
    assert search["fastest_fp32"]["p50_ms"] == min(fp32["p50_ms_by_target"].values())
    for target, w in search["winners"].items():
        assert w["speedup_vs_fastest_fp32"] == pytest.approx(search["fastest_fp32"]["p50_ms"] / w["p50_ms"])
        assert {"backend", "mode"} <= w["settings"].keys()


def test_each_targets_winner_is_its_fastest_passing_trial(backends_search):
    first = backends_search["first"]
    search = first["search"]
    assert set(search["winners"]) == {"cpu", "cpu-1t"}
    names = {}
    for target in ("cpu", "cpu-1t"):
        passing = [t for t in search["trials"] if t["passed_quality"] and t["p50_ms_by_target"][target] is not None]
        fastest = min(passing, key=lambda t: t["p50_ms_by_target"][target])
        won = search["winners"][target]
        assert won["trial_id"] == fastest["trial_id"] and won["p50_ms"] == fastest["p50_ms_by_target"][target]
        assert won["trial_id"] in search["pareto"][target]
        names[target] = won["variant"]
    assert search["winner"]["trial_id"] == search["winners"]["cpu"]["trial_id"]  # the old key: the first target's
    # The first target's winner is search.name; the other's is <name>-<target> unless it is the same trial.
    assert names["cpu"] == "int8-search"
    same = search["winners"]["cpu"]["trial_id"] == search["winners"]["cpu-1t"]["trial_id"]
    assert names["cpu-1t"] == ("int8-search" if same else "int8-search-cpu-1t")
    # Every winner joined the pipeline's variants, registered with its search provenance.
    variants = {v["name"]: v for v in first["variants"]}
    client = MlflowClient(backends_search["uri"])
    for target, won in search["winners"].items():
        record = variants[won["variant"]]
        assert record["search"]["trial_id"] == won["trial_id"] and target in record["quantization"]["search_targets"]
        assert record["kind"] == f"{won['settings']['mode']}_int8" and record["passed"] and record["model_version"]
        mv = client.get_model_version("digits-cnn", record["model_version"])
        assert mv.tags["edgeport.search.trial_id"] == won["trial_id"]
    # The pipeline's own benchmark then names each target's challenger: the fastest passing variant there.
    for target in ("cpu", "cpu-1t"):
        timed = {
            v["name"]: b["p50_ms"] for v in first["variants"] if v["passed"]
            for b in v["benchmarks"] if b["target"] == target and b["batch_size"] == 32 and b["status"] == "ok"
        }
        fastest = min(timed, key=timed.get)
        assert first["challengers"][target]["variant"] == fastest
        version = client.get_model_version_by_alias("digits-cnn", f"challenger-{target}")
        assert str(version.version) == variants[fastest]["model_version"]


def test_nncf_accuracy_control_reaches_the_quality_of_nncf_defaults_within_the_budget(backends_search):
    trials = _by_backend(backends_search["first"]["search"])
    defaults, controlled = trials["nncf", "static", False], trials["nncf", "static", True]
    assert controlled["status"] == "passed" and controlled["quantization"]["algorithm"] == "nncf.quantize_with_accuracy_control"
    assert defaults["quantization"]["algorithm"] == "nncf.quantize"
    assert controlled["evaluation"]["value"] >= defaults["evaluation"]["value"]
    assert controlled["evaluation"]["drop"] <= 0.005 + 1e-12  # the digits gate: max_drop 0.5 pp
    assert controlled["settings"]["exclude_top_k"] == 0 and controlled["nodes_to_exclude"] == []


def test_a_rerun_takes_every_trial_from_the_cache(backends_search):
    first, second = backends_search["first"]["search"], backends_search["second"]["search"]
    assert [t["trial_id"] for t in second["trials"]] == [t["trial_id"] for t in first["trials"]]
    assert all(t["cached"] for t in second["trials"])
    assert {t: w["trial_id"] for t, w in second["winners"].items()}.keys() == {"cpu", "cpu-1t"}


# --------------------------------------------------------------------------- NNCF failing on a model


def _opset9_mlp(folder: Path) -> dict[str, Path]:
    """A two-layer MLP at opset 9: ONNX Runtime's quantizer upgrades it to opset 11, NNCF refuses
    it ("opset version < 10"). Labels are the model's own predictions."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((16, 32)).astype(np.float32) * 0.3
    w1 = rng.standard_normal((32, 10)).astype(np.float32) * 0.3
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W0"], ["h"], name="fc0"),
            helper.make_node("Relu", ["h"], ["r"], name="relu0"),
            helper.make_node("MatMul", ["r", "W1"], ["logits"], name="head"),
        ],
        "mlp9",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w0, "W0"), numpy_helper.from_array(w1, "W1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "mlp9.onnx")
    x = rng.standard_normal((320, 16)).astype(np.float32)
    labels = np.maximum(x @ w0, 0) @ w1
    np.savez(folder / "cal.npz", x=x[:128])
    np.savez(folder / "eval.npz", x=x[128:], labels=labels[128:].argmax(1))
    return {"model": folder / "mlp9.onnx", "calibration": folder / "cal.npz", "eval": folder / "eval.npz"}


def test_a_failing_nncf_trial_is_recorded_and_the_search_goes_on(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    files = _opset9_mlp(tmp_path / "mlp9")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = {
        "name": "mlp9",
        "model": {"onnx": str(files["model"])},
        "validation": {"batch_sizes": [1, 4], "num_samples": 16},
        "calibration": {"dataset": str(files["calibration"]), "num_samples": 128},
        "evaluation": {"dataset": str(files["eval"]), "metric": "top1", "max_drop": 0.3},  # random weights: a loose gate
        # per-tensor: the quantizer's opset 11 has no per-channel DequantizeLinear (axis: opset 13)
        "search": {"space": {"backends": ["nncf", "onnxruntime"], "per_channel": [False], "exclude_top_k": [0]}, "max_trials": 4},
        "targets": [{"name": "cpu"}],
        "benchmark": {"batch_sizes": [1], "warmup": 2, "repetitions": 20, "time_budget_s": 0.2, "rounds": 1},
        "registry": {"registered_model": "mlp9", "tracking_uri": uri},
    }
    result = pipeline(str(write_spec(tmp_path / "spec", data)), output_dir=str(tmp_path / "out"))
    search = result["search"]
    trials = {t["settings"]["backend"]: t for t in search["trials"]}
    assert set(trials) == {"nncf", "onnxruntime"}
    failed = trials["nncf"]
    assert failed["status"] == "error" and failed["passed_quality"] is False and failed["evaluation"] is None
    assert "nncf.quantize" in failed["error"] and "opset version < 10" in failed["error"]  # NNCF's own reason
    assert failed["p50_ms_by_target"] == {"cpu": None}
    assert trials["onnxruntime"]["status"] == "passed"
    assert search["winner"]["trial_id"] == trials["onnxruntime"]["trial_id"]
    record = next(v for v in result["variants"] if v["name"] == "int8-search")
    assert record["passed"] and record["model_version"]
    client = MlflowClient(uri)
    run = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    errors = {c.data.tags["edgeport.search.trial_id"]: c.data.tags.get("edgeport.search.error") for c in children if "edgeport.search.trial_id" in c.data.tags}
    assert "opset version < 10" in errors[failed["trial_id"]]
