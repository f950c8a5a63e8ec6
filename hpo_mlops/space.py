"""Search spaces: an Orion-style string DSL and the same as Python objects.

A space maps parameter names to distributions::

    {"x": "uniform(-5, 5)", "lr": "loguniform(1e-5, 1e-1)", "layers": "randint(1, 4)",
     "act": "choices(['relu', 'tanh'])",
     "momentum": "uniform(0.5, 0.99) if optimizer == 'sgd'"}

Forms (``q=`` puts the value on a grid of step ``q``; ``log=True`` samples the log):

- ``uniform(low, high[, q=, log=])``   float in [low, high]
- ``loguniform(low, high[, q=])``       same as ``uniform(low, high, log=True)``; needs 0 < low
- ``randint(low, high[, q=, log=])``    integer in [low, high], **both ends included**
                                        (like Optuna's ``suggest_int``; unlike ``numpy.randint``)
- ``normal(mu, sigma[, q=, log=])``     Gaussian; with ``log=True`` (or ``lognormal``) exp of it
- ``choices([a, b, ...])``              one of the listed values (str, int, float, bool, None)

A trailing ``if parent == 'value'`` or ``if parent in ['a', 'b']`` makes the parameter
conditional: it exists only when the ``choices`` parameter ``parent`` takes one of those
values. The space is validated as a whole before any trial runs; every error names the
parameter, quotes its text and says what is allowed.

Samplers never parse strings: they read :class:`Param` objects, so the DSL and the Python
objects are one and the same thing after :func:`Space.from_dict`.
"""

from __future__ import annotations

import ast
import json
import math
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpo_mlops.errors import SpaceError

__all__ = [
    "Choices",
    "Condition",
    "Distribution",
    "Normal",
    "Param",
    "RandInt",
    "Space",
    "Uniform",
    "choices",
    "loguniform",
    "normal",
    "randint",
    "uniform",
]

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Distribution:
    """Base of all distributions; subclasses are frozen dataclasses so they hash and compare."""

    def validate(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def sample(self, rng: np.random.Generator) -> Any:  # pragma: no cover
        raise NotImplementedError

    def contains(self, value: Any) -> bool:  # pragma: no cover
        raise NotImplementedError

    def to_text(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def grid(self) -> list[Any]:
        """All values of a finite distribution; continuous ones refuse."""
        raise SpaceError(
            f"{self.to_text()} is continuous: a grid needs choices(...), randint(...) "
            "or a q= step"
        )


def _fmt(v: float) -> str:
    return repr(v)


def _quantize(value: float, q: float | None, low: float | None = None) -> float:
    if q is None:
        return value
    base = 0.0 if low is None else low
    return base + round((value - base) / q) * q


@dataclass(frozen=True)
class Uniform(Distribution):
    low: float
    high: float
    q: float | None = None
    log: bool = False

    def validate(self) -> None:
        name = "loguniform" if self.log else "uniform"
        for v, what in ((self.low, "low"), (self.high, "high")):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise SpaceError(f"{name} needs finite numbers, got {what}={v!r}")
        if self.log and not 0 < self.low < self.high:
            raise SpaceError(
                f"loguniform needs 0 < low < high, got loguniform({_fmt(self.low)}, {_fmt(self.high)})"
            )
        if not self.low < self.high:
            raise SpaceError(
                f"{name} needs low < high, got {name}({_fmt(self.low)}, {_fmt(self.high)})"
            )
        if self.q is not None and not (self.q > 0):
            raise SpaceError(f"q must be > 0, got q={self.q!r}")

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            v = float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        else:
            v = float(rng.uniform(self.low, self.high))
        return self.clip(v)

    def clip(self, v: float) -> float:
        """Snap to the q grid (anchored at low) and keep inside [low, high]."""
        if self.q is not None:
            v = _quantize(v, self.q, self.low)
            while v > self.high + 1e-12:
                v -= self.q
            v = round(v, 12)
        return float(min(max(v, self.low), self.high))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def grid(self) -> list[float]:
        if self.q is None:
            return super().grid()
        n = int(math.floor((self.high - self.low) / self.q + 1e-9))
        return [round(self.low + i * self.q, 12) for i in range(n + 1)]

    def to_text(self) -> str:
        name = "loguniform" if self.log else "uniform"
        extra = f", q={_fmt(self.q)}" if self.q is not None else ""
        return f"{name}({_fmt(self.low)}, {_fmt(self.high)}{extra})"


@dataclass(frozen=True)
class RandInt(Distribution):
    """Integer in [low, high], both ends included (step ``q``, default 1)."""

    low: int
    high: int
    q: int = 1
    log: bool = False

    def validate(self) -> None:
        for v, what in ((self.low, "low"), (self.high, "high"), (self.q, "q")):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpaceError(f"randint needs integers, got {what}={v!r}")
        if not self.low < self.high:
            raise SpaceError(
                f"randint needs low < high (both included), got randint({self.low}, {self.high})"
            )
        if self.q < 1:
            raise SpaceError(f"randint needs an integer q >= 1, got q={self.q}")
        if self.log and self.low < 1:
            raise SpaceError(
                f"randint with log=True needs 1 <= low, got randint({self.low}, {self.high}, log=True)"
            )
        if self.log and self.q != 1:
            raise SpaceError("randint cannot combine log=True with q > 1")

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            v = math.exp(rng.uniform(math.log(self.low - 0.5 + 1e-9), math.log(self.high + 0.5)))
            return int(min(max(round(v), self.low), self.high))
        n = (self.high - self.low) // self.q
        return int(self.low + int(rng.integers(0, n + 1)) * self.q)

    def clip(self, v: float) -> int:
        v = self.low + round((v - self.low) / self.q) * self.q
        top = self.low + ((self.high - self.low) // self.q) * self.q
        return int(min(max(v, self.low), top))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int | np.integer)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.q == 0
        )

    def grid(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.q))

    def to_text(self) -> str:
        extra = f", q={self.q}" if self.q != 1 else ""
        extra += ", log=True" if self.log else ""
        return f"randint({self.low}, {self.high}{extra})"


