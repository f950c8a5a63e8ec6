"""A deliberately trivial third-party sampler: one seeded random point, proposed forever.

It exists to prove that a sampler shipped by someone else -- its own package, its own
``pyproject.toml``, one entry point in the ``hpo_mlops.samplers`` group -- is found by
name and passes the same contract as the built-ins. It imports only the public
interface (``hpo_mlops.samplers.Sampler``, ``hpo_mlops.results.Result``).

It refuses conditional spaces (the base class's check does that, from the flag) so the
contract suite also covers a plugin's refusal, and it accepts several objectives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpo_mlops.results import Result
from hpo_mlops.samplers import Sampler

__all__ = ["ConstantSampler"]


class ConstantSampler(Sampler):
    """Draws one point from the space with the study's seed and proposes it every time."""

    supports_conditional = False
    supports_multi_objective = True

    def _setup(self) -> None:
        assert self.space is not None
        self._point = self.space.sample(np.random.default_rng(self.seed))
        self.told = 0

    def ask(self, n: int = 1) -> list[dict[str, Any]]:
        return [dict(self._point) for _ in range(n)]

    def tell(self, params: dict[str, Any], result: Result) -> None:
        self.told += 1
