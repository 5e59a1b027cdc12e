"""edgeport/spec.py (load_spec) and the spec commands of the CLI (`schema`, `validate-spec`).

Every error test asserts the error type AND that the message names the spec file, the
dotted field and the bad value, because that is the contract of :func:`load_spec`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import DIGITS, digits_spec_dict, write_spec
from typer.testing import CliRunner

from edgeport.cli import app
from edgeport.errors import EdgeportError, SpecError
from edgeport.spec import PipelineSpec, QuantizationVariantSpec, load_spec

EXAMPLE = DIGITS / "pipeline.yaml"


def _example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def _bad_spec(tmp_path: Path, mutate) -> Path:
    data = copy.deepcopy(_example())
    # The example's ONNX Runtime variants only: the tests append the variant they check as quantization.2.
    data["quantization"] = [v for v in data["quantization"] if v.get("backend", "onnxruntime") == "onnxruntime"]
    mutate(data)
    return write_spec(tmp_path / "bad", data)


def _spec_error(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path.resolve()) in message, message  # the file is always named
    return message


# ------------------------------------------------------------------------------ happy path


def test_load_example_resolves_paths_against_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    spec = load_spec(EXAMPLE)

    assert isinstance(spec, PipelineSpec)
    assert spec.name == "digits-cnn"
    ckpt = spec.model.checkpoint
    assert ckpt.is_absolute()
    assert ckpt == (DIGITS / "artifacts" / "digits_cnn.pt").resolve()
    assert ckpt.parent == (DIGITS / "artifacts").resolve()
    assert spec.model.search_path == [DIGITS.resolve()]
    assert spec.calibration is not None and spec.calibration.dataset == (DIGITS / "artifacts" / "calibration.npz").resolve()
    assert spec.evaluation is not None and spec.evaluation.dataset == (DIGITS / "artifacts" / "eval.npz").resolve()
    assert not str(ckpt).startswith(str(tmp_path))
    # the spec's content made it through
    assert [i.name for i in spec.inputs] == ["pixels"]
    assert spec.inputs[0].shape == ["batch", 1, 8, 8]
    assert spec.dynamic_dims == ["batch"]
    assert [(v.name, v.backend) for v in spec.quantization] == [
        ("int8-static", "onnxruntime"), ("int8-dynamic", "onnxruntime"), ("nncf-int8", "nncf")
    ]
    assert spec.benchmark.primary == 1


def test_load_spec_given_a_relative_path_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative *spec* path resolves against the cwd; the paths inside it against the spec's folder."""
    folder = tmp_path / "work" / "specs"
    write_spec(folder, _example())
    monkeypatch.chdir(tmp_path / "work")
    spec = load_spec("specs/pipeline.yaml")
    assert spec.model.checkpoint == (folder / "artifacts" / "digits_cnn.pt").resolve()
    assert spec.model.search_path == [folder.resolve()]


def test_absolute_paths_in_a_spec_are_kept(tmp_path: Path) -> None:
    data = _example()
    data["model"]["checkpoint"] = str(tmp_path / "elsewhere" / "ckpt.pt")
    spec = load_spec(write_spec(tmp_path / "spec", data))
    assert spec.model.checkpoint == (tmp_path / "elsewhere" / "ckpt.pt").resolve()


# ------------------------------------------------------------------------------ field errors


def test_bad_enum_value_names_the_dotted_field_and_value(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path, lambda d: d["quantization"][0].update(format="QDQX"))
    message = _spec_error(path)
    assert "quantization.0.format" in message
    assert '"QDQX"' in message


def test_primary_batch_size_not_in_batch_sizes(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path, lambda d: d["benchmark"].update(batch_sizes=[1, 32], primary_batch_size=8))
    message = _spec_error(path)
    assert "benchmark" in message
    assert "primary_batch_size 8" in message
    assert "[1, 32]" in message


def test_static_variant_without_calibration_section(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path, lambda d: d.pop("calibration"))
    message = _spec_error(path)
    assert "static" in message and "`calibration`" in message


def test_dynamic_only_spec_needs_no_calibration(tmp_path: Path) -> None:
    def mutate(d: dict) -> None:
        d.pop("calibration")
        d["quantization"] = [v for v in d["quantization"] if v["mode"] == "dynamic"]

    spec = load_spec(_bad_spec(tmp_path, mutate))
    assert spec.calibration is None and [v.mode for v in spec.quantization] == ["dynamic"]


@pytest.mark.parametrize(
    ("mutate", "field", "value"),
    [
        (lambda d: d["model"].update(checkpoitn="x.pt"), "model.checkpoitn", '"x.pt"'),
        (lambda d: d.update(colour="red"), "colour", '"red"'),
        (lambda d: d["benchmark"].update(warmpu=3), "benchmark.warmpu", "3"),
    ],
    ids=["model-typo", "top-level", "benchmark-typo"],
)
def test_unknown_field_is_refused(tmp_path: Path, mutate, field: str, value: str) -> None:
    message = _spec_error(_bad_spec(tmp_path, mutate))
    assert f"{field}: Extra inputs are not permitted" in message
    assert f"(got {value})" in message


