"""Dask plugins: the study's ledger on the Dask scheduler, and the study on each worker.

* :class:`HubPlugin` (a ``SchedulerPlugin``) hosts one :class:`~hpo_mlops.ledger.Ledger`
  per study run. Slots (one long-lived task per worker thread, :func:`hpo_mlops.runner.
  run_slot`) pull their next job from it with ``hpo_next``, in the same round trip that
  hands in the last job's outcome; reports go to ``hpo_report``; the manager drains the
  ledger's events in batches with ``hpo_events``. The scheduler's event loop runs handlers
  one at a time, so every decision is consistent however many slots call at once, and it
  survives the loss of any worker (``remove_worker`` hands the lost trials to the ledger).
* :class:`StudyPlugin` (a ``WorkerPlugin``) ships the objective to every worker once, runs
  ``setup()`` once per worker (late joiners included) and, for decentralized asks, holds
  this worker process's own copy of the study's sampler (:class:`SamplerCopy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from hpo_mlops import registry
from hpo_mlops.ledger import Ledger, SlotJob, from_wire, rebuild_rule
from hpo_mlops.results import Result, TrialState
from hpo_mlops.schedulers.base import Decision, Scheduler

PLUGIN_NAME = "hpo-mlops-hub"
#: slots of one worker that may wait inside the scheduler for a job at once; the others
#: wait on their worker (each waiting call holds one of the worker's 512 connections)
WAITERS_PER_WORKER = 64
STOP = {"job": None}


class _Hub:
    """One study run on the scheduler: its ledger, central asks, waiting slots."""

    def __init__(self, ledger: Ledger, central: bool, client: str | None) -> None:
        self.ledger, self.central, self.client = ledger, central, client
        self.ready: deque[tuple[dict, str]] = deque()  # a central sampler's asks, in order
        self.waiters: deque[asyncio.Future] = deque()
        self.waiting: dict[str, int] = {}
        self.manager: asyncio.Future | None = None
        self.sent: dict[str, int] = {}  # history items sent to each worker process
        #: trials running for HTTP clients (hpo-mlops serve): their lease and reports
        self.remote: dict[int, RemoteJob] = {}
        #: outcomes already recorded for a remote job (a tell retried after a lost answer)
        self.told: dict[int, tuple[str, str]] = {}  # trial -> (job, outcome digest)
        self.demand = 0  # HTTP asks waiting for the central sampler's next configuration

    def pop_ready(self) -> tuple[dict, str] | None:
        return self.ready.popleft() if self.ready else None

    def wake(self, n: int | None = None) -> None:
        """Wake ``n`` waiting slots (all when ``None``), and the manager's poll."""
        while self.waiters and (n is None or n > 0):
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n = None if n is None else n - 1
        if self.manager is not None and not self.manager.done():
            self.manager.set_result(None)

    def end_if_idle(self) -> bool:
        """Nothing runs and nothing can come: finish the study run (unless it was stopped:
        then paused trials stay resumable) and wake every waiter. Whether it was idle."""
        if not self.ledger.idle():
            return False
        if not self.ledger.stopped:
            self.ledger.finish()
        self.wake()
        return True

    def delta(self, worker: str) -> dict[str, Any]:
        history = self.ledger.history
        if history is None:
            return {}
        start = self.sent.get(worker, 0)
        self.sent[worker] = len(history)
        return {"start": start, "history": history[start:]}


@dataclass
class RemoteJob:
    """A job handed to an HTTP client: whose, until when, what it reported so far."""

    job: str  # "<trial>.<attempt>.<job index>": names this very job in report and tell
    client: str
    lease: float
    deadline: float
    start: float
    reports: list[list[Any]] = field(default_factory=list)
    prune: bool = False  # the answer to the last report (a report sent again gets it again)


def _job_id(job: SlotJob, rec: Any) -> str:
    return f"{job.number}.{job.attempt}.{len(rec.jobs)}"


