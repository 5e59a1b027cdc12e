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

Talking to MLflow (URIs, errors, retries, pending file, ONNX signature) lives in :mod:`edgeport.registry`;
this module is the register step and its undo. The plain function takes an explicit tracking URI;
:func:`register_task` at the bottom adds retries of transient errors (``with_retry_window``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

import mlflow
from edgeport.errors import RegistryError
from edgeport.files import file_sha256
from edgeport.registry import (
    DEFAULT_RETRY,
    REGISTRATION_TAG,
    alias_version,
    check_tracking_uri,
    ensure_experiment,
    finite,
    flatten_params,
    git_commit,
    jsonable,
    metric_key,
    mlflow_error,
    mlflow_http_settings,
    ranked_tags,
    redact_uri,
    registered_model_exists,
    run_url,
    set_alias,
    using_store,
    version_exists,
    with_retry_window,
)
from edgeport.registry.signature import log_onnx
from edgeport.spec import PipelineSpec, spec_digest

__all__ = ["BENCHMARK_METRICS", "check_tracking_uri_task", "primary_p50_ms", "register_pipeline", "register_task"]

logger = logging.getLogger("edgeport.register")

#: Benchmark fields logged as metrics, one key per target and batch size: ``p50_ms.cpu.b1``
#: (``ci_halfwidth_pct``: 95% CI half-width of the median in % of p50, used by the promotion gate).
BENCHMARK_METRICS = (
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "peak_rss_mb", "session_create_ms", "ci_halfwidth_pct",
)

#: Keys every variant dict handed to :func:`register_pipeline` must have.
REQUIRED_VARIANT_KEYS = ("name", "kind", "path", "passed")


def primary_p50_ms(variant: dict, target: str, batch_size: int) -> float | None:
    """p50 latency (ms) of ``variant`` on ``target`` at ``batch_size``; None unless a status "ok" entry has it."""
    for entry in variant.get("benchmarks") or []:
        if entry.get("target") == target and entry.get("batch_size") == batch_size and entry.get("status") == "ok":
            value = finite(entry.get("p50_ms"))
            if value is not None:
                return value
    return None


def _variant_metrics(variant: dict) -> dict[str, float]:
    metrics: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        number = finite(value)
        if number is not None:
            metrics[metric_key(key)] = number

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
    :func:`edgeport.registry.mlflow_http_settings` with ``registry.retry.request_timeout_s``.

    Args:
        spec: the validated pipeline spec (``registry`` names experiment, model and alias).
        spec_path: the spec YAML, logged as the artifact ``spec/<file name>``.
        variants: one dict per variant, in pipeline order (fp32 first); keys ``name``,
            ``kind``, ``path``, ``passed`` required; ``size_bytes``, ``sha256``, ``opset``,
            ``validation``, ``evaluation``, ``benchmarks``, ``quantization``, ``lineage``
            used when present (see the module docs of ``flows``).
        tracking_uri: MLflow tracking (and registry) URI; see :func:`edgeport.registry.resolve_tracking_uri`.
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
    experiment_id: str | None = None
    alias_before: str | None = None
    alias_set = False
    try:
        experiment_id = ensure_experiment(client, spec.registry.experiment, tracking_uri)
        _undo_earlier_attempts(client, model_name, experiment_id, registration_id, spec.registry.alias)
        model_existed = registered_model_exists(client, model_name)
        first_target, primary = spec.targets[0].name, spec.benchmark.primary
        with using_store(tracking_uri):
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
                    alias_before = alias_version(client, model_name, spec.registry.alias)
                    if alias_before is not None:  # lets a later attempt restore it after an outage
                        mlflow.set_tag("edgeport.alias_before", alias_before)
                    set_alias(client, model_name, spec.registry.alias, challenger["version"])
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
            "run_url": run_url(tracking_uri, experiment_id, run_id),
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
        raise mlflow_error(exc, f"registering {model_name!r}", tracking_uri, wrap_all=True, detail=undone) from exc
    except BaseException:  # Ctrl-C / SIGTERM: undo this attempt now, as the next attempt would (runs included)
        _rollback(client, model_name, created, model_existed, spec.registry.alias, alias_before, alias_set)
        try:
            if experiment_id is not None:
                _undo_earlier_attempts(client, model_name, experiment_id, registration_id, spec.registry.alias)
            if model_existed is False and not client.search_model_versions(f"name = '{model_name}'"):
                client.delete_registered_model(model_name)  # this attempt created it: no empty model stays
        except Exception:  # noqa: BLE001 - the pending file stays: the next run removes the rest
            logger.warning("interrupted registration %s: clean-up left to the next run", registration_id, exc_info=True)
        raise


def _parent_tags(spec: PipelineSpec, spec_path: Path, flow_run: dict | None) -> dict[str, str]:
    tags = {
        "edgeport.spec": str(spec_path),
        "edgeport.spec_name": spec.name,
        "edgeport.spec_digest": spec_digest(spec),
        "edgeport.versions.onnx": onnx.__version__,
        "edgeport.versions.onnxruntime": onnxruntime.__version__,
    }
    if spec_path.is_file():
        tags["edgeport.spec_sha256"] = file_sha256(spec_path)
    commit = git_commit()
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
            tags[metric_key(f"edgeport.benchmark.{entry.get('target')}.b{entry.get('batch_size')}")] = str(entry.get("status"))

    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True, tags=tags) as run:
        params = {"kind": str(variant["kind"])}
        if variant.get("opset") is not None:
            params["opset"] = str(variant["opset"])
        if variant.get("quantization"):
            params.update(flatten_params(jsonable(variant["quantization"]), "quantization."))
        mlflow.log_params(params)
        mlflow.log_metrics(_variant_metrics(variant))
        for key in ("validation", "evaluation", "benchmarks", "quantization", "lineage"):
            if variant.get(key) is not None:
                value = jsonable(variant[key])
                mlflow.log_dict(value if isinstance(value, dict) else {key: value}, f"reports/{key}.json")
        mlflow.log_dict(jsonable(variant), "reports/variant.json")

        path = Path(variant["path"])
        try:
            model_info = log_onnx(spec, path)
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
            "sha256": str(variant.get("sha256") or file_sha256(path)),
            "opset": str(variant.get("opset")),
            "quantization": json.dumps(jsonable(variant.get("quantization")), sort_keys=True),
            "accuracy": str(evaluation.get("value")) if evaluation.get("value") is not None else "n/a",
            **ranked_tags(first_target, primary, p50),  # where it was ranked, read by the promotion gate
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
    aliased = alias_version(client, name, alias)
    for mv in leftovers:
        client.delete_model_version(name, mv.version)
    restore = None
    if aliased is not None and aliased in {str(mv.version) for mv in leftovers}:
        restore = next((r.data.tags.get("edgeport.alias_before") for r in runs if r.data.tags.get("edgeport.alias_before")), None)
    for run in runs:
        client.delete_run(run.info.run_id)
    if restore is not None and version_exists(client, name, restore):
        client.set_registered_model_alias(name, alias, restore)
    logger.warning(
        "registration %s: removed what an interrupted attempt left behind: %d model version(s) of %r, %d run(s)",
        registration_id, len(leftovers), name, len(runs),
    )


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


# --------------------------------------------------------------------------- Prefect


@task(name="check-tracking-uri", cache_policy=NO_CACHE)
def check_tracking_uri_task(uri: str, attempts: int = 3, backoff_s: float = 1.0) -> str:
    """Prefect task around :func:`edgeport.registry.check_tracking_uri` (it retries itself: no
    Prefect retries, so an unreachable registry fails the flow within seconds). Returns ``uri``."""
    check_tracking_uri(uri, attempts=attempts, backoff_s=backoff_s)
    return uri


#: Prefect task around :func:`register_pipeline`: retries transient errors only, within the
#: default window of :class:`~edgeport.spec.RetrySpec` (the flow applies the spec's
#: ``registry.retry`` with :func:`edgeport.registry.with_retry_window`); never cached.
register_task = with_retry_window(task(register_pipeline, name="register", cache_policy=NO_CACHE), DEFAULT_RETRY)
