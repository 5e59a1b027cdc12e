"""Promote a registered model version to ``champion`` through a gate, and roll back.

The gate compares a *candidate* (an explicit version, or the version behind an alias,
``challenger`` by default) with the current ``champion`` of the same registered model, on
ONE target and batch size, from what :mod:`tasks.register` recorded for each version:

* the version's tags (``variant``; ``edgeport.ranked_target`` / ``edgeport.ranked_batch_size``,
  or on older versions ``p50_ms.<target>.b<batch>``) and its run (``run_id``):
  metrics ``p50_ms.<target>.b<batch>``, ``ci_halfwidth_pct.<target>.b<batch>`` (95% CI of the
  median, in % of p50), ``accuracy`` (the evaluation metric's value, top-1 or cosine); tags
  ``edgeport.validation.passed``, ``edgeport.evaluation.passed`` (the gates' verdicts at
  registration; older runs without them fall back to ``edgeport.passed``).

The checks and their arithmetic are pure and live in :mod:`edgeport.promotion`
(:func:`~edgeport.promotion.decide`); this module reads the registry, applies the decision and
publishes it. :class:`~edgeport.spec.PromotionSpec` holds the settings.

Accepted: ``previous-champion`` moves to the old champion, ``champion`` to the candidate, the
decision and its numbers are written as ``edgeport.promotion.*`` tags and a description on
the candidate, the Prefect event ``edgeport.model.promoted`` is emitted (resource
``edgeport.registered-model.<name>``, payload: the decision) and, inside a Prefect run, a
markdown artifact of the decision is published. Rejected: no alias changes; the decision
(``edgeport.promotion.decision = rejected`` and its numbers and reason) is still written as
tags on the candidate only, so the registry shows why it was not promoted, and the event
``edgeport.model.promotion-rejected`` is emitted.

Rollback: ``champion`` moves back to the version behind ``previous-champion``; the alias
``previous-champion`` is then REMOVED (one step of history: a second rollback without a new
promotion is an error, it never re-promotes the version just rolled back). Both versions get
``edgeport.promotion.*`` tags recording it; the event ``edgeport.model.rolled-back`` is emitted.

Per target (``per_target=True`` / ``target=`` of :func:`rollback`; ``edgeport promote --target T``):
the same gate, comparing on ``T``, moves ``champion-<T>`` / ``previous-champion-<T>``
(:func:`edgeport.promotion.champion_alias`); the candidate defaults to the version behind
``challenger-<T>`` (set by registration on the fastest passing variant there). Its decision tags are
``edgeport.promotion.<T>.*``, so ``champion`` and each target keep their own record on a version.

MLflow alias updates are last-writer-wins: :mod:`flows.promote` serialises promotions and
rollbacks of one registered model with a Prefect global concurrency limit. The plain functions
here take an explicit tracking URI; the Prefect tasks are at the bottom.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from edgeport.errors import EdgeportError, PromotionError
from edgeport.files import slug
from edgeport.prefect_context import in_prefect_run
from edgeport.promotion import (
    CHAMPION,
    PREVIOUS_CHAMPION,
    PromotionDecision,
    RollbackResult,
    VersionRecord,
    champion_alias,
    decide,
    latency_check,
    previous_champion_alias,
    target_alias,
    utc_now,
)
from edgeport.registry import (
    INTERACTIVE_RETRY,
    is_not_found,
    map_mlflow_errors,
    mlflow_error,
    ranked_on,
    redact_uri,
    registry_client,
    with_retry_window,
)
from edgeport.spec import PromotionSpec

__all__ = [
    "CHAMPION",
    "PREVIOUS_CHAMPION",
    "TAG_PREFIX",
    "PromotionDecision",
    "RollbackResult",
    "VersionRecord",
    "latency_check",
    "promote",
    "promote_task",
    "rollback",
    "rollback_task",
]

logger = logging.getLogger("edgeport.promote")

#: Prefix of the model-version tags a decision writes.
TAG_PREFIX = "edgeport.promotion."
EVENT_PROMOTED = "edgeport.model.promoted"
EVENT_REJECTED = "edgeport.model.promotion-rejected"
EVENT_ROLLED_BACK = "edgeport.model.rolled-back"


# --------------------------------------------------------------------------- reading the registry


def _require_model(client: MlflowClient, name: str, tracking_uri: str) -> Any:
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if is_not_found(exc):
            raise PromotionError(f"registered model {name!r} not found at {redact_uri(tracking_uri)}") from exc
        raise mlflow_error(exc, f"reading registered model {name!r}", tracking_uri, wrap_all=True) from exc


def _model_alias(model: Any, alias: str) -> str | None:
    """Version behind ``alias`` from a RegisteredModel's aliases (dict alias -> version), or None."""
    version = (getattr(model, "aliases", None) or {}).get(alias)
    return None if version is None else str(version)


