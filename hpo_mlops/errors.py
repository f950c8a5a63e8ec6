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


class TrackingUnavailable(HPOError, RuntimeError):
    """The MLflow tracking store cannot be reached or keeps failing (the message names the
    URI and what failed). Raised by the first call on the store, before any cluster starts
    or trial runs, and mid-study by ``Tracker.log_trial`` / ``log_best`` / ``flush`` /
    ``check`` / ``close`` once writes have failed for longer than the tracker's
    ``give_up_after``; what was not written is kept on disk and written at the next run of
    the same study against the same store."""
