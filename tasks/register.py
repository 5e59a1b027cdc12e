"""Record a pipeline run in MLflow and register the variants that passed every gate.

One pipeline run becomes one parent MLflow run (spec settings as params, the spec
file as an artifact, git commit and Prefect flow run as tags) with one nested run
per variant (size, accuracy and latency metrics; quantization settings as params;
validation / evaluation / benchmark reports as JSON artifacts; the ONNX model,
logged with ``mlflow.onnx.log_model``). Variants whose gates all passed become
versions of ``spec.registry.registered_model``; the fastest of them (p50 latency at
the primary batch size on the first target) gets the alias ``spec.registry.alias``.

Registration is all-or-nothing: if anything fails, the model versions created by
the call are deleted again (best effort) and :class:`~edgeport.errors.RegistryError`
is raised; :class:`~edgeport.errors.RegistryUnavailable` when the store did not answer.

The plain functions take an explicit tracking URI; the Prefect task
:func:`register_task` at the bottom adds retries on transient errors only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from prefect import task
from prefect.cache_policies import NO_CACHE

import mlflow
from edgeport import home
from edgeport.errors import EdgeportError, RegistryError, RegistryUnavailable
from edgeport.spec import PipelineSpec, RetrySpec, spec_digest

__all__ = [
    "PENDING_FILE",
    "REGISTRATION_TAG",
    "check_tracking_uri",
    "check_tracking_uri_task",
    "clear_pending_registration",
    "ensure_experiment",
    "first_line",
    "flatten_params",
    "mlflow_http_settings",
    "read_pending_registration",
    "redact_uri",
    "register_pipeline",
    "register_task",
    "resolve_tracking_uri",
    "retry_delays",
    "retry_if_transient",
    "retry_transient_within",
    "with_retry_window",
    "write_pending_registration",
]

logger = logging.getLogger(__name__)

#: Benchmark fields logged as metrics, one key per target and batch size: ``p50_ms.cpu.b1``
#: (``ci_halfwidth_pct``: 95% CI half-width of the median in % of p50, used by the promotion gate).
BENCHMARK_METRICS = (
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "peak_rss_mb", "session_create_ms", "ci_halfwidth_pct",
)

#: Keys every variant dict handed to :func:`register_pipeline` must have.
REQUIRED_VARIANT_KEYS = ("name", "kind", "path", "passed")

_ENV_LOCK = threading.Lock()

#: Tag on every run and model version of one registration (the same across its attempts).
REGISTRATION_TAG = "edgeport.registration_id"


# --------------------------------------------------------------------------- tracking URI


def resolve_tracking_uri(spec_uri: str | None, override: str | None) -> str:
    """The MLflow tracking URI to use, first found of: ``override`` (CLI flag) > ``spec_uri``
    (``registry.tracking_uri``) > the ``MLFLOW_TRACKING_URI`` environment variable > the MLflow
    server started by ``edgeport servers up`` for this ``EDGEPORT_HOME``
    (:func:`edgeport.servers.running_servers`) > the embedded sqlite store under
    ``EDGEPORT_HOME`` (:func:`edgeport.home.default_tracking_uri`)."""
    for uri in (override, spec_uri, os.environ.get("MLFLOW_TRACKING_URI")):
        if uri is not None and str(uri).strip():
            return str(uri).strip()
    from edgeport.servers import (
        running_servers,  # lazy: servers is optional at import time
    )

    state = running_servers()
    if state is not None:
        return state.mlflow_url
    return home.default_tracking_uri()


def redact_uri(uri: str) -> str:
    """``uri`` without the password of a ``scheme://user:password@host`` part."""
    return re.sub(r"//([^/:@]*):[^/@]*@", r"//\1:***@", uri)


def _is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


@contextlib.contextmanager
def _short_http_timeouts(uri: str, timeout_s: float) -> Iterator[None]:
    """Temporarily cap MLflow's HTTP timeout and disable its own retries (http(s) URIs only).

    MLflow reads ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (int seconds, default 120) and
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default 7) on every request; with the
    defaults an unreachable server takes minutes to fail.
    """
    if not _is_http(uri):
        yield
        return
    names = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in names}
        os.environ.update(names)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


_HTTP_USERS: dict[str, Any] = {"count": 0, "saved": None}


