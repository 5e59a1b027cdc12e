"""Typed records of a pipeline run: a variant, its validation, evaluation and benchmark entries,
and the run summary (``summary.json``, documented in docs/spec.md#summaryjson).

The records serialise (``model_dump()``) to exactly the dicts the pipeline has always written:
same keys in the same order, same values. Two rules make that hold:

* a field listed in a record's ``omit_unset`` is written only when it was set (given to the
  constructor, read from a dict that has it, or assigned): e.g. ``fusions`` exists only on
  ``fp32-optimized``, ``search`` only on the search's winner;
* the entries that steps produce (validation, evaluation, benchmark, challenger) keep every key
  they had, declared or not (``extra="allow"``), in that dict's order; the variant record and the
  summary write their fields in declaration order (the contract's).

Steps keep passing plain dicts at task boundaries (their cached Prefect results are dicts);
convert at the edges with :meth:`pydantic.BaseModel.model_validate` and ``model_dump()``.

``edgeport schema --summary`` prints :func:`summary_json_schema`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from edgeport.spec import PipelineSpec

__all__ = [
    "NO_SEARCH_WINNER",
    "BenchmarkEntry",
    "Challenger",
    "Evaluation",
    "FlowRunInfo",
    "RunSummary",
    "SearchProvenance",
    "Validation",
    "VariantRecord",
    "gate_verdict",
    "primary_benchmark",
    "primary_p50_ms",
    "summary_json_schema",
    "target_winners",
]

#: ``not_registered`` of every variant when the quantization search found no configuration within the budget.
NO_SEARCH_WINNER = "search: no configuration meets the quality budget"

#: A JSON number kept as it came (an int stays an int, a float a float: ``summary.json`` is unchanged).
Number = Union[int, float]


class _Record(BaseModel):
    """Base of the records: optional fields written only when set, key order kept from the source dict."""

    model_config = ConfigDict(extra="forbid")

    #: Fields written only when set; ``"*"``: every field (records that steps produce as dicts).
    omit_unset: ClassVar[frozenset[str]] = frozenset()
    _key_order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _remember_key_order(cls, data: Any, handler: Any) -> Any:
        record = handler(data)
        if isinstance(data, Mapping) and isinstance(record, _Record) and record.model_config.get("extra") == "allow":
            record._key_order = tuple(data)  # a step's dict: keep its order (declared fields are written in declaration order)
        return record

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler):  # no return annotation: the JSON schema stays the fields'
        out = handler(self)
        if not isinstance(out, dict):
            return out
        omit = set(type(self).model_fields) if "*" in self.omit_unset else self.omit_unset
        out = {k: v for k, v in out.items() if k not in omit or k in self.model_fields_set}
        if self._key_order:
            rank = {k: i for i, k in enumerate(self._key_order)}
            out = dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))
        return out


class Validation(_Record):
    """A validation report (:func:`tasks.validate.validate_onnx`): ONNX Runtime outputs vs PyTorch
    (``reference: torch``, gated), vs the FP32 ONNX model (``reference: fp32``, reported), or, for
    an ONNX source, with no reference (``reference: none``: every batch size runs, outputs finite;
    ``skipped`` lists batch sizes a static batch dim does not fit, with the reason).
    Errors are absolute / relative (unitless); every other key of the report is kept."""

    model_config = ConfigDict(extra="allow")
    omit_unset: ClassVar[frozenset[str]] = frozenset({"*"})

    passed: bool
    reference: Literal["torch", "fp32", "none"] | None = None
    gated: bool | None = None
    rtol: Number | None = None
    atol: Number | None = None
    batch_sizes: list[int] | None = None
    max_abs_err: Number | None = None
    max_rel_err: Number | None = None
    outputs: dict[str, Any] | None = Field(default=None, description="Per output name: max_abs_err, max_rel_err, violations, nonfinite, worst.")
    error: str | None = None
    shapes: list[str] | None = None


class Evaluation(_Record):
    """An evaluation result (:func:`tasks.evaluate.evaluate_model`): ``value`` of ``metric`` (top-1
    accuracy in [0, 1], or the mean cosine similarity) and ``drop`` vs FP32 (``reference - value``);
    every other key (``agreement``, ``cosine_min``, ``nn_agreement``, ``predictions_path`` ...) is kept."""

    model_config = ConfigDict(extra="allow")
    omit_unset: ClassVar[frozenset[str]] = frozenset({"*"})

    metric: str | None = None
    value: Number | None = None
    drop: Number | None = None
    passed: bool


class BenchmarkEntry(_Record):
    """One measurement of a variant on a target at one batch size (:func:`tasks.benchmark.benchmark_target`).

    Latencies in ms, ``throughput`` in samples/s, ``ci_halfwidth_pct`` the 95% CI half-width of
    the median in % of p50, ``peak_rss_mb`` in MB. ``status``: ``ok``, ``fallback``,
    ``unsupported`` or ``failed`` (``error`` then says why). Every other key is kept
    (``extra="allow"``): steps may add keys without changing this record.
    """

    model_config = ConfigDict(extra="allow")
    omit_unset: ClassVar[frozenset[str]] = frozenset({"*"})

    target: str
    batch_size: int
    status: str
    provider: str | None = None
    providers_bound: list[str] | None = None
    p50_ms: Number | None = None
    p90_ms: Number | None = None
    p99_ms: Number | None = None
    mean_ms: Number | None = None
    throughput: Number | None = None
    runs: int | None = None
    ci_halfwidth_pct: Number | None = None
    error: str | None = None


class SearchProvenance(_Record):
    """Where the search's winner came from (``search`` of its variant record)."""

    search_id: str
    trial_id: str
    settings_hash: str
    num_trials: int


