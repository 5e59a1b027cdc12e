"""The promotion gate's arithmetic: pure functions and records, no MLflow, no Prefect.

:func:`decide` turns what registration recorded for a candidate and the current champion
(:class:`VersionRecord`, read from MLflow by :mod:`tasks.promote`) and the gate's settings
(:class:`~edgeport.spec.PromotionSpec`) into a :class:`PromotionDecision`. The checks, all
required:

1. ``validation``: ONNX Runtime vs PyTorch parity passed at registration;
2. ``quality``: the evaluation gate passed at registration; with
   ``max_quality_drop_vs_champion`` also ``quality_vs_champion``, the metric's drop vs the champion;
3. ``latency`` (only with a champion): :func:`latency_check`, the rule on the 95% confidence
   intervals of the two medians.

No champion yet: the candidate becomes champion when checks 1-2 pass.

Per target: ``champion-<target>`` and ``previous-champion-<target>`` (:func:`champion_alias`,
:func:`previous_champion_alias`) are the same pair for one target, moved by the same gate
comparing on that target; ``champion`` is the pair without a target.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from typing import Any

from edgeport.errors import PromotionRejected
from edgeport.spec import PromotionSpec

__all__ = [
    "CHAMPION",
    "PREVIOUS_CHAMPION",
    "PromotionDecision",
    "RollbackResult",
    "VersionRecord",
    "champion_alias",
    "decide",
    "latency_check",
    "previous_champion_alias",
    "quality_checks",
    "target_alias",
    "utc_now",
]

#: Alias of the version in production.
CHAMPION = "champion"
#: Alias kept on the champion a promotion replaced (the rollback target).
PREVIOUS_CHAMPION = "previous-champion"


#: Characters MLflow accepts in an alias (``^[\w\-]*$``); anything else in a target name becomes ``-``.
_NOT_ALIAS_CHAR = re.compile(r"[^\w-]")


def target_alias(alias: str, target: str) -> str:
    """The per-target alias ``<alias>-<target>`` (``challenger-cpu-1t``, ``champion-openvino-cpu``).

    MLflow accepts only letters, digits, ``_`` and ``-`` in an alias, so any other character of the
    target name (target names may hold ``.``) becomes ``-``: target ``jetson.orin`` -> ``challenger-jetson-orin``.
    """
    return f"{alias}-{_NOT_ALIAS_CHAR.sub('-', target)}"


def champion_alias(target: str | None = None) -> str:
    """``champion``, or ``champion-<target>`` (:func:`edgeport.registry.target_alias`) for one target."""
    return CHAMPION if target is None else target_alias(CHAMPION, target)


def previous_champion_alias(target: str | None = None) -> str:
    """``previous-champion``, or ``previous-champion-<target>`` for one target."""
    return PREVIOUS_CHAMPION if target is None else target_alias(PREVIOUS_CHAMPION, target)


def utc_now() -> str:
    """The current time, ISO 8601 UTC to the second (``decided_at``, ``rolled_back_at``)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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
    """The outcome of the gate (:func:`decide`, applied by ``tasks.promote.promote``).

    Attributes:
        registered_model, candidate_version, champion_version (None: no champion before).
        accepted: True when ``champion_alias`` now points at the candidate.
        reason: one line, with the numbers.
        target, batch_size: where the latencies were compared.
        checks: ``[{"name", "passed", "detail"}]`` for validation, quality(, quality_vs_champion), latency.
        candidate, champion: :class:`VersionRecord` as dicts (champion None when there was none).
        threshold_ms: the latency bound the candidate had to meet (None without champion).
        change_pct: 100 x (candidate p50 - champion p50) / champion p50 (negative = faster).
        previous_champion_version: the version now behind ``previous-champion`` (accepted only).
        policy: the :class:`PromotionSpec` applied, as a dict.
        decided_at: ISO 8601 UTC timestamp.
        champion_alias, previous_champion_alias: the aliases the decision moves (``champion`` /
            ``previous-champion``, or ``champion-<target>`` / ``previous-champion-<target>``).
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
    champion_alias: str = CHAMPION
    previous_champion_alias: str = PREVIOUS_CHAMPION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the flow's return value and the event payload)."""
        return dataclasses.asdict(self)

    def raise_if_rejected(self) -> None:
        """Raise :class:`~edgeport.errors.PromotionRejected` (with ``.decision``) unless accepted."""
        if not self.accepted:
            raise PromotionRejected(f"{self.registered_model} version {self.candidate_version} not promoted: {self.reason}", self.to_dict())

    def markdown(self) -> str:
        """The decision as markdown (the Prefect artifact)."""
        verdict = f"**promoted** to `{self.champion_alias}`" if self.accepted else "**rejected** (no alias changed)"
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
            lines += ["", f"`{self.previous_champion_alias}` -> version {self.previous_champion_version}."]
        return "\n".join(lines)


