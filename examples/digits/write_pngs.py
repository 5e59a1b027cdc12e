"""Write the digits splits as PNG files in class folders, for the image-folder data source.

Writes, under ``out_dir`` (default ``examples/digits/artifacts/images/``)::

    calibration/<digit>/<index>.png     the train split (1257 images)
    eval/<digit>/<index>.png            the test split (540 images)

torchvision ``ImageFolder``'s layout: the sorted class folders ``0`` ... ``9`` are the labels
(``labels: subfolders`` in ``pipeline-images.yaml``). Each image is 8x8, 8-bit grayscale, with
pixel = ``load_digits`` value (0..16) x 15, so 0..240: ``preprocessing: {color: L, scale: 1,
std: [240]}`` gives value / 16 exactly, the values of ``calibration.npz`` and ``eval.npz``.
The split is :func:`train.load_split`'s (stratified, ``random_state=0``).

Usage::

    python examples/digits/write_pngs.py [--out DIR] [--if-missing]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

__all__ = ["IMAGES_DIR", "PIXEL_FACTOR", "write_pngs", "main"]

HERE = Path(__file__).resolve().parent
#: Default output folder (git-ignored, under ``artifacts/``).
IMAGES_DIR = HERE / "artifacts" / "images"
#: PNG pixel = load_digits value (0..16) x PIXEL_FACTOR (0..240 fits 8 bits; 16 x 16 would not).
PIXEL_FACTOR = 15


def _train_module() -> ModuleType:
    """Import ``train.py`` from this folder by path (works whatever sys.path or the cwd is)."""
    name = "_edgeport_digits_train"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "train.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _write_split(folder: Path, x: np.ndarray, y: np.ndarray) -> int:
    """One PNG per sample under ``folder/<label>/<index>.png``; returns the count."""
    pixels = np.rint(x[:, 0] * 16 * PIXEL_FACTOR).astype(np.uint8)  # x is value / 16, shape (n, 1, 8, 8)
    for index, (image, label) in enumerate(zip(pixels, y)):
        path = folder / str(int(label)) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path)
    return len(y)


def write_pngs(out_dir: Path = IMAGES_DIR) -> dict[str, Path]:
    """Write both splits as PNG class folders.

    Returns:
        ``{"calibration": out_dir / "calibration", "eval": out_dir / "eval"}``.
    """
    x_train, x_test, y_train, y_test = _train_module().load_split()
    out_dir = Path(out_dir)
    paths = {"calibration": out_dir / "calibration", "eval": out_dir / "eval"}
    for role, (x, y) in {"calibration": (x_train, y_train), "eval": (x_test, y_test)}.items():
        count = _write_split(paths[role], x, y)
        print(f"  {role}: {count} images under {paths[role]}")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--out DIR``, ``--if-missing`` (skip when both folders exist)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMAGES_DIR, help=f"output folder (default {IMAGES_DIR})")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when both folders exist")
    args = parser.parse_args(argv)
    if args.if_missing and all((args.out / role).is_dir() for role in ("calibration", "eval")):
        print(f"images already under {args.out}")
        return 0
    write_pngs(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
