"""No early stopping: every trial runs to the end."""

from __future__ import annotations

from hpo_mlops.schedulers.base import Decision, Scheduler


class FIFOScheduler(Scheduler):
    name = "fifo"
    needs_reports = False

    def on_report(self, trial: int, step: int, value: float) -> Decision:
        return Decision.CONTINUE