class VariantRecord(_Record):
    """One ONNX model the pipeline built (``summary.json`` ``variants[]``).

    ``kind``: ``fp32`` (also ``fp32-optimized``), ``static_int8``, ``dynamic_int8``,
    ``weight_only_int4``; ``size_bytes`` in bytes; ``passed`` is the gate verdict
    (:func:`gate_verdict`); ``model_version`` the MLflow model version (None when not registered);
    ``reused`` True when that version existed already (an identical earlier registration).
    """

    omit_unset: ClassVar[frozenset[str]] = frozenset({"fusions", "optimization", "export_selection", "search", "not_registered", "reused"})

    name: str
    kind: str
    path: str
    size_bytes: int
    sha256: str
    opset: int | None
    passed: bool = False
    validation: Validation | None = None
    evaluation: Evaluation | None = None
    benchmarks: list[BenchmarkEntry] = Field(default_factory=list)
    model_version: str | None = None
    quantization: dict[str, Any] | None = Field(default=None, description="The exact quantization settings (None for FP32 variants).")
    op_counts: dict[str, int] | None = None
    fusions: dict[str, int] | None = Field(default=None, description="fp32-optimized only: fused op type -> count.")
    optimization: dict[str, Any] | None = Field(default=None, description="fp32-optimized only: the ONNX Runtime transformer optimizer's settings.")
    lineage: dict[str, Any] = Field(description="parent (variant name or checkpoint:<sha256>), parent_sha256, step, cached.")
    export_selection: dict[str, Any] | None = Field(default=None, description="fp32 only: the exporter comparison of export.exporter auto.")
    search: SearchProvenance | None = None
    not_registered: str | None = None
    reused: bool | None = Field(
        default=None,
        description="True when model_version is an existing, identical version this run reused instead of registering "
        "a new one (idempotent registration; written only then).",
    )


class FlowRunInfo(_Record):
    """The Prefect flow run of the pipeline."""

    id: str
    name: str
    url: str | None = None


class Challenger(_Record):
    """The registered variant that got the challenger alias (lowest p50 in ms on the first target)."""

    model_config = ConfigDict(extra="allow")

    variant: str
    version: str
    p50_ms: Number | None = None


class RunSummary(_Record):
    """``summary.json``: one pipeline run (docs/spec.md#summaryjson).

    ``challenger``: the fastest passing variant on the first target (the alias ``registry.alias``);
    ``challengers``: per target with a passing variant, the one that got ``<alias>-<target>``
    (written only when set: runs registered before it existed, and runs where nothing passed, lack it).

    ``registration`` is ``pending`` in the file written before MLflow is contacted (then the
    ``mlflow_*`` fields are None), ``done`` once registered. ``cache``: step -> item -> came from
    Prefect's cache; ``timings_s``: step -> seconds; ``search``: the search summary
    (``search.json``) or None without a ``search`` section.
    """

    omit_unset: ClassVar[frozenset[str]] = frozenset({"challengers"})

    spec: str
    name: str
    registration: Literal["pending", "done"]
    mlflow_run_id: str | None = None
    mlflow_run_url: str | None = None
    mlflow_experiment_id: str | None = None
    tracking_uri: str
    registered_model: str
    prefect_flow_run: FlowRunInfo | None = None
    variants: list[VariantRecord] = Field(default_factory=list)
    challenger: Challenger | None = None
    challengers: dict[str, Challenger] | None = Field(
        default=None, description="Target -> the registered variant that got the alias <alias>-<target> (fastest passing there)."
    )
    plots: list[str] = Field(default_factory=list)
    cache: dict[str, dict[str, bool]] = Field(default_factory=dict)
    timings_s: dict[str, Number] = Field(default_factory=dict)
    search: dict[str, Any] | None = None


