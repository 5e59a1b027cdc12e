"""Train :class:`model.DepthwiseCNN` on scikit-learn's ``load_digits`` (upsampled to 32x32) and
write the pipeline's inputs.

Writes three files to ``out_dir`` (default ``examples/cnn/artifacts/``, next to this
script, whatever the working directory):

- ``depthwise_cnn.pt``: ``{"model_state": state_dict, "meta": {...}}`` saved with
  ``torch.save``; ``meta`` holds plain Python types only, so it loads with
  ``torch.load(path, weights_only=True)``.
- ``calibration.npz``: the train split, key ``pixels``, float32 of shape (n_train, 1, 32, 32).
- ``eval.npz``: the test split, keys ``pixels`` (float32, shape (n_test, 1, 32, 32)) and
  ``labels`` (int64, shape (n_test,)).

Pixels are ``load_digits`` values divided by 16 (so in [0, 1]), upsampled 4x with bilinear
interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``). The split is
stratified, 30 % test, ``random_state=0`` (1257 train / 540 test images, the digits example's
split) and does not depend on ``seed``. Training is deterministic for a given seed (minibatch
Adam on one CPU thread; the time is printed and kept in the checkpoint's meta).

Usage::

    python examples/cnn/train.py [--out DIR] [--epochs N] [--seed S] [--if-missing]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

__all__ = ["ARTIFACTS_DIR", "FILENAMES", "artifact_paths", "load_split", "train", "main"]

HERE = Path(__file__).resolve().parent
#: Default output folder (git-ignored): ``artifacts/`` next to this script.
ARTIFACTS_DIR = HERE / "artifacts"
#: Output file names, by role.
FILENAMES = {"checkpoint": "depthwise_cnn.pt", "calibration": "calibration.npz", "eval": "eval.npz"}

TEST_SIZE = 0.3
SPLIT_SEED = 0
DEFAULT_EPOCHS = 10
BATCH_SIZE = 64
LEARNING_RATE = 2e-2
WIDTH = 4
#: Upsampling factor: 8x8 -> 32x32.
SCALE = 4


def _model_module() -> ModuleType:
    """Import ``model.py`` from this folder by path (works whatever sys.path or the cwd is)."""
    name = "_edgeport_cnn_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def artifact_paths(out_dir: Path) -> dict[str, Path]:
    """The three output paths in ``out_dir``, keyed ``checkpoint``, ``calibration``, ``eval``."""
    return {role: Path(out_dir) / filename for role, filename in FILENAMES.items()}


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stratified train/test split of ``load_digits``.

    Returns:
        x_train: float32 array of shape (1257, 1, 32, 32), values in [0, 1].
        x_test: float32 array of shape (540, 1, 32, 32).
        y_train: int64 array of shape (1257,), digits 0-9.
        y_test: int64 array of shape (540,).
    """
    digits = load_digits()
    small = torch.from_numpy((digits.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8))
    x = F.interpolate(small, scale_factor=SCALE, mode="bilinear", align_corners=False).clamp_(0.0, 1.0).numpy()
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(y_test),
    )


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename, so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@torch.no_grad()
def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean())


def train(out_dir: Path = ARTIFACTS_DIR, epochs: int = DEFAULT_EPOCHS, seed: int = 0) -> dict[str, Path]:
    """Train a DepthwiseCNN and write the checkpoint, calibration set and evaluation set.

    Args:
        out_dir: folder to write to (created if missing; files in it are replaced).
            Default: ``artifacts/`` next to this script.
        epochs: passes over the 1257 training images (default 10: about 97 % test top-1).
        seed: seeds weight init and minibatch order. The train/test split is fixed.

    Returns:
        The written paths, keyed ``checkpoint``, ``calibration``, ``eval``. The test
        top-1 accuracy is in the checkpoint's ``meta["test_top1"]``.

    Raises:
        ValueError: ``epochs`` is not positive.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = load_split()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_test), torch.from_numpy(y_test)

    depthwise_cnn = _model_module().DepthwiseCNN
    deterministic = torch.are_deterministic_algorithms_enabled()
    num_threads = torch.get_num_threads()
    start = time.perf_counter()
    # Fork the global RNG and restore the torch settings, so the caller's state is untouched.
    # One thread: as fast as two for a model this small, immune to oversubscription on a
    # busy machine, and the result does not depend on the core count.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            model = depthwise_cnn(width=WIDTH)
            optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
            loss_fn = nn.CrossEntropyLoss()
            shuffle = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                model.train()
                for idx in torch.randperm(len(xt), generator=shuffle).split(BATCH_SIZE):
                    optimizer.zero_grad(set_to_none=True)
                    loss_fn(model(xt[idx]), yt[idx]).backward()
                    optimizer.step()
                scheduler.step()
            test_top1 = _top1(model, xv, yv)
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(num_threads)
    train_s = time.perf_counter() - start

    meta = {
        "arch": "DepthwiseCNN",
        "kwargs": {"width": WIDTH},
        "inputs": [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 32, 32]}],
        "outputs": ["logits"],
        "pixel_scale": 1.0 / 16.0,
        "upsample": {"scale_factor": SCALE, "mode": "bilinear", "align_corners": False},
        "epochs": epochs,
        "seed": seed,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "split": {"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratify": True},
        "train_samples": int(len(x_train)),
        "test_samples": int(len(x_test)),
        "test_top1": test_top1,
        "train_seconds": round(train_s, 3),
        "torch_version": str(torch.__version__),
    }
    paths = artifact_paths(out_dir)
    buf = io.BytesIO()
    torch.save({"model_state": model.state_dict(), "meta": meta}, buf)
    _atomic_write(paths["checkpoint"], buf.getvalue())
    _atomic_write(paths["calibration"], _npz_bytes(pixels=x_train))
    _atomic_write(paths["eval"], _npz_bytes(pixels=x_test, labels=y_test))
    print(
        f"DepthwiseCNN: {len(x_train)} train / {len(x_test)} test images, {epochs} epochs in {train_s:.1f} s, "
        f"test top-1 {test_top1:.4f}"
    )
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Train DepthwiseCNN on load_digits (32x32); write depthwise_cnn.pt, calibration.npz and eval.npz."
    )
    parser.add_argument("--out", type=Path, metavar="DIR", default=ARTIFACTS_DIR, help=f"output folder (default: {ARTIFACTS_DIR})")
    parser.add_argument("--epochs", type=int, metavar="N", default=DEFAULT_EPOCHS, help=f"training epochs (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, metavar="S", default=0, help="seed for weight init and batch order (default: 0)")
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing if all three output files already exist"
    )
    args = parser.parse_args(argv)
    if args.epochs <= 0:
        parser.error(f"--epochs must be positive, got {args.epochs}")
    paths = artifact_paths(args.out)
    if args.if_missing and all(p.is_file() for p in paths.values()):
        print(f"artifacts already in {args.out.resolve()}; skipping training (--if-missing)")
        return 0
    for role, path in train(args.out, epochs=args.epochs, seed=args.seed).items():
        print(f"  {role}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
