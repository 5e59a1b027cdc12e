"""Data sources: every calibration and evaluation data set, streamed in chunks.

One interface, :class:`DataSource`, over the data kinds a spec's ``dataset`` names
(:data:`edgeport.spec.DatasetSpec`):

=====================  ===================================================================
source                 reads
=====================  ===================================================================
:class:`NpzSource`     an ``.npz`` path: one array per input name, samples along axis 0
                       (rows are read from the archive chunk by chunk, not loaded whole)
:class:`ImageSource`   ``kind: image_folder``: image files decoded with Pillow and
                       preprocessed (:func:`load_image`); labels from class folders or a CSV
:class:`TextSource`    ``kind: text``: a text file (one sample per line) or a ``.jsonl``
                       field, tokenized per chunk with the model's tokenizer
:class:`FunctionSource`  ``kind: function``: ``module:function`` yielding items (see there)
:class:`ArraySource`   in-memory arrays (what the calibration functions were given before)
=====================  ===================================================================

Every source yields :class:`Chunk` objects of ``chunk_size`` samples (the last one may be
smaller) from :meth:`DataSource.iter_chunks`, validated against the spec's inputs (names,
rank, static dims, integer dtypes) and cast to each input's dtype, so peak memory is set by
the chunk, not by the number of samples. ``limit`` keeps the first N samples. Sources are
re-iterable: each :meth:`~DataSource.iter_chunks` call starts again from the first sample.
Errors are :class:`~edgeport.errors.DataError` naming the spec field, the file (or callable)
and the value.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import sys
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from edgeport.errors import DataError
from edgeport.spec import (
    IMAGE_EXTENSIONS,
    FunctionDataSpec,
    ImageFolderDataSpec,
    ImagePreprocessingSpec,
    InputSpec,
    TextDataSpec,
)

__all__ = [
    "ArraySource",
    "Chunk",
    "DataSource",
    "FunctionSource",
    "ImageSource",
    "NpzSource",
    "Targets",
    "TextSource",
    "check_arrays",
    "concat_chunks",
    "load_image",
    "load_labels",
    "load_reference_embeddings",
    "open_npz",
]

#: What a source yields besides the inputs: integer ``labels`` (top-1), ``reference``
#: embeddings (cosine), or nothing (calibration, validation, benchmarks).
Targets = Literal["labels", "reference"] | None


@dataclass(frozen=True)
class Chunk:
    """Consecutive samples of a data source.

    Attributes:
        inputs: ``{input name: ndarray of shape (n, *dims)}``, each in its input's dtype.
        labels: int64 ndarray of shape ``(n,)`` (top-1 evaluation), else None.
        reference: float32 ndarray of shape ``(n, dim)`` (cosine evaluation), else None.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    reference: np.ndarray | None = None

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def slice(self, start: int, stop: int | None = None) -> Chunk:
        """Samples ``start:stop`` (views, no copy)."""
        cut = slice(start, stop)
        return Chunk(
            {k: v[cut] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[cut],
            None if self.reference is None else self.reference[cut],
        )


def concat_chunks(chunks: Sequence[Chunk], field: str = "dataset") -> Chunk:
    """One chunk of all samples of ``chunks``, in order (no copy when there is one).

    Raises:
        DataError: the chunks' arrays differ in their non-batch dims (names ``field`` and the shapes).
    """
    if len(chunks) == 1:
        return chunks[0]

    def cat(arrays: list[np.ndarray], what: str) -> np.ndarray:
        shapes = sorted({a.shape[1:] for a in arrays})
        if len(shapes) > 1:
            raise DataError(
                f"{field}: samples of {what} have different shapes {[list(s) for s in shapes]} (after the batch axis); "
                "the samples of one data set must share their shape (pad text to one max_length, resize images)"
            )
        return np.concatenate(arrays)

    first = chunks[0]
    return Chunk(
        {name: cat([c.inputs[name] for c in chunks], f"input {name!r}") for name in first.inputs},
        None if first.labels is None else cat([c.labels for c in chunks], "labels"),
        None if first.reference is None else cat([c.reference for c in chunks], "reference"),
    )


def check_arrays(arrays: Mapping[str, Any], inputs: Sequence[InputSpec], field: str, where: str) -> dict[str, np.ndarray]:
    """Check arrays of shape ``(n, *dims)`` against the spec's inputs and cast them to its dtypes.

    Args:
        arrays: ``{input name: array-like of shape (n, *dims)}``.
        inputs: the spec's inputs; every one must be present.
        field: the spec field (e.g. ``"calibration.dataset"``), first in every message.
        where: the file or callable the arrays come from, e.g. ``"/data/cal.npz"``; an array is
            named ``where[name]`` in the messages.

    Returns:
        ``{input name: contiguous ndarray in the input's dtype}``, in the spec's input order.

    Raises:
        DataError: an input missing (the message lists the names present), a name that is no
            input, wrong rank, a static dim that differs, a float or non-numeric array for an
            integer input, or inputs with different sample counts.
    """
    names = [i.name for i in inputs]
    extra = [k for k in arrays if k not in names]
    if extra:
        raise DataError(f"{field}: {where} has arrays {extra} that are not inputs (inputs: {names})")
    out: dict[str, np.ndarray] = {}
    for inp in inputs:
        if inp.name not in arrays:
            raise DataError(f"{field}: {where} has no array for input {inp.name!r} (arrays present: {list(arrays)})")
        arr = np.asarray(arrays[inp.name])
        check_array_header(arr.shape, arr.dtype, inp, field, f"{where}[{inp.name!r}]")
        out[inp.name] = np.ascontiguousarray(arr, dtype=np.dtype(inp.dtype))
    counts = {name: a.shape[0] for name, a in out.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{field}: {where}: inputs have different sample counts {counts}")
    return out


def check_array_header(shape: tuple[int, ...], dtype: np.dtype, inp: InputSpec, field: str, what: str) -> None:
    """Check one array's shape ``(n, *dims)`` and dtype against ``inp`` (see :func:`check_arrays`)."""
    if len(shape) != len(inp.shape):
        raise DataError(
            f"{field}: {what} has shape {shape} (rank {len(shape)}), but input "
            f"{inp.name!r} is declared {inp.shape} (rank {len(inp.shape)})"
        )
    for axis, (got, want) in enumerate(zip(shape, inp.shape)):
        if isinstance(want, int) and axis > 0 and got != want:
            raise DataError(f"{field}: {what} has shape {shape}; axis {axis} is {got}, but input {inp.name!r} is declared {inp.shape}")
    target = np.dtype(inp.dtype)
    numeric = np.issubdtype(dtype, np.number) or dtype == np.bool_
    if not numeric or (np.issubdtype(target, np.integer) and not np.issubdtype(dtype, np.integer)):
        raise DataError(f"{field}: {what} has dtype {dtype}; input {inp.name!r} needs {inp.dtype}")


class DataSource(ABC):
    """Samples for one spec field, streamed in chunks (see the module docstring).

    Subclasses implement :meth:`_pieces` (validated chunks of any size) and :attr:`total`.

    Attributes:
        field: the spec field, e.g. ``"evaluation.dataset"``, first in every error message.
        inputs: the spec's inputs.
        limit: keep the first ``limit`` samples (None: all).
        targets: what the chunks carry besides the inputs (:data:`Targets`).
    """

    def __init__(self, inputs: Sequence[InputSpec], field: str, limit: int | None = None, targets: Targets = None) -> None:
        if limit is not None and limit < 1:
            raise DataError(f"{field}: the sample limit must be at least 1, got {limit}")
        self.inputs = tuple(inputs)
        self.field = field
        self.limit = limit
        self.targets = targets

    @property
    @abstractmethod
    def description(self) -> str:
        """The file, folder or callable the samples come from (for messages and summaries)."""

    @property
    @abstractmethod
    def total(self) -> int:
        """Samples the source holds, before ``limit``."""

    @abstractmethod
    def _pieces(self, chunk_size: int) -> Iterator[Chunk]:
        """Validated chunks of any size, in order, carrying the ``targets``."""

    @property
    def num_samples(self) -> int:
        """Samples the chunks hold in all: ``min(total, limit)``."""
        return self.total if self.limit is None else min(self.total, self.limit)

    @property
    def has_reference(self) -> bool:
        """Whether the source holds reference embeddings (cosine); False: the FP32 model's outputs are the reference."""
        return False

    def iter_chunks(self, chunk_size: int) -> Iterator[Chunk]:
        """Consecutive chunks of ``chunk_size`` samples (the last may be smaller), ``num_samples`` in all.

        Raises:
            DataError: ``chunk_size`` < 1, the source holds no samples, or its data is invalid.
        """
        if chunk_size < 1:
            raise DataError(f"{self.field}: chunk_size must be at least 1, got {chunk_size}")
        buffer: list[Chunk] = []
        buffered = done = 0
        for piece in self._pieces(chunk_size):
            room = None if self.limit is None else self.limit - done - buffered
            if room is not None and room <= 0:
                break
            if room is not None and len(piece) > room:
                piece = piece.slice(0, room)
            if len(piece) == 0:
                continue
            buffer.append(piece)
            buffered += len(piece)
            while buffered >= chunk_size:
                merged = concat_chunks(buffer, self.field)
                yield merged.slice(0, chunk_size)
                done += chunk_size
                rest = merged.slice(chunk_size)
                buffer, buffered = ([rest], len(rest)) if len(rest) else ([], 0)
        if buffered:
            yield concat_chunks(buffer, self.field)
            done += buffered
        if done == 0:
            raise DataError(f"{self.field}: {self.description} holds no samples")

    def iter_inputs(self, chunk_size: int) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`iter_chunks` without the targets: ``{input name: ndarray (<= chunk_size, *dims)}``."""
        for chunk in self.iter_chunks(chunk_size):
            yield chunk.inputs

    def take(self, n: int | None = None, chunk_size: int = 256) -> Chunk:
        """The first ``n`` samples (all ``num_samples`` when None) in one chunk (in memory: for small subsets)."""
        chunks: list[Chunk] = []
        got = 0
        for chunk in self.iter_chunks(chunk_size if n is None else max(1, min(n, chunk_size))):
            if n is not None and got + len(chunk) > n:
                chunk = chunk.slice(0, n - got)
            chunks.append(chunk)
            got += len(chunk)
            if n is not None and got >= n:
                break
        return concat_chunks(chunks, self.field)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r}, field={self.field!r}, limit={self.limit})"


# ------------------------------------------------------------------------------ arrays


class ArraySource(DataSource):
    """In-memory arrays ``{input name: ndarray (n_samples, *dims)}``, yielded as they are (no checks)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], field: str = "arrays", limit: int | None = None,
                 labels: np.ndarray | None = None, reference: np.ndarray | None = None) -> None:
        super().__init__((), field, limit, "labels" if labels is not None else "reference" if reference is not None else None)
        self._chunk = Chunk(dict(arrays), labels, reference)

    @property
    def description(self) -> str:
        return f"arrays {list(self._chunk.inputs)}"

    @property
    def total(self) -> int:
        return len(self._chunk) if self._chunk.inputs else 0

    @property
    def has_reference(self) -> bool:
        return self._chunk.reference is not None

    def _pieces(self, chunk_size: int) -> Iterator[Chunk]:
        for start in range(0, self.total, chunk_size):
            yield self._chunk.slice(start, start + chunk_size)


