"""Promote a registered model version to ``champion`` through a gate, and roll back.

The gate compares a *candidate* (an explicit version, or the version behind an alias,
``challenger`` by default) with the current ``champion`` of the same registered model, on
ONE target and batch size, from what :mod:`tasks.register` recorded for each version:

* the version's tags (``variant``, ``p50_ms.<target>.b<batch>``) and its run (``run_id``):
  metrics ``p50_ms.<target>.b<batch>``, ``ci_halfwidth_pct.<target>.b<batch>`` (95% CI of the
  median, in % of p50), ``accuracy`` (the evaluation metric's value, top-1 or cosine); tags
  ``edgeport.validation.passed``, ``edgeport.evaluation.passed`` (the gates' verdicts at
  registration; older runs without them fall back to ``edgeport.passed``).

Checks, all required (:class:`~edgeport.spec.PromotionSpec` holds the settings):

1. ``validation``: ONNX Runtime vs PyTorch parity passed at registration;
2. ``quality``: the evaluation gate (``max_drop`` / ``min_value`` / ``min_cosine``) passed at
   registration; with ``max_quality_drop_vs_champion`` also the drop vs the champion's metric;
3. ``latency`` (only when there is a champion): see :class:`~edgeport.spec.PromotionSpec` for
   the rule on the 95% confidence intervals of the two medians.

No champion yet: the candidate becomes champion when checks 1-2 pass.

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

MLflow alias updates are last-writer-wins: :mod:`flows.promote` serialises promotions and
rollbacks of one registered model with a Prefect global concurrency limit. The plain functions
here take an explicit tracking URI; the Prefect tasks are at the bottom.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from edgeport.errors import (
    EdgeportError,
    PromotionError,
    PromotionRejected,
    RegistryError,
    RegistryUnavailable,
)
from edgeport.spec import PromotionSpec
from tasks.register import (
    check_tracking_uri,
    first_line,
    is_transient,
    redact_uri,
    retry_if_transient,
)

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

logger = logging.getLogger(__name__)

#: Alias of the version in production.
CHAMPION = "champion"
#: Alias kept on the champion a promotion replaced (the rollback target).
PREVIOUS_CHAMPION = "previous-champion"
#: Prefix of the model-version tags a decision writes.
TAG_PREFIX = "edgeport.promotion."
EVENT_PROMOTED = "edgeport.model.promoted"
EVENT_REJECTED = "edgeport.model.promotion-rejected"
EVENT_ROLLED_BACK = "edgeport.model.rolled-back"

_RANKED_TAG = re.compile(r"^p50_ms\.(?P<target>.+)\.b(?P<batch>\d+)$")


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    """What registration recorded for one model version, on one target and batch size.

    Attributes:
        version: model version (str, MLflow's numbering).
        run_id: the variant's nested MLflow run.
        variant: variant name (``fp32``, ``int8-static``, ...).
        p50_ms: median latency in ms (float).
        ci_halfwidth_pct: 95% CI half-width of the median in % of p50; None when not recorded.
        validation_passed / evaluation_passed: the gates' verdicts at registration
            (evaluation_passed None: the pipeline had no evaluation).
        metric / metric_value: evaluation metric name (``top1``, ``cosine``) and value.
        aliases: aliases on the version when read.
    """

    version: str
    run_id: str | None
    variant: str | None
    p50_ms: float
    ci_halfwidth_pct: float | None
    validation_passed: bool
    evaluation_passed: bool | None
    metric: str | None
    metric_value: float | None
    aliases: tuple[str, ...] = ()

    @property
    def ci_ms(self) -> float:
        """CI half-width in ms (0 when not recorded)."""
        return self.p50_ms * (self.ci_halfwidth_pct or 0.0) / 100.0


@dataclasses.dataclass
class PromotionDecision:
    """The outcome of :func:`promote`.

    Attributes:
        registered_model, candidate_version, champion_version (None: no champion before).
        accepted: True when ``champion`` now points at the candidate.
        reason: one line, with the numbers.
        target, batch_size: where the latencies were compared.
        checks: ``[{"name", "passed", "detail"}]`` for validation, quality(, quality_vs_champion), latency.
        candidate, champion: :class:`VersionRecord` as dicts (champion None when there was none).
        threshold_ms: the latency bound the candidate had to meet (None without champion).
        change_pct: 100 x (candidate p50 - champion p50) / champion p50 (negative = faster).
        previous_champion_version: the version now behind ``previous-champion`` (accepted only).
        policy: the :class:`PromotionSpec` applied, as a dict.
        decided_at: ISO 8601 UTC timestamp.
    """

    registered_model: str
    candidate_version: str
    champion_version: str | None
    accepted: bool
    reason: str
    target: str
    batch_size: int
    checks: list[dict[str, Any]]
    candidate: dict[str, Any]
    champion: dict[str, Any] | None
    threshold_ms: float | None
    change_pct: float | None
    previous_champion_version: str | None
    policy: dict[str, Any]
    decided_at: str
    tracking_uri: str = ""
    changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the flow's return value and the event payload)."""
        return dataclasses.asdict(self)

    def raise_if_rejected(self) -> None:
        """Raise :class:`~edgeport.errors.PromotionRejected` (with ``.decision``) unless accepted."""
        if not self.accepted:
            raise PromotionRejected(f"{self.registered_model} version {self.candidate_version} not promoted: {self.reason}", self.to_dict())

    def markdown(self) -> str:
        """The decision as markdown (the Prefect artifact)."""
        verdict = "**promoted** to `champion`" if self.accepted else "**rejected** (no alias changed)"
        lines = [
            f"# Promotion of {self.registered_model} version {self.candidate_version}: {verdict}",
            "",
            self.reason,
            "",
            f"Compared on target `{self.target}`, batch size {self.batch_size}.",
            "",
            "| | version | variant | p50 ms | 95% CI ± % | validation | quality |",
            "|---|---|---|---|---|---|---|",
        ]
        for role, rec in (("candidate", self.candidate), ("champion", self.champion)):
            if rec is None:
                lines.append(f"| {role} | - | - | - | - | - | - |")
                continue
            ci = "-" if rec["ci_halfwidth_pct"] is None else f"{rec['ci_halfwidth_pct']:.2f}"
            quality = "-" if rec["metric_value"] is None else f"{rec['metric']} {rec['metric_value']:.4f}"
            lines.append(
                f"| {role} | {rec['version']} | {rec['variant']} | {rec['p50_ms']:.4f} | {ci} | "
                f"{'passed' if rec['validation_passed'] else 'FAILED'} | {quality} |"
            )
        lines += ["", "| check | passed | detail |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'yes' if c['passed'] else 'NO'} | {c['detail']} |" for c in self.checks]
        if self.accepted and self.previous_champion_version:
            lines += ["", f"`{PREVIOUS_CHAMPION}` -> version {self.previous_champion_version}."]
        return "\n".join(lines)


@dataclasses.dataclass
class RollbackResult:
    """The outcome of :func:`rollback`: ``champion`` moved from ``from_version`` to ``to_version``;
    ``previous-champion`` removed."""

    registered_model: str
    from_version: str | None
    to_version: str
    rolled_back_at: str
    tracking_uri: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        return (
            f"# Rollback of {self.registered_model}\n\n`{CHAMPION}`: version {self.from_version} -> "
            f"version {self.to_version}; `{PREVIOUS_CHAMPION}` removed ({self.rolled_back_at})."
        )


# --------------------------------------------------------------------------- reading the registry


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _client(tracking_uri: str) -> MlflowClient:
    check_tracking_uri(tracking_uri, attempts=2, backoff_s=0.5)  # RegistryUnavailable within seconds
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


def _registry_call(what: str, tracking_uri: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with MLflow errors turned into edgeport's."""
    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        if is_transient(exc):
            raise RegistryUnavailable(f"MLflow at {redact_uri(tracking_uri)} did not answer ({what}): {first_line(exc)}") from exc
        raise RegistryError(f"MLflow at {redact_uri(tracking_uri)} refused {what}: {first_line(exc)}") from exc
    except Exception as exc:
        if is_transient(exc):
            raise RegistryUnavailable(f"MLflow at {redact_uri(tracking_uri)} did not answer ({what}): {first_line(exc)}") from exc
        raise


def _require_model(client: MlflowClient, name: str, tracking_uri: str) -> Any:
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            raise PromotionError(f"registered model {name!r} not found at {redact_uri(tracking_uri)}") from exc
        raise RegistryError(f"MLflow at {redact_uri(tracking_uri)}: cannot read registered model {name!r}: {first_line(exc)}") from exc


def _alias_version(model: Any, alias: str) -> str | None:
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
            if _not_found(exc):
                raise PromotionError(f"{name}: model version {version} not found") from exc
            raise
    behind = _alias_version(model, alias)
    if behind is None:
        known = ", ".join(f"{a} -> {v}" for a, v in sorted((model.aliases or {}).items())) or "none"
        raise PromotionError(f"{name}: no version has the alias {alias!r} (aliases: {known})")
    return client.get_model_version(name, behind)


def _ranked_on(mv: Any) -> tuple[str, int] | None:
    """(target, batch size) the pipeline ranked ``mv`` on, from its ``p50_ms.<target>.b<batch>`` tag."""
    for key in mv.tags or {}:
        match = _RANKED_TAG.match(key)
        if match:
            return match["target"], int(match["batch"])
    return None


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
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if _not_found(exc):
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


# --------------------------------------------------------------------------- the gate


def latency_check(candidate: VersionRecord, champion: VersionRecord, policy: PromotionSpec) -> tuple[bool, float, str]:
    """The latency rule of :class:`~edgeport.spec.PromotionSpec`.

    With ``significance="ci95"`` each p50 carries its 95% CI half-width ``h`` (ms); with
    ``"point"`` ``h = 0``. ``min_p50_improvement_pct = m > 0``: pass iff
    ``cand.p50 + cand.h <= (champ.p50 - champ.h) * (1 - m/100)`` (significantly faster by m%);
    else pass iff ``cand.p50 - cand.h <= (champ.p50 + champ.h) * (1 + r/100)`` with
    ``r = max_p50_regression_pct`` (not significantly slower than allowed). Source of the
    CI-overlap rule: Schenker & Gentleman, The American Statistician 55(3), 2001.

    Returns:
        (passed, threshold_ms, detail).
    """
    ci = policy.significance == "ci95"
    c_h = candidate.ci_ms if ci else 0.0
    m_h = champion.ci_ms if ci else 0.0
    missing = [r.version for r in (candidate, champion) if ci and r.ci_halfwidth_pct is None]
    note = f" (no CI recorded for version(s) {', '.join(missing)}: half-width 0)" if missing else ""
    if policy.min_p50_improvement_pct > 0:
        threshold = (champion.p50_ms - m_h) * (1 - policy.min_p50_improvement_pct / 100)
        bound = candidate.p50_ms + c_h
        passed = bound <= threshold
        rule = (
            f"candidate p50{' CI upper bound' if ci else ''} {bound:.4f} ms must be <= champion p50"
            f"{' CI lower bound' if ci else ''} x (1 - {policy.min_p50_improvement_pct:g}%) = {threshold:.4f} ms"
        )
    else:
        threshold = (champion.p50_ms + m_h) * (1 + policy.max_p50_regression_pct / 100)
        bound = candidate.p50_ms - c_h
        passed = bound <= threshold
        rule = (
            f"candidate p50{' CI lower bound' if ci else ''} {bound:.4f} ms must be <= champion p50"
            f"{' CI upper bound' if ci else ''} x (1 + {policy.max_p50_regression_pct:g}%) = {threshold:.4f} ms"
        )
    return passed, threshold, rule + note


def _fmt_p50(rec: VersionRecord) -> str:
    ci = "" if rec.ci_halfwidth_pct is None else f" ±{rec.ci_halfwidth_pct:.1f}%"
    return f"{rec.p50_ms:.4f} ms{ci}"


def _quality_checks(candidate: VersionRecord, champion: VersionRecord | None, policy: PromotionSpec) -> list[dict[str, Any]]:
    checks = [
        {
            "name": "validation",
            "passed": candidate.validation_passed,
            "detail": "ONNX Runtime vs PyTorch parity passed at registration"
            if candidate.validation_passed
            else "validation against PyTorch FAILED at registration",
        }
    ]
    if candidate.evaluation_passed is None:
        checks.append({"name": "quality", "passed": True, "detail": "no evaluation recorded (the spec has none)"})
    else:
        value = "" if candidate.metric_value is None else f" ({candidate.metric} {candidate.metric_value:.4f})"
        checks.append({
            "name": "quality",
            "passed": candidate.evaluation_passed,
            "detail": f"evaluation gate {'passed' if candidate.evaluation_passed else 'FAILED'} at registration{value}",
        })
    budget = policy.max_quality_drop_vs_champion
    if budget is not None and champion is not None:
        if candidate.metric_value is None or champion.metric_value is None:
            checks.append({"name": "quality_vs_champion", "passed": False, "detail": "evaluation metric not recorded for both versions"})
        else:
            drop = champion.metric_value - candidate.metric_value
            checks.append({
                "name": "quality_vs_champion",
                "passed": drop <= budget + 1e-12,
                "detail": f"{candidate.metric} drop vs champion {drop:.4f} (budget {budget:g})",
            })
    return checks


def promote(
    registered_model: str,
    tracking_uri: str,
    version: str | None = None,
    alias: str = "challenger",
    target: str | None = None,
    batch_size: int | None = None,
    policy: PromotionSpec | None = None,
    emit_events: bool = True,
) -> PromotionDecision:
    """Decide whether a candidate version replaces ``champion``, and apply the decision.

    Args:
        registered_model: MLflow registered model name.
        tracking_uri: MLflow tracking (and registry) URI.
        version: candidate model version; None = the version behind ``alias``.
        alias: alias naming the candidate when ``version`` is None (default ``challenger``).
        target, batch_size: where to compare p50s; default ``policy.target`` / ``policy.batch_size``,
            else the target and batch size the candidate's pipeline ranked it on (its
            ``p50_ms.<target>.b<batch>`` version tag).
        policy: the gate's settings; default :class:`PromotionSpec` ().
        emit_events: emit the Prefect events (``edgeport.model.promoted`` on acceptance,
            ``edgeport.model.promotion-rejected`` on rejection).

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
    client = _client(tracking_uri)
    model = _require_model(client, registered_model, tracking_uri)
    mv = _registry_call("reading the candidate", tracking_uri, _candidate, client, model, version, alias)
    ranked = _ranked_on(mv)
    target = target or policy.target or (ranked[0] if ranked else None)
    batch_size = batch_size or policy.batch_size or (ranked[1] if ranked else None)
    if target is None or batch_size is None:
        raise PromotionError(
            f"{registered_model} version {mv.version}: no ranking target recorded; give the target and batch size (--target, --batch-size)"
        )
    cand = _record(client, mv, target, int(batch_size), tracking_uri)
    champion_version = _alias_version(model, CHAMPION)
    champ: VersionRecord | None = None
    if champion_version is not None and champion_version != cand.version:
        champ_mv = _registry_call("reading the champion", tracking_uri, client.get_model_version, registered_model, champion_version)
        try:
            champ = _record(client, champ_mv, target, int(batch_size), tracking_uri)
        except PromotionError as exc:
            raise PromotionError(f"cannot compare with the champion: {exc}") from exc

    checks = _quality_checks(cand, champ, policy)
    threshold = change = None
    if champion_version == cand.version:
        checks.append({"name": "latency", "passed": False, "detail": f"version {cand.version} already is the champion"})
    elif champ is not None:
        passed, threshold, rule = latency_check(cand, champ, policy)
        change = 100.0 * (cand.p50_ms - champ.p50_ms) / champ.p50_ms
        checks.append({"name": "latency", "passed": passed, "detail": rule})
    accepted = all(c["passed"] for c in checks)

    where = f"on {target} at batch {batch_size}"
    if champion_version == cand.version:
        reason = f"version {cand.version} already is the champion: nothing changed"
    elif champ is None:
        reason = (
            f"no champion yet: version {cand.version} ({cand.variant}, p50 {_fmt_p50(cand)} {where}) "
            + ("passes its gates and becomes champion" if accepted else "fails its own gates")
        )
    else:
        reason = (
            f"candidate v{cand.version} ({cand.variant}) p50 {_fmt_p50(cand)} vs champion v{champ.version} "
            f"({champ.variant}) {_fmt_p50(champ)} {where}: {change:+.1f}%"
        )
    failed = [c for c in checks if not c["passed"]]
    if failed and champion_version != cand.version:
        reason += "; rejected: " + "; ".join(f"{c['name']}: {c['detail']}" for c in failed)
    elif accepted and champ is not None:
        reason += "; accepted"

    decision = PromotionDecision(
        registered_model=registered_model,
        candidate_version=cand.version,
        champion_version=champion_version,
        accepted=accepted,
        reason=reason,
        target=target,
        batch_size=int(batch_size),
        checks=checks,
        candidate=dataclasses.asdict(cand),
        champion=None if champ is None else dataclasses.asdict(champ),
        threshold_ms=threshold,
        change_pct=change,
        previous_champion_version=champion_version if accepted else None,
        policy=policy.model_dump(mode="json"),
        decided_at=_now(),
        tracking_uri=redact_uri(tracking_uri),
    )
    if accepted:
        _apply(client, decision, tracking_uri)
    elif champion_version != cand.version:  # the champion's own tags keep its promotion record
        _write_decision_tags(client, decision, tracking_uri)
    logger.info("promotion of %s: %s", registered_model, reason)
    if emit_events and champion_version != cand.version:
        _emit(EVENT_PROMOTED if accepted else EVENT_REJECTED, registered_model, decision.to_dict(), cand.version)
    _publish(decision.markdown(), registered_model, f"Promotion decision for {registered_model}")
    return decision


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
    from prefect.runtime import flow_run

    if flow_run.id:
        tags["flow_run_id"] = str(flow_run.id)
    return {TAG_PREFIX + k: v for k, v in tags.items()}


def _write_decision_tags(client: MlflowClient, decision: PromotionDecision, tracking_uri: str) -> None:
    for key, value in _decision_tags(decision).items():
        _registry_call(f"tag {key}", tracking_uri, client.set_model_version_tag, decision.registered_model, decision.candidate_version, key, value)


def _apply(client: MlflowClient, decision: PromotionDecision, tracking_uri: str) -> None:
    """Move the aliases, then write tags and description; restore the aliases if a write fails."""
    name, cand, old = decision.registered_model, decision.candidate_version, decision.champion_version
    model = _registry_call("reading aliases", tracking_uri, client.get_registered_model, name)
    previous_before = _alias_version(model, PREVIOUS_CHAMPION)
    if _alias_version(model, CHAMPION) != old:  # only when called without the flow's lock
        raise PromotionError(f"{name}: champion changed while deciding (now {_alias_version(model, CHAMPION)}, was {old}); run again")
    try:
        if old is not None:
            _registry_call("setting previous-champion", tracking_uri, client.set_registered_model_alias, name, PREVIOUS_CHAMPION, old)
        _registry_call("setting champion", tracking_uri, client.set_registered_model_alias, name, CHAMPION, cand)
        decision.changed = True
        _write_decision_tags(client, decision, tracking_uri)
        if old is not None:
            _registry_call(
                "tagging the old champion", tracking_uri, client.set_model_version_tag, name, old, TAG_PREFIX + "superseded_by", cand
            )
        mv = _registry_call("reading the candidate", tracking_uri, client.get_model_version, name, cand)
        note = (
            f"Champion since {decision.decided_at} (edgeport promote): {decision.reason}. "
            f"Compared on {decision.target}, batch {decision.batch_size}."
        )
        description = f"{mv.description}\n\n{note}" if mv.description else note
        _registry_call("updating the description", tracking_uri, client.update_model_version, name, cand, description=description)
    except EdgeportError:
        _restore(client, name, old, previous_before)
        decision.changed = False
        raise


def _restore(client: MlflowClient, name: str, champion: str | None, previous: str | None) -> None:
    """Best effort: put ``champion`` and ``previous-champion`` back as they were."""
    for alias, version in ((CHAMPION, champion), (PREVIOUS_CHAMPION, previous)):
        try:
            if version is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, version)
        except Exception:
            logger.warning("could not restore alias %s of %s to %s", alias, name, version, exc_info=True)


def rollback(registered_model: str, tracking_uri: str, emit_events: bool = True) -> RollbackResult:
    """Move ``champion`` back to the version behind ``previous-champion`` and remove that alias.

    Tags: ``edgeport.promotion.decision = rolled-back`` (+ ``rolled_back_at``, ``rolled_back_to``)
    on the demoted version, ``edgeport.promotion.decision = restored`` (+ ``restored_at``,
    ``restored_from``) on the restored one. Emits ``edgeport.model.rolled-back``.

    Raises:
        PromotionError: unknown model, or no ``previous-champion`` alias.
        RegistryUnavailable / RegistryError: MLflow did not answer / refused a write.
    """
    client = _client(tracking_uri)
    model = _require_model(client, registered_model, tracking_uri)
    previous = _alias_version(model, PREVIOUS_CHAMPION)
    current = _alias_version(model, CHAMPION)
    if previous is None:
        raise PromotionError(
            f"{registered_model}: no {PREVIOUS_CHAMPION!r} alias, nothing to roll back to (champion: {current or 'none'})"
        )
    result = RollbackResult(registered_model, current, previous, _now(), redact_uri(tracking_uri))
    try:
        _registry_call("setting champion", tracking_uri, client.set_registered_model_alias, registered_model, CHAMPION, previous)
        _registry_call("removing previous-champion", tracking_uri, client.delete_registered_model_alias, registered_model, PREVIOUS_CHAMPION)
        tag = client.set_model_version_tag
        _registry_call("tagging", tracking_uri, tag, registered_model, previous, TAG_PREFIX + "decision", "restored")
        _registry_call("tagging", tracking_uri, tag, registered_model, previous, TAG_PREFIX + "restored_at", result.rolled_back_at)
        _registry_call("tagging", tracking_uri, tag, registered_model, previous, TAG_PREFIX + "restored_from", current or "none")
        if current is not None and current != previous:
            _registry_call("tagging", tracking_uri, tag, registered_model, current, TAG_PREFIX + "decision", "rolled-back")
            _registry_call("tagging", tracking_uri, tag, registered_model, current, TAG_PREFIX + "rolled_back_at", result.rolled_back_at)
            _registry_call("tagging", tracking_uri, tag, registered_model, current, TAG_PREFIX + "rolled_back_to", previous)
    except EdgeportError:
        _restore(client, registered_model, current, previous)
        raise
    logger.info("rollback of %s: champion %s -> %s", registered_model, current, previous)
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
    from prefect.events import emit_event

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
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    key = "edgeport-promotion-" + re.sub(r"[^a-z0-9-]+", "-", registered_model.lower()).strip("-")
    create_markdown_artifact(markdown=markdown, key=key, description=description)


#: Prefect task around :func:`promote`: 2 retries on transient MLflow errors only; never cached.
promote_task = task(
    promote, name="promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 8], retry_condition_fn=retry_if_transient
)
#: Prefect task around :func:`rollback`: 2 retries on transient MLflow errors only; never cached.
rollback_task = task(
    rollback, name="rollback", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 8], retry_condition_fn=retry_if_transient
)
