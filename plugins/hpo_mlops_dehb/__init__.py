"""DEHB (Awad et al. 2021, the ``dehb`` package) as an hpo-mlops sampler.

Registered through the ``hpo_mlops.samplers`` entry point ``dehb``, exactly as a third-party
plugin would be, so the engine never imports ``dehb`` itself. See :mod:`.sampler` for how
DEHB's ask/tell and its fidelities map onto the engine's trials and budgets.
"""

from __future__ import annotations

from hpo_mlops_dehb.sampler import DEHBSampler

__all__ = ["DEHBSampler"]
