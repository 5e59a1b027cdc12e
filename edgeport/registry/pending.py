"""The pending-registration file: what a registration is about to write, persisted in the output
folder BEFORE talking to MLflow, so a failed registration can be resumed and its leftovers undone."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from edgeport.registry.params import jsonable
from edgeport.registry.uri import redact_uri
from edgeport.spec import PipelineSpec

__all__ = ["PENDING_FILE", "clear_pending_registration", "read_pending_registration", "write_pending_registration"]

#: Written into the output folder before registration starts, removed once it succeeded.
PENDING_FILE = "registration-pending.json"


def write_pending_registration(
    output_dir: str | Path,
    spec: PipelineSpec,
    spec_path: str | Path,
    variants: list[dict],
    tracking_uri: str,
    flow_run: dict | None = None,
) -> dict:
    """Persist what is about to be registered, BEFORE talking to MLflow: ``<output_dir>/registration-pending.json``.

    If the registration fails past the retry window, the file stays: it names the registration
    (``registration_id``), the tracking URI (redacted), registered model, alias and every variant
    record (paths to the models and reports in the output folder). A re-run on the same output
    folder and store reuses its ``registration_id``, so ``tasks.register.register_pipeline`` first
    removes whatever the failed attempt left in MLflow. Removed by
    :func:`clear_pending_registration` after success. Written atomically (temp file + rename).

    Returns:
        The record written: ``{"status": "pending", "registration_id", "tracking_uri",
        "registered_model", "alias", "spec", "created_at", "attempts", "retry", "flow_run",
        "variants"}`` (``attempts``: how many runs have tried this registration).
    """
    path = Path(output_dir) / PENDING_FILE
    earlier = read_pending_registration(output_dir)
    same = (
        earlier is not None
        and earlier.get("tracking_uri") == redact_uri(tracking_uri)
        and earlier.get("registered_model") == spec.registry.registered_model
    )
    record = {
        "status": "pending",
        "registration_id": earlier["registration_id"] if same else uuid.uuid4().hex,
        "tracking_uri": redact_uri(tracking_uri),
        "registered_model": spec.registry.registered_model,
        "alias": spec.registry.alias,
        "spec": str(Path(spec_path).resolve()),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "attempts": (int(earlier.get("attempts", 0)) if same else 0) + 1,
        "retry": spec.registry.retry.model_dump(mode="json"),
        "flow_run": flow_run,
        "variants": jsonable(variants),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return record


def read_pending_registration(output_dir: str | Path) -> dict | None:
    """The pending registration record of ``output_dir``, or None (none, or unreadable)."""
    try:
        record = json.loads((Path(output_dir) / PENDING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("registration_id") else None


def clear_pending_registration(output_dir: str | Path) -> None:
    """Remove ``registration-pending.json`` (the registration succeeded; ``registration.json`` records it)."""
    (Path(output_dir) / PENDING_FILE).unlink(missing_ok=True)