@dataclass(frozen=True)
class Normal(Distribution):
    """Gaussian N(mu, sigma); with ``log=True`` the value is exp of a N(mu, sigma) draw."""

    mu: float
    sigma: float
    q: float | None = None
    log: bool = False

    def validate(self) -> None:
        name = "lognormal" if self.log else "normal"
        for v, what in ((self.mu, "mu"), (self.sigma, "sigma")):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise SpaceError(f"{name} needs finite numbers, got {what}={v!r}")
        if not self.sigma > 0:
            raise SpaceError(f"{name} needs sigma > 0, got {name}({self.mu!r}, {self.sigma!r})")
        if self.q is not None and not (self.q > 0):
            raise SpaceError(f"q must be > 0, got q={self.q!r}")

    def from_quantile(self, u: float) -> float:
        """Inverse CDF: lets samplers without a Gaussian (Optuna) search the quantile instead."""
        u = min(max(u, 1e-12), 1 - 1e-12)
        v = statistics.NormalDist(self.mu, self.sigma).inv_cdf(u)
        return self.clip(math.exp(v) if self.log else v)

    def to_quantile(self, value: float) -> float:
        x = math.log(value) if self.log else value
        return min(max(statistics.NormalDist(self.mu, self.sigma).cdf(x), 1e-12), 1 - 1e-12)

    def clip(self, v: float) -> float:
        if self.q is None:
            return float(v)
        v = float(round(_quantize(v, self.q), 12))
        # a log-normal value is > 0: rounding to the grid must not produce 0
        return self.q if self.log and v <= 0 else v

    def sample(self, rng: np.random.Generator) -> float:
        v = float(rng.normal(self.mu, self.sigma))
        return self.clip(math.exp(v) if self.log else v)

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > 0 or not self.log)
        )

    def to_text(self) -> str:
        name = "lognormal" if self.log else "normal"
        extra = f", q={_fmt(self.q)}" if self.q is not None else ""
        return f"{name}({_fmt(self.mu)}, {_fmt(self.sigma)}{extra})"


@dataclass(frozen=True)
class Choices(Distribution):
    options: tuple[Scalar, ...]

    def validate(self) -> None:
        if len(self.options) == 0:
            raise SpaceError("choices needs at least one option, got choices([])")
        for o in self.options:
            if not isinstance(o, str | int | float | bool | type(None)):
                raise SpaceError(
                    f"choices options must be str, int, float, bool or None, got {o!r}"
                )
        if len(set(map(repr, self.options))) != len(self.options):
            raise SpaceError(f"choices has duplicate options: {list(self.options)!r}")

    def sample(self, rng: np.random.Generator) -> Scalar:
        return self.options[int(rng.integers(0, len(self.options)))]

    def index(self, value: Any) -> int:
        for i, o in enumerate(self.options):
            if type(o) is type(value) and o == value:
                return i
        for i, o in enumerate(self.options):
            if o == value:
                return i
        raise ValueError(f"{value!r} is not one of {list(self.options)!r}")

    def contains(self, value: Any) -> bool:
        try:
            self.index(value)
        except ValueError:
            return False
        return True

    def grid(self) -> list[Scalar]:
        return list(self.options)

    def to_text(self) -> str:
        return f"choices({list(self.options)!r})"


