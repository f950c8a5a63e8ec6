"""The trial handle and the classification of an objective's outcome (no Dask needed)."""

from __future__ import annotations

import math

import pytest

from hpo_mlops import ReportError
from hpo_mlops.runner import _execute
from hpo_mlops.trial import Trial, TrialPruned


def stop_after(step_limit):
    calls = []

    def reporter(number, step, value):
        calls.append((number, step, value))
        return step >= step_limit

    return reporter, calls


def test_report_asks_the_rule_once_per_report_and_remembers_the_decision():
    reporter, calls = stop_after(3)
    t = Trial(4, {"x": 1}, budget=9, reporter=reporter)
    for step in (1, 2):
        t.report(0.5, step)
        assert not t.should_prune() and not t.should_prune()
    t.report(0.4, 3)
    assert t.should_prune() and t.pruned_step == 3
    assert calls == [(4, 1, 0.5), (4, 2, 0.5), (4, 3, 0.4)]
    with pytest.raises(ReportError, match="trial 4 was pruned at step 3"):
        t.report(0.3, 4)


@pytest.mark.parametrize("step, value, message", [
    (None, 1.0, "needs an integer step, got step=None"),
    (1.5, 1.0, "needs an integer step"),
    (True, 1.0, "needs an integer step"),
    (1, "high", "needs a number, got value='high'"),
])
def test_bad_reports_are_refused(step, value, message):
    t = Trial(0, {}, reporter=None)
    with pytest.raises(ReportError, match=message):
        t.report(value, step)
    assert t.intermediate == []


def test_steps_must_increase_and_nan_warns():
    t = Trial(1, {})
    t.report(1.0, 2)
    with pytest.raises(ReportError, match="steps must increase, got step=2 after step=2"):
        t.report(0.5, 2)
    with pytest.raises(ReportError, match="got step=1 after step=2"):
        t.report(0.5, 1)
    with pytest.warns(UserWarning, match="counted as the worst value"):
        t.report(float("nan"), 3)
    assert [s for s, _ in t.intermediate] == [2, 3]


def test_checkpoints_survive_between_jobs(tmp_path):
    first = Trial(2, {}, checkpoint_dir=str(tmp_path / "trial-2"))
    assert first.load() is None
    first.save({"epoch": 3})
    assert Trial(2, {}, checkpoint_dir=str(tmp_path / "trial-2")).load() == {"epoch": 3}
    assert Trial(2, {}).load() is None, "no checkpoint dir: nothing to load"


SPEC = {"key": "k", "number": 0, "params": {"x": 2.0}, "budget": 5, "metrics": ["loss"]}


def run(objective, reporter=None, spec=SPEC, setup_error=None):
    return _execute(objective, spec, reporter, None, setup_error)


def test_outcomes_are_classified():
    assert run(lambda p, t: p["x"] ** 2)["state"] == "COMPLETE"
    out = run(lambda p, t: {"loss": 1.0, "acc": 0.5, "note": "text"})
    assert out["metrics"] == {"loss": 1.0, "acc": 0.5}
    failed = run(lambda p, t: 1 / 0)
    assert failed["state"] == "FAILED" and failed["error"].startswith("ZeroDivisionError")
    assert "1 / 0" in failed["traceback"]
    assert "is inf" in run(lambda p, t: math.inf)["error"]
    assert "without the study metric(s) ['loss']" in run(lambda p, t: {"acc": 1})["error"]
    assert "setup() failed" in run(lambda p, t: 1.0, setup_error="setup() failed on w")["error"]


def test_pruned_by_returning_or_raising():
    reporter, _ = stop_after(2)

    def returns(p, t):
        for step in range(1, 6):
            t.report(10.0 - step, step)
            if t.should_prune():
                return 10.0 - step
        return 0.0

    def raises(p, t):
        for step in range(1, 6):
            t.report(10.0 - step, step)
            if t.should_prune():
                raise TrialPruned()
        return 0.0

    for objective in (returns, raises):
        out = run(objective, reporter)
        assert out["state"] == "PRUNED" and out["pruned_step"] == 2
        assert out["values"] == [8.0] and out["intermediate"] == [(1, 9.0), (2, 8.0)]