def _candidate(client: MlflowClient, model: Any, version: str | None, alias: str) -> Any:
    name = model.name
    if version is not None:
        version = str(version).strip()
        if not version.isdigit():
            raise PromotionError(f"{name}: model version must be a positive integer, got {version!r}")
        try:
            return client.get_model_version(name, version)
        except MlflowException as exc:
            if is_not_found(exc):
                raise PromotionError(f"{name}: model version {version} not found") from exc
            raise
    behind = _model_alias(model, alias)
    if behind is None:
        known = ", ".join(f"{a} -> {v}" for a, v in sorted((model.aliases or {}).items())) or "none"
        raise PromotionError(f"{name}: no version has the alias {alias!r} (aliases: {known})")
    return client.get_model_version(name, behind)


def _bool_tag(value: str | None) -> bool | None:
    return None if value is None else value.strip().lower() == "true"


def _record(client: MlflowClient, mv: Any, target: str, batch_size: int, tracking_uri: str) -> VersionRecord:
    """Read what registration recorded for ``mv`` on ``target`` at ``batch_size``.

    Raises:
        PromotionError: the version has no run, or no p50 for that target and batch size.
    """
    name, version = mv.name, str(mv.version)
    run_id = mv.run_id or (mv.tags or {}).get("edgeport.mlflow_run_id")
    if not run_id:
        raise PromotionError(f"{name} version {version}: no MLflow run linked (was it registered by edgeport?)")
    with map_mlflow_errors(f"reading run {run_id}", tracking_uri):
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if is_not_found(exc):
                raise PromotionError(f"{name} version {version}: its run {run_id} is gone from {redact_uri(tracking_uri)}") from exc
            raise
    metrics, tags = run.data.metrics, run.data.tags
    suffix = f"{target}.b{batch_size}"
    p50 = metrics.get(f"p50_ms.{suffix}")
    if p50 is None:
        status = tags.get(f"edgeport.benchmark.{suffix}")
        recorded = sorted(k.removeprefix("p50_ms.") for k in metrics if k.startswith("p50_ms."))
        why = f"its benchmark there ended with status {status!r}" if status else "no benchmark recorded there"
        raise PromotionError(
            f"{name} version {version}: no p50 recorded for target {target!r} at batch size {batch_size} ({why}); "
            f"recorded: {', '.join(recorded) or 'none'} (pick one with --target / --batch-size)"
        )
    overall = _bool_tag(tags.get("edgeport.passed"))
    validation = _bool_tag(tags.get("edgeport.validation.passed"))
    evaluation = _bool_tag(tags.get("edgeport.evaluation.passed"))
    metric_value = metrics.get("accuracy")
    if evaluation is None and metric_value is not None:
        evaluation = overall  # registered before the per-gate tags existed: the overall verdict
    return VersionRecord(
        version=version,
        run_id=run_id,
        variant=(mv.tags or {}).get("variant") or tags.get("edgeport.variant"),
        p50_ms=float(p50),
        ci_halfwidth_pct=metrics.get(f"ci_halfwidth_pct.{suffix}"),
        validation_passed=bool(validation if validation is not None else overall),
        evaluation_passed=evaluation,
        metric=tags.get("edgeport.evaluation.metric") or ("top1" if metric_value is not None else None),
        metric_value=metric_value,
        aliases=tuple(sorted(getattr(mv, "aliases", None) or ())),
    )


# --------------------------------------------------------------------------- promote and roll back