@contextlib.contextmanager
def mlflow_http_settings(uri: str, timeout_s: float, max_retries: int = 2, backoff_factor: int = 1) -> Iterator[None]:
    """MLflow's HTTP client settings for a block that talks to an http(s) tracking server.

    MLflow's defaults (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7``, backoff factor 2,
    ``MLFLOW_HTTP_REQUEST_TIMEOUT=120`` s) make one request to a stopped server hang for minutes,
    longer than edgeport's own retry window (``registry.retry``), which then cannot keep its
    schedule. Inside the block a request gets ``max_retries`` quick retries (urllib3 backoff
    ``backoff_factor`` x 2^n s) for blips, and edgeport's retry window handles outages.
    Reference-counted, so concurrent blocks in several threads share the settings and the last
    one out restores the previous values. Other URIs: no-op.

    Args:
        uri: the tracking URI.
        timeout_s: per-request timeout in s (``MLFLOW_HTTP_REQUEST_TIMEOUT``, rounded up).
        max_retries: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``.
        backoff_factor: ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (MLflow reads an int).
    """
    if not _is_http(uri):
        yield
        return
    names = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(max_retries)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(math.ceil(backoff_factor)),  # MLflow parses an int
    }
    with _ENV_LOCK:
        if _HTTP_USERS["count"] == 0:
            _HTTP_USERS["saved"] = {k: os.environ.get(k) for k in names}
        os.environ.update(names)
        _HTTP_USERS["count"] += 1
    try:
        yield
    finally:
        with _ENV_LOCK:
            _HTTP_USERS["count"] -= 1
            if _HTTP_USERS["count"] == 0:
                for key, value in _HTTP_USERS["saved"].items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                _HTTP_USERS["saved"] = None


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