def summary_json_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of ``summary.json``, as written (serialization mode)."""
    return RunSummary.model_json_schema(mode="serialization")


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def primary_benchmark(
    variant: VariantRecord | Mapping[str, Any], spec: PipelineSpec, *, target: str | None = None, batch_size: int | None = None
) -> Any:
    """The benchmark entry that ranks a variant: status ``ok`` on ``target`` (default the spec's first
    target) at ``batch_size`` (default the primary batch size, ``spec.benchmark.primary``).

    Args:
        variant: a :class:`VariantRecord` or its dict (anything with ``benchmarks``).

    Returns:
        That entry (a :class:`BenchmarkEntry` or a dict, as stored in ``variant``), or None.
    """
    target = target or spec.targets[0].name
    batch_size = batch_size or spec.benchmark.primary
    return next(
        (
            b for b in (_get(variant, "benchmarks") or [])
            if _get(b, "target") == target and _get(b, "batch_size") == batch_size and _get(b, "status") == "ok"
        ),
        None,
    )


def primary_p50_ms(
    variant: VariantRecord | Mapping[str, Any], spec: PipelineSpec, *, target: str | None = None, batch_size: int | None = None
) -> float | None:
    """p50 latency (ms) of the :func:`primary_benchmark` entry on ``target`` at ``batch_size``
    (defaults as there); None when there is no such entry or its p50 is missing or not finite."""
    entry = primary_benchmark(variant, spec, target=target, batch_size=batch_size)
    value = _get(entry, "p50_ms") if entry is not None else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def target_winners(
    variants: Iterable[VariantRecord | Mapping[str, Any]], spec: PipelineSpec, *, eligible: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The fastest eligible variant on every target: the lowest finite :func:`primary_p50_ms` at the
    primary batch size (``spec.benchmark.primary``); on a tie the earlier variant wins.

    Args:
        variants: variant records or their dicts, in pipeline order.
        spec: the pipeline spec (targets in order, primary batch size).
        eligible: names of the variants that may win (registration: the registered ones);
            default those whose ``passed`` is true.

    Returns:
        ``{target: {"variant": name, "p50_ms": float (ms), "batch_size": int}}`` in the order of
        ``spec.targets``; a target where no eligible variant has a finite p50 is absent. The first
        target's winner is the run's ``challenger``.
    """
    variants = list(variants)
    allowed = set(eligible) if eligible is not None else {_get(v, "name") for v in variants if _get(v, "passed")}
    batch_size = spec.benchmark.primary
    winners: dict[str, dict[str, Any]] = {}
    for target in spec.targets:
        best: dict[str, Any] | None = None
        for variant in variants:
            if _get(variant, "name") not in allowed:
                continue
            p50 = primary_p50_ms(variant, spec, target=target.name, batch_size=batch_size)
            if p50 is not None and (best is None or p50 < best["p50_ms"]):
                best = {"variant": _get(variant, "name"), "p50_ms": p50, "batch_size": batch_size}
        if best is not None:
            winners[target.name] = best
    return winners


def gate_verdict(variant: VariantRecord, spec: PipelineSpec, search: Mapping[str, Any] | None = None) -> tuple[bool, str | None]:
    """Whether ``variant`` passed its gates, and why it must not be registered (or None).

    A variant passes when its validation passed, its evaluation (if any) passed and it has an ``ok``
    :func:`primary_benchmark`. When the run had a quantization search that found no configuration
    within the quality budget (``search["winner"]`` None and no per-target ``winners``), no variant passes: the run registers
    nothing (``not_registered``: :data:`NO_SEARCH_WINNER`).
    """
    if search is not None and search.get("winner") is None and not search.get("winners"):
        return False, NO_SEARCH_WINNER
    passed = bool(
        variant.validation is not None
        and variant.validation.passed
        and (variant.evaluation is None or variant.evaluation.passed)
        and primary_benchmark(variant, spec) is not None
    )
    return passed, None
