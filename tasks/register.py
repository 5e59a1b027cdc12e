"""Record a pipeline run in MLflow and register the variants that passed every gate.

One pipeline run becomes one parent MLflow run (spec settings as params, the spec
file as an artifact, git commit and Prefect flow run as tags) with one nested run
per variant (size, accuracy and latency metrics; quantization settings as params;
validation / evaluation / benchmark reports as JSON artifacts; the ONNX model,
logged with ``mlflow.onnx.log_model``). Variants whose gates all passed become
versions of ``spec.registry.registered_model``; the fastest of them (p50 latency at
the primary batch size on the first target) gets the alias ``spec.registry.alias``, and on
every target the fastest there (:func:`edgeport.records.target_winners`) gets
``<alias>-<target>`` (:func:`edgeport.registry.target_alias`). A version records the targets it
won (tags ``edgeport.won_targets``, ``edgeport.won.<target>.*``), and its logged MLflow model
carries the execution providers and session options of the first target it won (else of the
spec's first target): one file per version, so the other targets' providers are only in tags.

Registration is idempotent: a passing variant identical to a version an earlier, completed
registration created (same model file, settings, lineage and evaluation/benchmark sections:
:mod:`edgeport.registry.identity`) reuses that version instead of registering a duplicate; its
nested run gets the tag ``edgeport.reused_version`` and skips logging the model again
(``registry.register_always`` / ``edgeport run --register-always``: always a new version).
Two identical runs racing may both find nothing and both create a version: both registrations
are complete and consistent (two identical versions, the alias on one of them); later runs reuse
the newest.

Registration is all-or-nothing: if anything fails, the model versions created by
the call are deleted again (best effort) and :class:`~edgeport.errors.RegistryError`
is raised; :class:`~edgeport.errors.RegistryUnavailable` when the store did not answer.

Talking to MLflow (URIs, errors, retries, pending file, ONNX signature) lives in :mod:`edgeport.registry`;
this module is the register step and its undo. The plain function takes an explicit tracking URI;
:func:`register_task` at the bottom adds retries of transient errors (``with_retry_window``).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

import mlflow
from edgeport.errors import RegistryError
from edgeport.files import file_sha256
from edgeport.records import primary_p50_ms, target_winners
from edgeport.registry import (
    DEFAULT_RETRY,
    LOGGED_PROVIDERS_TAG,
    LOGGED_TARGET_TAG,
    REGISTRATION_TAG,
    TARGET_ALIASES_BEFORE_TAG,
    alias_version,
    check_tracking_uri,
    ensure_experiment,
    flatten_params,
    jsonable,
    mlflow_error,
    mlflow_http_settings,
    parent_run_tags,
    ranked_tags,
    redact_uri,
    registered_model_exists,
    run_url,
    set_alias,
    target_alias,
    using_store,
    variant_metrics,
    variant_run_tags,
    with_retry_window,
    won_tags,
)
from edgeport.registry.cleanup import remove_interrupted_attempt, roll_back
from edgeport.registry.identity import (
    IDENTITY_TAG,
    REUSED_VERSION_TAG,
    checkpoint_sha256_of,
    identical_versions,
    variant_identity,
)
from edgeport.registry.signature import log_onnx, mlflow_providers
from edgeport.spec import PipelineSpec, TargetSpec

__all__ = ["check_tracking_uri_task", "primary_p50_ms", "register_pipeline", "register_task"]

logger = logging.getLogger("edgeport.register")


#: Keys every variant dict handed to :func:`register_pipeline` must have.
REQUIRED_VARIANT_KEYS = ("name", "kind", "path", "passed")


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
    register_always: bool = False,
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
        register_always: register a new version even for a variant identical to an existing
            version (also when ``spec.registry.register_always``); default: reuse it.

    Returns:
        ``{"registration_id", "mlflow_run_id", "experiment_id", "tracking_uri", "run_url" (None unless
        http(s)), "registered_model", "alias", "versions": {variant name: version},
        "challenger": {"variant", "version", "p50_ms"} | None, "challengers": {target: {"variant",
        "version", "p50_ms"}}, "reused": [variant names whose version existed already]}``
        (``challengers``: every target with a passing variant, spec order).

    Raises:
        RegistryUnavailable: the tracking server did not answer (transient).
        RegistryError: MLflow refused a write, or a variant could not be logged; the
            model versions this call created have been deleted again.
    """
    registration_id = registration_id or uuid.uuid4().hex
    with mlflow_http_settings(tracking_uri, spec.registry.retry.request_timeout_s):
        return _register(
            spec, Path(spec_path).expanduser().resolve(), variants, tracking_uri, Path(output_dir), flow_run, registration_id,
            register_always or spec.registry.register_always,
        )


