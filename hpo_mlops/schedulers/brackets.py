"""Hyperband bracket maths (Li et al. 2018) and the trial bookkeeping every rung rule shares.

Why one module for both: SHA, ASHA, Hyperband and asynchronous Hyperband differ only in
*when* a trial is compared with the others at a rung and *what* happens next. The rung
budgets, the checks on reports, the budget accounting (MLflow tags) and the replay of
recorded reports (resume) must mean the same thing for all four, so they live here once;
so does the saved state (:meth:`RungScheduler.state`): one row per trial and one value per
trial and rung reached, however many reports came between rungs.

Budgets are measured in the same unit as report steps (an epoch, a number of samples...):
a trial that reported step 9 has consumed a budget of 9.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from hpo_mlops.errors import ConfigError, ReportError
from hpo_mlops.schedulers.base import (
    Decision,
    Scheduler,
    pack_float,
    reject_unknown,
    unpack_float,
)

Budget = int | float

_REL_TOL = 1e-9


def _le(a: float, b: float) -> bool:
    """``a <= b`` forgiving float error: 0.1 * 3**4 must count as reaching 8.1."""
    return a <= b or math.isclose(a, b, rel_tol=_REL_TOL)


def _integral(*budgets: Any) -> bool:
    return all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in budgets)


def _tidy(x: float) -> float:
    """0.8999999999999999 -> 0.9: budgets end up in tags and in ``trial.budget``."""
    return float(f"{x:.12g}")


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# -- bracket maths ---------------------------------------------------------------------------
def s_max(min_budget: float, max_budget: float, eta: int) -> int:
    """``floor(log_eta(max_budget / min_budget))``, the index of the most aggressive bracket.

    Computed by repeated multiplication, not with ``math.log``: ``math.log(243, 3)`` is
    4.999999999999999, and flooring it would silently drop a whole bracket.
    """
    k = 0
    while _le(min_budget * eta ** (k + 1), max_budget):
        k += 1
    return k


@dataclass(frozen=True)
class Rung:
    """``n`` configurations trained up to ``budget``."""

    n: int
    budget: Budget


@dataclass(frozen=True)
class Bracket:
    """One run of successive halving: rung 0 holds the most configurations, the last one
    the fewest, at ``max_budget``. ``s`` is the textbook bracket index (number of halvings)."""

    s: int
    rungs: tuple[Rung, ...]

    @property
    def budgets(self) -> tuple[Budget, ...]:
        return tuple(r.budget for r in self.rungs)

    @property
    def n_configs(self) -> int:
        return self.rungs[0].n


def hyperband_brackets(min_budget: Budget, max_budget: Budget, eta: int) -> list[Bracket]:
    """The Hyperband brackets ``s = s_max .. 0`` (Li et al. 2018, Algorithm 1 and Table 1).

    Rung ``i`` of bracket ``s`` trains ``n_i = floor(n * eta**-i)`` configurations up to
    ``r_i = max_budget * eta**(i - s)``, with ``n = floor((s_max + 1) / (s + 1)) * eta**s``.

    Why ``floor(...) * eta**s`` and not the ``ceil((s_max+1)/(s+1) * eta**s)`` of the
    pseudo-code: users check the paper's Table 1 (81/27/9/6/5 configurations for
    ``R=81, eta=3``), and that table comes from integer division in the reference code; the
    real-valued formula would give 81/34/15/8/5. Both spend about the same budget per bracket.

    Budgets are ints when ``min_budget`` and ``max_budget`` are ints (so ``range(budget)``
    works in an objective), floats otherwise.
    """
    top = s_max(min_budget, max_budget, eta)
    integral = _integral(min_budget, max_budget)
    out = []
    for s in range(top, -1, -1):
        n = ((top + 1) // (s + 1)) * eta**s
        rungs = []
        for i in range(s + 1):
            b = max_budget / eta ** (s - i)
            if b < min_budget:  # only float error can get here (s <= s_max)
                b = min_budget
            rungs.append(Rung(n // eta**i, int(round(b)) if integral else _tidy(b)))
        out.append(Bracket(s, tuple(rungs)))
    return out


def asha_rungs(min_budget: Budget, max_budget: Budget, eta: int, skip: int = 0) -> list[Budget]:
    """ASHA milestones ``min_budget * eta**k`` for ``k >= skip`` up to ``max_budget``, ending
    with ``max_budget`` itself (where trials end anyway: recorded, never decided).

    ``skip`` is the bracket of asynchronous Hyperband: bracket ``b`` starts at
    ``min_budget * eta**b`` (Ray Tune's AsyncHyperBand, Optuna's HyperbandPruner).
    """
    top = s_max(min_budget, max_budget, eta)
    integral = _integral(min_budget, max_budget)
    out: list[Budget] = []
    for k in range(skip, top + 1):
        b = min_budget * eta**k
        if math.isclose(b, max_budget, rel_tol=_REL_TOL):
            b = max_budget
        out.append(b if integral else _tidy(b))
    if not out or out[-1] != max_budget:
        out.append(max_budget)
    return out


def interleave(weights: Sequence[int]) -> list[int]:
    """A deterministic order of indices where index ``i`` appears ``weights[i]`` times, spread
    evenly (smooth weighted round robin) so that any window of trials covers every bracket."""
    total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda j: (current[j], -j))
        current[best] -= total
        out.append(best)
    return out


def check_budgets(min_budget: Any, max_budget: Any, eta: Any) -> None:
    """Validate the three numbers every rung rule needs; each message names the key."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Integral) or eta < 2:
        raise ConfigError(f"scheduler.eta: must be an integer >= 2, got {eta!r}")
    if max_budget is None:
        raise ConfigError(
            "scheduler.max_budget: required (how far one trial may go, in report steps, "
            "e.g. the number of epochs)"
        )
    for key, v in (("min_budget", min_budget), ("max_budget", max_budget)):
        if not _is_number(v) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"scheduler.{key}: must be a number > 0, got {v!r}")
    if min_budget >= max_budget:
        raise ConfigError(
            f"scheduler.min_budget: must be < max_budget, got min_budget={min_budget}, "
            f"max_budget={max_budget}"
        )
    if not _le(min_budget * eta, max_budget):
        raise ConfigError(
            f"scheduler.max_budget: must be >= min_budget * eta = {min_budget * eta} so that "
            f"at least one rung can stop a trial, got max_budget={max_budget}"
        )