# ------------------------------------------------------------------------------ .npz


def open_npz(path: Path, field: str) -> np.lib.npyio.NpzFile:
    """``np.load(path, allow_pickle=False)`` of an ``.npz`` archive (lazy: arrays are read on access).

    Raises:
        DataError: the file is missing, not a zip of ``.npy`` arrays, or unreadable.
    """
    if not Path(path).is_file():
        raise DataError(f"{field}: file not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{field}: {path} is not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{field}: {path} is a single .npy array, not an .npz archive of one array per input name")
    return npz


def load_labels(path: str | Path, key: str, field: str, num_samples: int | None = None) -> np.ndarray:
    """Load integer class labels from an ``.npz``: int64 ndarray of shape ``(n_samples,)``.

    Raises:
        DataError: file missing/unreadable, ``key`` absent, not 1-D, or not integers.
    """
    path = Path(path)
    with open_npz(path, field) as npz:
        if key not in npz.files:
            raise DataError(f"{field}: {path} has no {key!r} array (arrays present: {list(npz.files)}); labels are required")
        labels = npz[key]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{field}: {path}[{key!r}] must be 1-D integers, got shape {labels.shape} dtype {labels.dtype}")
    return labels[:num_samples].astype(np.int64) if num_samples else labels.astype(np.int64)


