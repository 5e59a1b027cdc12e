"""Fast layer: spec validation errors that name the dotted field and the value (edgeport/spec.py),
and the shared file primitives edgeport.files.slug / file_sha256."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml

from edgeport.errors import SpecError
from edgeport.files import file_sha256, slug
from edgeport.spec import load_spec
from tests.conftest import TINY_SPEC

BASE = {**TINY_SPEC, "search": {}}


def _load(tmp_path: Path, mutate) -> str:
    data = copy.deepcopy(BASE)
    mutate(data)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_the_base_spec_is_valid(tmp_path: Path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(BASE))
    spec = load_spec(path)
    assert spec.model.checkpoint == tmp_path / "m.pt"  # resolved against the spec's folder


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["inputs"][0].update(dtype="float99"), 'inputs.0.dtype: Input should be '),
        (lambda d: d.update(targets=[{"name": "cpu", "intra_op_num_threads": -1}]), "targets.0.intra_op_num_threads"),
        (lambda d: d["search"].update(space={"calibration_methods": ["MinMax", "Bogus"]}), "search.space.calibration_methods.1"),
        (lambda d: d.update(benchmark={"batch_sizes": [1, 0]}), "benchmark.batch_sizes: must be positive, got [1, 0]"),
    ],
    ids=["dtype", "threads", "search-method", "batch-size"],
)
def test_validation_errors_name_the_field(tmp_path: Path, mutate, expected: str):
    assert expected in _load(tmp_path, mutate)


@pytest.mark.parametrize(("mutate", "value"), [
    (lambda d: d["inputs"][0].update(dtype="float99"), '"float99"'),
    (lambda d: d.update(targets=[{"name": "cpu", "intra_op_num_threads": -1}]), "(got -1)"),
], ids=["dtype", "threads"])
def test_validation_errors_quote_the_value(tmp_path: Path, mutate, value: str):
    assert value in _load(tmp_path, mutate)


def test_the_search_needs_an_evaluation_section(tmp_path: Path):
    assert "search needs the sections ['evaluation']" in _load(tmp_path, lambda d: d.pop("evaluation"))


# --------------------------------------------------------------------------- edgeport.files


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Digits CNN/v2", "digits-cnn-v2"),
        ("--int8__static--", "int8-static"),
        ("MiniLM-L6 (fused)", "minilm-l6-fused"),
        ("a.b.c", "a-b-c"),
        ("é!", "x"),
        ("", "x"),
    ],
)
def test_slug(text: str, expected: str):
    assert slug(text) == expected


def test_slug_fallback():
    assert slug("???", fallback="unnamed") == "unnamed"


def test_file_sha256_matches_hashlib_across_chunk_boundaries(tmp_path: Path):
    data = bytes(range(256)) * 1000  # 256,000 bytes
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(str(path), chunk_bytes=1000) == expected == file_sha256(path, chunk_bytes=7)
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_file_sha256_of_a_missing_file_raises(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "missing.bin")
