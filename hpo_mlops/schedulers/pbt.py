"""Population Based Training (Jaderberg et al. 2017), asynchronous as in Ray Tune.

Why a rule that plans jobs, like ``sha``: a member trains ``perturbation_interval`` budget
units (epochs...) per job and ends its job there, freeing its slot, so a population larger
than the slots is time-shared (a paused member waits for a slot, as a trial waiting at a
rung does). At the end of each job its last score is recorded and the rule decides its next
job at once:

* in the bottom ``quantile_fraction`` of the population's latest scores: it **exploits**
  (its next job starts from the checkpoint of a random member of the top quantile that has
  trained at least as far, as that checkpoint was at the member's own budget) and **explores** (each hyperparameter of the donor: with
  probability ``resample_probability`` a fresh sample from the space, otherwise a number
  multiplied by one of ``perturbation_factors`` and clipped to the space, an integer
  likewise and rounded, a ``choices`` one moved to a neighbouring option);
* otherwise it continues with its own params and checkpoint;

until it has trained ``max_budget``. :meth:`plan` hands out new members first (until the
population is complete: ``population_size``, by default every trial of the study), then the
member that has trained least (fair share, as Ray Tune's ``choose_trial_to_run``).

Why the donor's checkpoint *at a budget*: the donor keeps training while the member copies
it, so the slot keeps a snapshot of every member's checkpoint folder at each interval
(``trial-N@budget``, beside ``trial-N``), and an exploit copies one that no longer changes.

Each member keeps its schedule: its params over budget, the donor's schedule up to the point
it cloned, so the best member's schedule is what trained its weights (``study.best_schedule``).
Decisions are deterministic (random draws seeded by ``seed``, the member and the budget), so
a rule rebuilt from :meth:`state` decides as the one that saved it.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from hpo_mlops.errors import ConfigError, ReportError
from hpo_mlops.schedulers.base import (
    Decision,
    Job,
    Scheduler,
    pack_float,
    reject_unknown,
    unpack_float,
)

_OPTIONS = ["mode", "perturbation_interval", "max_budget", "population_size",
            "quantile_fraction", "resample_probability", "perturbation_factors", "seed"]
_FINAL = ("complete", "pruned", "failed")
_PUBLIC = {"running": "RUNNING", "ready": "PAUSED", "interrupted": "INTERRUPTED",
           "complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAILED"}


@dataclass
class _Member:
    """One member of the population; ``start``..``budget`` is its current (or next) job."""

    status: str = "running"
    start: float = 0  # budget trained when the job starts (after a clone: the clone's)
    budget: float = 0  # budget trained when the job ends
    params: dict[str, Any] | None = None  # the job's params (None: not told, see on_params)
    clone: list[Any] | None = None  # [donor, budget]: the job starts from that checkpoint
    score: float | None = None  # latest score at an interval (lower is better)
    progress: float = 0  # budget at the latest interval reached
    jobs: int = 1
    consumed_before: float = 0
    job_offset: float = 0
    last_step: float | None = None
    last_value: float | None = None
    value_at_budget: float | None = None
    n_reports: int = 0
    last_decision: str = Decision.CONTINUE.value
    schedule: list[list[Any]] = field(default_factory=list)  # [budget, params, donor]
    donors: list[list[Any]] = field(default_factory=list)  # [at budget, donor]
    #: the params each of its own jobs ran with, [budget, params], only ever appended: what
    #: MLflow's pbt.<param> metrics show (the schedule above is rewritten on an exploit, and
    #: a metric point once written cannot be taken back)
    own: list[list[Any]] = field(default_factory=list)

    @property
    def consumed(self) -> float:
        if self.last_step is None:
            return self.consumed_before
        return self.consumed_before + max(0.0, self.last_step - self.job_offset)


def _number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


class PBTScheduler(Scheduler):
    """Asynchronous PBT: exploit a top member's checkpoint, explore its params, per interval."""

    name = "pbt"
    plans_budgets = True
    tracks_trials = True
    #: the Dask plugin binds the study's space (explore samples and clips in it) and the
    #: ledger tells the rule each new member's params (``on_params``)
    needs_space: ClassVar[bool] = True
    #: slots keep a snapshot of the checkpoint folder at the end of each job (donors)
    clones_checkpoints: ClassVar[bool] = True

    def __init__(
        self,
        mode: str = "min",
        perturbation_interval: float | None = None,
        max_budget: float | None = None,
        population_size: int | None = None,
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        perturbation_factors: Any = (1.2, 0.8),
        seed: int | None = None,
        **unknown: Any,
    ) -> None:
        reject_unknown(self.name, unknown, _OPTIONS)
        if not _number(perturbation_interval) or perturbation_interval <= 0:
            raise ConfigError(
                "scheduler.perturbation_interval: must be a number > 0 (budget units, e.g. "
                f"epochs, each member trains between two exploit/explore steps), got "
                f"{perturbation_interval!r}"
            )
        if not _number(max_budget) or max_budget < perturbation_interval:
            raise ConfigError(
                "scheduler.max_budget: must be a number >= perturbation_interval (the budget "
                f"each member trains in all), got {max_budget!r}"
            )
        if population_size is not None and (
            isinstance(population_size, bool) or not isinstance(population_size, int)
            or population_size < 2
        ):
            raise ConfigError(
                "scheduler.population_size: must be an integer >= 2, or left out (every trial "
                f"of the study is a member), got {population_size!r}"
            )
        if not _number(quantile_fraction) or not 0 < quantile_fraction <= 0.5:
            raise ConfigError(
                "scheduler.quantile_fraction: must be a number in (0, 0.5] (the share of the "
                f"population that exploits, and the share it copies from), got "
                f"{quantile_fraction!r}"
            )
        if not _number(resample_probability) or not 0 <= resample_probability <= 1:
            raise ConfigError(
                "scheduler.resample_probability: must be a number in [0, 1], got "
                f"{resample_probability!r}"
            )
        if (
            not isinstance(perturbation_factors, list | tuple) or not perturbation_factors
            or not all(_number(f) and f > 0 for f in perturbation_factors)
        ):
            raise ConfigError(
                "scheduler.perturbation_factors: must be a non-empty list of numbers > 0 "
                f"(e.g. [1.2, 0.8]), got {perturbation_factors!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"scheduler.seed: must be an integer, got {seed!r}")
        options: dict[str, Any] = {
            "perturbation_interval": perturbation_interval, "max_budget": max_budget,
            "quantile_fraction": quantile_fraction, "resample_probability": resample_probability,
            "perturbation_factors": list(perturbation_factors),
        }
        if population_size is not None:
            options["population_size"] = population_size
        if seed is not None:
            options["seed"] = seed
        super().__init__(mode, **options)
        self.interval, self.max_budget = perturbation_interval, max_budget
        self.population_size = population_size
        self.quantile_fraction, self.resample_probability = quantile_fraction, resample_probability
        self.factors = list(perturbation_factors)
        self.seed = 0 if seed is None else seed
        self.space: Any = None
        self._members: dict[int, _Member] = {}
        self._finished: list[tuple[int, str]] = []
        self._new_params: dict[int, dict[str, Any]] = {}
        self._no_new = False
        self.exploits = 0

    # -- what the engine tells it -------------------------------------------------------------
    def bind_space(self, space: Any) -> None:
        """The study's search space (a dict as ``Space.to_dict`` writes it, or a ``Space``):
        explore resamples and clips in it. Without one, exploit copies the donor's params."""
        from hpo_mlops.space import Space

        self.space = Space.from_dict(space)

    def on_params(self, trial: int, params: dict[str, Any]) -> None:
        """A new member's params (from the sampler), told just before its ``on_start``."""
        self._new_params[trial] = dict(params)

    # -- planning -----------------------------------------------------------------------------
    def _first_budget(self) -> float:
        return _num(min(self.interval, self.max_budget))

    def _welcome(self) -> int:
        if self._no_new:
            return 0
        if self.population_size is None:
            return 1 << 30
        return max(0, self.population_size - len(self._members))

    def plan(self, n: int) -> list[Job]:
        """Interrupted jobs first, then new members (the population is built first), then
        paused members, least trained first and, among equals, best first: the worst then
        reach each interval last, when the others they may copy have reached it too.
        Reserves nothing."""
        waiting = sorted(
            (m.status != "interrupted", m.start, math.inf if m.score is None else m.score, t)
            for t, m in self._members.items() if m.status in ("ready", "interrupted")
        )
        reruns = [t for first, _, _, t in waiting if not first]
        ready = [t for first, _, _, t in waiting if first]
        jobs = [self._job(t) for t in reruns[:n]]
        new = min(n - len(jobs), self._welcome())
        jobs += [Job(None, self._first_budget()) for _ in range(new)]
        jobs += [self._job(t) for t in ready[: n - len(jobs)]]
        return jobs

    def _job(self, trial: int) -> Job:
        m = self._members[trial]
        return Job(trial, m.budget, None,
                   params=None if m.params is None else dict(m.params),
                   clone=None if m.clone is None else list(m.clone))

    def budget_for(self, trial: int | None) -> float | None:
        if trial is not None and trial in self._members:
            return self._members[trial].budget
        return self._first_budget()

    def end_new_trials(self) -> None:
        self._no_new = True

    # -- a member's jobs ----------------------------------------------------------------------
    def on_start(self, trial: int, budget: float | None = None, bracket: int | None = None) -> None:
        m = self._members.get(trial)
        if m is None:
            self._add(trial)
            return
        if m.status in _FINAL:
            raise ReportError(
                f"trial {trial} already finished ({_PUBLIC[m.status]}); it cannot be started again"
            )
        self._new_job(m)

    def _add(self, trial: int) -> _Member:
        params = self._new_params.pop(trial, None)
        m = _Member(budget=self._first_budget(), params=params, schedule=[[0, params, None]],
                    own=[[0, params]])
        self._members[trial] = m
        return m

    @staticmethod
    def _new_job(m: _Member) -> None:
        m.consumed_before = m.consumed
        m.jobs += 1
        m.status = "running"
        m.last_step = m.last_value = m.value_at_budget = None
        m.job_offset = 0
        m.last_decision = Decision.CONTINUE.value

    def on_report(self, trial: int, step: int, value: float) -> Decision:
        """``STOP`` only past the job's budget (the job has used it); PBT stops nothing."""
        if isinstance(step, bool) or not isinstance(step, numbers.Real):
            raise ReportError(f"trial {trial}: step must be a number, got {step!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ReportError(f"trial {trial}: value must be a number, got {value!r}")
        value = float(value)
        m = self._members.get(trial) or self._add(trial)
        if m.last_step is not None and step == m.last_step and (
            value == m.last_value or (math.isnan(value) and math.isnan(m.last_value or 0.0))
        ):
            return Decision(m.last_decision)  # an RPC retry: the same answer
        if m.status in _FINAL:
            raise ReportError(f"trial {trial} already finished ({_PUBLIC[m.status]})")
        if m.status in ("ready", "interrupted"):  # the report overtook on_start
            self._new_job(m)
        if m.last_step is None:  # first report of this job: continued, or started over?
            m.job_offset = m.start if step > m.start else 0
        m.last_step, m.last_value = step, value
        m.n_reports += 1
        within = step <= m.budget or math.isclose(step, m.budget, rel_tol=1e-9)
        if within:
            m.value_at_budget = value
        decision = Decision.CONTINUE if within else Decision.STOP
        m.last_decision = decision.value
        return decision

    def on_complete(self, trial: int, state: str, value: float | None = None) -> None:
        st = str(state).upper()
        m = self._members.get(trial) or self._add(trial)
        if m.status != "running":
            return  # already decided (a repeat, or a job end after a restore planned it)
        if st == "INTERRUPTED":
            m.status = "interrupted"
            return
        if st == "FAILED":
            m.status, m.score = "failed", None
            self._finished.append((trial, "FAILED"))
            return
        v = m.value_at_budget
        if v is None:
            v = value if value is not None else m.last_value
        m.score = self.score(v) if v is not None else math.inf
        m.progress = m.budget
        if st == "PRUNED":  # stopped (past its budget, or by a bound): it ends here
            m.status = "pruned"
            self._finished.append((trial, "PRUNED"))
        elif m.budget >= self.max_budget or math.isclose(m.budget, self.max_budget):
            m.status = "complete"
            self._finished.append((trial, "COMPLETE"))
        else:
            self._next(trial, m)

    # -- exploit and explore ------------------------------------------------------------------
    def _quantiles(self) -> tuple[list[int], list[int]]:
        """(top, bottom) of the members' latest scores, as Ray Tune's ``_quantiles``: each
        ``ceil(n * quantile_fraction)`` members, at most half the population."""
        ranked = [t for _, t in sorted((m.score, t) for t, m in self._members.items()
                                       if m.score is not None)]
        if len(ranked) <= 1:
            return [], []
        k = min(math.ceil(len(ranked) * self.quantile_fraction), len(ranked) // 2)
        return ranked[:k], ranked[len(ranked) - k:]

    def _next(self, trial: int, m: _Member) -> None:
        """The member reached an interval: plan its next job (exploit + explore, or go on)."""
        top, bottom = self._quantiles()
        at = m.progress
        # donors that trained at least as far: the member copies them as they were at its
        # own budget, so no member goes back (a paused donor behind it would send it back
        # again and again) and the schedule stays one value per interval
        top = [t for t in top if self._members[t].progress >= at]
        if trial in bottom and top:
            rng = random.Random(f"pbt/{self.seed}/{trial}/{at!r}")
            donor = rng.choice(top)
            d = self._members[donor]
            when = _num(at)
            params = self._explore(d.params, rng)
            m.schedule = [list(e) for e in d.schedule if e[0] < when]
            m.schedule.append([when, params, donor])
            m.donors.append([when, donor])
            m.params, m.clone, m.start = params, [donor, when], when
            m.own.append([when, params])
            self.exploits += 1
        else:
            m.clone, m.start = None, at
            m.schedule.append([_num(at), m.params, None])
            m.own.append([_num(at), m.params])
        m.budget = _num(min(m.start + self.interval, self.max_budget))
        m.status = "ready"

    def _explore(self, params: dict[str, Any] | None, rng: random.Random) -> dict[str, Any] | None:
        """The donor's params, perturbed or resampled one by one inside the space."""
        if params is None or self.space is None:
            return None if params is None else dict(params)
        import numpy as np

        from hpo_mlops.space import Choices, RandInt

        gen = np.random.default_rng(rng.getrandbits(64))
        out: dict[str, Any] = {}
        for p in self.space:
            if p.condition is not None and not p.condition.holds(out):
                continue
            old = params.get(p.name)
            if old is None or rng.random() < self.resample_probability:
                out[p.name] = p.dist.sample(gen)
            elif isinstance(p.dist, Choices):
                i = p.dist.index(old) if p.dist.contains(old) else 0
                i = min(max(i + rng.choice((-1, 1)), 0), len(p.dist.options) - 1)
                out[p.name] = p.dist.options[i]
            elif isinstance(old, numbers.Real) and not isinstance(old, bool):
                new = old * rng.choice(self.factors)
                out[p.name] = p.dist.clip(new) if hasattr(p.dist, "clip") else new
                if isinstance(p.dist, RandInt):
                    out[p.name] = int(out[p.name])
            else:
                out[p.name] = old
        return out

    # -- what the manager and MLflow read -----------------------------------------------------
    def pop_finished(self) -> list[tuple[int, str]]:
        out, self._finished = self._finished, []
        return out

    def trial_info(self, trial: int) -> dict[str, Any]:
        m = self._members.get(trial)
        if m is None:
            raise KeyError(f"trial {trial} is unknown to the {self.name!r} scheduler")
        return {
            "trial": trial,
            "state": _PUBLIC[m.status],
            "budget": m.budget,
            "jobs": m.jobs,
            "budget_consumed": _num(m.consumed),
            "n_reports": m.n_reports,
            "pbt_schedule": [list(e) for e in m.schedule],
            "pbt_donors": [list(e) for e in m.donors],
            "pbt_params": [list(e) for e in m.own],
        }

    def budget_summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for m in self._members.values():
            states[_PUBLIC[m.status]] = states.get(_PUBLIC[m.status], 0) + 1
        return {
            "n_trials": len(self._members),
            "budget_consumed": _num(sum(m.consumed for m in self._members.values())),
            "exploits": self.exploits,
            "trials_per_state": dict(sorted(states.items())),
        }

    # -- saved state --------------------------------------------------------------------------
    def _dump_state(self) -> dict[str, Any]:
        """Every member as a dict (scores packed: inf is a failed or unscored job), the
        settled trials not yet popped, the exploit count. Not ``end_new_trials`` (see
        :meth:`~hpo_mlops.schedulers.base.Scheduler.from_state`)."""
        members = []
        for t, m in self._members.items():
            row = asdict(m)
            row["score"] = pack_float(m.score)
            row["last_value"] = pack_float(m.last_value)
            row["value_at_budget"] = pack_float(m.value_at_budget)
            members.append([t, row])
        return {"members": members, "finished": [list(f) for f in self._finished],
                "exploits": self.exploits}

    def _load_state(self, data: dict[str, Any]) -> None:
        try:
            for t, row in data["members"]:
                m = _Member(**row)
                m.score = unpack_float(m.score)
                m.last_value = unpack_float(m.last_value)
                m.value_at_budget = unpack_float(m.value_at_budget)
                self._members[int(t)] = m
            self._finished = [(int(t), str(s)) for t, s in data["finished"]]
            self.exploits = int(data["exploits"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"scheduler state: not a saved 'pbt' state ({exc})") from None
