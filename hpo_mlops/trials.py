"""The manager process's view of a study's trials, rebuilt from the ledger's events.

The :class:`~hpo_mlops.ledger.Ledger` (on the Dask scheduler) owns every trial's state;
this table only replays its events, in order, and hands each one to its subscribers: the
sampler when asks are central, the MLflow writer, the best-so-far, the CLI progress and
user callbacks (``Study.subscribe``). Nothing here decides anything, so no two places can
disagree about a trial.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hpo_mlops.ledger import DONE, INTERRUPTED, from_wire, to_wire
from hpo_mlops.results import TrialRecord, TrialState

#: subscriber(kind, record): kind is one of hpo_mlops.ledger's event kinds
Subscriber = Callable[[str, TrialRecord], None]


class TrialTable:
    """Every trial of a study known in this process, one record object per trial."""

    def __init__(self) -> None:
        self.records: dict[int, TrialRecord] = {}
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(kind, record)`` for every event from now on; returns the unsubscribe."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn) if fn in self._subscribers else None

    def load(self, records: Iterable[TrialRecord]) -> None:
        """What an earlier run of the study recorded (no events: nothing happened now)."""
        for rec in records:
            self.records[rec.number] = rec

    def apply(self, events: Iterable[list[Any]]) -> bool:
        """Replay the ledger's events; True once the study run is over.

        Every event reaches the table and every subscriber even when one subscriber raises
        (a user callback, or the writer giving up on its store): the first error is raised
        once the whole batch is applied, so that the view, the sampler and the MLflow
        writer never disagree about what happened."""
        over = False
        error: BaseException | None = None
        for kind, _number, payload, _origin in events:
            if kind == DONE:
                over = True
                continue
            rec = self._update(from_wire(payload))
            for fn in list(self._subscribers):
                try:
                    fn(kind, rec)
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the batch
                    error = error or exc
        if error is not None:
            raise error
        return over

    def _update(self, new: TrialRecord) -> TrialRecord:
        rec = self.records.get(new.number)
        if rec is None:
            self.records[new.number] = new
            return new
        run_id = rec.run_id  # the writer's, set once the run exists
        rec.__dict__.update(new.__dict__)
        rec.run_id = rec.run_id or run_id
        return rec

    # -- views ----------------------------------------------------------------------------
    def finished(self) -> list[TrialRecord]:
        return [self.records[n] for n in sorted(self.records) if self.records[n].state.finished]

    def in_state(self, *states: TrialState) -> list[TrialRecord]:
        return [self.records[n] for n in sorted(self.records) if self.records[n].state in states]

    def lost_in_flight(self) -> list[list[Any]]:
        """Events that interrupt every trial seen running, for when the ledger itself is
        gone (the scheduler died): what was seen here is all there is to record."""
        import time

        out = []
        for rec in self.in_state(TrialState.RUNNING):
            rec.state, rec.end = TrialState.INTERRUPTED, time.time()
            out.append([INTERRUPTED, rec.number, to_wire(rec), None])
        return out

    @property
    def next_new(self) -> int:
        """The number the next new trial gets."""
        return max(self.records, default=-1) + 1

    def unfinished(self) -> list[TrialRecord]:
        """Trials a new run of the study carries on: paused at a rung, or to run again."""
        return [r for r in self.records.values() if not r.state.finished]
