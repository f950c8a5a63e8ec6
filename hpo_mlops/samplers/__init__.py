"""Samplers: ``ask(n)`` for configurations, ``tell(params, result)`` with what happened."""

from hpo_mlops.samplers.base import Sampler

__all__ = ["Sampler"]
