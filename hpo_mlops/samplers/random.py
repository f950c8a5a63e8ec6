"""Built-in random search; conditional and multi-objective spaces are fine."""

from __future__ import annotations

import numpy as np

from hpo_mlops.results import Result
from hpo_mlops.samplers.base import Params, Sampler


class RandomSampler(Sampler):
    supports_conditional = True
    supports_multi_objective = True
    name = "random"

    def _setup(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def ask(self, n: int = 1) -> list[Params]:
        assert self.space is not None, "setup() first"
        return [self.space.sample(self._rng) for _ in range(n)]

    def tell(self, params: Params, result: Result) -> None:
        """Random search learns nothing."""