class RemoteError(Exception):
    """An HTTP client's request the ledger cannot take; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HubPlugin(SchedulerPlugin):
    name = PLUGIN_NAME
    idempotent = True  # one per Dask scheduler, shared by every study on it

    def __init__(self) -> None:
        self.hubs: dict[str, _Hub] = {}

    async def start(self, scheduler: Any) -> None:
        scheduler.handlers.update({
            "hpo_register": self.register, "hpo_report": self.report,
            "hpo_next": self.next_job, "hpo_events": self.events, "hpo_push": self.push,
            "hpo_end_new": self.end_new, "hpo_stop": self.stop, "hpo_state": self.state,
            "hpo_info": self.info, "hpo_forget": self.forget,
            "hpo_ask": self.ask, "hpo_remote_report": self.remote_report,
            "hpo_tell": self.tell,
        })

    # -- the manager's calls ----------------------------------------------------------------
    def register(self, key: str, spec: Any, mode: str, records: list | None = None,
                 saved: dict | None = None, n_trials: int | None = None,
                 max_retries: int = 3, max_failures: int | None = None, central: bool = True,
                 client: str | None = None, space: dict | None = None) -> dict:
        """Build the study's rule and ledger; on resume from the saved state or the records.

        ``space``: the study's space (``Space.to_dict``), bound to a rule that explores it
        (``needs_space``: PBT)."""
        rule = registry.create(registry.SCHEDULERS, spec, Scheduler, mode=mode)
        recs = [from_wire(r) for r in records or []]
        rule, how = rebuild_rule(rule, spec, mode, recs, saved)
        if space is not None and getattr(type(rule), "needs_space", False):
            rule.bind_space(space)
        ledger = Ledger(rule, n_trials=n_trials, max_retries=max_retries,
                        max_failures=max_failures, records=recs, history=not central)
        self.hubs[key] = _Hub(ledger, central, client)
        return {"rule": how}

    async def events(self, key: str, wait: float = 0.0) -> dict:
        """The ledger's events since the last call (waits up to ``wait`` s for one), and
        how many central asks are queued."""
        hub = self.hubs.get(key)
        if hub is None:
            return {"events": [], "queued": 0}
        self._sweep(hub)
        if not hub.ledger.events and wait > 0:
            hub.manager = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(hub.manager, wait)
            hub.manager = None
        return {"events": hub.ledger.take_events(), "queued": len(hub.ready),
                "demand": hub.demand}

    def push(self, key: str, params: list[dict], origins: list[str]) -> int:
        """Params a central sampler asked ahead; answers how many are queued now."""
        hub = self.hubs[key]
        hub.ready.extend(zip(params, origins, strict=True))
        hub.wake(len(params))
        return len(hub.ready)

    def end_new(self, key: str) -> None:
        hub = self.hubs[key]
        hub.ledger.end_new()
        hub.wake()

    def stop(self, key: str) -> list:
        """Interrupt the study: running trials become INTERRUPTED; slots stop."""
        hub = self.hubs.get(key)
        if hub is None:
            return []
        hub.ledger.interrupt()
        hub.wake()
        return hub.ledger.take_events()

    def state(self, key: str) -> dict | None:
        hub = self.hubs.get(key)
        return None if hub is None else hub.ledger.state()

    def info(self, key: str) -> dict:
        hub = self.hubs.get(key)
        if hub is None:
            return {}
        rule = hub.ledger.rule
        return {"describe": rule.describe(), "summary": rule.budget_summary(),
                "state": hub.ledger.state(), "queued": len(hub.ready),
                "running": len(hub.ledger.running)}

    def forget(self, key: str) -> None:
        hub = self.hubs.pop(key, None)
        if hub is not None:
            hub.ledger.stopped = True
            hub.wake()

    # -- the slots' calls -------------------------------------------------------------------
    def report(self, key: str, trial: int, step: int, value: float) -> str:
        hub = self.hubs.get(key)
        if hub is None:  # the study ended (Ctrl-C, max_failures): stop its trials
            return Decision.STOP.value
        return hub.ledger.report(trial, step, value)

    async def next_job(self, key: str, worker: str, done: dict | None = None,
                       stop: bool = False, proposal: dict | None = None,
                       origin: str | None = None) -> dict:
        """Hand in the last job's outcome (``done``) and take the next job.

        With decentralized asks the slot's sampler copy asked before the call: its
        ``proposal`` becomes the params if the job is a new trial (the reply says so), so
        the ledger knows a trial's params from its start, with no second round trip.
        """
        hub = self.hubs.get(key)
        if hub is None:
            return STOP
        ledger = hub.ledger
        left = [proposal]

        def proposed() -> tuple[dict, str | None] | None:
            p, left[0] = left[0], None
            return None if p is None else (p, origin)

        if done is not None:
            ledger.finish_job(done["number"], done)
            hub.wake(1)  # a rung may have been decided: a waiting slot may have work now
        while not stop:
            job = ledger.assign(worker, hub.pop_ready if hub.central else proposed)
            if job is not None:
                hub.wake(1)  # pass it on: there may be more than one job
                return {"job": job.to_wire(), "used": left[0] is None, **hub.delta(worker)}
            if not hub.central and proposal is None and ledger.wants_new():
                # a new trial, and the slot's copy has not proposed (it had not heard the
                # history yet): the history now, then a proposal
                return {"job": None, "propose": True, **hub.delta(worker)}
            if hub.end_if_idle():
                break
            if hub.waiting.get(worker, 0) >= WAITERS_PER_WORKER:
                return {"job": None, "wait": 0.5}
            fut = asyncio.get_running_loop().create_future()
            hub.waiters.append(fut)
            hub.waiting[worker] = hub.waiting.get(worker, 0) + 1
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, 5.0)
            finally:
                hub.waiting[worker] -= 1
            if self.hubs.get(key) is not hub:
                break
        if hub.manager is not None and not hub.manager.done():
            hub.manager.set_result(None)
        return STOP

    # -- HTTP clients' calls (hpo-mlops serve) ---------------------------------------------
    async def ask(self, key: str, client: str, lease: float, wait: float = 10.0) -> dict:
        """A job for an HTTP client, as a slot's ``hpo_next`` gives one, under a lease.

        Waits up to ``wait`` s for one (the central sampler's next configuration, a rung
        decided, a rerun); then answers why there is none. ``over``: none will ever come.
        """
        hub = self.hubs.get(key)
        if hub is None:
            return {"job": None, "over": True, "reason": "the study is not running"}
        ledger = hub.ledger
        until = time.monotonic() + wait
        while True:
            self._sweep(hub)
            if not (ledger.stopped or ledger.done):
                job = ledger.assign(f"http:{client}", hub.pop_ready)
                if job is not None:
                    now = time.time()
                    remote = RemoteJob(_job_id(job, ledger.trials[job.number]), client, lease,
                                       now + lease, now)
                    hub.remote[job.number] = remote
                    hub.wake(1)
                    return {"job": {**job.to_wire(), "job": remote.job, "lease": lease}}
                hub.end_if_idle()
            if ledger.stopped or ledger.done:
                return {"job": None, "over": True, "reason": _over(ledger)}
            left = until - time.monotonic()
            if left <= 0:
                return {"job": None, "over": False, "reason": _why_none(ledger),
                        "retry_after": 1.0}
            wants = ledger.wants_new() and not hub.ready
            if wants:  # the manager pushes what waiting asks need on its next poll
                hub.demand += 1
                hub.wake(0)
            fut = asyncio.get_running_loop().create_future()
            hub.waiters.append(fut)
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, min(left, 1.0))
            finally:
                if wants:
                    hub.demand -= 1
            if self.hubs.get(key) is not hub:
                return {"job": None, "over": True, "reason": "the study is not running"}

    def _remote(self, key: str, trial: int, job: str | None, told: bool = False) -> Any:
        """The remote job a report or tell is about, or the reason it cannot be taken."""
        hub = self.hubs.get(key)
        if hub is None:
            raise RemoteError(409, "the study is not running")
        rec = hub.ledger.trials.get(trial)
        if rec is None:
            raise RemoteError(404, f"trial: {trial} is not a trial of this study "
                                   f"(its trials are 0 to {hub.ledger.next_number - 1})")
        remote = hub.remote.get(trial)
        if remote is not None and (job is None or job == remote.job):
            return hub, remote
        if told:
            return hub, None
        if rec.state.finished:
            raise RemoteError(409, f"trial: {trial} has finished ({rec.state.value}); it "
                                   "takes no more reports")
        if remote is not None:
            raise RemoteError(409, f"job: {job!r} of trial {trial} is over; its current "
                                   f"job is {remote.job!r}")
        if trial in hub.ledger.running:
            raise RemoteError(409, f"trial: {trial} runs on a Dask worker, not for an HTTP "
                                   "client")
        raise RemoteError(409, f"trial: {trial} is not running ({rec.state.value}): its lease "
                               "expired or it waits at a rung; ask for a trial")

    def remote_report(self, key: str, trial: int, step: int, value: float,
                      job: str | None = None) -> dict:
        """A report from an HTTP client: renews the lease; answers whether to stop."""
        try:
            hub, remote = self._remote(key, trial, job)
        except RemoteError as exc:
            return {"status": exc.status, "error": str(exc)}
        if remote.reports and step <= remote.reports[-1][0]:
            if [step, value] == remote.reports[-1]:  # the same report, sent again
                return {"prune": remote.prune, "duplicate": True}
            return {"status": 422, "error": f"step: steps must increase, got step={step} "
                                            f"after step={remote.reports[-1][0]}"}
        remote.deadline = time.time() + remote.lease
        remote.reports.append([step, value])
        remote.prune = hub.ledger.report(trial, step, value) == Decision.STOP.value
        return {"prune": remote.prune}

    def tell(self, key: str, trial: int, out: dict, job: str | None = None) -> dict:
        """An HTTP client's outcome of its job: recorded once, however often it is sent."""
        try:
            hub, remote = self._remote(key, trial, job, told=True)
        except RemoteError as exc:
            return {"status": exc.status, "error": str(exc)}
        ledger = hub.ledger
        digest = json.dumps(out, sort_keys=True, default=str)
        if remote is None:
            last = hub.told.get(trial)
            if last is not None and (job is None or job == last[0]):
                if last[1] == digest:
                    return {"recorded": False, "duplicate": True,
                            "state": ledger.trials[trial].state.value}
                return {"status": 409, "error": f"trial: {trial} was already told another "
                                                "outcome; it is recorded once"}
            try:
                self._remote(key, trial, job)
            except RemoteError as exc:
                return {"status": exc.status, "error": str(exc)}
        del hub.remote[trial]
        hub.told[trial] = (remote.job, digest)
        outcome = {**out, "intermediate": remote.reports, "start": remote.start,
                   "end": time.time(), "worker": f"http:{remote.client}"}
        if outcome.get("state") == "PRUNED" and remote.reports:
            outcome.setdefault("pruned_step", remote.reports[-1][0])
        ledger.finish_job(trial, outcome)
        if not hub.end_if_idle():
            hub.wake()
        return {"recorded": True, "duplicate": False, "state": ledger.trials[trial].state.value}

    @staticmethod
    def _sweep(hub: _Hub) -> None:
        """Jobs whose client sent nothing within their lease: the client vanished, so the
        trial runs again (``max_retries``, as for a lost worker), for whoever asks next."""
        now = time.time()
        for number, remote in list(hub.remote.items()):
            if remote.deadline >= now:
                continue
            del hub.remote[number]
            rec = hub.ledger.trials.get(number)
            if rec is not None:
                rec.tags["hpo.leases_expired"] = str(int(rec.tags.get("hpo.leases_expired", 0)) + 1)
            hub.ledger.lost(number, f"its lease of {remote.lease:g} s expired: client "
                                    f"{remote.client!r} sent no report or tell")
            hub.wake()

    # -- cluster events ---------------------------------------------------------------------
    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """A worker left: its running trials are lost (retried, or failed after
        ``max_retries``); its sampler copy, if it comes back at that address, starts anew."""
        for hub in self.hubs.values():
            hub.sent.pop(worker, None)
            if hub.ledger.lost_worker(worker, f"worker {worker} was lost (its process died "
                                              "or its batch job ended)"):
                hub.wake()

    def remove_client(self, scheduler: Any, client: str) -> None:
        """A manager gone without ``hpo_forget`` (killed): drop its studies' ledgers."""
        for key in [k for k, h in self.hubs.items() if h.client == client]:
            self.forget(key)


