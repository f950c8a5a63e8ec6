"""Promotion-based ASHA (Li et al. 2020, Algorithm 2; Syne Tune's ``type="promotion"``).

Why a second ASHA: ``asha`` is stopping-based, as in Ray Tune and Optuna: a trial reaching
a rung continues at once if it is in the top ``1/eta`` of what the rung holds *so far*, and
is stopped for good otherwise. So the first trial at every rung always continues (there is
nothing to compare it with), and early in a study several of the first trials run all the
way to ``max_budget`` before the sampler has learnt anything. On the digits MLP of
``bench/pruning.py`` that was most of ASHA's budget before its first hit.

Here, as in the paper, a trial ends its job at each rung and waits there; a waiting trial is
promoted when it is in the top ``floor(n / eta)`` of the ``n`` values its rung holds, which
can happen later, as the rung grows. So the first ``eta - 1`` trials of a rung wait until
there are ``eta`` to compare, and a trial that looked average early can still be promoted.
Workers never wait: :meth:`plan` hands out promotions first (deepest rung first, best
first) and new trials otherwise. Once no new trial will come (``n_trials`` were started),
each rung promotes its best (quota ``max(1, n // eta)``), so the best trial still reaches
``max_budget``; trials still waiting when the study ends are pruned at their rung.

The price is that of ``sha`` and ``hyperband``: a promoted trial resumes from its own
checkpoint (``trial.save`` / ``trial.load``) or starts over, and continues its MLflow run;
the sampler hears of a waiting trial at once (``Sampler.pause``). Planning, resume and
accounting are :mod:`hpo_mlops.schedulers.sha`'s.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from hpo_mlops.schedulers.brackets import Bracket, Budget, Record, Rung, asha_rungs
from hpo_mlops.schedulers.sha import SyncBracketScheduler, _SyncBracket


class PromotionASHAScheduler(SyncBracketScheduler):
    """ASHA as in the paper: pause at each rung, promote the top ``floor(n / eta)``."""

    name = "asha_promotion"

    def __init__(
        self,
        mode: str = "min",
        min_budget: Budget | None = None,
        max_budget: Budget | None = None,
        eta: int = 3,
        **unknown: Any,
    ) -> None:
        super().__init__(mode, min_budget, max_budget, eta, unknown)
        budgets = asha_rungs(self.min_budget, self.max_budget, self.eta)
        # one bracket whose bottom rung takes every new trial; the others grow by promotion
        rungs = (Rung(sys.maxsize, budgets[0]), *(Rung(0, b) for b in budgets[1:]))
        self._init_sync([Bracket(len(budgets) - 1, rungs)])

    def _try_close(self, b: _SyncBracket, i: int) -> None:
        # While records are replayed, only the promotions they hold are made: whether a
        # trial was in the top when it landed depends on the order trials landed in, which
        # records do not keep. The rest is decided on the final state (see ``_replay``).
        self._promote_top(b, i, computed=not self._replaying)

    def _promote_top(self, b: _SyncBracket, i: int, computed: bool = True) -> None:
        """Promote every waiting trial of rung ``i`` that is now in its top ``n // eta``
        (after ``end_new_trials``: at least the best one). Nothing is ever stopped here."""
        if i + 1 >= len(b.rungs):
            return
        rung = b.rungs[i]
        quota = 0
        if computed:
            quota = len(rung.landed) // self.eta
            if self._no_new:
                quota = max(1, quota)
        ranked = sorted((v, t) for t, v in rung.landed.items() if math.isfinite(v))
        top = {t for _, t in ranked[:quota]} | self._forced.get((b.id, i), set())
        for _, t in ranked:  # best first; a trial promoted before may wait further up
            track = self._trials[t]
            if t in top and track.status == "waiting" and track.level == i:
                self._promote(b, i, t)

    def end_new_trials(self) -> None:
        super().end_new_trials()
        self._promote_all()

    def _promote_all(self) -> None:
        for b in self._brackets:
            for i in range(len(b.rungs) - 1):
                self._promote_top(b, i)

    def _load_rungs(self, data: dict[str, Any]) -> None:
        super()._load_rungs(data)
        for b in self._brackets:  # rung 0 takes every new trial until end_new_trials
            b.accepting = True

    def _replay(self, rows: list[Record]) -> None:
        super()._replay(rows)
        for b in self._brackets:  # sha's replay closes a rung 0 that promoted; ours never is
            b.accepting = not self._no_new
        self._promote_all()  # what the live study had promoted by its last landing