@dataclass(frozen=True)
class Condition:
    """The parameter exists only while ``parent`` takes one of ``values``."""

    parent: str
    values: tuple[Scalar, ...]

    def holds(self, params: Mapping[str, Any]) -> bool:
        return self.parent in params and params[self.parent] in self.values

    def to_text(self) -> str:
        if len(self.values) == 1:
            return f"{self.parent} == {self.values[0]!r}"
        return f"{self.parent} in {list(self.values)!r}"


@dataclass(frozen=True)
class Param:
    name: str
    dist: Distribution
    condition: Condition | None = None

    def to_text(self) -> str:
        cond = f" if {self.condition.to_text()}" if self.condition else ""
        return self.dist.to_text() + cond


# ---- constructors for people who prefer Python objects --------------------------------


def uniform(low: float, high: float, q: float | None = None, log: bool = False) -> Uniform:
    return Uniform(low, high, q, log)


def loguniform(low: float, high: float, q: float | None = None) -> Uniform:
    return Uniform(low, high, q, True)


def randint(low: int, high: int, q: int = 1, log: bool = False) -> RandInt:
    return RandInt(low, high, q, log)


def normal(mu: float, sigma: float, q: float | None = None, log: bool = False) -> Normal:
    return Normal(mu, sigma, q, log)


def lognormal(mu: float, sigma: float, q: float | None = None) -> Normal:
    return Normal(mu, sigma, q, True)


def choices(options: list[Scalar] | tuple[Scalar, ...]) -> Choices:
    return Choices(tuple(options))


_FORMS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "uniform": (uniform, ("low", "high")),
    "loguniform": (loguniform, ("low", "high")),
    "randint": (randint, ("low", "high")),
    "normal": (normal, ("mu", "sigma")),
    "lognormal": (lognormal, ("mu", "sigma")),
    "choices": (choices, ("options",)),
}
_ALLOWED = (
    "uniform(low, high), loguniform(low, high), randint(low, high), normal(mu, sigma), "
    "lognormal(mu, sigma), choices([...]); optional q= (or step=) and log=True; "
    "optional suffix \"if other == 'value'\""
)


def _split_condition(text: str) -> tuple[str, str | None]:
    """Split ``dist(...) if cond`` at the first ' if ' outside brackets and quotes."""
    depth, quote = 0, None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(" if ", i):
            return text[:i].strip(), text[i + 4 :].strip()
    return text.strip(), None


def _parse_condition(text: str) -> Condition:
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise SpaceError(f"cannot parse condition {text!r}: {exc.msg}") from None
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.left, ast.Name)
        and isinstance(node.ops[0], ast.Eq | ast.In)
    ):
        try:
            value = ast.literal_eval(node.comparators[0])
        except ValueError:
            value = None
        else:
            if isinstance(node.ops[0], ast.Eq):
                return Condition(node.left.id, (value,))
            if isinstance(value, list | tuple | set) and value:
                return Condition(node.left.id, tuple(value))
    raise SpaceError(
        f"condition {text!r} must read \"parent == 'value'\" or \"parent in ['a', 'b']\""
    )


def parse(text: str) -> tuple[Distribution, Condition | None]:
    """Parse one parameter's text into a distribution and an optional condition."""
    body, cond_text = _split_condition(text)
    try:
        node = ast.parse(body, mode="eval").body
    except SyntaxError:
        raise SpaceError(f"cannot parse; allowed forms: {_ALLOWED}") from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise SpaceError(f"not a distribution; allowed forms: {_ALLOWED}")
    form = node.func.id
    if form not in _FORMS:
        raise SpaceError(f"unknown distribution {form!r}; allowed forms: {_ALLOWED}")
    ctor, positional = _FORMS[form]
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        raise SpaceError("arguments must be literal numbers, strings or lists") from None
    if "step" in kwargs and "q" not in kwargs:  # step= is an alias of q=
        kwargs["q"] = kwargs.pop("step")
    allowed_kw = {"choices": set(), "loguniform": {"q"}, "lognormal": {"q"}}.get(form, {"q", "log"})
    unknown = set(kwargs) - allowed_kw - set(positional)
    if unknown or None in kwargs:
        raise SpaceError(
            f"{form} got unknown argument(s) {sorted(map(str, unknown))}; "
            f"allowed: {', '.join(positional + tuple(sorted(allowed_kw)))}"
        )
    if len(args) + len(set(positional) & set(kwargs)) != len(positional):
        raise SpaceError(f"{form} needs {len(positional)} argument(s): {', '.join(positional)}")
    if form == "choices" and not isinstance((args or [kwargs.get("options")])[0], list | tuple):
        raise SpaceError("choices needs a list, e.g. choices(['a', 'b'])")
    dist = ctor(*args, **kwargs)
    if form == "randint" and isinstance(dist.q, float) and dist.q.is_integer():
        dist = RandInt(dist.low, dist.high, int(dist.q), dist.log)
    dist.validate()
    return dist, _parse_condition(cond_text) if cond_text else None


