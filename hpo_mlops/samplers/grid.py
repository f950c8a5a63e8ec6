"""Built-in exhaustive grid: every combination once, conditional parameters expanded only
where their condition holds. Continuous parameters need a ``q=`` step."""

from __future__ import annotations

from typing import Any

import numpy as np

from hpo_mlops.errors import UnsupportedSpaceError
from hpo_mlops.results import Result
from hpo_mlops.samplers.base import Params, Sampler
from hpo_mlops.space import Space, SpaceError


def grid_points(space: Space) -> list[Params]:
    """All valid assignments; parents are ordered before children by the space."""
    points: list[dict[str, Any]] = [{}]
    for p in space:
        try:
            values = p.dist.grid()
        except SpaceError as exc:
            raise UnsupportedSpaceError(f"grid: {p.name}: {exc}") from None
        nxt = []
        for pt in points:
            if p.condition is not None and not p.condition.holds(pt):
                nxt.append(pt)
            else:
                nxt.extend({**pt, p.name: v} for v in values)
        points = nxt
    return points


class GridSampler(Sampler):
    """Visits the grid in a seeded random order (``shuffle=False`` keeps the natural order)."""

    supports_conditional = True
    supports_multi_objective = True
    name = "grid"

    def _setup(self) -> None:
        assert self.space is not None
        self._points = grid_points(self.space)
        if self.options.get("shuffle", True):
            order = np.random.default_rng(self.seed).permutation(len(self._points))
            self._points = [self._points[i] for i in order]
        self._next = 0
        self._seen: set[str] = set()

    def ask(self, n: int = 1) -> list[Params]:
        out = []
        while len(out) < n and self._next < len(self._points):
            pt = self._points[self._next]
            self._next += 1
            if repr(sorted(pt.items())) not in self._seen:
                self._seen.add(repr(sorted(pt.items())))
                out.append(dict(pt))
        return out

    def tell(self, params: Params, result: Result) -> None:
        # A recorded trial (resume) removes its point from what is left to visit.
        self._seen.add(repr(sorted(params.items())))

    @property
    def size(self) -> int:
        return len(self._points)
