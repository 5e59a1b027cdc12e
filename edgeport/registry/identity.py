"""What makes two registrations of a variant the same model version (idempotent registration).

A passing variant is registered as a new model version only when no completed registration of
the same registered model has the same **identity**: the sha256 (64 hex characters) of the
canonical JSON of

======================  ==========================================================================
part                    what it holds
======================  ==========================================================================
``model_sha256``        the variant's ONNX file (its bytes)
``variant``             ``name``, ``kind``, ``opset``, ``quantization`` (the exact settings),
                        ``optimization`` (fp32-optimized's optimizer settings)
``lineage``             ``parent``, ``parent_sha256``, ``step`` of the variant's lineage, and the
                        checkpoint's sha256 (``checkpoint_sha256``)
``spec``                the spec sections that decide what the version's tags and metrics mean:
                        ``inputs``, ``outputs``, ``validation``, ``evaluation`` (its dataset as
                        the file's sha256, not its path), ``benchmark``, ``targets``
======================  ==========================================================================

Left out on purpose: the spec's ``name``, ``registry`` (experiment, alias, promotion, retry: where
and how the result is recorded, not what it is), ``calibration`` and ``export`` (their effect is
in the model's bytes), ``search`` (a winner's settings are in ``quantization``), the lineage's
``cached`` flag, and every measurement (latencies differ run to run).

The identity is written as the model-version tag :data:`IDENTITY_TAG` when a registration
completes; a version without it (an interrupted attempt's leftover) is never reused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mlflow.tracking import MlflowClient

from edgeport.data import dataset_digest
from edgeport.files import file_sha256
from edgeport.spec import PipelineSpec

__all__ = [
    "IDENTITY_TAG", "REUSED_VERSION_TAG", "checkpoint_sha256_of", "find_identical_version", "identical_versions",
    "variant_identity",
]

#: Model-version tag: the :func:`variant_identity` of a version whose registration completed.
IDENTITY_TAG = "edgeport.identity"
#: Tag on a variant's nested run that reused an existing model version (the version number).
REUSED_VERSION_TAG = "edgeport.reused_version"

_LINEAGE_KEYS = ("parent", "parent_sha256", "step")


def _spec_part(spec: PipelineSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json", include={"inputs", "outputs", "validation", "evaluation", "benchmark", "targets"})
    if spec.evaluation is not None:
        digest = dataset_digest(spec.evaluation.dataset)  # any data kind: content, not path (edgeport.data)
        data["evaluation"]["dataset"] = digest if digest is not None else data["evaluation"]["dataset"]
    return data


def variant_identity(spec: PipelineSpec, variant: dict[str, Any], checkpoint_sha256: str | None) -> str:
    """The identity (sha256, 64 hex characters) of ``variant`` registered under ``spec`` (module docs).

    Args:
        spec: the pipeline spec (its evaluation dataset is hashed when the file exists).
        variant: a ``summary.json`` variant dict; ``sha256`` (else the file at ``path`` is hashed),
            ``name``, ``kind`` and ``lineage`` used; ``opset``, ``quantization``, ``optimization``
            when present.
        checkpoint_sha256: sha256 of the PyTorch checkpoint the run started from (None if unknown).

    Raises:
        OSError: ``variant`` has no ``sha256`` and its file cannot be read.
    """
    lineage = variant.get("lineage") or {}
    document = {
        "model_sha256": variant.get("sha256") or file_sha256(variant["path"]),
        "variant": {key: variant.get(key) for key in ("name", "kind", "opset", "quantization", "optimization")},
        "lineage": {**{key: lineage.get(key) for key in _LINEAGE_KEYS}, "checkpoint_sha256": checkpoint_sha256},
        "spec": _spec_part(spec),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def find_identical_version(client: MlflowClient, name: str, identity: str) -> str | None:
    """The newest version of registered model ``name`` tagged :data:`IDENTITY_TAG` = ``identity``
    (a completed registration of the same variant), or None.

    Raises:
        MlflowException: the store did not answer (mapped by the caller).
    """
    quoted = identity.replace("'", "")
    found = client.search_model_versions(f"name = '{name}' and tags.`{IDENTITY_TAG}` = '{quoted}'")
    versions = sorted((int(mv.version) for mv in found), reverse=True)
    return str(versions[0]) if versions else None


def identical_versions(client: MlflowClient, name: str, identity: dict[str, str]) -> dict[str, str]:
    """Variant name -> the existing version it is identical to (looked up before anything is
    written, so two identical registrations racing both see the store as it was)."""
    found = {variant: find_identical_version(client, name, digest) for variant, digest in identity.items()}
    return {variant: version for variant, version in found.items() if version is not None}


def checkpoint_sha256_of(variants: list[dict]) -> str | None:
    """The checkpoint's sha256 from the FP32 variant's lineage (``parent: checkpoint:<sha256>``)."""
    for variant in variants:
        parent = str((variant.get("lineage") or {}).get("parent") or "")
        if parent.startswith("checkpoint:"):
            return parent.removeprefix("checkpoint:")
    return None