@pytest.mark.parametrize(
    ("mutate", "field", "value"),
    [
        (lambda d: d["export"].update(opset=3), "export.opset", "3"),
        (lambda d: d["inputs"][0].update(shape=["batch", 0, 8, 8]), "inputs.0.shape", "0"),
        (lambda d: d["inputs"][0].update(dtype="float8"), "inputs.0.dtype", '"float8"'),
        (lambda d: d["model"].update(factory="model.DigitsCNN"), "model.factory", '"model.DigitsCNN"'),
        (lambda d: d["evaluation"].update(max_drop=2), "evaluation.max_drop", "2"),
        (lambda d: d["validation"].update(batch_sizes=[1, -7]), "validation.batch_sizes", "-7"),
        (lambda d: d["registry"].pop("registered_model"), "registry.registered_model", "{...}"),
    ],
    ids=["opset", "zero-dim", "dtype", "factory-pattern", "max-drop", "neg-batch", "missing-required"],
)
def test_invalid_value_names_field_and_value(tmp_path: Path, mutate, field: str, value: str) -> None:
    message = _spec_error(_bad_spec(tmp_path, mutate))
    line = next((ln for ln in message.splitlines() if ln.strip().startswith(field + ":")), None)
    assert line is not None, message
    assert value in line, message


def test_every_error_is_listed(tmp_path: Path) -> None:
    def mutate(d: dict) -> None:
        d["quantization"][0]["format"] = "QDQX"
        d["export"]["opset"] = 3

    message = _spec_error(_bad_spec(tmp_path, mutate))
    assert "(2 error(s))" in message
    assert "quantization.0.format" in message and "export.opset" in message


# ------------------------------------------------------------------------------ file errors


def test_missing_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="spec file not found") as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_non_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: digits\nmodel: {checkpoint: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        load_spec(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("text", "kind"), [("- name: a\n- name: b\n", "list"), ("just a string\n", "str"), ("", "NoneType")])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="must be a YAML mapping") as info:
        load_spec(path)
    assert str(path) in str(info.value)
    assert f"got {kind}" in str(info.value)


def test_spec_error_is_a_value_error_and_an_edgeport_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(EdgeportError):
        load_spec(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------ CLI


def test_cli_schema_outputs_json_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert "model" in schema["properties"]
    assert {"model", "inputs", "outputs", "registry"} <= set(schema["required"])
    assert schema == PipelineSpec.model_json_schema()


def test_cli_validate_spec_on_the_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_artifacts) -> None:
    """The example repointed at trained artifacts: validate-spec also checks the files and data (issue 14)."""
    path = write_spec(tmp_path / "spec", digits_spec_dict(digits_artifacts))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate-spec", str(path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["name"] == "digits-cnn"
    assert Path(shown["model"]["checkpoint"]) == digits_artifacts["checkpoint"].resolve()
    assert shown["validation"]["rtol"] == 1e-3  # defaults are filled in
    assert "valid" in result.stderr


def test_cli_validate_spec_on_a_bad_spec(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path, lambda d: d["quantization"][0].update(format="QDQX"))
    result = CliRunner().invoke(app, ["validate-spec", str(path)])
    assert result.exit_code == 1, result.output
    assert "SpecError" in result.stderr
    assert "quantization.0.format" in result.stderr
    assert "QDQX" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


# ------------------------------------------------------------------------------ transformer fields


def test_int4_variant_refuses_int8_only_fields(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path, lambda d: d["quantization"].append({"name": "int4", "mode": "weight_only_int4", "per_channel": True}))
    message = _spec_error(path)
    assert "quantization.2" in message and "per_channel" in message and "weight_only_int4" in message


def test_int4_block_size_must_be_a_power_of_two(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path, lambda d: d["quantization"].append({"name": "int4", "mode": "weight_only_int4", "block_size": 48}))
    message = _spec_error(path)
    assert "quantization.2.block_size" in message and "power of 2" in message


def test_cosine_evaluation_and_optimization_fields(tmp_path: Path) -> None:
    def mutate(d: dict) -> None:
        d["evaluation"].update(metric="cosine", reference_key=None, min_cosine=0.98)
        d["optimization"] = {"num_heads": 12, "hidden_size": 384, "require": {"Attention": 6}}
        d["quantization"].append({"name": "int4", "mode": "weight_only_int4", "block_size": 64})

    spec = load_spec(_bad_spec(tmp_path, mutate))
    assert spec.evaluation.metric == "cosine" and spec.evaluation.reference_key is None
    assert spec.optimization.model_type == "bert" and spec.optimization.opt_level == 1
    assert spec.quantization[2].kind == "weight_only_int4" and spec.quantization[2].block_size == 64