def _register(
    spec: PipelineSpec,
    spec_path: Path,
    variants: list[dict],
    tracking_uri: str,
    output_dir: Path,
    flow_run: dict | None,
    registration_id: str,
    register_always: bool = False,
) -> dict:
    model_name = spec.registry.registered_model
    _check_variants(spec, variants)
    check_tracking_uri(tracking_uri, attempts=2, backoff_s=0.5)

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    created: list[str] = []  # versions created by this call, for the rollback
    identities: dict[str, str] = {}  # created version -> its identity, tagged once the registration completes
    reused: list[str] = []  # variants whose identical version existed already
    model_existed: bool | None = None
    experiment_id: str | None = None
    alias_before: str | None = None
    alias_set = False
    target_aliases_before: dict[str, str | None] = {}  # per-target aliases this call moved, as they were
    try:
        experiment_id = ensure_experiment(client, spec.registry.experiment, tracking_uri)
        remove_interrupted_attempt(client, model_name, experiment_id, registration_id, spec.registry.alias)
        model_existed = registered_model_exists(client, model_name)
        first_target = spec.targets[0].name
        # the per-target pick needs only the records: known before logging, so each version's
        # MLflow model carries the providers of the first target it won
        winners = target_winners(variants, spec)
        logged_for: dict[str, TargetSpec] = {}
        for target in reversed(spec.targets):
            if target.name in winners:
                logged_for[winners[target.name]["variant"]] = target
        checkpoint = checkpoint_sha256_of(variants)
        identity = {v["name"]: variant_identity(spec, v, checkpoint) for v in variants if v["passed"]}
        existing = {} if register_always else identical_versions(client, model_name, identity)
        with using_store(tracking_uri):
            with mlflow.start_run(
                experiment_id=experiment_id,
                run_name=spec.name,
                tags={**parent_run_tags(spec, spec_path, flow_run), REGISTRATION_TAG: registration_id},
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
                    if variant["name"] in existing:
                        _link_variant(spec, variant, experiment_id, existing[variant["name"]], registration_id)
                        versions[variant["name"]] = existing[variant["name"]]
                        reused.append(variant["name"])
                        continue
                    version = _log_variant(
                        client, spec, variant, experiment_id, run_id, created, registration_id,
                        logged_target=logged_for.get(variant["name"]),
                    )
                    if version is not None:
                        versions[variant["name"]] = version
                        identities[version] = identity[variant["name"]]

                challengers = {
                    t: {"variant": w["variant"], "version": versions[w["variant"]], "p50_ms": w["p50_ms"]}
                    for t, w in winners.items() if w["variant"] in versions
                }
                challenger = challengers.get(first_target)
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
                if challengers:
                    for target_name in challengers:
                        alias = target_alias(spec.registry.alias, target_name)
                        target_aliases_before[alias] = alias_version(client, model_name, alias)
                    mlflow.set_tag(TARGET_ALIASES_BEFORE_TAG, json.dumps(target_aliases_before, sort_keys=True))
                    for target_name, won in challengers.items():
                        set_alias(client, model_name, target_alias(spec.registry.alias, target_name), won["version"])
                    tag_winners(client, spec, challengers)
                    mlflow.set_tag("edgeport.challengers", json.dumps(
                        {t: {"variant": w["variant"], "version": w["version"]} for t, w in challengers.items()}
                    ))
                mlflow.set_tags({
                    "edgeport.registered_model": model_name,
                    "edgeport.versions": json.dumps(versions, sort_keys=True),
                })
                mlflow.log_metrics({
                    "variants": float(len(variants)),
                    "variants_passed": float(sum(bool(v["passed"]) for v in variants)),
                })
                for version, identity in identities.items():  # complete: now later runs may reuse them
                    client.set_model_version_tag(model_name, version, IDENTITY_TAG, identity)
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
            "challengers": challengers,
            "reused": reused,
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "registration.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return result
    except Exception as exc:
        roll_back(client, model_name, created, model_existed, spec.registry.alias, alias_before, alias_set, target_aliases_before)
        undone = f"; deleted the {len(created)} version(s) it had created ({', '.join(created)})" if created else ""
        raise mlflow_error(exc, f"registering {model_name!r}", tracking_uri, wrap_all=True, detail=undone) from exc
    except BaseException:  # Ctrl-C / SIGTERM: undo this attempt now, as the next attempt would (runs included)
        roll_back(client, model_name, created, model_existed, spec.registry.alias, alias_before, alias_set)
        try:
            if experiment_id is not None:
                remove_interrupted_attempt(client, model_name, experiment_id, registration_id, spec.registry.alias)
            if model_existed is False and not client.search_model_versions(f"name = '{model_name}'"):
                client.delete_registered_model(model_name)  # this attempt created it: no empty model stays
        except Exception:  # noqa: BLE001 - the pending file stays: the next run removes the rest
            logger.warning("interrupted registration %s: clean-up left to the next run", registration_id, exc_info=True)
        raise


def _log_reports(variant: dict) -> None:
    """Params, metrics and the JSON reports of a variant, into the active (nested) run."""
    params = {"kind": str(variant["kind"])}
    if variant.get("opset") is not None:
        params["opset"] = str(variant["opset"])
    if variant.get("quantization"):
        params.update(flatten_params(jsonable(variant["quantization"]), "quantization."))
    mlflow.log_params(params)
    mlflow.log_metrics(variant_metrics(variant))
    for key in ("validation", "evaluation", "benchmarks", "quantization", "lineage"):
        if variant.get(key) is not None:
            value = jsonable(variant[key])
            mlflow.log_dict(value if isinstance(value, dict) else {key: value}, f"reports/{key}.json")
    mlflow.log_dict(jsonable(variant), "reports/variant.json")


def _link_variant(spec: PipelineSpec, variant: dict, experiment_id: str, version: str, registration_id: str | None) -> None:
    """The nested run of a passing variant identical to the existing ``version``: its measurements
    and reports, linked to that version (tags ``edgeport.reused_version``, ``edgeport.model_version``);
    the model is not logged again (the version's own run holds it)."""
    tags = {**variant_run_tags(variant, registration_id), REUSED_VERSION_TAG: version, "edgeport.model_version": version}
    with mlflow.start_run(experiment_id=experiment_id, run_name=variant["name"], nested=True, tags=tags):
        _log_reports(variant)
    logger.info("%s: identical to %s version %s, reused (no new version)", variant["name"], spec.registry.registered_model, version)


def _log_variant(
    client: MlflowClient,
    spec: PipelineSpec,
    variant: dict,
    experiment_id: str,
    parent_run_id: str,
    created: list[str],
    registration_id: str | None = None,
    logged_target: TargetSpec | None = None,
) -> str | None:
    """One nested run for ``variant``; registers it when it passed. Returns the version or None.

    The MLflow model is logged with ``logged_target``'s providers and session options (default:
    the spec's first target)."""
    name, passed = variant["name"], bool(variant["passed"])
    first_target, primary = spec.targets[0].name, spec.benchmark.primary
    logged_target = logged_target or spec.targets[0]
    tags = variant_run_tags(variant, registration_id)

    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True, tags=tags) as run:
        _log_reports(variant)

        path = Path(variant["path"])
        try:
            model_info = log_onnx(spec, path, logged_target)
        except Exception:
            if passed:
                raise
            logger.warning("could not log the ONNX model of failed variant %r", name, exc_info=True)
            mlflow.set_tag("edgeport.model_logged", "false")
            return None
        if not passed:
            return None

        p50 = primary_p50_ms(variant, spec, target=first_target, batch_size=primary)
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
            LOGGED_TARGET_TAG: logged_target.name,
            LOGGED_PROVIDERS_TAG: json.dumps(mlflow_providers(logged_target)),
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


def tag_winners(client: MlflowClient, spec: PipelineSpec, challengers: dict[str, dict]) -> None:
    """Write :func:`edgeport.registry.won_tags` on every version that won a target."""
    targets = {t.name: t for t in spec.targets}
    by_version: dict[str, dict[str, tuple[int, float]]] = {}
    for target_name, won in challengers.items():
        by_version.setdefault(won["version"], {})[target_name] = (spec.benchmark.primary, won["p50_ms"])
    for version, wins in by_version.items():
        providers = {t: json.dumps(mlflow_providers(targets[t])) for t in wins}
        for key, value in won_tags(wins, providers).items():
            client.set_model_version_tag(spec.registry.registered_model, version, key, value)


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
