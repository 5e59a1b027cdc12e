"""tests/conftest.py's ``wait_until``: the bounded poll that replaced the tests' fixed sleeps."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_until


def test_returns_the_first_truthy_value():
    calls = iter([None, [], ["ready"]])
    assert wait_until(lambda: next(calls), timeout_s=5, interval_s=0.001) == ["ready"]


def test_times_out_with_the_message_and_the_last_value():
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"no event within 0\.05 s \(last value: \[\]\)"):
        wait_until(list, timeout_s=0.05, interval_s=0.01, message=lambda: "no event")
    assert 0.05 <= time.monotonic() - start < 1


def test_zero_timeout_checks_once():
    calls = []
    with pytest.raises(AssertionError, match="condition not met"):
        wait_until(lambda: calls.append(1), timeout_s=0)
    assert calls == [1]


def test_an_exception_from_the_predicate_stops_the_poll():
    def exited():
        raise RuntimeError("process exited")

    with pytest.raises(RuntimeError, match="process exited"):
        wait_until(exited, timeout_s=5)
