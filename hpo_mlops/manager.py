"""The manager loop of one ``optimize`` call: keep the slots alive, drain the ledger's events.

Trials are not Dask tasks: each worker thread runs one long-lived *slot* task
(:func:`hpo_mlops.runner.run_slot`) that pulls a job from the study's ledger on the Dask
scheduler, runs it and hands in its outcome with its next pull. So the loop here does no
per-trial round trip at all: it drains the ledger's events in batches (one ``hpo_events``
call for every trial that changed since the last), hands them to the study's table (whose
subscribers tell a central sampler, write MLflow, keep the best, show progress), and, when
asks are central, keeps a few configurations queued ahead. With decentralized asks each
worker's own sampler copy asks, and the manager never asks at all.

Nothing here knows a sampler, scheduler or cluster by name: those are behind their
interfaces; nothing here changes a trial's state: that is the ledger's.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any

from hpo_mlops.cluster import ClusterError, planned_capacity, wait_for_workers, worker_timeout
from hpo_mlops.dask_plugin import HubPlugin, StudyPlugin
from hpo_mlops.errors import ConfigError, TooManyFailures, TrackingUnavailable
from hpo_mlops.ledger import FINISHED, to_wire
from hpo_mlops.results import TrialState
from hpo_mlops.runner import run_slot

if TYPE_CHECKING:
    from hpo_mlops.study import Study

#: how often the rule's exact state is saved to the study run while it goes (seconds)
STATE_EVERY = 30.0
#: how long one poll of the ledger's events may wait for one (seconds)
POLL = 0.25
ASKS = ("auto", "central", "workers")


class Run:
    """One ``optimize`` call on one Dask client."""

    def __init__(self, study: Study, client: Any, objective: Any, setup: Any,
                 n_trials: int | None, timeout: float | None, max_concurrent: int | None,
                 max_failures: int | None, resources: dict | None, queue_per_worker: int,
                 max_retries: int = 3, checkpoint_dir: str | None = None,
                 asks: str = "auto", serving: bool = False) -> None:
        self.study, self.client = study, client
        self.key = f"{study.name}-{uuid.uuid4().hex[:8]}"
        self.plugin_name = f"hpo-study-{self.key}"
        self.objective, self.setup = objective, setup
        self.n_trials, self.max_failures, self.resources = n_trials, max_failures, resources
        self.max_retries = max_retries
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if timeout else math.inf
        self.max_concurrent, self.queue_per_worker = max_concurrent, queue_per_worker
        #: trials also come from HTTP clients (hpo-mlops serve): asks are central, the
        #: study waits for clients instead of stopping when it has no worker, and it runs
        #: no slot when there is no objective to run
        self.serving = serving
        self.central = study.asks_centrally("central" if serving else asks)
        self._stop_requested = False
        # per study run, below the given root too: a resumed study finds its checkpoints, a
        # new run (resume=False) or another study sharing the root does not
        self.checkpoint_root = os.path.join(
            checkpoint_dir or os.path.join(tempfile.gettempdir(), "hpo-mlops-checkpoints"),
            study.checkpoint_name())
        self.slots: dict[Any, str | None] = {}  # slot future -> the worker it is pinned to
        self.failures = 0
        self.over = self.no_new = False
        self.pushed = 0  # configurations a central sampler asked and queued
        self.first_new = study.table.next_new
        self.queued = 0
        self._slots_at = self._saved_at = -math.inf
        self._no_workers_since: float | None = None

    def _call(self, op: str, **kwargs: Any) -> Any:
        return self.client.sync(getattr(self.client.scheduler, op), key=self.key, **kwargs)

    # -- set-up / tear-down ---------------------------------------------------------------
    def execute(self) -> None:
        study = self.study
        self.client.register_plugin(HubPlugin())
        carried = study.table.unfinished() + study.table.finished()
        self._call("hpo_register", spec=study.scheduler_spec, mode=study.modes[0],
                   records=[to_wire(r) for r in carried], saved=study.saved_rule_state(),
                   n_trials=self.n_trials, max_retries=self.max_retries,
                   max_failures=self.max_failures,
                   central=self.central, client=self.client.id, space=study.space.to_dict())
        rule = study.rule_class
        self.client.register_plugin(
            StudyPlugin(self.plugin_name, self.objective, self.setup, study.metrics,
                        rule.needs_reports, self.checkpoint_root,
                        None if self.central else study.copy_spec()),
            name=self.plugin_name)
        study.log_study({}, {"hpo.n_trials": str(self.n_trials), "hpo.timeout": str(self.timeout),
                             "hpo.asks": "central" if self.central else "workers"})
        unsubscribe = study.table.subscribe(self._count)
        status = "FINISHED"
        try:
            self._push(self._refresh_slots())
            # A batch cluster starts empty: wait (bounded) for a first worker, and say why
            # none came rather than waiting on futures for ever.
            if not self.serving:
                wait_for_workers(self.client)
            while not self.over:
                self._step()
        except ClusterError:
            status = "FAILED"
            self._interrupt()
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            self._interrupt()
            raise
        except (TooManyFailures, ConfigError):
            status = "FAILED"
            self._interrupt()
            raise
        except TrackingUnavailable:  # the store is gone: stop as on Ctrl-C, resumably
            status = "KILLED"
            self._interrupt()
            raise
        finally:
            unsubscribe()
            self._finish(status)

    def _step(self) -> None:
        """One turn of the loop: events in, asks out, the cluster and the clock checked."""
        if self._stop_requested:
            raise KeyboardInterrupt
        reply = self._call("hpo_events", wait=POLL)
        self.queued = reply["queued"]
        self.study.bind_asked(reply["events"])
        self.over = self.study.table.apply(reply["events"])
        if self.max_failures is not None and self.failures > self.max_failures:
            last = next((r.error for r in reversed(self.study.table.in_state(TrialState.FAILED))),
                        None)
            raise TooManyFailures(
                f"study {self.study.name!r} stopped: {self.failures} trials failed, more than "
                f"max_failures={self.max_failures}; last error: {last}")
        if self.over:
            return
        now = time.monotonic()
        if now >= self.deadline:
            self._end_new()
        free = 0
        if now - self._slots_at > 1.0:  # scheduler_info is a round trip: once a second
            free = self._refresh_slots()
        if self.central:
            ahead = self.queue_per_worker * max(1, self._n_workers)
            self._push(max(free, ahead + reply.get("demand", 0) - self.queued))
        if now - self._saved_at > STATE_EVERY:
            self._saved_at = now
            self.study.save_rule_state(self._call("hpo_state"))

    def request_stop(self) -> None:
        """Stop from another thread as Ctrl-C would (the service shutting down): the
        running trials are recorded INTERRUPTED and the study stays resumable."""
        self._stop_requested = True

    def _count(self, kind: str, rec: Any) -> None:
        if kind == FINISHED and rec.state is TrialState.FAILED:
            self.failures += 1

    def _end_new(self) -> None:
        if not self.no_new:
            self.no_new = True
            self._call("hpo_end_new")

    def _push(self, n: int) -> None:
        """Queue ``n`` more configurations from the central sampler (within ``n_trials``)."""
        if not self.central or self.no_new or n <= 0:
            return
        if self.n_trials is not None:
            n = min(n, self.n_trials - self.first_new - self.pushed)
        if n <= 0:
            return
        params, origins = self.study.ask_ahead(n)
        if params:
            self.pushed += len(params)
            self.queued = self._call("hpo_push", params=params, origins=origins)
        if len(params) < n:  # the sampler is exhausted (a grid)
            self._end_new()

    def _finish(self, status: str) -> None:
        study = self.study
        info: dict = {}
        with contextlib.suppress(Exception):  # the cluster may be going away (Ctrl-C)
            info = self._call("hpo_info") or {}
            study.table.apply(self._call("hpo_events", wait=0)["events"])
            self._call("hpo_forget")
        for fut in list(self.slots):
            fut.release()
        self.slots.clear()
        with contextlib.suppress(Exception):
            self.client.unregister_worker_plugin(self.plugin_name)
        study.close_run(status, info.get("summary"), info.get("state"))

    def _interrupt(self) -> None:
        """Record the trials still in flight as INTERRUPTED (resume runs them again)."""
        with contextlib.suppress(Exception):
            self.study.table.apply(self._call("hpo_events", wait=0)["events"])
        try:
            events = self._call("hpo_stop")
        except Exception:  # noqa: BLE001 - the scheduler is gone: what we saw is all there is
            events = self.study.table.lost_in_flight()
        self.study.table.apply(events)
        for fut in self.slots:
            fut.cancel()

    # -- slots ----------------------------------------------------------------------------
    def _refresh_slots(self) -> int:
        """One slot per worker thread (within ``max_concurrent``); workers that joined get
        theirs, a lost worker's slots end with it. Returns how many slots were started."""
        self._slots_at = time.monotonic()
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        if not self.serving:  # a service waits for HTTP clients, workers or not
            self._check_workers(len(workers))
        self._n_workers = len(workers)
        if self.objective is None:
            return 0
        for fut in [f for f, w in self.slots.items() if f.done() or (w and w not in workers)]:
            if not fut.done():
                fut.cancel()  # pinned to a worker that left: it would wait for ever
            del self.slots[fut]
        live: dict[str | None, int] = {}
        for w in self.slots.values():
            live[w] = live.get(w, 0) + 1
        cap = self.max_concurrent if self.max_concurrent is not None else math.inf
        started = 0
        wanted = [(addr, info.get("nthreads", 1) - live.get(addr, 0))
                  for addr, info in workers.items()]
        plan = planned_capacity(self.client)  # a batch cluster's jobs may still be queued
        threads = sum(info.get("nthreads", 1) for info in workers.values())
        if plan is not None and plan[1] > threads:
            wanted.append((None, plan[1] - threads - live.get(None, 0)))
        for addr, n in wanted:
            for _ in range(max(0, n)):
                if len(self.slots) >= cap:
                    return started
                pin = {"workers": [addr], "allow_other_workers": False} if addr else {}
                fut = self.client.submit(run_slot, self.plugin_name, self.key, pure=False,
                                         key=f"hpo-slot-{self.key}-{uuid.uuid4().hex[:8]}",
                                         resources=self.resources, **pin)
                self.slots[fut] = addr
                started += 1
        return started

    _n_workers = 0

    def _check_workers(self, n: int) -> None:
        """All workers gone, none back within the cluster's ``worker_timeout``: stop."""
        if n:
            self._no_workers_since = None
            return
        now = time.monotonic()
        if self._no_workers_since is None:
            self._no_workers_since = now
            return
        limit = worker_timeout(self.client)
        if self.study.table.records and now - self._no_workers_since > limit:
            raise ClusterError(
                f"study {self.study.name!r} stopped: no worker for {limit:.0f} s (every worker "
                "was lost and none came back); the running trials are recorded as interrupted "
                "and the study resumes where it stopped")