def _over(ledger: Ledger) -> str:
    if ledger.stopped:
        return "the study was stopped (Ctrl-C, max_failures or its store is gone)"
    return f"the study has finished: all of its n_trials={ledger.n_trials} trials ended"


def _why_none(ledger: Ledger) -> str:
    if not ledger._new_allowed():
        return (f"every new trial has started ({len(ledger.running)} running); ask again: a "
                "promotion, or a trial whose client vanished, may come")
    if ledger.plans:
        return "the rule waits for the trials running at this rung before it plans more"
    return "the sampler has no configuration ready yet"


# -- the worker side --------------------------------------------------------------------------
def _ignore_sigint() -> Any:
    """Ctrl-C is the manager's to handle: it records the running trials and closes the
    cluster. Worker processes in the terminal's process group would otherwise die on the
    same SIGINT, each printing a traceback, before the manager could do so. Returns the
    handler it replaced (restored at teardown), or ``None`` off the main thread."""
    import signal

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    return None


def dask_reporter(key: str) -> Callable[[int, int, float], bool]:
    """A reporter for :class:`hpo_mlops.trial.Trial` that asks the scheduler plugin."""
    from distributed import get_worker
    from distributed.utils import sync

    worker = get_worker()

    def report(trial: int, step: int, value: float) -> bool:
        answer = sync(worker.loop, worker.scheduler.hpo_report,
                      key=key, trial=trial, step=step, value=value)
        return answer == Decision.STOP.value

    return report