def promote(
    registered_model: str,
    tracking_uri: str,
    version: str | None = None,
    alias: str | None = None,
    target: str | None = None,
    batch_size: int | None = None,
    policy: PromotionSpec | None = None,
    emit_events: bool = True,
    per_target: bool = False,
) -> PromotionDecision:
    """Decide whether a candidate version replaces ``champion`` (:func:`edgeport.promotion.decide`),
    and apply the decision.

    Args:
        registered_model: MLflow registered model name.
        tracking_uri: MLflow tracking (and registry) URI.
        version: candidate model version; None = the version behind ``alias``.
        alias: alias naming the candidate when ``version`` is None (default ``challenger``, or
            ``challenger-<target>`` with ``per_target``).
        target, batch_size: where to compare p50s; default ``policy.target`` / ``policy.batch_size``,
            else the target and batch size the candidate's pipeline ranked it on (its version
            tags, :func:`edgeport.registry.ranked_on`).
        policy: the gate's settings; default :class:`PromotionSpec` ().
        emit_events: emit the Prefect events (``edgeport.model.promoted`` on acceptance,
            ``edgeport.model.promotion-rejected`` on rejection).
        per_target: move ``champion-<target>`` / ``previous-champion-<target>`` instead of
            ``champion`` / ``previous-champion``; ``target`` is then required.

    Returns:
        The :class:`PromotionDecision` (accepted or not). A rejection is a normal outcome: it
        changes no alias and is returned, not raised (``decision.raise_if_rejected()`` raises).

    Raises:
        RegistryUnavailable: MLflow did not answer.
        PromotionError: unknown model, version or alias; no p50 recorded for the target and
            batch size on the candidate or the champion.
        RegistryError: MLflow refused a write (aliases changed by this call are restored).
    """
    policy = policy or PromotionSpec()
    if per_target and not target:
        raise PromotionError(f"{registered_model}: a per-target promotion needs the target (--target)")
    alias = alias or (target_alias("challenger", target) if per_target else "challenger")
    champion_name = champion_alias(target if per_target else None)
    client = registry_client(tracking_uri)
    model = _require_model(client, registered_model, tracking_uri)
    with map_mlflow_errors("reading the candidate", tracking_uri):
        mv = _candidate(client, model, version, alias)
    ranked = ranked_on(mv.tags)
    target = target or policy.target or (ranked[0] if ranked else None)
    batch_size = batch_size or policy.batch_size or (ranked[1] if ranked else None)
    if target is None or batch_size is None:
        raise PromotionError(
            f"{registered_model} version {mv.version}: no ranking target recorded; give the target and batch size (--target, --batch-size)"
        )
    cand = _record(client, mv, target, int(batch_size), tracking_uri)
    champion_version = _model_alias(model, champion_name)
    champ: VersionRecord | None = None
    if champion_version is not None and champion_version != cand.version:
        with map_mlflow_errors("reading the champion", tracking_uri):
            champ_mv = client.get_model_version(registered_model, champion_version)
        try:
            champ = _record(client, champ_mv, target, int(batch_size), tracking_uri)
        except PromotionError as exc:
            raise PromotionError(f"cannot compare with the champion: {exc}") from exc

    decision = decide(
        registered_model, cand, champ, champion_version, target, int(batch_size), policy,
        tracking_uri=redact_uri(tracking_uri), per_target=per_target,
    )
    already = champion_version == cand.version
    if decision.accepted:
        _apply(client, decision, tracking_uri)
    elif not already:  # the champion's own tags keep its promotion record
        _write_decision_tags(client, decision, tracking_uri)
    logger.info("promotion of %s: %s", registered_model, decision.reason)
    if emit_events and not already:
        _emit(EVENT_PROMOTED if decision.accepted else EVENT_REJECTED, registered_model, decision.to_dict(), cand.version)
    _publish(decision.markdown(), registered_model, f"Promotion decision for {registered_model}")
    return decision


def _tag_prefix(decision: PromotionDecision | RollbackResult, target: str | None = None) -> str:
    """``edgeport.promotion.`` for ``champion``; ``edgeport.promotion.<target>.`` for ``champion-<target>``."""
    if decision.champion_alias == CHAMPION:
        return TAG_PREFIX
    return f"{TAG_PREFIX}{target or getattr(decision, 'target', '')}."


