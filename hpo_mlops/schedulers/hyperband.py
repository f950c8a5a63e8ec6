"""Hyperband (Li et al. 2018): synchronous successive halving in every bracket.

Why brackets: successive halving must guess how early a trial can be judged; Hyperband
does not guess, it runs brackets ``s = s_max .. 0`` in turn, from "judge everyone after
``min_budget``" (81 trials at budget 1, for ``max_budget=81, eta=3``) to "no early
stopping at all" (5 trials at 81), each with about the same total budget. The bracket
table is exactly the paper's Table 1 (see :func:`~hpo_mlops.schedulers.brackets.hyperband_brackets`).

Brackets are numbered 0, 1, 2, ... in the order they are opened; bracket ``id`` has the
shape ``s = s_max - id % brackets`` (``trial_info`` gives both), so after the last bracket
the table starts again (the paper's outer loop). Several brackets run at once: while a rung
waits for its last trial, free workers take trials of the next bracket, so no worker
idles. Everything else (planning, promotions, resume) is :mod:`hpo_mlops.schedulers.sha`.
"""

from __future__ import annotations

from typing import Any

from hpo_mlops.errors import ConfigError
from hpo_mlops.schedulers.brackets import Budget, hyperband_brackets
from hpo_mlops.schedulers.sha import SyncBracketScheduler


class HyperbandScheduler(SyncBracketScheduler):
    """Synchronous Hyperband; ``brackets`` keeps only the first (most aggressive) ones."""

    name = "hyperband"

    def __init__(
        self,
        mode: str = "min",
        min_budget: Budget | None = None,
        max_budget: Budget | None = None,
        eta: int = 3,
        brackets: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__(mode, min_budget, max_budget, eta, unknown, brackets=brackets)
        shapes = hyperband_brackets(self.min_budget, self.max_budget, self.eta)
        if brackets is None:
            brackets = len(shapes)
            self.options["brackets"] = brackets
        if (
            isinstance(brackets, bool)
            or not isinstance(brackets, int)
            or not 1 <= brackets <= len(shapes)
        ):
            raise ConfigError(
                f"scheduler.brackets: must be an integer from 1 to {len(shapes)} (floor(log_eta("
                f"max_budget/min_budget)) + 1), got {brackets!r}"
            )
        self._init_sync(shapes[:brackets])
