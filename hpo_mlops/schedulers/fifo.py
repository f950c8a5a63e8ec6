"""No early stopping: every trial runs to the end."""

from __future__ import annotations

from typing import Any

from hpo_mlops.schedulers.base import Decision, Scheduler, reject_unknown


class FIFOScheduler(Scheduler):
    name = "fifo"
    needs_reports = False

    def __init__(self, mode: str = "min", max_budget: float | None = None, **unknown) -> None:
        reject_unknown(self.name, unknown, ["mode", "max_budget"])
        options = {} if max_budget is None else {"max_budget": max_budget}
        super().__init__(mode, **options)

    def on_report(self, trial: int, step: int, value: float) -> Decision:
        return Decision.CONTINUE

    def _dump_state(self) -> dict[str, Any]:
        return {}  # it decides nothing: its options (in the state's header) are all it is

    def _load_state(self, data: dict[str, Any]) -> None:
        pass
