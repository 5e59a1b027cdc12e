"""The promotion gate's arithmetic (edgeport/promotion.py): pure, no MLflow, no Prefect.

Each number below is worked out by hand from the rule in :class:`edgeport.spec.PromotionSpec`
(CI-of-median bounds, Schenker & Gentleman 2001), on both sides of every bound.
"""

from __future__ import annotations

import pytest

from edgeport.errors import PromotionRejected
from edgeport.promotion import (
    CHAMPION,
    PromotionDecision,
    VersionRecord,
    decide,
    latency_check,
    quality_checks,
)
from edgeport.spec import PromotionSpec


def rec(version: str, p50: float, ci_pct: float | None = 2.0, *, validation: bool = True,
        evaluation: bool | None = True, value: float | None = 0.98) -> VersionRecord:
    return VersionRecord(
        version=version, run_id=f"run{version}", variant=f"v{version}", p50_ms=p50, ci_halfwidth_pct=ci_pct,
        validation_passed=validation, evaluation_passed=evaluation, metric="top1" if value is not None else None,
        metric_value=value,
    )


CHAMP = rec("1", 10.0, 2.0)  # CI [9.8, 10.2] ms


@pytest.mark.parametrize(
    ("cand_p50", "passed"),
    [
        (9.0, True),    # upper bound 9.0 * 1.01 = 9.09 <= 9.8 * 0.95 = 9.31
        (9.2, True),    # 9.292 <= 9.31
        (9.25, False),  # 9.3425 > 9.31: faster, but not significantly by 5%
        (9.8, False),
    ],
)
def test_improvement_rule_uses_upper_vs_lower_ci_bound(cand_p50, passed):
    policy = PromotionSpec(min_p50_improvement_pct=5)
    ok, threshold, detail = latency_check(rec("2", cand_p50, 1.0), CHAMP, policy)
    assert threshold == pytest.approx(9.31)
    assert ok is passed
    assert "CI upper bound" in detail and "9.3100" in detail


@pytest.mark.parametrize(
    ("cand_p50", "passed"),
    [
        (10.2, True),    # lower bound 10.2 * 0.99 = 10.098 <= 10.2 (champion's upper bound), r = 0
        (10.3, True),    # 10.197 <= 10.2: slower within noise
        (10.35, False),  # 10.2465 > 10.2: significantly slower
    ],
)
def test_regression_rule_default_zero_allows_noise_only(cand_p50, passed):
    ok, threshold, _ = latency_check(rec("2", cand_p50, 1.0), CHAMP, PromotionSpec())
    assert threshold == pytest.approx(10.2)
    assert ok is passed


def test_max_p50_regression_pct_widens_the_bound():
    policy = PromotionSpec(max_p50_regression_pct=5)  # threshold 10.2 * 1.05 = 10.71
    assert latency_check(rec("2", 10.8, 1.0), CHAMP, policy)[:2] == (True, pytest.approx(10.71))  # 10.692
    assert latency_check(rec("2", 10.9, 1.0), CHAMP, policy)[0] is False  # 10.791


def test_point_significance_ignores_the_intervals():
    policy = PromotionSpec(significance="point")
    ok, threshold, detail = latency_check(rec("2", 10.1, 50.0), CHAMP, policy)
    assert (ok, threshold) == (False, pytest.approx(10.0))  # 10.1 > 10.0; a CI would have passed it
    assert "CI" not in detail


def test_missing_ci_counts_as_zero_and_is_noted():
    ok, threshold, detail = latency_check(rec("2", 10.1, None), rec("1", 10.0, None), PromotionSpec())
    assert (ok, threshold) == (False, pytest.approx(10.0))
    assert "no CI recorded for version(s) 2, 1" in detail


def test_quality_checks():
    names = [c["name"] for c in quality_checks(rec("2", 1), CHAMP, PromotionSpec())]
    assert names == ["validation", "quality"]
    failed = {c["name"]: c["passed"] for c in quality_checks(rec("2", 1, validation=False, evaluation=False), None, PromotionSpec())}
    assert failed == {"validation": False, "quality": False}
    no_eval = quality_checks(rec("2", 1, evaluation=None, value=None), None, PromotionSpec())
    assert no_eval[1]["passed"] is True and "no evaluation" in no_eval[1]["detail"]

    budget = PromotionSpec(max_quality_drop_vs_champion=0.01)
    within = quality_checks(rec("2", 1, value=0.975), rec("1", 1, value=0.98), budget)[-1]
    beyond = quality_checks(rec("2", 1, value=0.969), rec("1", 1, value=0.98), budget)[-1]
    unknown = quality_checks(rec("2", 1, value=None), rec("1", 1, value=0.98), budget)[-1]
    assert within["name"] == "quality_vs_champion" and within["passed"] is True
    assert beyond["passed"] is False and "drop vs champion 0.0110" in beyond["detail"]
    assert unknown["passed"] is False


def test_decide_accepts_a_faster_candidate():
    decision = decide("m", rec("2", 8.0, 1.0), CHAMP, "1", "cpu", 1, PromotionSpec(min_p50_improvement_pct=5), decided_at="t")
    assert isinstance(decision, PromotionDecision)
    assert decision.accepted and decision.previous_champion_version == "1"
    assert decision.change_pct == pytest.approx(-20.0)
    assert decision.reason.endswith("; accepted") and "-20.0%" in decision.reason
    assert [c["name"] for c in decision.checks] == ["validation", "quality", "latency"]
    decision.raise_if_rejected()  # no error
    assert f"**promoted** to `{CHAMPION}`" in decision.markdown()


def test_decide_rejects_and_says_why():
    decision = decide("m", rec("2", 9.5, 1.0), CHAMP, "1", "cpu", 1, PromotionSpec(min_p50_improvement_pct=5))
    assert not decision.accepted and decision.previous_champion_version is None
    assert "rejected: latency:" in decision.reason
    with pytest.raises(PromotionRejected) as info:
        decision.raise_if_rejected()
    assert info.value.decision["candidate_version"] == "2"


def test_decide_without_champion_and_when_already_champion():
    first = decide("m", rec("1", 10.0), None, None, "cpu", 1, PromotionSpec())
    assert first.accepted and "becomes champion" in first.reason and first.threshold_ms is None
    broken = decide("m", rec("1", 10.0, validation=False), None, None, "cpu", 1, PromotionSpec())
    assert not broken.accepted and "fails its own gates" in broken.reason
    again = decide("m", rec("1", 10.0), None, "1", "cpu", 1, PromotionSpec())
    assert not again.accepted and "already is the champion" in again.reason