def copy_seed(seed: int | None, worker: str) -> int | None:
    """A seed of its own for the sampler copy on ``worker`` (``None`` stays ``None``)."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SamplerCopy:
    """This worker process's copy of the study's sampler (decentralized asks).

    It learns every trial of every copy from the ledger's history, in order: a trial
    another copy started (``running``: counted as pending, so the constant liar keeps
    copies apart), paused at a rung, or finished (``tell``, with the very dict object it
    was asked or told as running). Deltas arrive on whichever slot's reply carried them,
    so they are applied by their position, never twice and never out of order.
    """

    def __init__(self, spec: Any, space: dict, directions: list[str], seed: int | None) -> None:
        from hpo_mlops.samplers.base import Sampler
        from hpo_mlops.space import Space

        self.sampler: Sampler = registry.create(registry.SAMPLERS, spec, Sampler)
        self._space, self._directions, self._seed = Space.from_dict(space), directions, seed
        self._ready = False
        self.lock = threading.Lock()
        self.applied = 0
        self._buffer: dict[int, list] = {}
        self._params: dict[int, dict] = {}  # trial -> the dict the sampler knows it by
        self._proposals: dict[str, dict] = {}  # proposals not yet seen started
        self._count = 0
        self.synced = False  # heard the history at least once

    def apply(self, start: int, items: list, worker: str) -> None:
        with self.lock:
            self.synced = True
            self._setup(worker)
            self._buffer[start] = items
            while self.applied in self._buffer:
                chunk = self._buffer.pop(self.applied)
                for item in chunk:
                    self._apply(*item)
                self.applied += len(chunk)

    def _setup(self, worker: str) -> None:
        if not self._ready:
            self.sampler.setup(self._space, self._directions, copy_seed(self._seed, worker))
            self._ready = True

    def _apply(self, kind: str, number: int, params: dict, state: str, values: Any,
               intermediate: list, budget: Any, origin: str | None) -> None:
        if kind == "running":
            mine = self._proposals.pop(origin, None) if origin else None
            if mine is not None:  # this copy's own proposal: already pending in it
                self._params[number] = mine
            elif number not in self._params:  # another copy's (a rerun is known already)
                self._params[number] = dict(params)
                running = getattr(self.sampler, "running", None)
                if running is not None:
                    running(self._params[number])
            return
        own = self._params.get(number)
        if own is None:
            own = self._params[number] = dict(params)
        reports = [tuple(x) for x in intermediate]
        if kind == "pause":
            if reports:
                self.sampler.pause(own, Result(TrialState.PRUNED, values, reports, budget))
            return
        self.sampler.tell(own, Result(TrialState(state), values, reports, budget))
        self._params.pop(number, None)

    def propose(self, worker: str) -> tuple[dict, str] | None:
        """Ask for the slot's next new trial; ``None`` when the sampler has nothing left.
        The proposal is this copy's pending trial from now on; the ledger's "running"
        item with its origin says which trial number it became."""
        with self.lock:
            self._setup(worker)
            asked = self.sampler.ask(1)
            if not asked:
                return None
            self._count += 1
            origin = f"{worker}#{self._count}"
            self._proposals[origin] = asked[0]
            return dict(asked[0]), origin


class StudyPlugin(WorkerPlugin):
    """Holds a study's objective on each worker, the result of its ``setup()`` and, for
    decentralized asks, the worker process's sampler copy."""

    idempotent = False

    def __init__(self, name: str, objective: Callable, setup: Callable[[], Any] | None,
                 metrics: list[str], reports: bool, checkpoint_root: str,
                 copy: dict[str, Any] | None = None) -> None:
        self.name = name
        self.objective = objective
        self.setup_fn = setup
        self.metrics, self.reports, self.checkpoint_root = metrics, reports, checkpoint_root
        self.copy_spec = copy
        self.copy: SamplerCopy | None = None
        self.context: Any = None
        self.setup_error: str | None = None
        self._sigint: Any = None

    def setup(self, worker: Any) -> None:
        self._sigint = _ignore_sigint()
        if self.copy_spec is not None:
            self.copy = SamplerCopy(**self.copy_spec)
        if self.setup_fn is None:
            return
        try:
            self.context = self.setup_fn()
        except Exception as exc:  # recorded on every trial of this worker instead
            self.setup_error = f"setup() failed on {worker.address}: {exc!r}\n" + "".join(
                traceback.format_exc(limit=-8)
            )

    def teardown(self, worker: Any) -> None:
        """Give the worker its own Ctrl-C handler back (a user's cluster outlives us)."""
        import signal

        if self._sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._sigint)
