"""Saved scheduler state: every rule, restored from ``json.loads(json.dumps(rule.state()))``,
answers every later call as the rule that saved it would.

Why scripted, not property-based: one seeded random manager (``Script``) drives a rule
through starts, reports (skipped steps, NaN, RPC retries), job ends of every kind, jobs
lost with their worker, plans and ``end_new_trials``; rules restored at several cut points
receive the same calls in lockstep (``Lockstep``), and every answer is compared at once, so
a difference names the call where it appeared.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_schedulers import run_study, toy_value

from hpo_mlops import registry
from hpo_mlops.errors import ConfigError, ReportError
from hpo_mlops.schedulers.base import Decision, Job, Scheduler

C, S = Decision.CONTINUE, Decision.STOP
RULES = registry.names(registry.SCHEDULERS)


def make(name: str, **options: Any) -> Scheduler:
    """The rule as a study builds it (every option passed on: median's too)."""
    return registry.create(registry.SCHEDULERS, {"name": name, **options}, Scheduler)


def rule_options(name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options each rule accepts (fifo and median refuse rung options they do not use)."""
    if name == "fifo":
        return {"max_budget": 27, **(extra or {})}
    if name == "median":
        return {"max_budget": 27, "min_trials": 3, "warmup_steps": 2, **(extra or {})}
    if name == "pbt":  # an interval of a ninth of the budget: 9 exploit/explore points
        budget = (extra or {}).get("max_budget", 27)
        return {"max_budget": 27, "perturbation_interval": max(1, budget // 9), **(extra or {})}
    return {"min_budget": 1, "max_budget": 27, "eta": 3, **(extra or {})}


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """What a JSON artifact gives back; strict JSON (no NaN/Infinity tokens), and equal to
    the state itself, so no tuple, int key or non-finite number hides in it."""
    back = json.loads(json.dumps(state, allow_nan=False))
    assert back == state
    return back


def restore(rule: Scheduler, options: dict[str, Any], ended: bool) -> Scheduler:
    """What a resumed study does: load the saved state; say again that no new trials come
    if the run that saved it had said so (a resumed run says it once its trials started)."""
    back = type(rule).from_state(roundtrip(rule.state()), mode=rule.mode, **options)
    if ended:
        back.end_new_trials()
    assert back.state() == rule.state()
    assert back.describe() == rule.describe()
    return back


class Lockstep:
    """Every call goes to the live rule and to every restored one; answers must agree."""

    def __init__(self, live: Scheduler) -> None:
        self.rules = [live]
        self.calls = 0

    @property
    def live(self) -> Scheduler:
        return self.rules[0]

    def __call__(self, method: str, *args: Any) -> Any:
        self.calls += 1
        answers = [getattr(r, method)(*args) for r in self.rules]
        for i, other in enumerate(answers[1:], 1):
            assert other == answers[0], (
                f"call {self.calls}: {method}{args} -> {answers[0]!r} live, {other!r} "
                f"restored #{i}"
            )
        return answers[0]


@dataclass
class Script:
    """A seeded random manager. ``jobs``: trial -> [next step, budget, bracket, first step];
    ``lost``: jobs to run again (``on_start`` again, same budget and bracket), as the core
    does for trials in flight when a study stopped."""

    seed: int
    n_trials: int = 90
    slots: int = 4
    rng: random.Random = field(init=False)
    jobs: dict[int, list[Any]] = field(default_factory=dict)
    lost: dict[int, tuple[Any, Any, int]] = field(default_factory=dict)
    ckpt: dict[int, int] = field(default_factory=dict)
    known: list[int] = field(default_factory=list)
    started: int = 0
    ended: bool = False
    seen: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def count(self, what: str) -> None:
        self.seen[what] = self.seen.get(what, 0) + 1

    def first_step(self, trial: int) -> int:
        """Trials 0, 3, 6... keep no checkpoint: every job starts over at step 1."""
        return 1 if trial % 3 == 0 else self.ckpt.get(trial, 0) + 1

    def value(self, trial: int, step: int) -> float:
        if self.rng.random() < 0.02:
            return math.nan
        return toy_value(trial, step) + 0.05 * self.rng.random()

    def begin(self, call: Lockstep, trial: int, budget: Any, bracket: Any, rerun: bool) -> None:
        call("on_start", trial, budget, bracket)
        budget = call("budget_for", trial)
        first = self.first_step(trial)
        self.jobs[trial] = [first, budget, bracket, first]
        if rerun and len(call.rules) > 1:
            self.count("rerun after a restore")

    def fill(self, call: Lockstep) -> bool:
        """Start jobs on free slots; False when nothing runs and nothing can start."""
        for t in sorted(self.lost)[: self.slots - len(self.jobs)]:
            budget, bracket, _ = self.lost.pop(t)
            self.begin(call, t, budget, bracket, rerun=True)
        free = self.slots - len(self.jobs)
        if free > 0:
            if call.live.plans_budgets:
                planned = call("plan", free)
            else:
                planned = [Job(None, call("budget_for", None))] * free
            for job in planned:
                if job.trial is not None:
                    self.begin(call, job.trial, job.budget, job.bracket, rerun=False)
                elif self.started < self.n_trials:
                    self.known.append(self.started)
                    self.begin(call, self.started, job.budget, job.bracket, rerun=False)
                    self.started += 1
        if self.started >= self.n_trials and not self.ended and (not self.jobs or free > 0):
            call("end_new_trials")
            self.ended = True
            return True
        return bool(self.jobs or self.lost)

    def lose(self, call: Lockstep, trial: int, told: bool) -> None:
        """The job's worker is gone with its reports; told: the rule hears INTERRUPTED."""
        _, budget, bracket, first = self.jobs.pop(trial)
        self.ckpt[trial] = first - 1  # checkpoints of the lost job are lost too
        if told:
            call("on_complete", trial, "INTERRUPTED")
            if call.live.plans_budgets:
                return  # the rule plans the rerun itself
        self.lost[trial] = (budget, bracket, first)

    def observe(self, call: Lockstep) -> None:
        for t in self.known:
            call("trial_info", t)
        call("budget_summary")
        call("describe")

    def tick(self, call: Lockstep) -> bool:
        if not self.fill(call):
            return False
        r = self.rng.random()
        if r < 0.05:
            call("pop_finished")
        elif r < 0.08:
            self.observe(call)
        elif r < 0.10 and call.live.plans_budgets:
            call("plan", self.rng.randint(0, 5))  # a plan the manager drops: reserves nothing
        if not self.jobs:
            return True
        t = self.rng.choice(sorted(self.jobs))
        job = self.jobs[t]
        r = self.rng.random()
        if r < 0.02:
            call("on_complete", t, "FAILED")
            del self.jobs[t]
        elif r < 0.04:
            self.lose(call, t, told=True)
        elif r < 0.06:
            self.lose(call, t, told=False)
        elif r < 0.07:
            call("on_complete", t, "PRUNED", None)  # stopped by something else (a bound)
            del self.jobs[t]
        else:
            step = job[0] + (self.rng.choice([1, 2, 5]) if self.rng.random() < 0.08 else 0)
            v = self.value(t, step)
            d = call("on_report", t, step, v)
            if self.rng.random() < 0.05:
                assert call("on_report", t, step, v) == d  # an RPC retry
            self.ckpt[t] = max(self.ckpt.get(t, 0), step)
            self.count(d.value)
            if d is S:
                call("on_complete", t, "PRUNED", v)
                del self.jobs[t]
            elif job[1] is not None and step >= job[1]:
                call("on_complete", t, "COMPLETE", v)
                del self.jobs[t]
            else:
                job[0] = step + 1
        return True

    def crash(self, call: Lockstep) -> None:
        """The study stops: every job in flight is lost (half of them told INTERRUPTED, as a
        clean stop records them; the others as after a crash)."""
        for t in sorted(self.jobs):
            self.lose(call, t, told=self.rng.random() < 0.5)


SCENARIOS = [(name, {}) for name in RULES] + [
    ("asha", {"strict_quota": True}),
    ("asha", {"brackets": 2}),
    ("hyperband", {"brackets": 2}),
    ("sha", {"n_configs": 5}),
]


@pytest.mark.filterwarnings("ignore:.*not finite:RuntimeWarning")
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("name", "extra"), SCENARIOS)
def test_restored_rule_answers_as_the_live_one(name: str, extra: dict[str, Any], seed: int) -> None:
    """Cut points: early, with rungs half full and jobs in flight, after a crash (jobs lost,
    run again from their first step), after ``end_new_trials``, near the end."""
    options = rule_options(name, extra)
    mode = "min" if seed % 2 else "max"
    dry, dry_rule, length = Script(seed), Lockstep(make(name, mode=mode, **options)), 0
    while dry.tick(dry_rule):
        length += 1
    call = Lockstep(make(name, mode=mode, **options))
    script = Script(seed)
    # (tick: crash first?) at 3%, 15%, 35%, 60% and 85% of the study without crashes
    cuts = {max(1, int(length * f)): crash for f, crash in
            [(0.03, False), (0.15, False), (0.35, True), (0.6, True), (0.85, False)]}  # fmt: skip
    tick = 0
    while script.tick(call) and tick < 5000:
        tick += 1
        if tick in cuts:
            if cuts[tick]:
                script.crash(call)
            if script.jobs or script.lost:
                script.count("cut with jobs in flight")
            if script.ended:
                script.count("cut after end_new_trials")
            call.rules.append(restore(call.live, options, script.ended))
    tick_end = tick
    script.observe(call)
    call("pop_finished")
    for restored in call.rules[1:]:
        assert restored.state() == call.live.state()
    # the scenario really went through what it is meant to test
    assert length > 80 and len(call.rules) == 1 + len(cuts), (length, tick_end)
    assert script.seen.get("cut with jobs in flight", 0) >= 3, script.seen
    assert script.seen.get("rerun after a restore", 0) >= 3, script.seen
    assert script.started == script.n_trials and script.seen.get("continue", 0) > 50
    if name != "fifo":
        assert script.seen.get("stop", 0) > 0, script.seen


# -- what a restored rule needs for trials that were running -----------------------------------
@pytest.mark.parametrize("name", [n for n in RULES if n not in ("fifo", "median")])
def test_trial_in_flight_is_run_again_from_step_1(name: str) -> None:
    """The state was saved while trial 0's job was running (steps 1..5 reported); its worker
    died with the study. The resumed study calls ``on_start`` again with the job's budget and
    bracket, and the rerun reports from step 1: accepted, as a new job of the same trial (a
    retry), exactly what the live rule does with the same calls."""
    options = rule_options(name)
    live = make(name, **options)
    job = live.plan(1)[0] if live.plans_budgets else Job(None, live.budget_for(None))
    live.on_start(0, job.budget, job.bracket)
    budget = live.budget_for(0)
    for step in range(1, min(5, budget) + 1):
        assert live.on_report(0, step, 0.5) is C
    back = type(live).from_state(roundtrip(live.state()), **options)
    assert back.trial_info(0)["state"] == "RUNNING" and back.trial_info(0)["jobs"] == 1
    call = Lockstep(live)
    call.rules.append(back)
    call("on_start", 0, job.budget, job.bracket)
    info = call("trial_info", 0)
    assert info["jobs"] == 2 and info["budget"] == budget
    for step in range(1, budget + 1):
        assert call("on_report", 0, step, 0.5) is C
    call("on_complete", 0, "COMPLETE", 0.5)
    assert call("trial_info", 0)["budget_consumed"] == min(5, budget) + budget


@pytest.mark.parametrize("name", ["sha", "hyperband", "asha_promotion"])
def test_synchronous_rule_plans_the_rerun_when_told_interrupted(name: str) -> None:
    """A resumed study may instead tell the rule the job was interrupted: synchronous rules
    then hand the rerun out first, at its budget, as they do for a replayed INTERRUPTED job."""
    options = rule_options(name)
    live = make(name, **options)
    job = live.plan(1)[0]
    live.on_start(0, job.budget, job.bracket)
    live.on_report(0, 1, 0.5)
    back = type(live).from_state(roundtrip(live.state()), **options)
    back.on_complete(0, "INTERRUPTED")
    assert back.plan(2)[0] == Job(0, job.budget, job.bracket)
    back.on_start(0, job.budget, job.bracket)
    assert back.on_report(0, 1, 0.5) is C and back.trial_info(0)["jobs"] == 2


@pytest.mark.parametrize("name", ["sha", "hyperband", "asha_promotion"])
def test_paused_trials_keep_waiting_after_a_restore(name: str) -> None:
    """Trials waiting at a rung are not handed out, cannot be started, and are decided when
    the rung is: the same promotions as the live rule."""
    options = rule_options(name, {"max_budget": 9})
    live = make(name, **options)
    for t in range(8):
        live.on_start(t)
        for step in range(1, live.budget_for(t) + 1):
            live.on_report(t, step, 1.0 + (t * 7 % 8) / 10)
        live.on_complete(t, "COMPLETE", None)
    back = type(live).from_state(roundtrip(live.state()), **options)
    waiting = [t for t in range(8) if back._trials[t].status == "waiting"]
    assert waiting and all(back.trial_info(t)["state"] == "PAUSED" for t in waiting)
    for t in waiting:
        assert t not in {j.trial for j in back.plan(6)}
        with pytest.raises(ReportError, match="waits for its rung"):
            back.on_start(t)
    call = Lockstep(live)
    call.rules.append(back)
    call("plan", 4)
    call("end_new_trials")  # the rung is decided with the trials it has
    assert call("plan", 9), "its best are promoted"
    assert call("pop_finished") or name == "asha_promotion"  # which stops no one
    for t in range(8):
        assert call("trial_info", t)["state"] != "RUNNING"
    assert back.state() == live.state()


def test_a_stop_whose_job_end_was_lost_stays_a_stop() -> None:
    """The saved rule had answered STOP, but the study stopped before the job's end came
    back: the rule knows the trial is PRUNED (``trial_info``, ``pop_finished``), and refuses to
    start it again. A resumed study closes it instead of running it again."""
    options = rule_options("asha")
    live = make("asha", **options)
    assert live.on_report(0, 1, 0.1) is C and live.on_report(1, 1, 0.9) is S
    back = type(live).from_state(roundtrip(live.state()), **options)
    assert back.trial_info(1)["state"] == "PRUNED"
    assert back.pop_finished() == [(1, "PRUNED")]
    with pytest.raises(ReportError, match="cannot be started again"):
        back.on_start(1)


@pytest.mark.parametrize("name", ["sha", "hyperband", "asha_promotion"])
def test_a_resumed_study_may_start_new_trials_after_end_new_trials(name: str) -> None:
    """``end_new_trials`` is about one run: a state saved after it still takes new trials
    (a larger ``n_trials`` on resume), in brackets other than those already decided."""
    options = rule_options(name)
    live = make(name, **options)
    run_study(live, toy_value, n_configs=4, n_workers=2)
    assert live.plan(3) == [], "no new trials in this run"
    back = type(live).from_state(roundtrip(live.state()), **options)
    jobs = back.plan(3)
    assert [j.trial for j in jobs] == [None] * 3
    if name != "asha_promotion":  # one bracket takes every trial there
        assert all(j.bracket != 0 for j in jobs), "bracket 0's first rung was decided"
    back.end_new_trials()
    assert back.state() == live.state()


# -- the reliability issue: trials reporting 400 steps -------------------------------------------
@pytest.mark.parametrize("name", RULES)
def test_study_of_400_step_trials_resumes_as_if_never_stopped(name: str) -> None:
    """``min_budget=1, max_budget=400, eta=3``, every step reported up to the budget, 3 trials,
    then the same study with 5: today's replay from tags capped at ~290 reports cannot be
    built; the saved state is small (rung rules: independent of the number of reports) and
    the resumed rule decides as an uncapped replay of all reports would, and, where nothing
    waits for ``end_new_trials``, as the live rule continuing (the study never stopped)."""
    options = rule_options(name, {"max_budget": 400})
    live = make(name, **options)
    first = run_study(live, toy_value, n_configs=3, n_workers=1)
    per_trial = Counter(t for t, _, _ in first.log)
    assert max(per_trial.values()) == 400, per_trial  # more than the ~290 the tags keep
    text = json.dumps(live.state(), allow_nan=False)
    if name not in ("fifo", "median"):
        assert len(text) < 3000, len(text)  # a log of every report would be ~20 bytes each
    back = type(live).from_state(json.loads(text), **options)
    references = []
    if hasattr(type(live), "from_records"):  # today's resume, without the cap
        references.append(type(live).from_records(live.records(), **options))
    if name in ("fifo", "median", "asha", "async_hyperband"):
        references.append(live)  # nothing waits for end_new_trials: as if never stopped
    runs = [
        run_study(r, lambda t, s: toy_value(t + 11, s), n_configs=2, n_workers=1, first_trial=3)
        for r in (back, *references)
    ]
    assert all(r.log == runs[0].log for r in runs) and len(runs[0].log) >= 2
    assert all(r.budget_summary() == back.budget_summary() for r in references)
    restore(back, options, ended=True)  # and its state at the end is saved exactly too


# -- configuration checks ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("saved", "given", "message"),
    [
        (("asha", {}), ("hyperband", {}), r"saved by the 'asha' rule, it cannot be loaded into "
                                          r"'hyperband'"),
        (("asha", {}), ("asha", {"eta": 2}), r"other options \(eta: saved 3, given 2\)"),
        (("asha", {}), ("asha", {"mode": "max"}), r"mode: saved 'min', given 'max'"),
        (("asha", {}), ("asha", {"max_budget": 27.0}), r"max_budget: saved 27, given 27\.0"),
        (("asha", {}), ("asha", {"strict_quota": True}), r"strict_quota: saved False, given True"),
        (("median", {}), ("median", {"min_trials": 4}), r"min_trials: saved 3, given 4"),
        (("hyperband", {}), ("hyperband", {"brackets": 2}), r"brackets: saved 4, given 2"),
    ],
)  # fmt: skip
def test_from_state_refuses_another_rule_or_options(
    saved: tuple[str, dict[str, Any]], given: tuple[str, dict[str, Any]], message: str
) -> None:
    state = roundtrip(make(saved[0], **rule_options(saved[0], saved[1])).state())
    options = rule_options(given[0], given[1])
    mode = options.pop("mode", "min")
    cls = type(make(given[0], **rule_options(given[0])))
    with pytest.raises(ConfigError, match=message):
        cls.from_state(state, mode=mode, **options)