# --- quantization backends (issue 11) ---------------------------------------------------------


def test_unknown_backend_is_named(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path, lambda d: d["quantization"].append({"name": "q", "backend": "tensorrt"}))
    message = _spec_error(path)
    assert "quantization.2.backend" in message and "tensorrt" in message


@pytest.mark.parametrize(
    ("variant", "field"),
    [
        ({"backend": "nncf", "mode": "static", "per_channel": True}, "per_channel"),
        ({"backend": "nncf", "mode": "static", "model_type": "transformer", "tensor_quant_overrides": {"t": {"quant_type": "QUInt16"}}}, "tensor_quant_overrides"),
        ({"backend": "nncf", "mode": "static", "smooth_quant_alpha": 0.5}, "smooth_quant_alpha"),  # needs model_type transformer
        ({"backend": "nncf", "mode": "weight_only_int8", "awq": True}, "awq"),
        ({"backend": "nncf", "mode": "weight_only_int4", "accuracy_control": {}}, "accuracy_control"),
        ({"backend": "nncf", "mode": "dynamic"}, "mode"),
        ({"mode": "weight_only_int8"}, "mode"),  # onnxruntime has no INT8 weight-only mode
        ({"mode": "static", "preset": "mixed"}, "preset"),
        ({"mode": "dynamic", "smooth_quant_alpha": 0.5}, "smooth_quant_alpha"),
        ({"mode": "dynamic", "activation_symmetric": True}, "activation_symmetric"),
        ({"mode": "weight_only_int4", "group_size": 64}, "group_size"),
    ],
)
def test_inapplicable_backend_option_is_named(tmp_path: Path, variant: dict, field: str) -> None:
    path = _bad_spec(tmp_path, lambda d: d["quantization"].append({"name": "q", **variant}))
    message = _spec_error(path)
    assert f"quantization.2.{field}:" in message, message


def test_backend_options_that_apply_are_accepted(tmp_path: Path) -> None:
    def mutate(d: dict) -> None:
        d["quantization"] += [
            {"name": "nncf-static", "backend": "nncf", "preset": "mixed", "model_type": "transformer", "smooth_quant_alpha": 0.8,
             "fast_bias_correction": False, "subset_size": 128, "target_device": "CPU",
             "ignored_scope": {"names": ["a"], "types": ["Softmax"], "patterns": [".*attn.*"]}, "accuracy_control": {"max_drop": 0.01}},
            {"name": "nncf-int4", "backend": "nncf", "mode": "weight_only_int4", "group_size": 64, "ratio": 0.8, "awq": True, "scale_estimation": True},
            {"name": "ort-sq", "smooth_quant_alpha": 0.5, "activation_symmetric": True, "tensor_quant_overrides": {"out": {"quant_type": "QUInt16"}}},
        ]

    spec = load_spec(_bad_spec(tmp_path, mutate))
    nncf_static, nncf_int4, ort_sq = spec.quantization[2:]
    assert [v.backend for v in spec.quantization] == ["onnxruntime", "onnxruntime", "nncf", "nncf", "onnxruntime"]
    assert nncf_static.accuracy_control.max_drop == 0.01 and nncf_static.ignored_scope.types == ["Softmax"]
    assert nncf_int4.kind == "weight_only_int4" and nncf_int4.needs_calibration
    assert ort_sq.tensor_quant_overrides == {"out": [{"quant_type": "QUInt16"}]}  # one dict -> a list of one


def test_bad_override_quant_type_and_pattern(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path, lambda d: d["quantization"].append({"name": "q", "tensor_quant_overrides": {"t": {"quant_type": "QInt3"}}}))
    assert "QInt3" in _spec_error(path)
    path = _bad_spec(tmp_path, lambda d: d["quantization"].append({"name": "q", "backend": "nncf", "ignored_scope": {"patterns": ["("]}}))
    assert "quantization.2.ignored_scope.patterns" in _spec_error(path)


def test_accuracy_control_needs_evaluation(tmp_path: Path) -> None:
    def mutate(d: dict) -> None:
        d.pop("evaluation")
        d["quantization"].append({"name": "q", "backend": "nncf", "accuracy_control": {}})

    assert "accuracy_control" in _spec_error(_bad_spec(tmp_path, mutate))


def test_quantize_cache_key_covers_backend_options(tmp_path: Path) -> None:
    from tasks.quantize import _quantize_cache_key

    spec = load_spec(write_spec(tmp_path / "ok", copy.deepcopy(_example())))
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(b"model")
    keys = {
        _quantize_cache_key(None, {"spec": spec, "variant": QuantizationVariantSpec(name="q", **opts), "fp32_path": fp32, "output_dir": tmp_path})
        for opts in ({}, {"backend": "nncf"}, {"backend": "nncf", "preset": "mixed"}, {"activation_symmetric": True})
    }
    assert len(keys) == 4