@dataclasses.dataclass
class RollbackResult:
    """The outcome of ``tasks.promote.rollback``: ``champion_alias`` moved from ``from_version`` to
    ``to_version``; ``previous_champion_alias`` removed (``champion`` / ``previous-champion``, or the
    pair of one target)."""

    registered_model: str
    from_version: str | None
    to_version: str
    rolled_back_at: str
    tracking_uri: str = ""
    champion_alias: str = CHAMPION
    previous_champion_alias: str = PREVIOUS_CHAMPION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the flow's return value and the event payload)."""
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        """The rollback as markdown (the Prefect artifact)."""
        return (
            f"# Rollback of {self.registered_model}\n\n`{self.champion_alias}`: version {self.from_version} -> "
            f"version {self.to_version}; `{self.previous_champion_alias}` removed ({self.rolled_back_at})."
        )


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


def quality_checks(candidate: VersionRecord, champion: VersionRecord | None, policy: PromotionSpec) -> list[dict[str, Any]]:
    """Checks 1-2 of the gate: ``validation``, ``quality`` and, with
    ``policy.max_quality_drop_vs_champion`` and a champion, ``quality_vs_champion`` (champion metric
    - candidate metric <= budget; fails when either metric is missing).

    Returns:
        ``[{"name", "passed", "detail"}]`` in that order.
    """
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


def decide(
    registered_model: str,
    candidate: VersionRecord,
    champion: VersionRecord | None,
    champion_version: str | None,
    target: str,
    batch_size: int,
    policy: PromotionSpec,
    decided_at: str | None = None,
    tracking_uri: str = "",
    per_target: bool = False,
) -> PromotionDecision:
    """The gate's decision on ``candidate`` (nothing is read or written).

    Args:
        registered_model: the registered model's name (for the record and the reason).
        candidate: what registration recorded for the candidate on ``target`` at ``batch_size``.
        champion: the same for the current champion; None when there is none, or when the
            candidate already is the champion.
        champion_version: the version behind ``champion`` (None: no champion yet).
        target, batch_size: where the p50s were read (for the record).
        policy: the gate's settings.
        decided_at: ISO 8601 time of the decision (default: now, :func:`utc_now`).
        tracking_uri: the (redacted) store, for the record.
        per_target: the decision is about ``champion-<target>`` (else ``champion``).

    Returns:
        The :class:`PromotionDecision`: accepted iff every check passed, and the candidate is
        not already the champion (then ``accepted`` is False and the reason says so).
    """
    checks = quality_checks(candidate, champion, policy)
    threshold = change = None
    already = champion_version == candidate.version
    if already:
        checks.append({"name": "latency", "passed": False, "detail": f"version {candidate.version} already is the champion"})
    elif champion is not None:
        passed, threshold, rule = latency_check(candidate, champion, policy)
        change = 100.0 * (candidate.p50_ms - champion.p50_ms) / champion.p50_ms
        checks.append({"name": "latency", "passed": passed, "detail": rule})
    accepted = all(c["passed"] for c in checks)

    where = f"on {target} at batch {batch_size}"
    if already:
        reason = f"version {candidate.version} already is the champion: nothing changed"
    elif champion is None:
        reason = (
            f"no champion yet: version {candidate.version} ({candidate.variant}, p50 {_fmt_p50(candidate)} {where}) "
            + ("passes its gates and becomes champion" if accepted else "fails its own gates")
        )
    else:
        reason = (
            f"candidate v{candidate.version} ({candidate.variant}) p50 {_fmt_p50(candidate)} vs champion v{champion.version} "
            f"({champion.variant}) {_fmt_p50(champion)} {where}: {change:+.1f}%"
        )
    failed = [c for c in checks if not c["passed"]]
    if failed and not already:
        reason += "; rejected: " + "; ".join(f"{c['name']}: {c['detail']}" for c in failed)
    elif accepted and champion is not None:
        reason += "; accepted"

    return PromotionDecision(
        registered_model=registered_model,
        candidate_version=candidate.version,
        champion_version=champion_version,
        accepted=accepted,
        reason=reason,
        target=target,
        batch_size=int(batch_size),
        checks=checks,
        candidate=dataclasses.asdict(candidate),
        champion=None if champion is None else dataclasses.asdict(champion),
        threshold_ms=threshold,
        change_pct=change,
        previous_champion_version=champion_version if accepted else None,
        policy=policy.model_dump(mode="json"),
        decided_at=decided_at or utc_now(),
        tracking_uri=tracking_uri,
        champion_alias=champion_alias(target if per_target else None),
        previous_champion_alias=previous_champion_alias(target if per_target else None),
    )