def test_from_state_refuses_unknown_formats_and_accepts_defaults_spelled_out() -> None:
    s = make("hyperband", **rule_options("hyperband"))
    state = roundtrip(s.state())
    with pytest.raises(ConfigError, match="format 2 is not supported; this version reads format 1"):
        type(s).from_state({**state, "format": 2}, **rule_options("hyperband"))
    with pytest.raises(ConfigError, match="not a saved scheduler state"):
        type(s).from_state({"rule": "hyperband"}, **rule_options("hyperband"))
    # the default filled in (brackets=4 here) is the same configuration as leaving it out
    assert type(s).from_state(state, brackets=4, **rule_options("hyperband")).state() == state


def test_restored_rule_keeps_no_reports_and_says_so() -> None:
    s = make("asha", **rule_options("asha"))
    s.on_report(0, 1, 0.5)
    back = type(s).from_state(roundtrip(s.state()), **rule_options("asha"))
    with pytest.raises(RuntimeError, match="keeps no reports; save its state"):
        back.records()


# -- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sha", "asha", "hyperband", "async_hyperband", "asha_promotion"])
def test_rung_rule_state_is_about_a_hundred_bytes_per_trial(name: str) -> None:
    """One row per trial and one score per rung reached: 600 trials of up to 81 steps, every
    step reported, stay under 250 bytes a trial."""
    s = make(name, min_budget=1, max_budget=81, eta=3)
    run = run_study(s, toy_value, n_configs=600, n_workers=8)
    size = len(json.dumps(s.state(), allow_nan=False))
    assert size < 250 * 600, (size, len(run.log))