def _decision_tags(decision: PromotionDecision) -> dict[str, str]:
    cand, champ = decision.candidate, decision.champion

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.6g}"

    tags = {
        "decision": "accepted" if decision.accepted else "rejected",
        "reason": decision.reason[:5000],
        "decided_at": decision.decided_at,
        "target": decision.target,
        "batch_size": str(decision.batch_size),
        "p50_ms": num(cand["p50_ms"]),
        "ci_halfwidth_pct": num(cand["ci_halfwidth_pct"]),
        "champion_version": decision.champion_version or "none",
        "champion_p50_ms": num(champ["p50_ms"]) if champ else "n/a",
        "champion_ci_halfwidth_pct": num(champ["ci_halfwidth_pct"]) if champ else "n/a",
        "threshold_ms": num(decision.threshold_ms),
        "margin_pct": num(decision.change_pct),
        "significance": decision.policy["significance"],
    }
    if flow_run.id:
        tags["flow_run_id"] = str(flow_run.id)
    prefix = _tag_prefix(decision)
    return {prefix + k: v for k, v in tags.items()}


def _write_decision_tags(client: MlflowClient, decision: PromotionDecision, tracking_uri: str) -> None:
    for key, value in _decision_tags(decision).items():
        with map_mlflow_errors(f"tag {key}", tracking_uri):
            client.set_model_version_tag(decision.registered_model, decision.candidate_version, key, value)


def _apply(client: MlflowClient, decision: PromotionDecision, tracking_uri: str) -> None:
    """Move the aliases, then write tags and description; restore the aliases if a write fails."""
    name, cand, old = decision.registered_model, decision.candidate_version, decision.champion_version
    champion, previous = decision.champion_alias, decision.previous_champion_alias
    with map_mlflow_errors("reading aliases", tracking_uri):
        model = client.get_registered_model(name)
    previous_before = _model_alias(model, previous)
    if _model_alias(model, champion) != old:  # only when called without the flow's lock
        raise PromotionError(f"{name}: {champion} changed while deciding (now {_model_alias(model, champion)}, was {old}); run again")
    try:
        if old is not None:
            with map_mlflow_errors(f"setting {previous}", tracking_uri):
                client.set_registered_model_alias(name, previous, old)
        with map_mlflow_errors(f"setting {champion}", tracking_uri):
            client.set_registered_model_alias(name, champion, cand)
        decision.changed = True
        _write_decision_tags(client, decision, tracking_uri)
        with map_mlflow_errors("updating the old champion and the description", tracking_uri):
            if old is not None:
                client.set_model_version_tag(name, old, _tag_prefix(decision) + "superseded_by", cand)
            mv = client.get_model_version(name, cand)
            role = "Champion" if champion == CHAMPION else f"Champion on {decision.target} ({champion})"
            note = (
                f"{role} since {decision.decided_at} (edgeport promote): {decision.reason}. "
                f"Compared on {decision.target}, batch {decision.batch_size}."
            )
            client.update_model_version(name, cand, description=f"{mv.description}\n\n{note}" if mv.description else note)
    except EdgeportError:
        _restore(client, name, old, previous_before, champion, previous)
        decision.changed = False
        raise


def _restore(
    client: MlflowClient,
    name: str,
    champion: str | None,
    previous: str | None,
    champion_name: str = CHAMPION,
    previous_name: str = PREVIOUS_CHAMPION,
) -> None:
    """Best effort: put ``champion_name`` and ``previous_name`` back as they were (versions ``champion``, ``previous``)."""
    for alias, version in ((champion_name, champion), (previous_name, previous)):
        try:
            if version is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, version)
        except Exception:
            logger.warning("could not restore alias %s of %s to %s", alias, name, version, exc_info=True)


