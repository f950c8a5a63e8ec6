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


def _point_key(params: Params) -> str:
    """Identity of a grid point: ``1``, ``1.0`` and ``True`` are different points."""
    return repr(sorted(params.items()))


class GridSampler(Sampler):
    """Visits the grid in a seeded random order (``shuffle=False`` keeps the natural order).

    Every point it hears of -- asked, recorded (resume: told or paused before), or running
    elsewhere -- is never handed out again, so a resumed study visits only what is left,
    in the order of one uninterrupted run.
    """

    supports_conditional = True
    supports_multi_objective = True
    #: not replicable: the enumeration needs one owner; copies with their own seeds would
    #: each walk the whole grid in their own order and hand out the same points twice
    replicable = False
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
            if _point_key(pt) not in self._seen:
                self._seen.add(_point_key(pt))
                out.append(dict(pt))
        return out

    def tell(self, params: Params, result: Result) -> None:
        """A recorded trial (resume) removes its point from what is left to visit."""
        self._seen.add(_point_key(params))

    def pause(self, params: Params, result: Result) -> None:
        """A trial paused in an earlier run (resume) was visited too."""
        self._seen.add(_point_key(params))

    def running(self, params: Params) -> None:
        """A point running elsewhere is taken: it is not handed out again."""
        self._seen.add(_point_key(params))

    @property
    def size(self) -> int:
        return len(self._points)
