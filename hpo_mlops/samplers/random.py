"""Built-in random search; conditional and multi-objective spaces are fine."""

from __future__ import annotations

import numpy as np

from hpo_mlops.results import Result
from hpo_mlops.samplers.base import Params, Sampler


class RandomSampler(Sampler):
    """Independent draws from the space's priors with a seeded generator.

    Resume: every recorded trial told before the first ``ask`` stands for one draw of
    the earlier run, so the generator is advanced by that many draws first; a seeded
    study run as 10 + 10 trials then proposes exactly the 20 of one uninterrupted run.
    """

    supports_conditional = True
    supports_multi_objective = True
    #: draws are independent of the history: copies with their own seeds are one search
    replicable = True
    name = "random"

    def _setup(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._asked = False
        # id -> the recorded dict (kept so its id is not reused), counted once each even
        # when a paused trial is paused and later told
        self._recorded: dict[int, Params] = {}
        # trials other copies run (``running``): told later, but not recorded ones
        self._running: dict[int, Params] = {}

    def ask(self, n: int = 1) -> list[Params]:
        assert self.space is not None, "setup() first"
        if not self._asked:
            self._asked = True
            for _ in self._recorded:  # the draws the earlier run took
                self.space.sample(self._rng)
            self._recorded.clear()
            self._running.clear()
        return [self.space.sample(self._rng) for _ in range(n)]

    def tell(self, params: Params, result: Result) -> None:
        """Random search learns nothing; a recorded trial only moves the stream on."""
        self._record(params)

    def pause(self, params: Params, result: Result) -> None:
        """A trial paused in an earlier run is one draw of it, like a told one."""
        self._record(params)

    def running(self, params: Params) -> None:
        """Random search keeps nothing pending; the dict is only kept apart from recorded
        trials, so that its ``tell`` does not move the stream on."""
        if not self._asked:
            self._running[id(params)] = params

    def _record(self, params: Params) -> None:
        if self._asked or self._running.get(id(params)) is params:
            return
        self._recorded[id(params)] = params
