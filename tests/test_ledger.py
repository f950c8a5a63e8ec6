"""The ledger, the single owner of a study's trial state, driven directly (no cluster): what
a slot is handed, what a lost worker costs, when the study stops, and that the manager's
view (``TrialTable``) replays its events faithfully even when a subscriber fails."""

from __future__ import annotations

import itertools

import pytest

from hpo_mlops import TrialState, registry
from hpo_mlops.ledger import DONE, FINISHED, INTERRUPTED, RETRIED, STARTED, Ledger
from hpo_mlops.schedulers.base import Scheduler
from hpo_mlops.trials import TrialTable


def _ledger(scheduler="fifo", **kw) -> Ledger:
    rule = registry.create(registry.SCHEDULERS, scheduler, Scheduler, mode="min")
    return Ledger(rule, **kw)


def _asker():
    counter = itertools.count()
    return lambda: ({"x": float(next(counter))}, None)


def _done(value: float, state: str = "COMPLETE") -> dict:
    return {"state": state, "values": [value], "metrics": {"loss": value}}


def test_a_slot_is_handed_new_trials_until_n_trials_then_nothing():
    led = _ledger(n_trials=3)
    ask = _asker()
    jobs = [led.assign("w1", ask) for _ in range(5)]
    assert [j.number for j in jobs[:3]] == [0, 1, 2] and jobs[3:] == [None, None]
    assert [j.params["x"] for j in jobs[:3]] == [0.0, 1.0, 2.0]
    assert not led.idle(), "three trials still run"
    for j in jobs[:3]:
        led.finish_job(j.number, _done(j.params["x"]))
    assert led.idle()
    led.finish()
    kinds = [e[0] for e in led.take_events()]
    assert kinds.count(STARTED) == 3 and kinds.count(FINISHED) == 3 and kinds[-1] == DONE


def test_a_lost_worker_reruns_only_its_started_trials_first_and_counts_one_attempt_each():
    led = _ledger(n_trials=10, max_retries=1)
    ask = _asker()
    a, b, c = led.assign("w1", ask), led.assign("w2", ask), led.assign("w1", ask)
    assert sorted(led.lost_worker("w1", "died")) == [a.number, c.number]
    # the lost trials come before any new one, at their next attempt
    again = [led.assign("w3", ask), led.assign("w3", ask)]
    assert sorted(j.number for j in again) == [a.number, c.number]
    assert {j.attempt for j in again} == {2}
    assert led.trials[b.number].attempts == 1, "a trial on a live worker lost nothing"
    assert led.trials[a.number].tags["hpo.lost_workers"] == "w1"
    # a worker with nothing started costs no attempt to anybody
    assert led.lost_worker("w9", "died") == []
    assert all(r.attempts <= 2 for r in led.trials.values())
    kinds = [e[0] for e in led.take_events()]
    assert kinds.count(RETRIED) == 2


def test_max_retries_zero_fails_a_started_trial_naming_the_worker_and_the_limit():
    led = _ledger(n_trials=2, max_retries=0)
    job = led.assign("tcp://w1", _asker())
    led.lost_worker("tcp://w1", "worker tcp://w1 died")
    rec = led.trials[job.number]
    assert rec.state is TrialState.FAILED and rec.attempts == 1
    assert "max_retries=0" in rec.error and "tcp://w1" in rec.error


def test_more_failures_than_max_failures_stops_the_study_and_interrupts_the_running():
    led = _ledger(max_failures=1)
    ask = _asker()
    jobs = [led.assign("w", ask) for _ in range(4)]
    led.finish_job(jobs[0].number, {"state": "FAILED", "error": "boom"})
    assert led.assign("w", ask) is not None, "one failure is allowed"
    led.finish_job(jobs[1].number, {"state": "FAILED", "error": "boom"})
    assert led.stopped and led.assign("w", ask) is None
    assert {led.trials[j.number].state for j in jobs[2:]} == {TrialState.INTERRUPTED}
    assert led.report(jobs[2].number, 1, 0.5) == "stop", "an interrupted trial is told to stop"
    # an outcome that arrives after the stop changes nothing recorded
    led.finish_job(jobs[2].number, _done(0.1))
    assert led.trials[jobs[2].number].state is TrialState.INTERRUPTED


def test_resumed_ledger_never_reruns_finished_trials_and_reruns_interrupted_ones():
    first = _ledger(n_trials=4)
    ask = _asker()
    jobs = [first.assign("w", ask) for _ in range(3)]
    first.finish_job(jobs[0].number, _done(1.0))
    first.interrupt()
    records = list(first.trials.values())
    again = _ledger(n_trials=4, records=records)
    nxt = [again.assign("w", ask) for _ in range(4)]
    numbers = [j.number for j in nxt if j is not None]
    assert numbers[:2] == [1, 2], "the interrupted trials run first, at their own numbers"
    assert numbers[2:] == [3], "then new trials up to n_trials; trial 0 never again"


def test_the_table_applies_a_whole_batch_when_a_subscriber_raises_and_then_raises():
    led = _ledger(n_trials=3)
    ask = _asker()
    for _ in range(3):
        job = led.assign("w", ask)
        led.finish_job(job.number, _done(job.params["x"]))
    table, seen = TrialTable(), []

    def broken(kind, rec):
        if rec.number == 0:
            raise RuntimeError("a user's callback failed")

    table.subscribe(broken)
    table.subscribe(lambda kind, rec: seen.append((kind, rec.number)))
    with pytest.raises(RuntimeError, match="callback failed"):
        table.apply(led.take_events())
    assert sorted(table.records) == [0, 1, 2]
    assert [r.state for r in table.finished()] == [TrialState.COMPLETE] * 3
    assert seen.count((FINISHED, 2)) == 1, "the subscriber after the broken one saw everything"


def test_interrupt_emits_interrupted_for_each_running_trial_once():
    led = _ledger()
    ask = _asker()
    jobs = [led.assign("w", ask) for _ in range(3)]
    led.interrupt()
    events = led.take_events()
    assert sorted(e[1] for e in events if e[0] == INTERRUPTED) == [j.number for j in jobs]
    assert events[-1][0] == DONE
