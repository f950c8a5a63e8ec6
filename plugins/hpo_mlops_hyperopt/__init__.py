"""Hyperopt's tpe, anneal and rand algorithms as hpo-mlops samplers.

Registered through the ``hpo_mlops.samplers`` entry points ``hyperopt.tpe``,
``hyperopt.anneal`` and ``hyperopt.rand``, exactly as a third-party plugin would be, so
the engine never imports hyperopt itself.
"""

from __future__ import annotations

import logging

# hyperopt logs timing lines at INFO on every suggestion ("build_posterior_wrapper
# took ..."); quiet them unless the user configured the "hyperopt" logger themselves.
_log = logging.getLogger("hyperopt")
if _log.level == logging.NOTSET:
    _log.setLevel(logging.WARNING)

from hpo_mlops_hyperopt.sampler import (  # noqa: E402  (logging first, hyperopt logs on import)
    HyperoptAnnealSampler,
    HyperoptRandSampler,
    HyperoptSampler,
    HyperoptTPESampler,
)

__all__ = [
    "HyperoptAnnealSampler",
    "HyperoptRandSampler",
    "HyperoptSampler",
    "HyperoptTPESampler",
]
