"""File and name primitives shared by every layer: one sha256 of a file, one slug.

Both are pure (no Prefect, MLflow, ONNX or torch import), so any module may use them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["file_sha256", "slug"]


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 (64 lowercase hex characters) of a file's bytes, read in chunks of ``chunk_bytes``.

    Raises:
        OSError: the file cannot be opened or read (``FileNotFoundError`` when it is missing).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str, fallback: str = "x") -> str:
    """Lowercase letters, digits and single dashes, no dash at either end; ``fallback`` when empty.

    The form Prefect artifact keys accept (lowercase letters, digits, dashes) and safe as a file,
    folder or MLflow experiment folder name: ``slug("Digits CNN/v2") == "digits-cnn-v2"``.
    """
    return _NOT_SLUG.sub("-", text.lower()).strip("-") or fallback