def load_reference_embeddings(path: str | Path, key: str, field: str, num_samples: int | None = None) -> np.ndarray:
    """Load reference embeddings from an ``.npz``, float32 ndarray of shape ``(n_samples, dim)``.

    Raises:
        DataError: file missing/unreadable, ``key`` absent (the message lists the arrays
            present), not 2-D, empty, or not floating point.
    """
    path = Path(path)
    with open_npz(path, field) as npz:
        if key not in npz.files:
            raise DataError(
                f"{field}: {path} has no {key!r} array (arrays present: {list(npz.files)}); "
                "metric cosine needs reference embeddings (evaluation.reference_key)"
            )
        ref = npz[key]
    _check_reference(ref, field, f"{path}[{key!r}]")
    return (ref[:num_samples] if num_samples else ref).astype(np.float32)


def _check_reference(ref: np.ndarray, field: str, what: str) -> None:
    if ref.ndim != 2 or ref.shape[0] == 0 or ref.shape[1] == 0 or not np.issubdtype(ref.dtype, np.floating):
        raise DataError(f"{field}: {what} must be float embeddings of shape (n_samples, dim), got shape {ref.shape} dtype {ref.dtype}")


def _npy_header(npz: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, int], tuple[int, ...], bool, np.dtype] | None:
    """(format version, shape, fortran_order, dtype) of ``key`` from its ``.npy`` header, or None when
    the member cannot be streamed (a format version numpy's public header readers do not parse)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with npz.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version not in readers:
            return None
        return (version, *readers[version](member))


class NpzSource(DataSource):
    """An ``.npz`` file with one array per input name, samples along the first axis.

    Rows are read straight from the archive's ``.npy`` members, ``chunk_size`` at a time (C-order
    arrays; Fortran-order or unusual members are loaded whole). A labelled file also holds
    ``labels_key`` (int, ``(n_samples,)``); a cosine reference, ``reference_key``
    (float, ``(n_samples, dim)``). Messages are those edgeport always gave for ``.npz`` data.

    Raises (at construction, reading only the headers):
        DataError: file missing or unreadable, an input absent, wrong rank, static dim or dtype,
            different sample counts, no samples, labels / reference missing or of another length.
    """

    def __init__(self, path: str | Path, inputs: Sequence[InputSpec], field: str, limit: int | None = None,
                 targets: Targets = None, labels_key: str = "labels", reference_key: str | None = None) -> None:
        super().__init__(inputs, field, limit, targets)
        self.path = Path(path)
        self.labels_key = labels_key
        self.reference_key = reference_key
        self._headers: dict[str, tuple[tuple[int, int], tuple[int, ...], bool, np.dtype] | None] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        with open_npz(self.path, field) as npz:
            keys = list(npz.files)
            for inp in self.inputs:
                if inp.name not in keys:
                    raise DataError(f"{field}: {self.path} has no array for input {inp.name!r} (arrays present: {keys})")
                header = self._headers[inp.name] = _npy_header(npz, inp.name)
                if header is None:  # not streamable: its shape and dtype from the array itself
                    arr = npz[inp.name]
                    shape, dtype = arr.shape, arr.dtype
                else:
                    shape, dtype = header[1], header[3]
                check_array_header(shape, dtype, inp, field, f"{self.path}[{inp.name!r}]")
                shapes[inp.name] = shape
        counts = {name: shape[0] if limit is None else min(shape[0], limit) for name, shape in shapes.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"{field}: {self.path}: inputs have different sample counts {counts}")
        self._total = min(shape[0] for shape in shapes.values())
        if self._total == 0:
            raise DataError(f"{field}: {self.path} holds no samples (empty arrays)")
        n = self.num_samples
        self._labels = self._reference = None
        if targets == "labels":
            self._labels = load_labels(self.path, labels_key, field, limit)
            if self._labels.shape[0] != n:
                raise DataError(f"{field}: {self.path} has {self._labels.shape[0]} labels for {n} samples")
        elif targets == "reference" and reference_key is not None:
            self._reference = load_reference_embeddings(self.path, reference_key, field, limit)
            if self._reference.shape[0] != n:
                raise DataError(f"{field}: {self.path}[{reference_key!r}] has {self._reference.shape[0]} reference embeddings for {n} samples")

    @property
    def description(self) -> str:
        return str(self.path)

    @property
    def total(self) -> int:
        return self._total

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def _pieces(self, chunk_size: int) -> Iterator[Chunk]:
        n = self.num_samples
        with open_npz(self.path, self.field) as npz:
            readers = {inp.name: self._rows(npz, inp) for inp in self.inputs}
            try:
                for start in range(0, n, chunk_size):
                    stop = min(start + chunk_size, n)
                    inputs = {name: reader(stop - start) for name, reader in readers.items()}
                    yield Chunk(
                        inputs,
                        None if self._labels is None else self._labels[start:stop],
                        None if self._reference is None else self._reference[start:stop],
                    )
            finally:
                for reader in readers.values():
                    getattr(reader, "close", lambda: None)()

    def _rows(self, npz: np.lib.npyio.NpzFile, inp: InputSpec) -> Callable[[int], np.ndarray]:
        """A reader of the next ``rows`` samples of ``inp``'s array, cast to the input's dtype."""
        target = np.dtype(inp.dtype)
        header = self._headers[inp.name]
        if header is None or header[2]:  # not streamable (or Fortran order): the whole array, sliced
            whole = npz[inp.name]
            position = [0]

            def sliced(rows: int) -> np.ndarray:
                out = np.ascontiguousarray(whole[position[0] : position[0] + rows], dtype=target)
                position[0] += rows
                return out

            return sliced
        version, shape, _, dtype = header
        member = npz.zip.open(f"{inp.name}.npy")
        np.lib.format.read_magic(member)
        {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version](member)
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

        class _Reader:
            def __call__(self, rows: int) -> np.ndarray:
                arr = np.frombuffer(member.read(rows * row_bytes), dtype=dtype).reshape((rows, *shape[1:]))
                return arr.astype(target) if arr.dtype != target else arr.copy()  # a writable copy, native order

            def close(self) -> None:
                member.close()

        return _Reader()


# ------------------------------------------------------------------------------ images

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _pair(size: int | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def load_image(path: str | Path, prep: ImagePreprocessingSpec, field: str = "dataset") -> np.ndarray:
    """Decode one image with Pillow and preprocess it (:class:`~edgeport.spec.ImagePreprocessingSpec`).

    Returns:
        float32 ndarray of shape ``(C, H, W)`` (``NCHW``) or ``(H, W, C)`` (``NHWC``);
        C is 1 for ``color: L``, else 3.

    Raises:
        DataError: the file cannot be decoded as an image, or is smaller than ``center_crop``.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("L" if prep.color == "L" else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{field}: {path} cannot be read as an image ({type(exc).__name__}: {exc})") from None
    if prep.resize is not None:
        if isinstance(prep.resize, int):  # the shorter side to `resize`, aspect kept (torchvision Resize(int))
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = prep.resize, int(prep.resize * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            size = (int(prep.resize[1]), int(prep.resize[0]))
        img = img.resize(size, _RESAMPLE[prep.resample])
    if prep.center_crop is not None:
        ch, cw = _pair(prep.center_crop)
        w, h = img.size
        if ch > h or cw > w:
            raise DataError(
                f"{field}: {path} is {w}x{h} (width x height), smaller than preprocessing.center_crop {prep.center_crop}; "
                "set preprocessing.resize"
            )
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if prep.color == "BGR":
        arr = arr[:, :, ::-1]
    arr = arr * np.float32(prep.scale)
    if prep.mean is not None:
        arr = arr - np.asarray(prep.mean, dtype=np.float32)
    if prep.std is not None:
        arr = arr / np.asarray(prep.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1) if prep.layout == "NCHW" else arr, dtype=np.float32)


class ImageSource(DataSource):
    """A folder of images (``kind: image_folder``), decoded ``chunk_size`` at a time.

    Raises (at construction, listing the files only):
        DataError: the folder is missing or holds no image files; ``labels: subfolders`` without
            class folders; a labels file missing, malformed, or naming missing images.
    """

    def __init__(self, spec: ImageFolderDataSpec, inputs: Sequence[InputSpec], field: str,
                 limit: int | None = None, targets: Targets = None) -> None:
        super().__init__(inputs, field, limit, targets)
        self.spec = spec
        self.input = spec.input or self.inputs[0].name
        folder = spec.path
        if not folder.is_dir():
            raise DataError(f"{field}.path: {folder} is not a folder")
        self.classes: list[str] = []
        if spec.labels == "subfolders":
            self.classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not self.classes:
                raise DataError(f"{field}.labels: subfolders, but {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
            files = [(f, index) for index, name in enumerate(self.classes) for f in _images_under(folder / name)]
        elif spec.labels is not None:
            files = self._labels_file(Path(spec.labels), folder)
        else:
            files = [(f, None) for f in _images_under(folder)]
        if not files:
            raise DataError(
                f"{field}: {folder} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)}"
                + (f" in the class folders {self.classes}" if self.classes else ", recursively") + ")"
            )
        if spec.shuffle:
            order = np.random.default_rng(spec.seed).permutation(len(files))
            files = [files[i] for i in order]
        self.files = files[: self.limit] if self.limit is not None else files
        self._total = len(files)

    def _labels_file(self, path: Path, folder: Path) -> list[tuple[Path, int]]:
        where = f"{self.field}.labels"
        if not path.is_file():
            raise DataError(f"{where}: labels file not found: {path}")
        try:
            rows = list(csv.reader(path.read_text().splitlines()))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{where}: {path} cannot be read as a CSV file ({type(exc).__name__}: {exc})") from None
        rows = [r for r in rows if r and any(c.strip() for c in r)]
        if rows and [c.strip().lower() for c in rows[0]] == ["file", "label"]:
            rows = rows[1:]
        files = []
        for line, row in enumerate(rows, start=1):
            if len(row) != 2:
                raise DataError(f"{where}: {path} row {line} {row} is not a `file,label` pair")
            name, label = row[0].strip(), row[1].strip()
            try:
                value = int(label)
            except ValueError:
                raise DataError(f"{where}: {path} row {line}: label {label!r} is not an integer") from None
            image = folder / name
            if not image.is_file():
                raise DataError(f"{where}: {path} row {line} names {name!r}, which is not a file under {folder}")
            files.append((image, value))
        if not files:
            raise DataError(f"{where}: {path} lists no images")
        return files

    @property
    def description(self) -> str:
        return f"the images under {self.spec.path}"

    @property
    def total(self) -> int:
        return self._total

    def _pieces(self, chunk_size: int) -> Iterator[Chunk]:
        prep = self.spec.preprocessing
        inp = next((i for i in self.inputs if i.name == self.input), None)
        others = [i.name for i in self.inputs if i.name != self.input]
        if inp is None or others:
            raise DataError(
                f"{self.field}: {self.description} feed input {self.input!r} only, but the model's inputs are "
                f"{[i.name for i in self.inputs]}; use kind: function for a model with several inputs"
            )
        first: tuple[Path, tuple[int, ...]] | None = None
        for start in range(0, len(self.files), chunk_size):
            batch = self.files[start : start + chunk_size]
            images = []
            for path, _ in batch:
                image = load_image(path, prep, self.field)
                if first is None:
                    first = (path, image.shape)
                elif image.shape != first[1]:
                    raise DataError(
                        f"{self.field}: {path} becomes an array of shape {image.shape}, {first[0]} one of shape {first[1]} "
                        "(images of different sizes): set preprocessing.resize ([height, width]) or preprocessing.center_crop"
                    )
                images.append(image)
            stacked = np.stack(images)
            if np.issubdtype(np.dtype(inp.dtype), np.integer):
                stacked = np.rint(stacked).astype(inp.dtype)
            inputs = check_arrays({inp.name: stacked}, self.inputs, self.field, f"{self.description} (after preprocessing)")
            labels = np.asarray([label for _, label in batch], dtype=np.int64) if self.targets == "labels" else None
            yield Chunk(inputs, labels)


def _images_under(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted by relative path."""
    found = [
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


# ------------------------------------------------------------------------------ text


class TextSource(DataSource):
    """Text (``kind: text``) tokenized per chunk with a local Hugging Face tokenizer.

    Args:
        spec: the ``text`` dataset.
        tokenizer_folder: ``spec.tokenizer``, else the model's Hugging Face folder (None: refused).
        reference_key: the array of a ``.npz`` ``reference`` file.

    Raises (at construction):
        DataError: the file is missing, unreadable or holds no text; a ``.jsonl`` line that is not
            a JSON object with the text (and label) fields; no tokenizer folder, or one transformers
            cannot load offline; a reference file of another length than the text.
    """

    def __init__(self, spec: TextDataSpec, inputs: Sequence[InputSpec], field: str, limit: int | None = None,
                 targets: Targets = None, tokenizer_folder: Path | None = None, reference_key: str | None = None) -> None:
        super().__init__(inputs, field, limit, targets)
        self.spec = spec
        if not spec.path.is_file():
            raise DataError(f"{field}.path: file not found: {spec.path}")
        self._total = sum(1 for _ in self._records())
        if self._total == 0:
            raise DataError(f"{field}: {spec.path} holds no text (no non-blank lines)")
        folder = spec.tokenizer or tokenizer_folder
        if folder is None:
            raise DataError(f"{field}.tokenizer: a text dataset needs a tokenizer folder: set tokenizer:, or use model.huggingface")
        self.tokenizer_folder = Path(folder)
        self.tokenizer = _load_tokenizer(self.tokenizer_folder, f"{field}.tokenizer")
        self._reference = None
        if targets == "reference" and spec.reference is not None:
            self._reference = self._load_reference(spec.reference, reference_key or "embeddings")

    def _load_reference(self, path: Path, key: str) -> np.ndarray:
        where = f"{self.field}.reference"
        if not path.is_file():
            raise DataError(f"{where}: file not found: {path}")
        if path.suffix.lower() == ".npz":
            ref = load_reference_embeddings(path, key, where)
        else:
            try:
                ref = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(f"{where}: {path} is not a readable .npy file ({type(exc).__name__}: {exc})") from None
            _check_reference(ref, where, str(path))
        if ref.shape[0] != self._total:
            raise DataError(f"{where}: {path} has {ref.shape[0]} reference embeddings for the {self._total} samples of {self.spec.path}")
        return ref

    @property
    def description(self) -> str:
        return str(self.spec.path)

    @property
    def total(self) -> int:
        return self._total

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def _records(self) -> Iterator[tuple[str, int | None]]:
        """(text, label) per sample, read line by line."""
        spec, where = self.spec, f"{self.field}: {self.spec.path}"
        try:
            with spec.path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    if spec.field is None:
                        yield line.rstrip("\r\n"), None
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{where} line {number} is not JSON ({exc})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(spec.field), str):
                        raise DataError(f"{where} line {number} has no text field {spec.field!r} (a JSON object with a string there)")
                    label = None
                    if spec.label_field is not None and self.targets == "labels":
                        label = record.get(spec.label_field)
                        if isinstance(label, bool) or not isinstance(label, int):
                            raise DataError(f"{where} line {number}: label field {spec.label_field!r} is {label!r}, not an integer")
                    yield record[spec.field], label
        except UnicodeDecodeError as exc:
            raise DataError(f"{where} is not UTF-8 text ({exc})") from None
        except OSError as exc:
            raise DataError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None

    def _pieces(self, chunk_size: int) -> Iterator[Chunk]:
        records = self._records()
        start = 0
        while True:
            batch = [r for _, r in zip(range(chunk_size), records)]
            if not batch:
                return
            texts = [text for text, _ in batch]
            try:
                encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.spec.max_length, return_tensors="np")
            except Exception as exc:  # noqa: BLE001 - a tokenizer's own error, translated once
                raise DataError(f"{self.field}: the tokenizer {self.tokenizer_folder} failed on {self.spec.path}: {type(exc).__name__}: {exc}") from None
            present = list(encoded.keys())
            missing = [i.name for i in self.inputs if i.name not in present]
            if missing:
                raise DataError(
                    f"{self.field}: the tokenizer {self.tokenizer_folder} returns {present}; inputs {missing} are not among them"
                )
            inputs = check_arrays({i.name: encoded[i.name] for i in self.inputs}, self.inputs, self.field, f"{self.spec.path} (tokenized)")
            stop = start + len(batch)
            labels = np.asarray([label for _, label in batch], dtype=np.int64) if self.targets == "labels" else None
            reference = None if self._reference is None else np.asarray(self._reference[start:stop], dtype=np.float32)
            yield Chunk(inputs, labels, reference)
            start = stop


def _load_tokenizer(folder: Path, field: str) -> Any:
    """``AutoTokenizer.from_pretrained(folder, local_files_only=True)``; DataError when it cannot load."""
    if not folder.is_dir():
        raise DataError(f"{field}: {folder} is not a folder (a Hugging Face tokenizer folder: tokenizer.json or vocab files)")
    # lazy: transformers is heavy and only text data needs it
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError...
        raise DataError(f"{field}: no tokenizer loads from {folder} ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None


# ------------------------------------------------------------------------------ function


class FunctionSource(DataSource):
    """Samples yielded by your function (``kind: function``).

    The contract: ``callable(**kwargs)`` returns an iterable; it is called again for every pass
    over the data (calibration may pass twice), so return a fresh generator each time. Each item is

    * ``{input name: array}``: inputs only (calibration, cosine evaluation against the FP32 model);
    * ``(inputs, target)``: ``target`` an integer label (top1) or a reference embedding (cosine);
    * ``{"inputs": {input name: array}, "label": ..., "reference": ...}``.

    An input array of the declared rank is a batch (samples along axis 0); one axis fewer is one
    sample. Targets follow: a scalar label / ``(dim,)`` embedding per sample, ``(n,)`` / ``(n, dim)``
    per batch of n. Inputs are checked like ``.npz`` arrays (names, rank, static dims, integer
    dtypes) and cast to the declared dtype.

    Raises (at construction):
        DataError: the module or function cannot be imported.
    """

    def __init__(self, spec: FunctionDataSpec, inputs: Sequence[InputSpec], field: str,
                 limit: int | None = None, targets: Targets = None) -> None:
        super().__init__(inputs, field, limit, targets)
        self.spec = spec
        self.function = _import_callable(spec, f"{field}.callable")
        self._total: int | None = None
        self._has_reference: bool | None = None

    @property
    def description(self) -> str:
        return self.spec.callable

    @property
    def total(self) -> int:
        if self._total is None:  # one counting pass (stops at limit)
            count = 0
            for piece in self._pieces(256):
                count += len(piece)
                if self.limit is not None and count >= self.limit:
                    break
            self._total = count
        return self._total

    @property
    def has_reference(self) -> bool:
        if self.targets != "reference":
            return False
        if self._has_reference is None:
            first = next(self._pieces(1), None)
            self._has_reference = first is not None and first.reference is not None
        return self._has_reference

    def _pieces(self, chunk_size: int) -> Iterator[Chunk]:
        name = self.spec.callable
        try:
            items = iter(self.function(**self.spec.kwargs))
        except Exception as exc:  # noqa: BLE001 - the user's code: any error, named once
            raise DataError(f"{self.field}: {name} raised {type(exc).__name__}: {exc}") from None
        index = 0
        with_target: bool | None = None
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"{self.field}: {name} raised {type(exc).__name__}: {exc} (yielding item {index})") from None
            chunk = self._chunk(item, index)
            has = chunk.labels is not None or chunk.reference is not None
            if with_target is None:
                with_target = has
            elif has != with_target:
                raise DataError(f"{self.field}: {name} item {index} {'has' if has else 'has no'} target, unlike the items before it")
            yield chunk
            index += 1

    def _chunk(self, item: Any, index: int) -> Chunk:
        where = f"{self.spec.callable} item {index}"
        target: Any = None
        if isinstance(item, tuple) and len(item) == 2:
            feeds, target = item
            kind = "label" if self.targets == "labels" else "reference"
        elif isinstance(item, Mapping) and "inputs" in item and "inputs" not in {i.name for i in self.inputs}:
            feeds = item["inputs"]
            kind = "label" if "label" in item else "reference" if "reference" in item else None
            target = item.get(kind) if kind else None
        else:
            feeds, kind = item, None
        if not isinstance(feeds, Mapping):
            raise DataError(
                f"{self.field}: {where} is a {type(item).__name__}; yield {{input name: array}}, (inputs, target), "
                "or {'inputs': ..., 'label' | 'reference': ...}"
            )
        arrays: dict[str, np.ndarray] = {}
        batched = None
        for inp in self.inputs:
            if inp.name not in feeds:
                continue
            arr = np.asarray(feeds[inp.name])
            single = arr.ndim == len(inp.shape) - 1
            batched = not single if batched is None else batched
            arrays[inp.name] = arr[None] if single else arr
        arrays.update({k: np.asarray(v) for k, v in feeds.items() if k not in arrays})
        inputs = check_arrays(arrays, self.inputs, self.field, where)
        n = next(iter(inputs.values())).shape[0]
        labels = reference = None
        if target is not None and self.targets is not None:
            value = np.asarray(target)
            value = value[None] if not batched else value
            if kind == "label" or self.targets == "labels":
                if not np.issubdtype(value.dtype, np.integer) or value.shape != (n,):
                    raise DataError(f"{self.field}: {where}: label {target!r} must be an integer per sample (shape ({n},)), got shape {value.shape} dtype {value.dtype}")
                labels = value.astype(np.int64)
            else:
                if not np.issubdtype(value.dtype, np.floating) or value.ndim != 2 or value.shape[0] != n:
                    raise DataError(f"{self.field}: {where}: reference must be a float embedding per sample (shape ({n}, dim)), got shape {value.shape} dtype {value.dtype}")
                reference = value.astype(np.float32)
        elif self.targets == "labels":
            raise DataError(f"{self.field}: {where} has no label; top1 evaluation needs (inputs, label) items or {{'inputs': ..., 'label': ...}}")
        return replace(Chunk(inputs), labels=labels, reference=reference)


def _import_callable(spec: FunctionDataSpec, field: str) -> Callable[..., Iterable[Any]]:
    """Import ``spec.callable`` ("module:function") with ``spec.search_path`` prepended to ``sys.path``.

    Raises:
        DataError: the module cannot be imported, or has no such callable.
    """
    module_name, _, attr = spec.callable.partition(":")
    added = [str(p) for p in spec.search_path if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - the user's module: any import error, named once
            raise DataError(
                f"{field}: cannot import {module_name!r} (searched {[str(p) for p in spec.search_path]} then sys.path): "
                f"{type(exc).__name__}: {exc}"
            ) from None
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise DataError(f"{field}: {module_name!r} ({getattr(module, '__file__', '?')}) has no callable {attr!r}")
    return target


def module_origin(spec: FunctionDataSpec) -> Path | None:
    """The file of ``spec.callable``'s module, found on its search path without importing it (None if not found)."""
    module_name = spec.callable.partition(":")[0]
    added = [str(p) for p in spec.search_path if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    return Path(found.origin) if found is not None and found.origin and Path(found.origin).is_file() else None
