"""Exceptions users see. Each message names what was wrong and what is allowed."""

from __future__ import annotations


class HPOError(Exception):
    """Base of every error hpo-mlops raises on purpose (the CLI prints these in one line)."""


class SpaceError(HPOError, ValueError):
    """The search space is invalid; raised before any trial runs."""


class ConfigError(HPOError, ValueError):
    """A configuration value is invalid (names the key and the allowed values)."""


class RegistryError(HPOError, LookupError):
    """An unknown sampler / scheduler / cluster name; lists the registered names."""


class UnsupportedSpaceError(HPOError, ValueError):
    """A sampler cannot express this space (e.g. conditional parameters)."""


class TooManyFailures(HPOError, RuntimeError):
    """More trials failed than ``max_failures`` allows; the study stopped."""


class ReportError(HPOError, ValueError):
    """A bad ``trial.report`` call (no step, steps going backwards, report after pruning)."""