def _coerce(name: str, spec: Any) -> Param:
    """One entry of a user's space (string, Distribution, Param, or dict form) to a Param."""
    where = f"{name}: "
    try:
        if isinstance(spec, Param):
            spec.dist.validate()
            return Param(name, spec.dist, spec.condition)
        if isinstance(spec, Distribution):
            spec.validate()
            return Param(name, spec)
        if isinstance(spec, list | tuple):
            dist = choices(spec)
            dist.validate()
            return Param(name, dist)
        if isinstance(spec, Mapping):
            # {"dist": "uniform(0, 1)", "when": {"optimizer": "sgd"}}  (YAML-friendly)
            extra = set(spec) - {"dist", "when"}
            if "dist" not in spec or extra:
                raise SpaceError(
                    "a mapping needs 'dist' and an optional 'when: {parent: value or [values]}'"
                )
            param = _coerce(name, spec["dist"])
            when = spec.get("when")
            if when is None:
                return param
            if not (isinstance(when, Mapping) and len(when) == 1):
                raise SpaceError("'when' must map exactly one parent to a value or list")
            (parent, vals), = when.items()
            vals = tuple(vals) if isinstance(vals, list | tuple) else (vals,)
            return Param(name, param.dist, Condition(str(parent), vals))
        if isinstance(spec, str):
            dist, cond = parse(spec)
            return Param(name, dist, cond)
        raise SpaceError(
            f"expected a string such as 'uniform(0, 1)', a Distribution or a list, "
            f"got {type(spec).__name__}"
        )
    except SpaceError as exc:
        msg = str(exc)
        if isinstance(spec, str) and spec.strip() not in msg:
            msg += f" (in {spec!r})"
        raise SpaceError(where + msg) from None
    except TypeError as exc:
        raise SpaceError(f"{where}bad arguments in {spec!r}: {exc}") from None


@dataclass(frozen=True)
class Space:
    """An ordered, validated set of parameters; parents always come before their children."""

    params: tuple[Param, ...] = field(default_factory=tuple)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | Space) -> Space:
        if isinstance(spec, Space):
            return spec
        if not isinstance(spec, Mapping) or not spec:
            raise SpaceError(
                "the space must be a non-empty mapping of parameter names to distributions, "
                f"got {spec!r}"
            )
        params = {}
        for name, s in spec.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise SpaceError(
                    f"{name!r}: parameter names must be identifiers (letters, digits, _)"
                )
            params[name] = _coerce(name, s)
        return cls(tuple(_topological(params)))

    # -- queries --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    @property
    def is_conditional(self) -> bool:
        return any(p.condition is not None for p in self.params)

    def active(self, params: Mapping[str, Any]) -> list[Param]:
        """The parameters that exist for this (partial) assignment, parents first."""
        out = []
        for p in self.params:
            if p.condition is None or p.condition.holds(params):
                out.append(p)
        return out

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.params:
            if p.condition is None or p.condition.holds(out):
                out[p.name] = p.dist.sample(rng)
        return out

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check a full assignment (e.g. one a sampler produced, or a warm start)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.condition is not None and not p.condition.holds(out):
                continue
            if p.name not in params:
                raise SpaceError(f"{p.name}: missing from {dict(params)!r}")
            v = params[p.name]
            if isinstance(v, np.generic):
                v = v.item()
            if not p.dist.contains(v):
                raise SpaceError(f"{p.name}: {v!r} is outside {p.to_text()}")
            out[p.name] = v
        return out

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, str]:
        return {p.name: p.to_text() for p in self.params}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _topological(params: dict[str, Param]) -> list[Param]:
    for p in params.values():
        if p.condition is None:
            continue
        c = p.condition
        if c.parent not in params:
            raise SpaceError(
                f"{p.name}: condition refers to unknown parameter {c.parent!r}, got {p.to_text()!r}; "
                f"known: {', '.join(params)}"
            )
        parent = params[c.parent].dist
        if not isinstance(parent, Choices):
            raise SpaceError(
                f"{p.name}: a condition's parent must be a choices(...) parameter, "
                f"{c.parent!r} is {parent.to_text()}"
            )
        for v in c.values:
            if not parent.contains(v):
                raise SpaceError(
                    f"{p.name}: condition value {v!r} is not one of {c.parent}'s options "
                    f"{list(parent.options)!r}"
                )
    ordered: list[Param] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise SpaceError(f"{name}: conditions form a cycle: {' -> '.join(chain + (name,))}")
        state[name] = 1
        cond = params[name].condition
        if cond is not None:
            visit(cond.parent, chain + (name,))
        state[name] = 2
        ordered.append(params[name])

    for name in params:
        visit(name, ())
    return ordered
