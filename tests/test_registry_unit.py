"""edgeport.registry's pure parts: error classification and translation, the retry policy, URI
redaction, MLflow params, ranking tags, the fluent-API store switch (no server, no Prefect run)."""

from __future__ import annotations

import os
import sqlite3

import pytest
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2
from prefect.states import Completed, Failed

import mlflow
from edgeport.errors import PromotionError, RegistryError, RegistryUnavailable
from edgeport.registry import (
    PREFECT_MAX_RETRY_DELAYS,
    RANKED_BATCH_SIZE_TAG,
    RANKED_TARGET_TAG,
    finite,
    flatten_params,
    is_transient,
    map_mlflow_errors,
    metric_key,
    prefect_retry_options,
    ranked_on,
    ranked_tags,
    redact_uri,
    retry_delays,
    retry_transient_within,
    safe_name,
    using_store,
)
from edgeport.spec import RetrySpec


def _locked_error(tmp_path) -> sqlite3.OperationalError:
    """A real "database is locked" from sqlite: a second writer while the first holds the lock."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    other = sqlite3.connect(path, timeout=0)
    try:
        other.execute("insert into t values (1)")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        other.close()
        holder.rollback()
        holder.close()
    raise AssertionError("sqlite did not report the lock")


def _cause(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as chained:
        return chained


# --------------------------------------------------------------------------- classification


def test_transient_errors(tmp_path):
    locked = _locked_error(tmp_path)
    assert "locked" in str(locked)
    transient = [
        MlflowException("busy", error_code=databricks_pb2.TEMPORARILY_UNAVAILABLE),
        MlflowException("slow", error_code=databricks_pb2.REQUEST_LIMIT_EXCEEDED),
        MlflowException("API request to http://h/api failed with exception HTTPConnectionPool: Max retries exceeded"),
        MlflowException("Response: 503 Server Error"),
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ReadTimeout("slow"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        locked,
        sqlalchemy.exc.OperationalError("INSERT", {}, locked),  # how MLflow's sqlite store raises it
        RegistryUnavailable("down"),
        _cause(RuntimeError("wrapped"), requests.exceptions.ConnectionError("refused")),
    ]
    for exc in transient:
        assert is_transient(exc) is True, repr(exc)


def test_permanent_errors():
    permanent = [
        MlflowException("bad key", error_code=databricks_pb2.INVALID_PARAMETER_VALUE),
        MlflowException("no such model", error_code=databricks_pb2.RESOURCE_DOES_NOT_EXIST),
        sqlite3.OperationalError("no such table: runs"),
        ValueError("bad input"),
        RegistryError("refused a write"),
        PromotionError("no champion"),
        _cause(RegistryError("refused"), ConnectionRefusedError("refused")),  # our verdict wins over its cause
    ]
    for exc in permanent:
        assert is_transient(exc) is False, repr(exc)


# --------------------------------------------------------------------------- translation table

URI = "https://alice:s3cret@mlflow.example.com"


def _raised(exc: BaseException, **kwargs) -> BaseException:
    with pytest.raises(BaseException) as info, map_mlflow_errors("setting champion", URI, **kwargs):
        raise exc
    return info.value


def test_map_transient_to_registry_unavailable():
    original = requests.exceptions.ConnectionError("Connection refused")
    err = _raised(original)
    assert type(err) is RegistryUnavailable and err.__cause__ is original
    assert str(err) == "MLflow at https://alice:***@mlflow.example.com did not answer (setting champion): ConnectionError: Connection refused"


def test_map_refusal_to_registry_error():
    original = MlflowException("alias name is invalid", error_code=databricks_pb2.INVALID_PARAMETER_VALUE)
    err = _raised(original)
    assert type(err) is RegistryError and err.__cause__ is original
    assert "refused setting champion" in str(err) and "s3cret" not in str(err)


def test_map_leaves_other_errors_alone_unless_wrap_all():
    value_error, promotion_error = ValueError("bad"), PromotionError("no champion")
    assert _raised(value_error) is value_error
    assert _raised(promotion_error) is promotion_error
    wrapped = _raised(ValueError("bad"), wrap_all=True)
    assert type(wrapped) is RegistryError and str(wrapped).startswith("setting champion at https://alice:***@")


def test_map_passes_success_through():
    with map_mlflow_errors("reading", URI):
        value = 41 + 1
    assert value == 42


# --------------------------------------------------------------------------- retry policy


def test_retry_delays_double_cap_and_fill_the_window():
    assert retry_delays(RetrySpec(window_s=20, initial_delay_s=2, max_delay_s=5)) == [2.0, 4.0, 5.0, 5.0, 4.0]
    default = retry_delays(RetrySpec())  # 300 s window, 2 s doubled, capped at 30 s
    assert default[:5] == [2.0, 4.0, 8.0, 16.0, 30.0] and sum(default) == pytest.approx(300.0)
    assert retry_delays(RetrySpec(window_s=0)) == []


def test_prefect_options_cap_the_delays_at_fifty():
    options = prefect_retry_options(RetrySpec(window_s=600, initial_delay_s=1, max_delay_s=1))
    assert options["retries"] == 600
    assert len(options["retry_delay_seconds"]) == PREFECT_MAX_RETRY_DELAYS == 50
    assert options["retry_jitter_factor"] == 0.2
    none = prefect_retry_options(RetrySpec(window_s=0))
    assert (none["retries"], none["retry_delay_seconds"]) == (0, 0)


def test_retry_condition_respects_the_window():
    class Run:  # a task run is identified by its id only
        def __init__(self, id_: str) -> None:
            self.id = id_

    down = Failed(data=RegistryUnavailable("down"))
    assert retry_transient_within(60)(None, Run("a"), down) is True
    assert retry_transient_within(60)(None, Run("a"), Failed(data=RegistryError("refused"))) is False
    assert retry_transient_within(60)(None, Run("a"), Completed(data=1)) is False
    assert retry_transient_within(0)(None, Run("a"), down) is False  # window already over


# --------------------------------------------------------------------------- URIs and params


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://alice:s3cret@mlflow.example.com/", "https://alice:***@mlflow.example.com/"),
        ("postgresql://mlflow:p4ss@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("https://mlflow.example.com/?access_token=abc123&x=1", "https://mlflow.example.com/?access_token=***&x=1"),
        ("https://h/p?x=1&api_key=k&sig=s", "https://h/p?x=1&api_key=***&sig=***"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_flatten_params():
    params = flatten_params({
        "model": {"factory": "m:f", "inputs": [{"name": "x", "shape": [1, 4]}]},
        "targets": ["cpu", "gpu"],
        "weird key@": 1.5,
        "long": "y" * 7000,
    })
    assert params["model.factory"] == "m:f"
    assert params["model.inputs.x.shape"] == "[1, 4]"
    assert params["targets"] == '["cpu", "gpu"]'
    assert params["weird key_"] == "1.5"
    assert len(params["long"]) == 6000 and params["long"].endswith("...")


def test_metric_key_finite_and_safe_name():
    assert metric_key("p50_ms.cpu (4t).b1") == "p50_ms.cpu _4t_.b1"
    assert [finite(v) for v in (1, "2.5", float("nan"), float("inf"), True, None, "x")] == [1.0, 2.5, None, None, None, None, None]
    assert safe_name("exp a") == "exp_a" and safe_name("..") == "experiment"


def test_ranked_on_prefers_the_explicit_tags():
    assert ranked_tags("cpu", 8, 1.25) == {RANKED_TARGET_TAG: "cpu", RANKED_BATCH_SIZE_TAG: "8", "p50_ms.cpu.b8": "1.25"}
    assert ranked_on({**ranked_tags("cpu.x", 8, None), "p50_ms.other.b1": "2"}) == ("cpu.x", 8)
    assert ranked_on({"variant": "fp32", "p50_ms.cpu-1t.b32": "3.0"}) == ("cpu-1t", 32)  # older versions
    assert ranked_on({RANKED_TARGET_TAG: "cpu", RANKED_BATCH_SIZE_TAG: "zero", "p50_ms.gpu.b4": "1"}) == ("gpu", 4)
    assert ranked_on({"variant": "fp32"}) is None and ranked_on(None) is None


# --------------------------------------------------------------------------- fluent store


def test_using_store_restores_the_previous_uris(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(None)
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    with using_store(uri):
        assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ

    before = f"sqlite:///{tmp_path / 'before.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    try:
        with using_store(uri), using_store(uri):  # nested blocks on one store share it
            assert mlflow.get_tracking_uri() == uri
        assert mlflow.get_tracking_uri() == before and os.environ["MLFLOW_TRACKING_URI"] == before
    finally:
        mlflow.set_tracking_uri(None)
