"""tasks/register.py against a real sqlite MLflow store in a temporary folder (no mocks).

The store is created once per module (MLflow's sqlite migrations take seconds);
each test uses its own registered model name.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from mlflow.exceptions import MlflowException
from onnx import TensorProto, helper, numpy_helper
from prefect.states import Completed, Failed

from edgeport.errors import RegistryError, RegistryUnavailable
from edgeport.registry import (
    artifact_location_for,
    check_tracking_uri,
    ensure_experiment,
    resolve_tracking_uri,
    retry_if_transient,
)
from edgeport.registry.identity import (
    IDENTITY_TAG,
    REUSED_VERSION_TAG,
    variant_identity,
)
from edgeport.spec import PipelineSpec
from mlflow import MlflowClient
from tasks.register import register_pipeline


def _tiny_onnx(path: Path, scale: float) -> Path:
    """y = x @ W, x: float32 [batch, 4], y: float32 [batch, 2]."""
    weight = numpy_helper.from_array(np.full((4, 2), scale, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _spec(name: str, tmp: Path) -> PipelineSpec:
    return PipelineSpec(
        name="tiny",
        model={"checkpoint": str(tmp / "tiny.pt"), "factory": "m:f"},
        inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        outputs=["y"],
        quantization=[{"name": "int8-dynamic", "mode": "dynamic"}],
        benchmark={"batch_sizes": [1, 8]},
        registry={"registered_model": name, "experiment": "edgeport-tests"},
    )


def _variant(name: str, kind: str, path: Path, passed: bool, p50_b1: float, quantization: dict | None = None) -> dict:
    benchmarks = [
        {
            "target": "cpu", "batch_size": b, "provider": "CPUExecutionProvider", "status": "ok",
            "p50_ms": p50_b1 * b, "p90_ms": p50_b1 * b * 1.1, "p99_ms": p50_b1 * b * 1.3, "mean_ms": p50_b1 * b,
            "throughput": 1000.0 / p50_b1, "peak_rss_mb": 42.0, "session_create_ms": 3.0,
        }
        for b in (1, 8)
    ]
    return {
        "name": name,
        "kind": kind,
        "path": str(path),
        "size_bytes": path.stat().st_size if path.exists() else 0,
        "sha256": "0" * 64,
        "opset": 18,
        "passed": passed,
        "validation": {"passed": True, "max_abs_err": 1e-6, "max_rel_err": 1e-5},
        "evaluation": {"metric": "top1", "value": 0.90 if passed else 0.80, "drop": 0.0 if passed else 0.1, "passed": passed},
        "benchmarks": benchmarks,
        "quantization": quantization,
        "lineage": {"parent": None if kind == "fp32" else "fp32", "step": "export" if kind == "fp32" else "quantize"},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, folder): a fresh sqlite store; the cwd is a separate empty folder."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    check_tracking_uri(uri)  # creates the tables
    return uri, folder


@pytest.fixture(scope="module")
def registered(store, tmp_path_factory):
    """One registration of 3 variants: fp32 (passed), int8-static (passed, faster), int8-dynamic (failed)."""
    uri, _ = store
    tmp = tmp_path_factory.mktemp("pipeline")
    cwd = tmp_path_factory.mktemp("cwd")
    fp32 = _tiny_onnx(tmp / "fp32.onnx", 1.0)
    int8 = _tiny_onnx(tmp / "int8.onnx", 2.0)
    spec_path = tmp / "pipeline.yaml"
    spec_path.write_text("name: tiny\n")
    variants = [
        _variant("fp32", "fp32", fp32, True, 2.0),
        _variant("int8-static", "static_int8", int8, True, 1.0, {"mode": "static", "format": "QDQ", "per_channel": True}),
        _variant("int8-dynamic", "dynamic_int8", int8, False, 0.5, {"mode": "dynamic", "per_channel": False}),
    ]
    old = os.getcwd()
    env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    os.chdir(cwd)
    try:
        result = register_pipeline(
            _spec("tiny-good", tmp), spec_path, variants, uri, tmp / "out",
            flow_run={"id": "1234", "name": "brave-fox", "url": "http://127.0.0.1:4200/runs/flow-run/1234"},
        )
    finally:
        os.chdir(old)
    # the fluent API was pointed at the store only for the call
    assert {k: os.environ.get(k) for k in env_before} == env_before
    return result, tmp, cwd


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_HOME", str(tmp_path))
    assert resolve_tracking_uri("sqlite:///spec.db", "http://cli:5000") == "http://cli:5000"
    assert resolve_tracking_uri("sqlite:///spec.db", None) == "sqlite:///spec.db"
    assert resolve_tracking_uri(None, None) == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"


def test_artifact_location_never_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_HOME", str(tmp_path / "home"))
    default_db = tmp_path / "home" / "mlflow" / "mlflow.db"
    assert artifact_location_for(f"sqlite:///{default_db}", "exp a") == (tmp_path / "home" / "mlflow" / "artifacts" / "exp_a").as_uri()
    other = tmp_path / "elsewhere" / "x.db"
    assert artifact_location_for(f"sqlite:///{other}", "e") == (tmp_path / "elsewhere" / "artifacts" / "e").as_uri()
    assert artifact_location_for("http://127.0.0.1:5000", "e") is None


@pytest.mark.slow
def test_registers_only_passing_variants(registered, store):
    result, _, cwd = registered
    uri, folder = store
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert result["registered_model"] == "tiny-good"
    assert result["run_url"] is None and result["tracking_uri"] == uri
    assert set(result["versions"]) == {"fp32", "int8-static"}

    versions = client.search_model_versions("name = 'tiny-good'")
    assert sorted(str(mv.version) for mv in versions) == sorted(result["versions"].values())
    assert {mv.tags["variant"] for mv in versions} == {"fp32", "int8-static"}  # int8-dynamic failed its gates

    # experiment artifacts next to the sqlite db, nothing in the cwd
    experiment = client.get_experiment(result["experiment_id"])
    assert experiment.name == "edgeport-tests"
    assert experiment.artifact_location.startswith((folder / "artifacts").as_uri())
    assert not (cwd / "mlruns").exists()
    assert json.loads((registered[1] / "out" / "registration.json").read_text()) == result


@pytest.mark.slow
def test_challenger_alias_and_version_tags(registered, store):
    result, _, _ = registered
    uri, _ = store
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert result["challenger"]["variant"] == "int8-static"
    challenger = client.get_model_version_by_alias("tiny-good", "challenger")
    assert str(challenger.version) == result["versions"]["int8-static"] == result["challenger"]["version"]
    tags = challenger.tags
    assert tags["variant"] == "int8-static" and tags["kind"] == "static_int8"
    assert tags["sha256"] == "0" * 64 and tags["opset"] == "18"
    assert json.loads(tags["quantization"]) == {"mode": "static", "format": "QDQ", "per_channel": True}
    assert float(tags["accuracy"]) == pytest.approx(0.9)
    assert float(tags["p50_ms"]) == pytest.approx(1.0)  # primary batch size 1 on target cpu
    nested = client.get_run(tags["edgeport.mlflow_run_id"])
    assert nested.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"]
    assert nested.data.tags["edgeport.variant"] == "int8-static"


@pytest.mark.slow
def test_parent_and_nested_runs(registered, store):
    result, _, _ = registered
    uri, _ = store
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([result["experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["mlflow_run_id"]}
    assert [p.info.run_id for p in parents] == [result["mlflow_run_id"]]
    assert set(nested) == {"fp32", "int8-static", "int8-dynamic"}

    parent = parents[0]
    assert parent.data.tags["edgeport.prefect.flow_run_id"] == "1234"
    assert parent.data.tags["edgeport.prefect.flow_run_url"].endswith("/1234")
    assert len(parent.data.tags["edgeport.spec_sha256"]) == 64
    assert parent.data.params["registry.registered_model"] == "tiny-good"
    assert parent.data.params["quantization.int8-dynamic.mode"] == "dynamic"
    assert "spec/pipeline.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id, "spec")]

    failed = nested["int8-dynamic"]
    assert failed.data.tags["edgeport.passed"] == "false"
    assert "edgeport.model_version" not in failed.data.tags
    fast = nested["int8-static"]
    metrics = fast.data.metrics
    assert metrics["p50_ms.cpu.b1"] == pytest.approx(1.0) and metrics["p50_ms.cpu.b8"] == pytest.approx(8.0)
    assert metrics["accuracy"] == pytest.approx(0.9) and "size_bytes" in metrics
    assert fast.data.params["quantization.per_channel"] == "true"
    reports = {a.path for a in client.list_artifacts(fast.info.run_id, "reports")}
    assert {"reports/validation.json", "reports/evaluation.json", "reports/benchmarks.json"} <= reports
    local = client.download_artifacts(fast.info.run_id, "reports/benchmarks.json")
    assert json.loads(Path(local).read_text())["benchmarks"][0]["p50_ms"] == pytest.approx(1.0)


@pytest.mark.slow
def test_registered_model_loads_as_onnx(registered, store):
    import mlflow.onnx
    import onnxruntime as ort

    import mlflow

    result, _, _ = registered
    uri, _ = store
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("tiny-good", result["versions"]["fp32"])
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.onnx.load_model(f"models:/tiny-good/{mv.version}")
        signature = mlflow.models.get_model_info(f"models:/tiny-good/{mv.version}").signature
    finally:
        mlflow.set_tracking_uri(None)
    (x,), (y,) = signature.inputs.to_dict(), signature.outputs.to_dict()
    assert (x["name"], x["tensor-spec"]["dtype"], tuple(x["tensor-spec"]["shape"])) == ("x", "float32", (-1, 4))
    assert (y["name"], tuple(y["tensor-spec"]["shape"])) == ("y", (-1, 2))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((3, 4), np.float32)})[0]
    assert out.shape == (3, 2) and np.allclose(out, 4.0)


def test_unreachable_uri_fails_fast():
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="127.0.0.1:9"):
        check_tracking_uri("http://127.0.0.1:9", attempts=2, backoff_s=0.1)
    assert time.monotonic() - start < 15


@pytest.mark.slow
def test_register_unreachable_raises_unavailable(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx", 1.0)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        register_pipeline(_spec("nowhere", tmp_path), tmp_path / "p.yaml", [_variant("fp32", "fp32", model, True, 1.0)],
                          "http://127.0.0.1:9", tmp_path / "out")
    assert time.monotonic() - start < 15


@pytest.mark.slow
def test_missing_file_raises_before_writing(store, tmp_path):
    uri, _ = store
    good = _tiny_onnx(tmp_path / "good.onnx", 1.0)
    variants = [_variant("fp32", "fp32", good, True, 2.0),
                _variant("int8-static", "static_int8", tmp_path / "missing.onnx", True, 1.0)]
    with pytest.raises(RegistryError, match="tiny-missing"):
        register_pipeline(_spec("tiny-missing", tmp_path), tmp_path / "p.yaml", variants, uri, tmp_path / "out")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_model_versions("name = 'tiny-missing'") == []


@pytest.mark.slow
def test_failure_after_a_registered_version_rolls_back(store, tmp_path):
    uri, _ = store
    good = _tiny_onnx(tmp_path / "good.onnx", 1.0)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    variants = [_variant("fp32", "fp32", good, True, 2.0),
                _variant("int8-static", "static_int8", corrupt, True, 1.0)]
    with pytest.raises(RegistryError, match="tiny-rollback") as info:
        register_pipeline(_spec("tiny-rollback", tmp_path), tmp_path / "p.yaml", variants, uri, tmp_path / "out")
    assert not isinstance(info.value, RegistryUnavailable)
    assert "deleted the 1 version(s)" in str(info.value)  # fp32 had been registered, then removed
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_model_versions("name = 'tiny-rollback'") == []
    with pytest.raises(MlflowException):
        client.get_registered_model("tiny-rollback")
    assert not (tmp_path / "out" / "registration.json").exists()


@pytest.mark.slow
def test_ensure_experiment_is_idempotent(store):
    uri, _ = store
    client = MlflowClient(tracking_uri=uri)
    first = ensure_experiment(client, "edgeport-idem", uri)
    assert ensure_experiment(client, "edgeport-idem", uri) == first


def test_retry_condition_only_retries_transient_errors():
    assert retry_if_transient(None, None, Failed(data=RegistryUnavailable("down"))) is True
    assert retry_if_transient(None, None, Failed(data=ConnectionRefusedError("refused"))) is True
    assert retry_if_transient(None, None, Failed(data=RegistryError("refused a write"))) is False
    assert retry_if_transient(None, None, Failed(data=ValueError("bad input"))) is False
    assert retry_if_transient(None, None, Completed(data=1)) is False


# --------------------------------------------------------------------------- idempotent registration


def _three_variants(tmp: Path) -> list[dict]:
    fp32 = _tiny_onnx(tmp / "fp32.onnx", 1.0)
    int8 = _tiny_onnx(tmp / "int8.onnx", 2.0)
    variants = [
        _variant("fp32", "fp32", fp32, True, 2.0),
        _variant("int8-static", "static_int8", int8, True, 1.0, {"mode": "static", "format": "QDQ", "per_channel": True}),
        _variant("int8-dynamic", "dynamic_int8", int8, False, 0.5, {"mode": "dynamic", "per_channel": False}),
    ]
    variants[0]["lineage"] = {"parent": "checkpoint:" + "c" * 64, "step": "export:dynamo", "cached": False}
    return variants


def test_identity_covers_file_settings_lineage_and_spec_sections(tmp_path):
    spec = _spec("tiny-id", tmp_path)
    fp32, static, _ = _three_variants(tmp_path)
    base = variant_identity(spec, static, "c" * 64)
    assert len(base) == 64 and base == variant_identity(spec, dict(static), "c" * 64)
    assert variant_identity(spec, {**static, "lineage": {**static["lineage"], "cached": True}}, "c" * 64) == base  # not identity
    assert variant_identity(spec, {**static, "benchmarks": []}, "c" * 64) == base  # measurements are not part of it
    assert variant_identity(spec, {**static, "sha256": "1" * 64}, "c" * 64) != base
    assert variant_identity(spec, {**static, "quantization": {**static["quantization"], "per_channel": False}}, "c" * 64) != base
    assert variant_identity(spec, {**static, "lineage": {**static["lineage"], "parent_sha256": "2" * 64}}, "c" * 64) != base
    assert variant_identity(spec, static, "d" * 64) != base  # another checkpoint
    other = spec.model_copy(update={"benchmark": spec.benchmark.model_copy(update={"batch_sizes": [1, 16]})})
    assert variant_identity(other, static, "c" * 64) != base
    renamed = spec.model_copy(update={"registry": spec.registry.model_copy(update={"experiment": "elsewhere"})})
    assert variant_identity(renamed, static, "c" * 64) == base  # where it is recorded is not what it is


@pytest.mark.slow
def test_identical_registration_reuses_versions_and_register_always_does_not(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec, variants = _spec("tiny-idem", tmp_path), _three_variants(tmp_path)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    first = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out1")
    assert first["reused"] == [] and set(first["versions"]) == {"fp32", "int8-static"}
    for version in first["versions"].values():  # written when the registration completed
        assert client.get_model_version("tiny-idem", version).tags[IDENTITY_TAG]
    client.set_registered_model_alias("tiny-idem", "challenger", first["versions"]["fp32"])  # moved by hand

    second = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out2")
    assert second["versions"] == first["versions"] and second["reused"] == ["fp32", "int8-static"]
    assert len(client.search_model_versions("name = 'tiny-idem'")) == 2  # no duplicates
    nested = {r.data.tags["edgeport.variant"]: r for r in client.search_runs(
        [second["experiment_id"]], f"tags.`mlflow.parentRunId` = '{second['mlflow_run_id']}'")}
    assert set(nested) == {"fp32", "int8-static", "int8-dynamic"}
    for name, version in second["versions"].items():  # the new run links to the reused versions
        assert nested[name].data.tags[REUSED_VERSION_TAG] == version
        assert nested[name].data.tags["edgeport.model_version"] == version
        assert nested[name].data.metrics["accuracy"] == 0.9  # its own measurements are logged
    assert REUSED_VERSION_TAG not in nested["int8-dynamic"].data.tags
    # the alias moves as usual: the fastest passing variant of this run
    assert str(client.get_model_version_by_alias("tiny-idem", "challenger").version) == first["versions"]["int8-static"]

    third = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out3", register_always=True)
    assert third["reused"] == [] and not set(third["versions"].values()) & set(first["versions"].values())
    assert len(client.search_model_versions("name = 'tiny-idem'")) == 4
    # a spec section that changes what the numbers mean: new versions
    other = spec.model_copy(update={"benchmark": spec.benchmark.model_copy(update={"batch_sizes": [1, 16]})})
    fourth = register_pipeline(other, tmp_path / "p.yaml", variants, uri, tmp_path / "out4")
    assert fourth["reused"] == [] and len(client.search_model_versions("name = 'tiny-idem'")) == 6
    # the newest identical version is the one reused
    fifth = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out5")
    assert fifth["versions"] == third["versions"]


@pytest.mark.slow
def test_cleanup_of_a_retried_registration_keeps_the_versions_it_completed(tmp_path):
    """A completed registration whose local bookkeeping was lost is retried with its id (the
    pending file survived): the clean-up of "interrupted attempts" must not delete its versions,
    which another run reuses meanwhile; the retry reuses them too."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec, variants = _spec("tiny-keep", tmp_path), _three_variants(tmp_path)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    completed = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out1", registration_id="rid-keep")
    other = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out2")
    assert other["versions"] == completed["versions"]
    retried = register_pipeline(spec, tmp_path / "p.yaml", variants, uri, tmp_path / "out3", registration_id="rid-keep")
    assert retried["versions"] == completed["versions"] and retried["reused"] == ["fp32", "int8-static"]
    assert {str(mv.version) for mv in client.search_model_versions("name = 'tiny-keep'")} == set(completed["versions"].values())
    for version in completed["versions"].values():  # the runs holding the models are kept
        mv = client.get_model_version("tiny-keep", version)
        assert client.get_run(mv.run_id).info.lifecycle_stage == "active"
        assert client.get_run(mv.tags["edgeport.parent_run_id"]).info.lifecycle_stage == "active"
