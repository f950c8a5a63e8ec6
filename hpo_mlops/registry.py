"""Name -> class lookup through entry points; built-ins register the same way as plugins.

Groups: ``hpo_mlops.samplers``, ``hpo_mlops.schedulers``, ``hpo_mlops.clusters``.
A spec is a registered name, a dict ``{"name": ..., **options}``, or a ready instance.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from hpo_mlops.errors import ConfigError, RegistryError

SAMPLERS = "hpo_mlops.samplers"
SCHEDULERS = "hpo_mlops.schedulers"
CLUSTERS = "hpo_mlops.clusters"

_KIND = {SAMPLERS: "sampler", SCHEDULERS: "scheduler", CLUSTERS: "cluster kind"}


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def names(group: str) -> list[str]:
    """The registered names of a group, sorted."""
    return sorted(_entry_points(group))


def load(group: str, name: str) -> type:
    eps = _entry_points(group)
    if name not in eps:
        _entry_points.cache_clear()  # a package installed since the first lookup
        eps = _entry_points(group)
    if name not in eps:
        near = difflib.get_close_matches(name, list(eps), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise RegistryError(
            f"unknown {_KIND.get(group, group)} {name!r}{hint}; registered: {', '.join(names(group))}"
        )
    try:
        return eps[name].load()
    except ImportError as exc:
        raise RegistryError(
            f"{_KIND.get(group, group)} {name!r} is registered by {eps[name].value} "
            f"but cannot be imported: {exc}"
        ) from exc


def create(group: str, spec: Any, base: type, **defaults: Any) -> Any:
    """Build an instance from a name, a ``{"name": ..., **options}`` dict or an instance.

    ``defaults`` are passed only where the user gave no value of their own.
    """
    if isinstance(spec, base):
        return spec
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict):
        if "name" not in spec:
            raise ConfigError(
                f"a {_KIND.get(group, group)} given as a dict needs a 'name' key; "
                f"registered: {', '.join(names(group))}"
            )
        options = dict(spec)
        name = options.pop("name")
    else:
        raise ConfigError(
            f"a {_KIND.get(group, group)} must be a name, a dict with 'name' or a "
            f"{base.__name__} instance, got {spec!r}"
        )
    cls = load(group, name)
    kwargs = {**defaults, **options}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{_KIND.get(group, group)} {name!r}: bad options {options!r}: {exc}") from None
    if not getattr(obj, "name", None):
        obj.name = name
    return obj