# -- records (resume) ------------------------------------------------------------------------
class Record(NamedTuple):
    """One reported value, or one started trial with nothing reported (``step=None``).

    ``state`` is the trial's state when the records were taken (the same on every row of a
    trial): ``RUNNING``, ``PAUSED`` (waiting at a rung of a synchronous bracket),
    ``INTERRUPTED``, ``COMPLETE``, ``PRUNED`` or ``FAILED``. ``budget`` is the budget of the
    job that made the report (it changes when a synchronous bracket promotes the trial);
    ``bracket`` the trial's bracket. Both may be ``None`` and are then inferred.
    A row with ``step=None`` and a ``value`` is the result of a job that reported nothing.
    """

    trial: int
    step: Budget | None
    value: float | None
    state: str = "RUNNING"
    bracket: int | None = None
    budget: Budget | None = None


def as_record(row: Record | Sequence[Any] | Mapping[str, Any]) -> Record:
    """Accept a :class:`Record`, a tuple ``(trial, step, value, state[, bracket, budget])`` or a
    mapping with those keys (what a tracking store hands back)."""
    if isinstance(row, Record):
        rec = row
    elif isinstance(row, Mapping):
        rec = Record(**{k: row[k] for k in Record._fields if k in row})
    else:
        rec = Record(*row)
    state = _norm_state(rec.state)
    if state not in _ALL_STATES:
        raise ReportError(
            f"record for trial {rec.trial!r}: unknown state {rec.state!r}; "
            f"one of {', '.join(sorted(_ALL_STATES))}"
        )
    if isinstance(rec.trial, bool) or not isinstance(rec.trial, numbers.Integral):
        raise ReportError(f"record {tuple(rec)!r}: trial must be an int")
    return rec._replace(trial=int(rec.trial), state=state)


# -- trial bookkeeping -----------------------------------------------------------------------
_END_STATES = {"COMPLETE", "PRUNED", "FAILED", "INTERRUPTED"}
_ALL_STATES = _END_STATES | {"RUNNING", "PAUSED"}
#: internal status -> the public state MLflow and the manager use
_PUBLIC = {
    "running": "RUNNING",
    "promoted": "PAUSED",
    "waiting": "PAUSED",
    "interrupted": "INTERRUPTED",
    "stopped": "PRUNED",
    "complete": "COMPLETE",
    "failed": "FAILED",
}
_FINAL = {"stopped", "complete", "failed"}