def rollback(registered_model: str, tracking_uri: str, emit_events: bool = True, target: str | None = None) -> RollbackResult:
    """Move ``champion`` back to the version behind ``previous-champion`` and remove that alias
    (with ``target``: ``champion-<target>`` and ``previous-champion-<target>``, tags ``edgeport.promotion.<target>.*``).

    Tags: ``edgeport.promotion.decision = rolled-back`` (+ ``rolled_back_at``, ``rolled_back_to``)
    on the demoted version, ``edgeport.promotion.decision = restored`` (+ ``restored_at``,
    ``restored_from``) on the restored one. Emits ``edgeport.model.rolled-back``.

    Raises:
        PromotionError: unknown model, or no ``previous-champion`` alias.
        RegistryUnavailable / RegistryError: MLflow did not answer / refused a write.
    """
    client = registry_client(tracking_uri)
    model = _require_model(client, registered_model, tracking_uri)
    champion_name, previous_name = champion_alias(target), previous_champion_alias(target)
    previous = _model_alias(model, previous_name)
    current = _model_alias(model, champion_name)
    if previous is None:
        raise PromotionError(
            f"{registered_model}: no {previous_name!r} alias, nothing to roll back to ({champion_name}: {current or 'none'})"
        )
    result = RollbackResult(
        registered_model, current, previous, utc_now(), redact_uri(tracking_uri),
        champion_alias=champion_name, previous_champion_alias=previous_name,
    )
    prefix = _tag_prefix(result, target)
    tags = {"decision": "restored", "restored_at": result.rolled_back_at, "restored_from": current or "none"}
    demoted = {"decision": "rolled-back", "rolled_back_at": result.rolled_back_at, "rolled_back_to": previous}
    try:
        with map_mlflow_errors(f"setting {champion_name}", tracking_uri):
            client.set_registered_model_alias(registered_model, champion_name, previous)
        with map_mlflow_errors(f"removing {previous_name}", tracking_uri):
            client.delete_registered_model_alias(registered_model, previous_name)
        with map_mlflow_errors("tagging", tracking_uri):
            for key, value in tags.items():
                client.set_model_version_tag(registered_model, previous, prefix + key, value)
            if current is not None and current != previous:
                for key, value in demoted.items():
                    client.set_model_version_tag(registered_model, current, prefix + key, value)
    except EdgeportError:
        _restore(client, registered_model, current, previous, champion_name, previous_name)
        raise
    logger.info("rollback of %s: %s %s -> %s", registered_model, champion_name, current, previous)
    if emit_events:
        _emit(EVENT_ROLLED_BACK, registered_model, result.to_dict(), previous)
    _publish(result.markdown(), registered_model, f"Rollback of {registered_model}")
    return result


# --------------------------------------------------------------------------- Prefect


def model_resource(registered_model: str) -> dict[str, str]:
    """The Prefect event resource of a registered model: ``edgeport.registered-model.<name>``."""
    return {"prefect.resource.id": f"edgeport.registered-model.{registered_model}", "prefect.resource.name": registered_model}


def _emit(event: str, registered_model: str, payload: dict[str, Any], version: str) -> None:
    """Emit a Prefect event (best effort: a failure is logged, the registry change stands)."""
    try:
        emit_event(
            event=event,
            resource=model_resource(registered_model),
            related=[{
                "prefect.resource.id": f"edgeport.model-version.{registered_model}.{version}",
                "prefect.resource.role": "model-version",
            }],
            payload=payload,
        )
    except Exception:
        logger.warning("could not emit the Prefect event %s", event, exc_info=True)


def _publish(markdown: str, registered_model: str, description: str) -> None:
    """A Prefect markdown artifact, only inside a flow or task run."""
    if not in_prefect_run():
        return
    create_markdown_artifact(markdown=markdown, key=f"edgeport-promotion-{slug(registered_model)}", description=description)


#: Prefect task around :func:`promote`: retries transient MLflow errors only, within
#: :data:`edgeport.registry.INTERACTIVE_RETRY` (2, 4, 4 s); never cached.
promote_task = with_retry_window(task(promote, name="promote", cache_policy=NO_CACHE), INTERACTIVE_RETRY)
#: Prefect task around :func:`rollback`: the same retries as :data:`promote_task`; never cached.
rollback_task = with_retry_window(task(rollback, name="rollback", cache_policy=NO_CACHE), INTERACTIVE_RETRY)
