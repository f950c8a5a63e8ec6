"""Translate an hpo-mlops :class:`~hpo_mlops.space.Space` to a hyperopt search space and back.

Hyperopt stores every trial's parameters in its own "index form" (``misc.vals``): one
list per label, empty when the label was inactive, and holding the *raw* value drawn by
the hyperopt distribution (a choice's index, not its option). The samplers read proposed
points out of that form and write resumed observations into it, so this module owns
both directions and keeps them exact inverses of each other.

Encodings (raw hyperopt value -> user value):

- ``uniform(low, high)``           ``hp.uniform``; value as is (clipped to the bounds).
- ``uniform(low, high, q=)``        ``hp.quniform(0, high - low, q)`` plus ``low``: hyperopt's
  q grid is anchored at 0, ours at ``low`` (see :meth:`Uniform.clip`), so the offset keeps
  the two grids identical for any ``low``.
- ``loguniform`` (with or without ``q``)  ``hp.loguniform`` / ``hp.qloguniform`` on
  ``log(low), log(high)``; value as is, then ``dist.clip`` puts it on our grid.
- ``randint(low, high, q=)``        ``hp.quniform(-q/2, n*q + q/2, q)`` plus ``low``: an
  *ordered* distribution (TPE models distances, unlike ``hp.randint`` which it treats as
  unordered categories) whose half-step margins give both ends the same mass as the
  inner values, so ``high`` is reached as often as any other value.
- ``randint(low, high, log=True)``  ``hp.qloguniform(log(low - 1/2), log(high + 1/2), 1)``.
- ``normal`` / ``lognormal`` (+ ``q``)  ``hp.normal`` / ``hp.qnormal`` / ``hp.lognormal`` /
  ``hp.qlognormal`` with the same (mu, sigma, q); both libraries anchor q at 0.
- ``choices(options)``              ``hp.choice`` over the options; raw value is the index.

A conditional parameter ``x if parent in [...]`` becomes part of the branches of the
parent's ``hp.choice``: the parent chooses among one dict per option, holding the option
itself under :data:`VALUE_KEY` and the hyperopt nodes of the children active for it.
A child active for several options is the *same* node object in each of those branches,
which hyperopt reads as "x exists when parent is a or b" (one label, one posterior).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hyperopt import hp
from hyperopt.pyll import Apply

from hpo_mlops.space import Choices, Distribution, Normal, Param, RandInt, Space, Uniform

__all__ = ["VALUE_KEY", "HyperoptSpace"]

#: key of a choice branch holding the parent's own value; not an identifier, so it can
#: never collide with a parameter name (names must be identifiers).
VALUE_KEY = "@value"


def _plain_float(v: Any) -> float:
    """A Python float without a negative zero (hyperopt's rounding produces ``-0.0``)."""
    return float(v) + 0.0


class HyperoptSpace:
    """A space compiled to a hyperopt expression, with the codecs for ``misc.vals``.

    ``expr`` is what :class:`hyperopt.Domain` takes; :meth:`decode` turns a trial's
    ``misc.vals`` into the flat dict of active parameters (plain Python values) that
    samplers hand out, and :meth:`encode` goes the other way for recorded trials.
    """

    def __init__(self, space: Space) -> None:
        self.space = space
        self._children: dict[str, list[Param]] = {}
        for p in space:
            if p.condition is not None:
                self._children.setdefault(p.condition.parent, []).append(p)
        self.expr: dict[str, Apply] = {
            p.name: self._node(p) for p in space if p.condition is None
        }

    # -- space -> hyperopt expression -----------------------------------------------------
    def _node(self, p: Param) -> Apply:
        d, label = p.dist, p.name
        if isinstance(d, Choices):
            kids = self._children.get(label, [])
            if not kids:
                return hp.choice(label, list(d.options))
            # one node per child, shared by every branch where the child is active
            kid_nodes = {k.name: self._node(k) for k in kids}
            branches = []
            for option in d.options:
                branch: dict[str, Any] = {VALUE_KEY: option}
                for k in kids:
                    assert k.condition is not None
                    if option in k.condition.values:  # same test as Condition.holds
                        branch[k.name] = kid_nodes[k.name]
                branches.append(branch)
            return hp.choice(label, branches)
        if isinstance(d, Uniform):
            if d.log:
                lo, hi = math.log(d.low), math.log(d.high)
                if d.q is None:
                    return hp.loguniform(label, lo, hi)
                return hp.qloguniform(label, lo, hi, d.q)
            if d.q is None:
                return hp.uniform(label, d.low, d.high)
            return hp.quniform(label, 0.0, d.high - d.low, d.q)
        if isinstance(d, RandInt):
            if d.log:
                return hp.qloguniform(label, math.log(d.low - 0.5), math.log(d.high + 0.5), 1)
            n = (d.high - d.low) // d.q
            return hp.quniform(label, -d.q / 2, n * d.q + d.q / 2, d.q)
        if isinstance(d, Normal):
            if d.log:
                if d.q is None:
                    return hp.lognormal(label, d.mu, d.sigma)
                return hp.qlognormal(label, d.mu, d.sigma, d.q)
            if d.q is None:
                return hp.normal(label, d.mu, d.sigma)
            return hp.qnormal(label, d.mu, d.sigma, d.q)
        raise TypeError(f"{label}: no hyperopt mapping for {type(d).__name__}")  # pragma: no cover

    # -- hyperopt raw values <-> user values -------------------------------------------------
    @staticmethod
    def _decode_one(d: Distribution, raw: Any) -> Any:
        if isinstance(d, Choices):
            return d.options[int(raw)]
        if isinstance(d, Uniform):
            base = d.low if (d.q is not None and not d.log) else 0.0
            return _plain_float(d.clip(base + float(raw)))
        if isinstance(d, RandInt):
            base = 0.0 if d.log else d.low
            return int(d.clip(base + float(raw)))
        if isinstance(d, Normal):
            v = _plain_float(d.clip(float(raw)))
            if d.log and v <= 0.0:
                # qlognormal rounds values below q/2 to 0, which a log-normal cannot take;
                # the smallest positive grid point is the nearest legal value.
                v = float(d.q) if d.q is not None else math.ulp(0.0)
            return v
        raise TypeError(f"no hyperopt mapping for {type(d).__name__}")  # pragma: no cover

    @staticmethod
    def _encode_one(d: Distribution, value: Any) -> Any:
        if isinstance(d, Choices):
            return d.index(value)
        if isinstance(d, Uniform | RandInt) and not d.log and d.q is not None:
            return float(value) - d.low
        return float(value)

    def decode(self, vals: Mapping[str, list[Any]]) -> dict[str, Any]:
        """The active parameters of a hyperopt trial, as plain Python values, parents first.

        Activity is read from hyperopt itself (a label's list is empty when its branch
        was not taken), which is exactly ``Condition.holds`` by construction.
        """
        out: dict[str, Any] = {}
        for p in self.space:
            raw = vals.get(p.name)
            if raw:
                out[p.name] = self._decode_one(p.dist, raw[0])
        return out

    def encode(
        self, params: Mapping[str, Any], tid: int
    ) -> tuple[dict[str, list[int]], dict[str, list[Any]]]:
        """``(misc.idxs, misc.vals)`` for a validated assignment of the active parameters.

        Every label of the space gets a list: ``[tid]`` / ``[raw]`` when the parameter is
        in ``params``, ``[]`` / ``[]`` when it is inactive, as hyperopt's own docs do.
        """
        idxs: dict[str, list[int]] = {}
        vals: dict[str, list[Any]] = {}
        for p in self.space:
            if p.name in params:
                idxs[p.name] = [tid]
                vals[p.name] = [self._encode_one(p.dist, params[p.name])]
            else:
                idxs[p.name], vals[p.name] = [], []
        return idxs, vals