def _norm_state(state: Any) -> str:
    value = getattr(state, "value", state)  # TrialState is a str Enum
    return str(value).upper()


@dataclass
class TrialTrack:
    """What a rung rule knows about one trial. ``job`` = one submission of the trial (a
    synchronous bracket runs a trial once per rung; a retry is a new job too)."""

    trial: int
    bracket: int
    budget: Budget  # budget of the current job
    status: str = "running"
    level: int = 0  # synchronous brackets: rung index of the current job
    jobs: int = 1
    job_offset: float = 0.0  # steps already done when the current job started
    last_step: Budget | None = None  # last step reported by the current job
    last_value: float | None = None
    value_at_budget: float | None = None  # last value reported at a step <= budget (this job)
    max_step: float = 0.0  # highest step ever reported
    n_reports: int = 0
    consumed_before: float = 0.0  # budget used by earlier jobs
    last_decision: Decision = Decision.CONTINUE
    rungs: list[Budget] = field(default_factory=list)  # rung budgets reached
    stopped_step: Budget | None = None
    stopped_rung: Budget | None = None
    final_value: float | None = None

    @property
    def consumed(self) -> float:
        if self.last_step is None:
            return self.consumed_before
        return self.consumed_before + max(0.0, self.last_step - self.job_offset)

    def new_job(self, budget: Budget) -> None:
        self.consumed_before = self.consumed
        self.budget = budget
        self.jobs += 1
        self.last_step = None
        self.last_value = None
        self.value_at_budget = None
        self.job_offset = 0.0
        self.last_decision = Decision.CONTINUE
        self.status = "running"

    def end_job_without_reports(self) -> None:
        """A job that reported nothing is assumed to have run its whole budget, continuing
        from where the trial was (the least it can have cost)."""
        if self.last_step is None and self.budget > self.max_step:
            self.consumed_before += self.budget - self.max_step
            self.max_step = self.budget


#: a saved state lists each trial as one row of these fields (header written once, so a
#: state is about a hundred bytes per trial, not a dict of names per trial)
_TRACK_FIELDS = [f.name for f in dataclasses.fields(TrialTrack)]


def _pack_track(track: TrialTrack) -> list[Any]:
    row: list[Any] = []
    for name in _TRACK_FIELDS:
        v = getattr(track, name)
        if isinstance(v, Decision):
            v = v.value
        elif isinstance(v, list):
            v = [pack_float(x) for x in v]
        row.append(pack_float(v))
    return row


def _unpack_track(row: list[Any]) -> TrialTrack:
    if len(row) != len(_TRACK_FIELDS):
        raise ConfigError(
            f"scheduler state: a trial row has {len(row)} fields, expected {len(_TRACK_FIELDS)}"
        )
    values: dict[str, Any] = {}
    for name, v in zip(_TRACK_FIELDS, row, strict=True):
        if name == "status":
            if v not in _PUBLIC:
                raise ConfigError(f"scheduler state: unknown trial status {v!r}")
        elif name == "last_decision":
            v = Decision(v)
        elif isinstance(v, list):
            v = [unpack_float(x) for x in v]
        else:
            v = unpack_float(v)
        values[name] = v
    return TrialTrack(**values)


S = TypeVar("S", bound="RungScheduler")