_TRANSIENT_PATTERNS = re.compile(
    r"connection refused|failed to establish a new connection|max retries exceeded|timed out|"
    r"timeout|temporarily unavailable|connection reset|connection aborted|remote end closed|"
    r"name or service not known|database is locked|error code 50[234]|50[234] server error|too many 50\d error responses",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the store did not answer, timed out, or was busy."""
    import requests

    for item in _exception_chain(exc):
        if isinstance(item, RegistryUnavailable):
            return True
        if isinstance(item, RegistryError):
            return False
        if isinstance(item, (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        if isinstance(item, MlflowException) and _TRANSIENT_PATTERNS.search(str(item)):
            return True
        if type(item).__name__ == "OperationalError" and "locked" in str(item).lower():
            return True  # sqlite busy
    return False


def check_tracking_uri(uri: str, attempts: int = 3, backoff_s: float = 1.0, timeout_s: float = 5.0) -> None:
    """Make sure the MLflow tracking store at ``uri`` answers (one cheap ``search_experiments``).

    Args:
        uri: MLflow tracking URI (``sqlite:///...``, ``http(s)://...``, ...).
        attempts: calls before giving up (>= 1).
        backoff_s: sleep before the 2nd attempt; doubled after each failure.
        timeout_s: per-request HTTP timeout for http(s) URIs (MLflow's own HTTP retries
            are disabled during the check), so an unreachable server fails within seconds.

    Raises:
        RegistryUnavailable: the store did not answer after ``attempts`` calls; the
            message names the URI and the last error.
        RegistryError: the URI cannot name a tracking store at all (unsupported scheme),
            which no retry can fix.
    """
    attempts = max(1, int(attempts))
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            with _short_http_timeouts(uri, timeout_s):
                MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
            return
        except Exception as exc:  # noqa: BLE001 - classified below
            last = exc
            if not is_transient(exc) and _is_bad_uri(exc):
                raise RegistryError(f"MLflow tracking URI {redact_uri(uri)!r} is not usable: {exc}") from exc
            logger.warning("MLflow at %s did not answer (attempt %d/%d): %s", uri, attempt, attempts, first_line(exc))
            if attempt < attempts:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    raise RegistryUnavailable(
        f"MLflow tracking server {redact_uri(uri)} is unreachable after {attempts} attempt(s): {first_line(last)}"
    ) from last


def _is_bad_uri(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not find a registered" in text or ("unsupported" in text and "uri" in text) or "invalid url" in text


def first_line(exc: BaseException | None) -> str:
    """``"<ExceptionType>: <first line of the message>"`` (at most 500 characters), for error messages."""
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__


# --------------------------------------------------------------------------- experiment


def _sqlite_db_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None for other URIs / in-memory."""
    if not uri.lower().startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return Path(database).expanduser().resolve()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"


def _artifact_location_for(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go; None lets the store decide (server, file store)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    db = _sqlite_db_path(uri)
    if db is not None:
        default_db = (home.edgeport_home() / "mlflow" / "mlflow.db").resolve()
        root = home.default_artifact_root() if db == default_db else db.parent / "artifacts"
    elif scheme.startswith(("postgresql", "mysql", "mssql")):
        # a database store used directly: without a location MLflow would pick ./mlruns in the cwd
        root = home.default_artifact_root()
    else:
        return None  # http(s)/databricks: the server's --default-artifact-root; file store: its own root
    path = root / _safe_name(experiment)
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Get or create the MLflow experiment ``name``; returns its id.

    On a local sqlite store a new experiment's ``artifact_location`` is
    ``$EDGEPORT_HOME/mlflow/artifacts/<name>`` for the default store
    (:func:`edgeport.home.default_artifact_root`) and ``<db folder>/artifacts/<name>``
    for any other sqlite file, never ``./mlruns`` in the working directory. A deleted
    experiment of that name is restored.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=_artifact_location_for(tracking_uri, name),
            tags={"edgeport.created_by": "edgeport"},
        )
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # created concurrently by another run
        if experiment is None:
            raise
        return experiment.experiment_id


_STORE_STATE = threading.Condition()
_STORE_USERS: dict[str, Any] = {"uri": None, "count": 0, "saved": None}


@contextlib.contextmanager
def _using_store(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (runs, log_model, register_model) at ``uri`` for the block,
    then restore the previous URIs and the MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
    variables (``mlflow.set_tracking_uri`` also exports them).

    MLflow's tracking URI is process-global (its active-run stack is per thread), so blocks in
    several threads share it: blocks on the same ``uri`` run together (reference-counted, the last
    one out restores), a block on another URI waits until they are done. Without this, the first
    registration to finish would repoint a concurrent one at the previous store mid-run.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env_names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _STORE_STATE:
        _STORE_STATE.wait_for(lambda: _STORE_USERS["count"] == 0 or _STORE_USERS["uri"] == uri)
        if _STORE_USERS["count"] == 0:
            _STORE_USERS["saved"] = (
                {k: os.environ.get(k) for k in env_names},
                tracking_utils._tracking_uri,
                registry_utils._registry_uri,
            )
            _STORE_USERS["uri"] = uri
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
        _STORE_USERS["count"] += 1
    try:
        yield
    finally:
        with _STORE_STATE:
            _STORE_USERS["count"] -= 1
            if _STORE_USERS["count"] == 0:
                saved_env, old_tracking, old_registry = _STORE_USERS["saved"]
                mlflow.set_tracking_uri(old_tracking)
                registry_utils._registry_uri = old_registry
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                _STORE_USERS.update(uri=None, saved=None)
                _STORE_STATE.notify_all()


# --------------------------------------------------------------------------- helpers


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths and other objects turned into JSON types."""

    def default(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, Path):
            return str(value)
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        return str(value)

    return json.loads(json.dumps(obj, default=default))


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(_jsonable(value), sort_keys=True)
    return text if len(text) <= 6000 else text[:5997] + "..."


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    """Dotted-key MLflow params from nested dicts (``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``); lists
    of named dicts are keyed by their name."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_params(value, f"{prefix}{key}."))
    elif isinstance(data, list) and data and all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in data):
        for item in data:
            rest = {k: v for k, v in item.items() if k != "name"}
            out.update(flatten_params(rest, f"{prefix}{item['name']}."))
    else:
        out[_metric_key(prefix.rstrip("."))] = _param_value(data)
    return out


def _metric_key(key: str) -> str:
    """MLflow allows alphanumerics, ``_ - . / : space`` in metric/param keys."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", key)[:250]


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def primary_p50_ms(variant: dict, target: str, batch_size: int) -> float | None:
    """p50 latency (ms) of ``variant`` on ``target`` at ``batch_size``; None unless a status "ok" entry has it."""
    for entry in variant.get("benchmarks") or []:
        if entry.get("target") == target and entry.get("batch_size") == batch_size and entry.get("status") == "ok":
            value = _finite(entry.get("p50_ms"))
            if value is not None:
                return value
    return None


def _variant_metrics(variant: dict) -> dict[str, float]:
    metrics: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        number = _finite(value)
        if number is not None:
            metrics[_metric_key(key)] = number

    put("size_bytes", variant.get("size_bytes"))
    validation = variant.get("validation") or {}
    put("validation.max_abs_err", validation.get("max_abs_err"))
    put("validation.max_rel_err", validation.get("max_rel_err"))
    evaluation = variant.get("evaluation") or {}
    put("accuracy", evaluation.get("value"))
    put("accuracy_drop", evaluation.get("drop"))
    for entry in variant.get("benchmarks") or []:
        if entry.get("status") != "ok":
            continue
        suffix = f"{entry.get('target')}.b{entry.get('batch_size')}"
        for field in BENCHMARK_METRICS:
            put(f"{field}.{suffix}", entry.get(field))
    return metrics


def _input_example(model: onnx.ModelProto, spec: PipelineSpec) -> dict[str, np.ndarray]:
    """Batch-1 example per graph input: the first real sample from the spec's evaluation or
    calibration ``.npz`` when it has a matching array, else zeros (named dims -> 1)."""
    initializers = {t.name for t in model.graph.initializer}
    samples: dict[str, np.ndarray] = {}
    for section in (spec.evaluation, spec.calibration):
        if section is None or not Path(section.dataset).is_file():
            continue
        try:
            with np.load(section.dataset, allow_pickle=False) as data:
                samples = {k: np.asarray(data[k][:1]) for k in data.files if k in {i.name for i in model.graph.input}}
        except Exception:  # noqa: BLE001 - a sample is a nicety; zeros will do
            samples = {}
        if samples:
            break
    example: dict[str, np.ndarray] = {}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        tensor = graph_input.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim]
        sample = samples.get(graph_input.name)
        if sample is not None and sample.ndim == len(shape) and sample.shape[1:] == tuple(shape[1:]):
            example[graph_input.name] = sample.astype(dtype, copy=False)
        else:
            example[graph_input.name] = np.zeros(shape, dtype=dtype)
    return example


def _dynamic_axes(values: Any) -> dict[str, set[int] | None]:
    """Per graph value, the axes that are not a fixed positive size; None when no shape is recorded."""
    axes: dict[str, set[int] | None] = {}
    for value in values:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            axes[value.name] = None
            continue
        axes[value.name] = {i for i, d in enumerate(tensor.shape.dim) if not (d.HasField("dim_value") and d.dim_value > 0)}
    return axes


def _signature(model: onnx.ModelProto, path: Path, example: dict[str, np.ndarray]) -> ModelSignature:
    """Signature inferred from one ONNX Runtime call on ``example``: dtypes and sizes from the
    arrays, -1 for every axis that is symbolic in the graph (e.g. ``batch``); axis 0 is taken
    as dynamic for outputs whose shape the graph does not record."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, example)))

    def schema(arrays: dict[str, np.ndarray], dynamic: dict[str, set[int] | None]) -> Schema:
        specs = []
        for name, array in arrays.items():
            array = np.asarray(array)
            axes = dynamic.get(name)
            if axes is None or (array.ndim and len(axes) > array.ndim):
                axes = {0} if array.ndim else set()
            shape = tuple(-1 if i in axes else int(n) for i, n in enumerate(array.shape))
            specs.append(TensorSpec(array.dtype, shape, name))
        return Schema(specs)

    return ModelSignature(
        inputs=schema(example, _dynamic_axes(model.graph.input)),
        outputs=schema(outputs, _dynamic_axes(model.graph.output)),
    )


def _check_variants(spec: PipelineSpec, variants: list[dict]) -> None:
    names = []
    for i, variant in enumerate(variants):
        missing = [k for k in REQUIRED_VARIANT_KEYS if k not in variant]
        if missing:
            raise RegistryError(
                f"cannot register {spec.registry.registered_model!r}: variant #{i} lacks keys {missing}"
            )
        names.append(variant["name"])
        if variant["passed"] and not Path(variant["path"]).is_file():
            raise RegistryError(
                f"cannot register {spec.registry.registered_model!r}: ONNX file of passing variant "
                f"{variant['name']!r} not found: {variant['path']}"
            )
    if len(set(names)) != len(names):
        raise RegistryError(f"cannot register {spec.registry.registered_model!r}: duplicate variant names {names}")


# --------------------------------------------------------------------------- registration


def register_pipeline(
    spec: PipelineSpec,
    spec_path: str | Path,
    variants: list[dict],
    tracking_uri: str,
    output_dir: str | Path,
    flow_run: dict | None = None,
    registration_id: str | None = None,
) -> dict:
    """Log one pipeline run to MLflow and register its passing variants.

    Every run and model version it creates carries the tag ``edgeport.registration_id``.
    Called again with the same ``registration_id`` (a retry, or a re-run resuming a pending
    registration), it first deletes what an earlier, interrupted attempt left behind (versions
    the rollback could not delete while the server was down, runs left RUNNING), so an outage
    never leaves a half-registered pipeline run. HTTP requests use
    :func:`mlflow_http_settings` with ``registry.retry.request_timeout_s``.

    Args:
        spec: the validated pipeline spec (``registry`` names experiment, model and alias).
        spec_path: the spec YAML, logged as the artifact ``spec/<file name>``.
        variants: one dict per variant, in pipeline order (fp32 first); keys ``name``,
            ``kind``, ``path``, ``passed`` required; ``size_bytes``, ``sha256``, ``opset``,
            ``validation``, ``evaluation``, ``benchmarks``, ``quantization``, ``lineage``
            used when present (see the module docs of ``flows``).
        tracking_uri: MLflow tracking (and registry) URI; see :func:`resolve_tracking_uri`.
        output_dir: folder where ``registration.json`` (the return value) is written.
        flow_run: ``{"id", "name", "url"}`` of the Prefect flow run, logged as tags.
        registration_id: identifies this registration across attempts (default: a new uuid4).

    Returns:
        ``{"registration_id", "mlflow_run_id", "experiment_id", "tracking_uri", "run_url" (None unless
        http(s)), "registered_model", "alias", "versions": {variant name: version},
        "challenger": {"variant", "version", "p50_ms"} | None}``.

    Raises:
        RegistryUnavailable: the tracking server did not answer (transient).
        RegistryError: MLflow refused a write, or a variant could not be logged; the
            model versions this call created have been deleted again.
    """
    registration_id = registration_id or uuid.uuid4().hex
    with mlflow_http_settings(tracking_uri, spec.registry.retry.request_timeout_s):
        return _register(spec, Path(spec_path).expanduser().resolve(), variants, tracking_uri, Path(output_dir), flow_run, registration_id)


def _register(
    spec: PipelineSpec,
    spec_path: Path,
    variants: list[dict],
    tracking_uri: str,
    output_dir: Path,
    flow_run: dict | None,
    registration_id: str,
) -> dict:
    model_name = spec.registry.registered_model
    _check_variants(spec, variants)
    check_tracking_uri(tracking_uri, attempts=2, backoff_s=0.5)

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    created: list[str] = []  # versions created by this call, for the rollback
    model_existed: bool | None = None
    alias_before: str | None = None
    alias_set = False
    try:
        experiment_id = ensure_experiment(client, spec.registry.experiment, tracking_uri)
        _undo_earlier_attempts(client, model_name, experiment_id, registration_id, spec.registry.alias)
        model_existed = _registered_model_exists(client, model_name)
        first_target, primary = spec.targets[0].name, spec.benchmark.primary
        with _using_store(tracking_uri):
            with mlflow.start_run(
                experiment_id=experiment_id,
                run_name=spec.name,
                tags={**_parent_tags(spec, spec_path, flow_run), REGISTRATION_TAG: registration_id},
                description=f"edgeport pipeline {spec.name}: {len(variants)} variant(s)",
            ) as parent:
                run_id = parent.info.run_id
                spec_params = flatten_params(spec.model_dump(mode="json"))
                if "registry.tracking_uri" in spec_params:  # never log credentials in a URI
                    spec_params["registry.tracking_uri"] = redact_uri(spec_params["registry.tracking_uri"])
                mlflow.log_params(spec_params)
                if spec_path.is_file():
                    mlflow.log_artifact(str(spec_path), artifact_path="spec")

                versions: dict[str, str] = {}
                for variant in variants:
                    version = _log_variant(client, spec, variant, experiment_id, run_id, created, registration_id)
                    if version is not None:
                        versions[variant["name"]] = version

                challenger = _pick_challenger(variants, versions, first_target, primary)
                if challenger is not None:
                    alias_before = _alias_version(client, model_name, spec.registry.alias)
                    if alias_before is not None:  # lets a later attempt restore it after an outage
                        mlflow.set_tag("edgeport.alias_before", alias_before)
                    client.set_registered_model_alias(model_name, spec.registry.alias, challenger["version"])
                    alias_set = True
                    mlflow.set_tags({
                        "edgeport.challenger.variant": challenger["variant"],
                        "edgeport.challenger.version": challenger["version"],
                    })
                mlflow.set_tags({
                    "edgeport.registered_model": model_name,
                    "edgeport.versions": json.dumps(versions, sort_keys=True),
                })
                mlflow.log_metrics({
                    "variants": float(len(variants)),
                    "variants_passed": float(sum(bool(v["passed"]) for v in variants)),
                })
        result = {
            "registration_id": registration_id,
            "mlflow_run_id": run_id,
            "experiment_id": experiment_id,
            "tracking_uri": tracking_uri,
            "run_url": _run_url(tracking_uri, experiment_id, run_id),
            "registered_model": model_name,
            "alias": spec.registry.alias,
            "versions": versions,
            "challenger": challenger,
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "registration.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return result
    except Exception as exc:
        _rollback(client, model_name, created, model_existed, spec.registry.alias, alias_before, alias_set)
        undone = f"; deleted the {len(created)} version(s) it had created ({', '.join(created)})" if created else ""
        if is_transient(exc):
            raise RegistryUnavailable(
                f"MLflow at {redact_uri(tracking_uri)} became unreachable while registering {model_name!r}{undone}: {first_line(exc)}"
            ) from exc
        raise RegistryError(f"registration of {model_name!r} at {redact_uri(tracking_uri)} failed{undone}: {first_line(exc)}") from exc


def _parent_tags(spec: PipelineSpec, spec_path: Path, flow_run: dict | None) -> dict[str, str]:
    tags = {
        "edgeport.spec": str(spec_path),
        "edgeport.spec_name": spec.name,
        "edgeport.spec_digest": spec_digest(spec),
        "edgeport.versions.onnx": onnx.__version__,
        "edgeport.versions.onnxruntime": onnxruntime.__version__,
    }
    if spec_path.is_file():
        tags["edgeport.spec_sha256"] = _sha256(spec_path)
    commit = _git_commit()
    if commit:
        tags["edgeport.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    for key in ("id", "name", "url"):
        if flow_run and flow_run.get(key):
            tags[f"edgeport.prefect.flow_run_{key}"] = str(flow_run[key])
    return tags


def _log_variant(
    client: MlflowClient,
    spec: PipelineSpec,
    variant: dict,
    experiment_id: str,
    parent_run_id: str,
    created: list[str],
    registration_id: str | None = None,
) -> str | None:
    """One nested run for ``variant``; registers it when it passed. Returns the version or None."""
    name, passed = variant["name"], bool(variant["passed"])
    first_target, primary = spec.targets[0].name, spec.benchmark.primary
    lineage = variant.get("lineage") or {}
    tags = {
        "edgeport.variant": name,
        "edgeport.kind": str(variant["kind"]),
        "edgeport.passed": str(passed).lower(),
    }
    if registration_id:
        tags[REGISTRATION_TAG] = registration_id
    for key in ("parent", "step"):
        if lineage.get(key) is not None:
            tags[f"edgeport.lineage.{key}"] = str(lineage[key])
    for gate in ("validation", "evaluation"):  # the gates' verdicts, read by the promotion gate
        if isinstance(variant.get(gate), dict) and "passed" in variant[gate]:
            tags[f"edgeport.{gate}.passed"] = str(bool(variant[gate]["passed"])).lower()
    if isinstance(variant.get("evaluation"), dict) and variant["evaluation"].get("metric"):
        tags["edgeport.evaluation.metric"] = str(variant["evaluation"]["metric"])
    if variant.get("sha256"):
        tags["edgeport.sha256"] = str(variant["sha256"])
    for entry in variant.get("benchmarks") or []:
        if entry.get("status") != "ok":
            tags[_metric_key(f"edgeport.benchmark.{entry.get('target')}.b{entry.get('batch_size')}")] = str(entry.get("status"))

    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True, tags=tags) as run:
        params = {"kind": str(variant["kind"])}
        if variant.get("opset") is not None:
            params["opset"] = str(variant["opset"])
        if variant.get("quantization"):
            params.update(flatten_params(_jsonable(variant["quantization"]), "quantization."))
        mlflow.log_params(params)
        mlflow.log_metrics(_variant_metrics(variant))
        for key in ("validation", "evaluation", "benchmarks", "quantization", "lineage"):
            if variant.get(key) is not None:
                value = _jsonable(variant[key])
                mlflow.log_dict(value if isinstance(value, dict) else {key: value}, f"reports/{key}.json")
        mlflow.log_dict(_jsonable(variant), "reports/variant.json")

        path = Path(variant["path"])
        try:
            model_info = _log_onnx(spec, path)
        except Exception:
            if passed:
                raise
            logger.warning("could not log the ONNX model of failed variant %r", name, exc_info=True)
            mlflow.set_tag("edgeport.model_logged", "false")
            return None
        if not passed:
            return None

        p50 = primary_p50_ms(variant, first_target, primary)
        evaluation = variant.get("evaluation") or {}
        version_tags = {
            "variant": name,
            "kind": str(variant["kind"]),
            "sha256": str(variant.get("sha256") or _sha256(path)),
            "opset": str(variant.get("opset")),
            "quantization": json.dumps(_jsonable(variant.get("quantization")), sort_keys=True),
            "accuracy": str(evaluation.get("value")) if evaluation.get("value") is not None else "n/a",
            f"p50_ms.{first_target}.b{primary}": str(p50) if p50 is not None else "n/a",
            "p50_ms": str(p50) if p50 is not None else "n/a",
            "edgeport.mlflow_run_id": run.info.run_id,
            "edgeport.parent_run_id": parent_run_id,
            "edgeport.spec_name": spec.name,
        }
        if registration_id:
            version_tags[REGISTRATION_TAG] = registration_id
        for key, value in (variant.get("search") or {}).items():  # provenance of a search winner (tasks/search.py)
            version_tags[f"edgeport.search.{key}"] = str(value)
        mv = mlflow.register_model(model_info.model_uri, spec.registry.registered_model, tags=version_tags)
        created.append(str(mv.version))
        client.update_model_version(
            spec.registry.registered_model,
            mv.version,
            description=f"{spec.name} / {name} ({variant['kind']}), pipeline run {parent_run_id}",
        )
        mlflow.set_tag("edgeport.model_version", str(mv.version))
        return str(mv.version)


def _log_onnx(spec: PipelineSpec, path: Path) -> Any:
    """``mlflow.onnx.log_model`` of a FRESH ModelProto (log_model moves tensors to external
    data in place, so a proto must not be reused), with a signature and input example."""
    model = onnx.load(str(path))
    example = _input_example(model, spec)
    signature = _signature(model, path, example)
    providers = list(spec.targets[0].providers)
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    return mlflow.onnx.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        onnx_execution_providers=providers,
        # one self-contained model.onnx unless protobuf's 2 GiB limit forces external data
        save_as_external_data=path.stat().st_size > 1_500_000_000,
    )


def _pick_challenger(variants: list[dict], versions: dict[str, str], target: str, batch_size: int) -> dict | None:
    best: dict | None = None
    for variant in variants:
        if variant["name"] not in versions:
            continue
        p50 = primary_p50_ms(variant, target, batch_size)
        if p50 is not None and (best is None or p50 < best["p50_ms"]):
            best = {"variant": variant["name"], "version": versions[variant["name"]], "p50_ms": p50}
    return best


def _undo_earlier_attempts(client: MlflowClient, name: str, experiment_id: str, registration_id: str, alias: str) -> None:
    """Delete the model versions and runs an earlier attempt of ``registration_id`` left behind
    (its rollback could not reach the server), and give ``alias`` back to the version it named
    before that attempt when the deletion removed it (MLflow drops an alias with its version)."""
    quoted = registration_id.replace("'", "")
    leftovers = client.search_model_versions(f"name = '{name}' and tags.`{REGISTRATION_TAG}` = '{quoted}'")
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{REGISTRATION_TAG}` = '{quoted}'", run_view_type=ViewType.ACTIVE_ONLY
    )
    if not leftovers and not runs:
        return
    alias_version = _alias_version(client, name, alias)
    for mv in leftovers:
        client.delete_model_version(name, mv.version)
    restore = None
    if alias_version is not None and alias_version in {str(mv.version) for mv in leftovers}:
        restore = next((r.data.tags.get("edgeport.alias_before") for r in runs if r.data.tags.get("edgeport.alias_before")), None)
    for run in runs:
        client.delete_run(run.info.run_id)
    if restore is not None and _version_exists(client, name, restore):
        client.set_registered_model_alias(name, alias, restore)
    logger.warning(
        "registration %s: removed what an interrupted attempt left behind: %d model version(s) of %r, %d run(s)",
        registration_id, len(leftovers), name, len(runs),
    )


def _version_exists(client: MlflowClient, name: str, version: str) -> bool:
    try:
        client.get_model_version(name, version)
        return True
    except MlflowException:
        return False


def _registered_model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _rollback(
    client: MlflowClient,
    name: str,
    created: list[str],
    model_existed: bool | None,
    alias: str,
    alias_before: str | None,
    alias_set: bool,
) -> None:
    """Best effort: delete the versions this call created, restore the alias, drop a model it created."""
    for version in reversed(created):
        try:
            client.delete_model_version(name, version)
        except Exception:  # noqa: BLE001
            logger.warning("rollback: could not delete %s version %s", name, version, exc_info=True)
    if alias_set and alias_before is not None and alias_before not in created:
        with contextlib.suppress(Exception):
            client.set_registered_model_alias(name, alias, alias_before)
    if model_existed is False and created:
        try:
            if not client.search_model_versions(f"name = '{name}'"):
                client.delete_registered_model(name)
        except Exception:  # noqa: BLE001
            logger.warning("rollback: could not delete registered model %s", name, exc_info=True)


def _run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    if not _is_http(tracking_uri):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# --------------------------------------------------------------------------- Prefect


def retry_if_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn`` (``(task, task_run, state) -> bool``): retry only when
    the failure is transient (RegistryUnavailable, connection errors, timeouts)."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - the failed state's exception
        if isinstance(exc, EdgeportError) and not isinstance(exc, RegistryUnavailable):
            return False
        return is_transient(exc)
    return False


@task(name="check-tracking-uri", cache_policy=NO_CACHE)
def check_tracking_uri_task(uri: str, attempts: int = 3, backoff_s: float = 1.0) -> str:
    """Prefect task around :func:`check_tracking_uri` (it retries itself: no Prefect retries,
    so an unreachable registry fails the flow within seconds). Returns ``uri``."""
    check_tracking_uri(uri, attempts=attempts, backoff_s=backoff_s)
    return uri


#: Prefect refuses more than 50 entries in ``retry_delay_seconds`` (it repeats the last one).
PREFECT_MAX_RETRY_DELAYS = 50


def retry_delays(retry: RetrySpec) -> list[float]:
    """The backoff delays (s) between attempts: ``initial_delay_s``, doubled after each failure,
    capped at ``max_delay_s``, the last one cut so that they add up to ``window_s``.

    >>> retry_delays(RetrySpec(window_s=20, initial_delay_s=2, max_delay_s=5))
    [2.0, 4.0, 5.0, 5.0, 4.0]
    """
    delays: list[float] = []
    total, delay = 0.0, retry.initial_delay_s
    while total < retry.window_s - 1e-9 and len(delays) < 10_000:
        step = min(delay, retry.max_delay_s, retry.window_s - total)
        delays.append(round(step, 3))
        total += step
        delay *= 2
    return delays


def retry_transient_within(window_s: float) -> Callable[[Any, Any, Any], bool]:
    """A Prefect ``retry_condition_fn``: retry transient errors (:func:`retry_if_transient`)
    until ``window_s`` seconds have passed since that task run's first failure."""
    first_failure: dict[Any, float] = {}

    def retry_transient_within_window(task_: Any, task_run: Any, state: Any) -> bool:
        if not retry_if_transient(task_, task_run, state):
            return False
        start = first_failure.setdefault(getattr(task_run, "id", None), time.monotonic())
        return time.monotonic() - start < window_s

    return retry_transient_within_window


def with_retry_window(task_: Any, retry: RetrySpec) -> Any:
    """``task_`` with Prefect retries of transient errors for ``retry.window_s`` seconds, the delays
    of :func:`retry_delays` (+-20 % jitter, so concurrent runs do not hit a recovering server
    in step). The caller sees the last attempt's exception when the window is exhausted.
    Prefect takes at most 50 delays and repeats the last one: past 50, the delays are capped
    ones anyway (the window's time check ends the retries on schedule)."""
    delays = retry_delays(retry)
    return task_.with_options(
        retries=len(delays),
        retry_delay_seconds=delays[:PREFECT_MAX_RETRY_DELAYS] or 0,
        retry_jitter_factor=0.2 if delays else None,
        retry_condition_fn=retry_transient_within(retry.window_s),
    )


_DEFAULT_RETRY = RetrySpec()

#: Prefect task around :func:`register_pipeline`: retries transient errors only, within the
#: default window of :class:`~edgeport.spec.RetrySpec` (the flow applies the spec's
#: ``registry.retry`` with :func:`with_retry_window`); never cached.
register_task = with_retry_window(task(register_pipeline, name="register", cache_policy=NO_CACHE), _DEFAULT_RETRY)


# --------------------------------------------------------------------------- pending registration

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
    (``registration_id``), the tracking URI, registered model, alias and every variant record
    (paths to the models and reports in the output folder). A re-run on the same output folder
    reuses its ``registration_id``, so :func:`register_pipeline` first removes whatever the failed
    attempt left in MLflow. Removed by :func:`clear_pending_registration` after success.

    Returns:
        The record written: ``{"status": "pending", "registration_id", "tracking_uri",
        "registered_model", "alias", "spec", "created_at", "attempts", "flow_run", "variants"}``
        (``attempts``: how many runs have tried this registration).
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
        "variants": _jsonable(variants),
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
