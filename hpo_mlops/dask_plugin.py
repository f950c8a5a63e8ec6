"""Dask plugins: scheduler-side pruning decisions and worker-side study set-up.

* :class:`PruningPlugin` (a ``SchedulerPlugin``) hosts one scheduler rule per study on
  the Dask scheduler. Workers call its ``hpo_report`` handler over one RPC; because the
  scheduler's event loop runs handlers one at a time, decisions are consistent however
  many workers report at once, and they survive the loss of any worker.
* :class:`StudyPlugin` (a ``WorkerPlugin``) ships the objective to every worker once
  (not once per task) and runs ``setup()`` once per worker, workers joining later included.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from hpo_mlops import registry
from hpo_mlops.schedulers.base import Decision, Scheduler

PLUGIN_NAME = "hpo-mlops-pruning"


class PruningPlugin(SchedulerPlugin):
    name = PLUGIN_NAME
    idempotent = True  # one per Dask scheduler, shared by every study on it

    def __init__(self) -> None:
        self.rules: dict[str, Scheduler] = {}

    async def start(self, scheduler: Any) -> None:
        scheduler.handlers.update(
            {
                "hpo_register": self.register,
                "hpo_report": self.report,
                "hpo_complete": self.complete,
                "hpo_start": self.start_trial,
                "hpo_plan": self.plan,
                "hpo_info": self.info,
            }
        )

    # Handlers are plain functions: the scheduler calls them on its event loop, in order.
    def register(self, key: str, spec: Any, mode: str) -> dict:
        rule = registry.create(registry.SCHEDULERS, spec, Scheduler, mode=mode)
        self.rules[key] = rule
        return rule.describe()

    def report(self, key: str, trial: int, step: int, value: float) -> str:
        return self.rules[key].on_report(trial, step, value).value

    def complete(self, key: str, trial: int, state: str, value: float | None = None) -> None:
        self.rules[key].on_complete(trial, state, value)

    def start_trial(self, key: str, trial: int, budget: Any = None, bracket: Any = None) -> None:
        self.rules[key].on_start(trial, budget, bracket)

    def plan(self, key: str, n: int) -> list[tuple[Any, Any, Any]]:
        return [(j.trial, j.budget, j.bracket) for j in self.rules[key].plan(n)]

    def info(self, key: str) -> dict:
        rule = self.rules[key]
        summary = getattr(rule, "budget_summary", None)
        return {"describe": rule.describe(), "summary": summary() if summary else None}


def _ignore_sigint() -> None:
    """Ctrl-C is the manager's to handle: it records the running trials and closes the
    cluster. Worker processes in the terminal's process group would otherwise die on the
    same SIGINT, each printing a traceback, before the manager could do so."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def dask_reporter(key: str) -> Callable[[int, int, float], bool]:
    """A reporter for :class:`hpo_mlops.trial.Trial` that asks the scheduler plugin."""
    from distributed import get_worker
    from distributed.utils import sync

    worker = get_worker()

    def report(trial: int, step: int, value: float) -> bool:
        answer = sync(worker.loop, worker.scheduler.hpo_report,
                      key=key, trial=trial, step=step, value=value)
        return answer == Decision.STOP.value

    return report


class StudyPlugin(WorkerPlugin):
    """Holds a study's objective on each worker and the result of its ``setup()``."""

    idempotent = False

    def __init__(self, name: str, objective: Callable, setup: Callable[[], Any] | None) -> None:
        self.name = name
        self.objective = objective
        self.setup_fn = setup
        self.context: Any = None
        self.setup_error: str | None = None

    def setup(self, worker: Any) -> None:
        _ignore_sigint()
        if self.setup_fn is None:
            return
        try:
            self.context = self.setup_fn()
        except Exception as exc:  # recorded on every trial of this worker instead
            self.setup_error = f"setup() failed on {worker.address}: {exc!r}\n" + "".join(
                traceback.format_exc(limit=-8)
            )