class RungScheduler(Scheduler):
    """Shared base of ``sha``, ``asha``, ``asha_promotion``, ``hyperband`` and ``async_hyperband``.

    Subclasses implement ``_start`` (a new trial), ``_restart`` (a known trial submitted
    again: promotion or retry), ``_decide`` (one valid report), ``_complete`` (a job ended)
    and ``_replay`` (rebuild from records). Everything else (report checks, budget
    accounting, ``trial_info``, ``budget_summary``, ``records``, ``pop_finished``) is here.
    """

    tracks_trials = True

    def __init__(
        self,
        mode: str,
        min_budget: Budget | None,
        max_budget: Budget | None,
        eta: int,
        unknown: Mapping[str, Any],
        **options: Any,
    ) -> None:
        if min_budget is None:
            min_budget = 1
        super().__init__(mode, min_budget=min_budget, max_budget=max_budget, eta=eta, **options)
        reject_unknown(self.name, dict(unknown), ["mode", "min_budget", "max_budget", "eta", *options])
        check_budgets(min_budget, max_budget, eta)
        self.min_budget: Budget = min_budget
        self.max_budget: Budget = max_budget  # type: ignore[assignment]
        self.eta: int = int(eta)
        self.s_max = s_max(min_budget, max_budget, eta)  # type: ignore[arg-type]
        self._trials: dict[int, TrialTrack] = {}
        self._log: list[tuple[int, Budget | None, float | None, Budget]] = []
        self._finished: list[tuple[int, str]] = []
        self._replaying = False
        self._log_complete = True  # False once rebuilt from a state: it holds no reports

    # -- subclass hooks ---------------------------------------------------------------------
    def _start(self, trial: int, budget: Budget | None, bracket: int | None) -> TrialTrack:
        raise NotImplementedError

    def _restart(self, track: TrialTrack, budget: Budget | None) -> None:
        raise NotImplementedError

    def _decide(self, track: TrialTrack, step: Budget, score: float) -> Decision:
        raise NotImplementedError

    def _complete(self, track: TrialTrack, state: str, value: float | None) -> None:
        raise NotImplementedError

    def _replay(self, rows: list[Record]) -> None:
        raise NotImplementedError

    def _bracket_s(self, bracket: int) -> int:
        """The textbook index ``s`` (number of halvings) of a bracket id."""
        raise NotImplementedError

    def _dump_rungs(self) -> dict[str, Any]:
        """The subclass's part of the saved state: what its rungs and brackets hold."""
        raise NotImplementedError

    def _load_rungs(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- the Scheduler interface ------------------------------------------------------------
    def on_start(
        self, trial: int, budget: Budget | None = None, bracket: int | None = None
    ) -> None:
        """A job for ``trial`` was submitted: a new trial, a promotion, or a retry."""
        track = self._trials.get(trial)
        if track is None:
            self._start(trial, budget, bracket)
            return
        if track.status in _FINAL:
            raise ReportError(
                f"trial {trial} already finished ({_PUBLIC[track.status]}); "
                "it cannot be started again"
            )
        self._restart(track, budget)

    def on_report(self, trial: int, step: Budget, value: float) -> Decision:
        """Check the report, record it, decide. A bad report raises :class:`ReportError`
        before anything is recorded; the same report sent twice (an RPC retry) gets the same
        answer and is recorded once."""
        step, value = _check_report(trial, step, value)
        track = self._trials.get(trial)
        if track is not None:
            if (
                track.last_step is not None
                and step == track.last_step
                and _same(value, track.last_value)
            ):
                return track.last_decision
            self._check_can_report(track, step, value)
            if track.status in ("promoted", "interrupted"):
                # the report overtook on_start (both travel to the scheduler separately)
                self._restart(track, None)
        else:
            track = self._start(trial, None, None)
        self._log.append((trial, step, value, track.budget))
        score = self.score(value)
        if not math.isfinite(score) and not self._replaying:
            warnings.warn(
                f"trial {trial}: value {value!r} at step {step} is not finite; "
                "treated as the worst value",
                RuntimeWarning,
                stacklevel=2,
            )
        if track.last_step is None:  # first report of this job: continued or started over?
            track.job_offset = track.max_step if step > track.max_step else 0.0
        track.last_step = step
        track.last_value = value
        track.max_step = max(track.max_step, step)
        track.n_reports += 1
        if _le(step, track.budget):
            track.value_at_budget = value
        decision = self._decide(track, step, score)
        track.last_decision = decision
        return decision

    def on_complete(self, trial: int, state: str, value: float | None = None) -> None:
        """A job ended: ``COMPLETE``, ``PRUNED``, ``FAILED`` or ``INTERRUPTED`` (not
        finished: it will be submitted again). For synchronous brackets a ``COMPLETE`` job
        below ``max_budget`` is not a finished trial: see :meth:`pop_finished`."""
        st = _norm_state(state)
        if st not in _END_STATES:
            raise ReportError(
                f"trial {trial}: on_complete state must be one of "
                f"{', '.join(sorted(_END_STATES))}, got {state!r}"
            )
        if value is not None and not _is_number(value):
            raise ReportError(f"trial {trial}: value must be a number or None, got {value!r}")
        track = self._trials.get(trial)
        if track is None:
            track = self._start(trial, None, None)
        if value is not None:
            track.final_value = float(value)
        if track.status in _FINAL or track.status in ("waiting", "promoted"):
            return  # already decided (e.g. PRUNED after our STOP): nothing new
        if value is not None and track.last_step is None:
            self._log.append((trial, None, float(value), track.budget))
        self._complete(track, st, None if value is None else float(value))

    def budget_for(self, trial: int | None) -> Budget | None:
        """Budget of the trial's current job; for a new trial, the budget it would get."""
        if trial is not None and trial in self._trials:
            return self._trials[trial].budget
        return self.max_budget

    # -- what the manager and MLflow read ---------------------------------------------------
    def pop_finished(self) -> list[tuple[int, str]]:
        """Trials whose fate was settled since the last call, each once, as
        ``(trial, "COMPLETE" | "PRUNED" | "FAILED")``. For synchronous brackets this is how the
        manager learns that a trial waiting at a rung was not promoted (it is then PRUNED at
        that rung) and should be told to the sampler and closed in MLflow."""
        out, self._finished = self._finished, []
        return out

    def trials(self) -> list[int]:
        """The trial numbers this scheduler knows, in the order they started."""
        return list(self._trials)

    def trial_info(self, trial: int) -> dict[str, Any]:
        """Everything MLflow should show about one trial (tags ``hpo.bracket``, ...)."""
        t = self._trials.get(trial)
        if t is None:
            raise KeyError(f"trial {trial} is unknown to the {self.name!r} scheduler")
        return {
            "trial": t.trial,
            "state": _PUBLIC[t.status],
            "bracket": t.bracket,
            "bracket_s": self._bracket_s(t.bracket),
            "budget": t.budget,
            "jobs": t.jobs,
            "rungs_reached": list(t.rungs),
            "budget_consumed": _num(t.consumed),
            "last_step": _num(t.max_step) if t.n_reports else None,
            "n_reports": t.n_reports,
            "stopped_step": t.stopped_step,
            "stopped_rung": t.stopped_rung,
        }

    def budget_summary(self) -> dict[str, Any]:
        """Study-level numbers for the parent MLflow run: what was spent, what a run without
        pruning would have needed for the same trials, and how many trials reached each rung."""
        consumed = sum(t.consumed for t in self._trials.values())
        without = len(self._trials) * self.max_budget
        per_budget: dict[Budget, int] = {}
        for t in self._trials.values():
            for b in t.rungs:
                per_budget[b] = per_budget.get(b, 0) + 1
        states: dict[str, int] = {}
        for t in self._trials.values():
            states[_PUBLIC[t.status]] = states.get(_PUBLIC[t.status], 0) + 1
        return {
            "n_trials": len(self._trials),
            "budget_consumed": _num(consumed),
            "budget_without_pruning": _num(without),
            "savings_ratio": (without / consumed) if consumed else None,
            "trials_per_budget": dict(sorted(per_budget.items())),
            "trials_per_state": dict(sorted(states.items())),
        }

    def records(self) -> list[Record]:
        """All reports in arrival order (plus one row per trial that reported nothing), enough
        for :meth:`from_records` to rebuild this scheduler exactly."""
        if not self._log_complete:
            raise RuntimeError(
                f"this {self.name!r} scheduler was rebuilt from a saved state, which keeps no "
                "reports; save its state() again instead of its records()"
            )
        out = []
        seen = set()
        for trial, step, value, budget in self._log:
            t = self._trials[trial]
            seen.add(trial)
            out.append(Record(trial, step, value, _PUBLIC[t.status], t.bracket, budget))
        for trial, t in self._trials.items():
            if trial not in seen:
                out.append(Record(trial, None, None, _PUBLIC[t.status], t.bracket, t.budget))
        return out

    @classmethod
    def from_records(
        cls: type[S], records: Iterable[Record | Sequence[Any] | Mapping[str, Any]], **options: Any
    ) -> S:
        """Rebuild a scheduler from recorded reports (resume from the tracking store).

        Recorded outcomes win over re-deciding: a trial recorded past a rung was promoted
        there, a PRUNED trial stays stopped, so a resumed study prunes as if it had never
        stopped. Trials settled only by this replay are returned by :meth:`pop_finished`.
        """
        self = cls(**options)
        rows = [as_record(r) for r in records]
        recorded_state = {r.trial: r.state for r in rows}
        self._replaying = True
        try:
            self._replay(rows)
        finally:
            self._replaying = False
        self._finished = [
            (t, s)
            for t, s in self._finished
            if recorded_state.get(t) not in ("COMPLETE", "PRUNED", "FAILED")
        ]
        return self

    # -- saved state (resume) ---------------------------------------------------------------
    def _dump_state(self) -> dict[str, Any]:
        """Every trial's bookkeeping (one row each, in start order), the settled trials not yet
        popped, and what the rungs hold (the subclass's part). Not the reports: no decision
        reads them again (they are kept only for :meth:`records`)."""
        return {
            "trials": {
                "fields": list(_TRACK_FIELDS),
                "rows": [_pack_track(t) for t in self._trials.values()],
            },
            "finished": [[t, state] for t, state in self._finished],
            **self._dump_rungs(),
        }

    def _load_state(self, data: dict[str, Any]) -> None:
        trials = data["trials"]
        if trials["fields"] != _TRACK_FIELDS:
            raise ConfigError(
                f"scheduler state: trial fields {trials['fields']!r} are not this version's "
                f"{_TRACK_FIELDS!r}"
            )
        for row in trials["rows"]:
            track = _unpack_track(row)
            self._trials[track.trial] = track
        self._finished = [(int(t), str(state)) for t, state in data["finished"]]
        self._load_rungs(data)
        self._log_complete = False

    def _known(self, trials: Iterable[int], where: str) -> list[int]:
        """``trials`` from a saved state, checked against the trials the state holds."""
        out = list(trials)
        for t in out:
            if t not in self._trials:
                raise ConfigError(
                    f"scheduler state: {where} names trial {t!r}, which the state does not hold"
                )
        return out

    # -- helpers ----------------------------------------------------------------------------
    def _finish(self, track: TrialTrack, status: str) -> None:
        track.status = status
        self._finished.append((track.trial, _PUBLIC[status]))

    def _stop(self, track: TrialTrack, rung: Budget | None) -> None:
        track.stopped_step = track.last_step if track.last_step is not None else track.max_step
        track.stopped_rung = rung
        self._finish(track, "stopped")

    def _check_can_report(self, track: TrialTrack, step: Budget, value: float) -> None:
        trial = track.trial
        if track.status == "stopped":
            raise ReportError(
                f"trial {trial} was stopped at step {track.stopped_step} (rung "
                f"{track.stopped_rung}); it cannot report step {step}: end the objective "
                "when trial.should_prune() is True"
            )
        if track.status in ("complete", "failed"):
            raise ReportError(
                f"trial {trial} already finished ({_PUBLIC[track.status]}); "
                f"it cannot report step {step}"
            )
        if track.status == "waiting":
            raise ReportError(
                f"trial {trial} ended its job at budget {track.budget} and waits for its rung "
                f"to be decided; it cannot report step {step} before it is started again"
            )
        if track.status == "running" and track.last_step is not None:
            if step < track.last_step:
                raise ReportError(
                    f"trial {trial}: steps must increase within a run, got step {step} "
                    f"after step {track.last_step}"
                )
            if step == track.last_step:
                raise ReportError(
                    f"trial {trial}: step {step} was already reported with value "
                    f"{track.last_value!r}, got {value!r}"
                )

    def _apply_recorded_end(self, track: TrialTrack, state: str) -> None:
        """Force the final state a replayed trial had when it was recorded."""
        if state == "PRUNED":
            track.stopped_step = track.max_step if track.last_step is None else track.last_step
            track.stopped_rung = track.rungs[-1] if track.rungs else None
            self._finish(track, "stopped")
        elif state == "COMPLETE":
            self._finish(track, "complete")
        elif state == "FAILED":
            self._finish(track, "failed")
        elif state == "INTERRUPTED":
            track.status = "interrupted"


def _check_report(trial: int, step: Any, value: Any) -> tuple[Budget, float]:
    if step is None:
        raise ReportError(
            f"trial {trial}: report(value={value!r}) has no step; pass step= (the budget used "
            "so far, e.g. the epoch number) so that rungs can be compared"
        )
    if not _is_number(step) or not math.isfinite(step) or step < 0:
        raise ReportError(f"trial {trial}: step must be a number >= 0, got {step!r}")
    if value is None or not _is_number(value):
        raise ReportError(f"trial {trial}: value at step {step} must be a number, got {value!r}")
    step = int(step) if isinstance(step, numbers.Integral) else float(step)
    return step, float(value)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _num(x: float) -> Budget:
    """Print 12.0 as 12 in tags and summaries."""
    return int(x) if float(x).is_integer() else x
