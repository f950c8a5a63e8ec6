"""MLflow tracking: one parent run per study, one nested run per trial.

The manager is the only writer. Writes go, in order, to one writer *process* that uses
``MlflowClient.log_batch`` (measured on the sqlite store: ~14 ms a run, against ~44 ms for
``start_run``/``log_param``/``log_metric`` calls and ~500 ms with MLflow's async logging),
so tracking never holds up submitting the next trial. A process rather than a thread:
writing a trial costs ~12 ms of Python CPU (SQLAlchemy), which in a thread competes for
the GIL with the manager loop (~2.5 ms a trial) and capped the 50 ms benchmark at 87%
worker utilization. ``HPO_MLOPS_TRACKING_THREAD=1`` writes from a thread instead.
Workers need no access to MLflow at all.

Trial runs carry the params under exactly the space's names, each report as a metric
with its step, the final metrics, and ``hpo.*`` tags (trial number, state, worker,
duration, pruned step, the params as JSON for an exact resume). MLflow run status:
COMPLETE -> FINISHED, FAILED -> FAILED, PRUNED and INTERRUPTED -> KILLED.

Reliability (what changed, and why):

* The store is checked by the first call on it (``find_study`` / ``open_study``, which
  the study makes before any cluster starts): an unreachable server raises
  :class:`~hpo_mlops.errors.TrackingUnavailable` naming the URI and the failure within
  ``HPO_MLOPS_TRACKING_CHECK_S`` (5 s) seconds. MLflow's REST client alone retries a dead
  server for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``=7 with backoff), so the check
  is one REST call of its own with no MLflow retries and a short timeout; MLflow's
  environment is left as it is for every other call of the manager process.
* Every write (trials, best, study metrics, the study run's end) is an operation in one
  ordered queue; the writer confirms each one, and an operation that failed for a
  transient reason (connection refused or timed out, HTTP 5xx, sqlite's "database is
  locked", a dead writer process) stays at the head of the queue and is retried with
  backoff (0.25 s doubling to 5 s), the later ones waiting behind it. Before, a failed
  batch was logged and dropped. The writer process makes its REST calls with no MLflow
  retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``), so an outage is seen at once.
* Retries never duplicate a run: the public-API path tags a trial's run with its number
  when it creates it, and a retried operation first looks up the runs the study already
  has (a write whose answer was lost may have happened); the direct-SQL path is one
  transaction, so it is either all there or not at all.
* sqlite's "database is locked" (another process writing the same file: two studies on
  one store) is retried inside the writer (up to 15 s, jittered backoff) and then by the
  queue; before, the first such error turned the fast path off for good and the batch
  was lost.
* A store gone for longer than ``give_up_after`` (``Tracker(uri, give_up_after=s)``,
  default ``HPO_MLOPS_TRACKING_GIVE_UP_S`` or 300 s) makes the next ``log_trial`` /
  ``log_best`` / ``flush`` / ``check`` / ``close`` raise ``TrackingUnavailable`` (once:
  later calls, e.g. recording interrupted trials and ``close``, just keep their writes);
  ``Tracker.unavailable()`` returns that error (or None) without raising.
  Nothing is lost: every unwritten operation is appended to a local file named after the
  URI and the study (``HPO_MLOPS_SPILL_DIR``, default ``~/.cache/hpo-mlops/unwritten``),
  which the next ``find_study`` / ``open_study`` of that study on that store writes
  (idempotently) before it reads, so a resume sees every finished trial.
* ``close()`` never hangs on a gone store: it waits for a failing store at most
  ``HPO_MLOPS_TRACKING_CLOSE_S`` (30 s, never past ``give_up_after``), then keeps what is
  unwritten and raises (or returns, when the error was raised already). The tracker's
  ``client`` (the manager process's own calls: the rule state artifact, a pipeline's
  tags) raises ``TrackingUnavailable`` at once while writes are failing, instead of
  waiting out MLflow's retries (minutes). Not covered: a call of that client already
  under way when the server dies waits out MLflow's retries, and with
  ``HPO_MLOPS_TRACKING_THREAD=1`` (writer in a thread) the writer keeps MLflow's retries.
* Two processes creating one new sqlite store at once raced in MLflow's migrations
  (alembic "expected to match one row", "duplicate column"); creating a client of a
  sqlite store now holds a file lock (``~/.cache/hpo-mlops/locks``).
* The direct-SQL insert path wrote ``user_id=''`` where MLflow writes ``'unknown'``; it
  now writes MLflow's value, and runs only for the MLflow versions in
  ``FAST_PATH_MLFLOW`` (tests/test_tracking.py compares every column of every row of
  runs, tags, params, metrics and latest_metrics that both paths write, and the row
  count of every other table). It is kept because it is measured ~4-10x faster on a
  sqlite store (MLflow 3.17.2, one shared 2-core machine, ``_write_trials`` of trials
  with 3 reports and 2 metrics): ~210 against ~51 trials/s one trial a call, ~570
  against ~56 in batches of 20.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo_mlops.errors import TrackingUnavailable
from hpo_mlops.results import TrialRecord, TrialState

log = logging.getLogger("hpo_mlops.tracking")

STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.FAILED: "FAILED",
    TrialState.PRUNED: "KILLED",
    TrialState.INTERRUPTED: "KILLED",
    TrialState.RUNNING: "RUNNING",
    TrialState.PAUSED: "RUNNING",
}
ROLE, STUDY, TRIAL, STATE, PARAMS = "hpo.role", "hpo.study", "hpo.trial", "hpo.state", "hpo.params"
PARENT = "mlflow.parentRunId"

#: MLflow versions the direct-SQL insert path was checked against, ``[first, after last)``
#: as (major, minor): every column of every row it writes equals what MLflow's own API
#: writes (tests/test_tracking.py). Outside it trials go through the public API.
#: ``HPO_MLOPS_FAST_PATH=1`` forces the path on (to run that test on a new MLflow), ``=0`` off.
FAST_PATH_MLFLOW = ((3, 17), (3, 18))
DEFAULT_GIVE_UP_S = 300.0
#: how much longer the up-front check waits for a server that took the connection but is
#: slow to answer (busy, or still starting) than for one that refuses it
SLOW_SERVER_S = 30.0
_RETRY_FIRST_S, _RETRY_MAX_S = 0.25, 5.0
_MAX_OPS_PER_CALL = 1000


def _ms(t: float | None) -> int:
    return int((t if t is not None else time.time()) * 1000)


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _flatten(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(key, v))
        else:
            out[key] = str(v)[:6000]
    return out


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _fast_path_allowed(version: str | None = None) -> bool:
    """Whether the direct-SQL path may run with this MLflow (see ``FAST_PATH_MLFLOW``)."""
    forced = os.environ.get("HPO_MLOPS_FAST_PATH")
    if forced in ("0", "1"):
        return forced == "1"
    if version is None:
        import mlflow

        version = mlflow.__version__
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    first, after = FAST_PATH_MLFLOW
    return first <= parts < after


def spill_path(tracking_uri: str, study: str) -> Path:
    """Where the writes of study ``study`` that ``tracking_uri`` did not take are kept."""
    root = os.environ.get("HPO_MLOPS_SPILL_DIR") or Path.home() / ".cache" / "hpo-mlops" / "unwritten"
    key = hashlib.sha256(f"{tracking_uri}\n{study}".encode()).hexdigest()[:24]
    return Path(root) / f"{key}.pkl"


@dataclass
class _Op:
    """One write: ``wire`` is what the writer gets (and a spill file keeps); ``recs`` the
    manager's records whose ``run_id`` the answer fills in."""

    wire: dict[str, Any]
    recs: list[TrialRecord] = field(default_factory=list)


class Tracker:
    """Writes a study and its trials to an MLflow tracking store.

    ``give_up_after``: seconds the store may fail every write before the tracker gives up
    (default ``HPO_MLOPS_TRACKING_GIVE_UP_S`` or 300); then the next ``log_trial``,
    ``log_best``, ``flush``, ``check`` or ``close`` raises :class:`TrackingUnavailable`
    once, and what was not written is kept in :func:`spill_path` for the next run.
    """

    def __init__(self, tracking_uri: str | None = None, give_up_after: float | None = None) -> None:
        from mlflow.tracking import MlflowClient

        # Quiet MLflow's own chatter (alembic migrations on a new sqlite store, etc.).
        for name in ("alembic", "mlflow.store", "mlflow.tracking"):
            logging.getLogger(name).setLevel(logging.WARNING)
        with _init_lock(tracking_uri or ""):  # a new sqlite store is migrated here
            self.client = _GuardedClient(MlflowClient(tracking_uri), self)
        self.tracking_uri = self.client.tracking_uri
        self.give_up_after = (float(give_up_after) if give_up_after is not None
                              else _env_float("HPO_MLOPS_TRACKING_GIVE_UP_S", DEFAULT_GIVE_UP_S))
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.study_name = ""
        self.default_tags: dict[str, str] = {}  # on the study run and every trial run
        self.errors: list[str] = []  # writes the store refused (not outages: those are retried)
        self.written = 0
        self._cond = threading.Condition(threading.RLock())  # guards everything below
        self._ops: collections.deque[_Op] = collections.deque()  # not yet confirmed, in order
        self._sent = 0  # how many at the head of _ops the writer has now
        self._timer: threading.Timer | None = None  # the next retry, while one is waiting
        self._failures = 0  # calls failed in a row
        self._failing_since: float | None = None
        self._last_error = ""
        self._gone: TrackingUnavailable | None = None  # set when the tracker gave up
        self._raised = False
        self._checked = False

    # -- the store, checked by the first call on it ------------------------------------------
    def _check_store(self) -> None:
        """Fail fast, naming the URI, when the store cannot be reached (before any trial)."""
        if self._checked:
            return
        uri = self.tracking_uri
        limit = _env_float("HPO_MLOPS_TRACKING_CHECK_S", 5.0)
        try:
            if uri.startswith(("http://", "https://")):
                self._probe_http(limit)
            else:  # a local store: open it (a new sqlite file is migrated) and read it
                _retry_locked(self.client.search_experiments, max_results=1)
        except TrackingUnavailable:
            raise
        except Exception as exc:
            raise TrackingUnavailable(
                f"MLflow tracking store {uri} cannot be used: {type(exc).__name__}: {exc}"
            ) from exc
        self._checked = True

    def _probe_http(self, limit: float) -> None:
        """One REST call with no MLflow retries and a short timeout, repeated for ``limit`` s."""
        from mlflow.utils.rest_utils import http_request

        deadline = time.monotonic() + limit
        slow = False
        creds = self.client._tracking_client.store.get_host_creds()
        while True:
            left = deadline - time.monotonic()
            try:
                resp = http_request(creds, "/api/2.0/mlflow/experiments/get-by-name", "GET",
                                    params={"experiment_name": self.study_name or "hpo-mlops"},
                                    max_retries=0, backoff_factor=0, timeout=max(1.0, left),
                                    raise_on_status=False)
                if resp.status_code < 500 and resp.status_code not in (401, 403):
                    return  # it answered (404 for a new study is an answer)
                why = f"the server answered HTTP {resp.status_code} {resp.reason}"
                if resp.status_code in (401, 403):
                    raise TrackingUnavailable(
                        f"MLflow tracking server {self.tracking_uri} refused access: {why} "
                        f"(check MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN)")
            except TrackingUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - reported below, with the URI
                why = str(exc)
                if "Read timed out" in why and not slow:
                    # it took the connection but is slow to answer (a busy server, or one
                    # still starting): not the dead server this check is for; wait longer
                    slow = True
                    deadline = max(deadline, time.monotonic() + SLOW_SERVER_S)
            if deadline - time.monotonic() < 0.5:
                raise TrackingUnavailable(
                    f"MLflow tracking server {self.tracking_uri} cannot be reached "
                    f"(tried for {limit + (SLOW_SERVER_S if slow else 0):g} s): {why}")
            time.sleep(0.5)

    def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """A call on the store from this process, retried while sqlite says it is locked."""
        return _retry_locked(fn, *args, **kwargs)

    # -- study ------------------------------------------------------------------------------
    def find_study(self, name: str) -> list[TrialRecord]:
        """The trials an earlier run of study ``name`` recorded ([] if none). Writes first
        what that run could not write (the store was gone), so the answer holds it."""
        self._check_store()
        self._replay(name)
        exp = self._call(self.client.get_experiment_by_name, name)
        if exp is None or exp.lifecycle_stage == "deleted":
            return []
        self.experiment_id = exp.experiment_id
        parent = self._find_parent(name)
        if parent is None:
            return []
        self.parent_run_id = parent.info.run_id
        return self.load_trials()

    def open_study(self, name: str, params: dict[str, Any], space_json: str,
                   resume: bool = True) -> None:
        """Continue the study's run (``resume``, when there is one) or create a new one."""
        self.study_name = name
        self._check_store()
        _writer()  # start the writer process now, while the cluster starts
        self._replay(name)
        exp = self._call(self.client.get_experiment_by_name, name)
        if exp is None:
            self.experiment_id = self._call(self.client.create_experiment, name)
        else:
            if exp.lifecycle_stage == "deleted":
                self._call(self.client.restore_experiment, exp.experiment_id)
            self.experiment_id = exp.experiment_id
        parent = self._find_parent(name) if resume else None
        if parent is not None:
            self.parent_run_id = parent.info.run_id
            self._call(self.client.update_run, self.parent_run_id, status="RUNNING")
        else:
            run = self._call(
                self.client.create_run, self.experiment_id,
                tags={**self.default_tags, ROLE: "study", STUDY: name, "hpo.space": space_json},
                run_name=name,
            )
            self.parent_run_id = run.info.run_id
            from mlflow.entities import Param

            flat = _flatten("", params)
            self._call(self.client.log_batch, self.parent_run_id,
                       params=[Param(k, v) for k, v in flat.items()][:100])
            self._call(self.client.log_text, self.parent_run_id, space_json, "space.json")

    def stored_space(self) -> str | None:
        """The space the study was first run with (to refuse a changed space on resume)."""
        assert self.parent_run_id
        return self._call(self.client.get_run, self.parent_run_id).data.tags.get("hpo.space")

    def _find_parent(self, name: str) -> Any:
        runs = self._call(
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.`{ROLE}` = 'study' and tags.`{STUDY}` = '{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def load_trials(self) -> list[TrialRecord]:
        """Every trial run under the study's run (paginated), as records."""
        out: list[TrialRecord] = []
        token = None
        while True:
            page = self._call(
                self.client.search_runs,
                [self.experiment_id],
                filter_string=f"tags.`{PARENT}` = '{self.parent_run_id}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                rec = self._record(run)
                if rec is not None:
                    out.append(rec)
            token = page.token
            if not token:
                break
        return sorted(out, key=lambda r: r.number)

    @staticmethod
    def _record(run: Any) -> TrialRecord | None:
        tags = run.data.tags
        if TRIAL not in tags or PARAMS not in tags:
            return None
        info = run.info
        rec = TrialRecord(
            number=int(tags[TRIAL]),
            params=json.loads(tags[PARAMS]),
            state=TrialState(tags.get(STATE, "INTERRUPTED")),
            metrics=dict(run.data.metrics),
            error=tags.get("hpo.error"),
            worker=tags.get("hpo.worker"),
            host=tags.get("hpo.host"),
            start=info.start_time / 1000 if info.start_time else None,
            end=info.end_time / 1000 if info.end_time else None,
            attempts=int(tags.get("hpo.attempts", 1)),
            pruned_step=int(tags["hpo.pruned_step"]) if tags.get("hpo.pruned_step") else None,
            run_id=info.run_id,
        )
        if tags.get("hpo.values"):
            rec.values = json.loads(tags["hpo.values"])
        if tags.get("hpo.jobs"):
            rec.jobs = json.loads(tags["hpo.jobs"])
        if tags.get("hpo.reports"):
            rec.intermediate = [tuple(x) for x in json.loads(tags["hpo.reports"])]
        rec.tags = {k: v for k, v in tags.items()
                    if k in ("hpo.bracket", "hpo.rungs_reached", "hpo.budget_consumed",
                             "hpo.predictions", "hpo.pbt_schedule", "hpo.pbt_donors",
                             "hpo.pbt_params")}
        if tags.get("hpo.budget"):
            rec.budget = float(tags["hpo.budget"])
        return rec


    # -- writes: one ordered queue, confirmed by the writer, retried while the store is gone --
    def log_trial(self, rec: TrialRecord, metric_names: list[str], extra_tags: dict | None = None) -> None:
        """Queue the trial's run (created, or updated when the trial already has a run).

        Trials finished while the writer is busy go together in its next call, so a fast
        study costs one store transaction per batch rather than several per trial.
        Raises :class:`TrackingUnavailable` (once) when the store has been gone for longer
        than ``give_up_after``; the trial is kept all the same.
        """
        payload = {**rec.__dict__, "state": rec.state.value,
                   "params": dict(rec.params), "metrics": dict(rec.metrics),
                   "intermediate": list(rec.intermediate), "jobs": [list(j) for j in rec.jobs],
                   "tags": {**self.default_tags, **rec.tags,
                            **{k: str(v) for k, v in (extra_tags or {}).items()}}}
        self._enqueue(_Op({"kind": "trials", "experiment_id": self.experiment_id,
                           "parent_run_id": self.parent_run_id, "study": self.study_name,
                           "payloads": [payload], "metric_names": list(metric_names)}, [rec]))
        self.check()

    def log_best(self, rec: TrialRecord, metric_names: list[str], finished: int) -> None:
        """Keep the study run's best value and params up to date.

        ``best_<metric>`` is logged with the count of finished trials as its step: steps
        only grow, so MLflow's latest value is always the best (a best-so-far curve).
        """
        self._enqueue(_Op({"kind": "best", "parent_run_id": self.parent_run_id,
                           "params": dict(rec.params), "values": list(rec.values or []),
                           "number": rec.number, "metric_names": list(metric_names),
                           "finished": finished, "ts": _ms(None)}))
        self.check()

    def log_study_metrics(self, metrics: dict[str, float], tags: dict[str, str] | None = None) -> None:
        """Metrics and tags on the study's run (never raises: the end of a study logs these)."""
        self._enqueue(_Op({"kind": "study", "parent_run_id": self.parent_run_id,
                           "metrics": dict(metrics), "tags": dict(tags or {}), "ts": _ms(None)}))

    def check(self) -> None:
        """Raise :class:`TrackingUnavailable` (once) if the store has been gone too long."""
        with self._cond:
            if (self._gone is None and self._failing_since is not None
                    and time.monotonic() - self._failing_since > self.give_up_after):
                self._give_up()
            if self._gone is not None and not self._raised:
                self._raised = True
                raise self._gone

    def unavailable(self) -> TrackingUnavailable | None:
        """The error the tracker gave up with (``None`` while it has not); never raises."""
        return self._gone

    def _outage(self) -> TrackingUnavailable | None:
        """Why a call on the store from this process would fail now, if it would."""
        if self._gone is not None:
            return self._gone
        since = self._failing_since
        if since is not None:
            return TrackingUnavailable(
                f"MLflow tracking store {self.tracking_uri} has failed every write for "
                f"{time.monotonic() - since:.0f} s (last error: {self._last_error}); "
                "the call was not made")
        return None

    @property
    def pending(self) -> int:
        """Writes queued and not yet confirmed by the store."""
        return len(self._ops)

    def flush(self) -> None:
        """Wait for every write queued so far (or, with the store gone, until it is given up)."""
        self._wait(None)
        self.check()

    def _wait(self, patience: float | None) -> None:
        """Until every queued write is confirmed, or the tracker gives up: the store has
        failed for ``give_up_after``, or (``patience``) for that long since this wait
        began. Never longer than that while the store fails."""
        began = time.monotonic()
        with self._cond:
            while self._ops and self._gone is None:
                now = time.monotonic()
                if self._failing_since is not None:
                    if now - self._failing_since > self.give_up_after:
                        self._give_up()
                        break
                    if patience is not None and now - max(began, self._failing_since) > patience:
                        self._give_up(f"the study's end waited {patience:g} s for it")
                        break
                self._pump()
                self._cond.wait(0.25)

    def close(self, status: str = "FINISHED") -> None:
        """End the study's run with ``status`` after every queued write.

        With the store failing, waits for it at most ``HPO_MLOPS_TRACKING_CLOSE_S`` (30 s,
        and never past ``give_up_after``), then keeps what is unwritten (the end too) in
        :func:`spill_path` for the next run and raises :class:`TrackingUnavailable`, unless
        that was raised already (then it returns: the manager closes after catching it).
        """
        if self.parent_run_id is not None:
            self._enqueue(_Op({"kind": "end", "parent_run_id": self.parent_run_id,
                               "status": status, "ts": _ms(None)}))
        self._wait(min(self.give_up_after, _env_float("HPO_MLOPS_TRACKING_CLOSE_S", 30.0)))
        if self._gone is not None and self._raised:
            log.warning("%s", self._gone)
        self.check()

    def _enqueue(self, op: _Op) -> None:
        with self._cond:
            if self._gone is not None:  # given up: straight to the spill file
                self._spill([op])
                return
            self._ops.append(op)
            self._pump()

    def _pump(self) -> None:
        """Hand the writer what is queued, unless it has a call or a retry is waiting
        (caller holds ``self._cond``)."""
        if self._sent or self._timer is not None or self._gone is not None or not self._ops:
            return
        batch = list(itertools.islice(self._ops, _MAX_OPS_PER_CALL))
        self._sent = len(batch)
        try:
            fut = _writer().submit(_write_ops, self.tracking_uri, [op.wire for op in batch],
                                   self._failures > 0)
        except Exception as exc:  # noqa: BLE001 - a broken writer: answered as a failure
            fut = Future()
            fut.set_exception(exc)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future) -> None:
        try:
            res = fut.result()
        except Exception as exc:  # noqa: BLE001 - the writer died or the call failed to pickle
            broken = isinstance(exc, concurrent.futures.BrokenExecutor)
            if broken:
                _reset_writer()
            res = {"done": [], "error": f"{type(exc).__name__}: {exc}", "transient": broken}
        with self._cond:
            self._sent = 0
            if self._gone is not None:  # given up meanwhile: everything is in the spill file
                self._cond.notify_all()
                return
            for result in res["done"]:
                op = self._ops.popleft()
                if op.recs:
                    for rec, run_id in zip(op.recs, result, strict=True):
                        rec.run_id = run_id
                    self.written += len(op.recs)
            if res["error"] is None or not res["transient"]:
                if self._failing_since is not None:
                    log.warning("MLflow store %s is back after %.0f s; writing the %d kept writes",
                                self.tracking_uri, time.monotonic() - self._failing_since,
                                len(self._ops))
                self._failures, self._failing_since = 0, None
            if res["error"] is not None and not res["transient"]:  # refused: not an outage
                op = self._ops.popleft() if self._ops else _Op({"kind": "?", "parent_run_id": ""})
                log.warning("MLflow write (%s) failed: %s", _describe(op.wire), res["error"])
                self.errors.append(res["error"])
            elif res["error"] is not None:
                self._failures += 1
                self._last_error = res["error"]
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("MLflow store %s failed (%s); %d writes kept, retrying for up "
                                "to %.0f s", self.tracking_uri, res["error"], len(self._ops),
                                self.give_up_after)
                delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2 ** (self._failures - 1))
                self._timer = threading.Timer(delay * random.uniform(0.8, 1.2), self._retry)
                self._timer.daemon = True
                self._timer.start()
            self._pump()
            self._cond.notify_all()

    def _retry(self) -> None:
        with self._cond:
            self._timer = None
            self._pump()

    def _give_up(self, why: str = "") -> None:
        """Keep every unwritten write on disk and stop writing (caller holds ``_cond``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ops, gone_for = list(self._ops), time.monotonic() - (self._failing_since or time.monotonic())
        self._ops.clear()
        path = self._spill(ops)
        n_trials = sum(len(op.wire.get("payloads", ())) for op in ops)
        self._gone = TrackingUnavailable(
            f"MLflow tracking store {self.tracking_uri} has failed every write for "
            f"{gone_for:.0f} s ({why or f'give_up_after={self.give_up_after:g} s'}; last error: "
            f"{self._last_error}); the study stops. {len(ops)} unwritten writes "
            f"({n_trials} trial records) are kept in {path} and are written when study "
            f"{self.study_name!r} is run again against this store")
        log.error("%s", self._gone)
        self._cond.notify_all()

    def _spill(self, ops: list[_Op]) -> Path:
        path = spill_path(self.tracking_uri, self.study_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            for op in ops:
                pickle.dump(op.wire, f)
            f.flush()
            os.fsync(f.fileno())
        return path

    def _replay(self, name: str) -> None:
        """Write what an earlier run of study ``name`` kept when the store was gone."""
        path = spill_path(self.tracking_uri, name)
        if not path.exists():
            return
        ops = _read_spill(path)
        log.warning("writing %d writes that an earlier run of study %r kept in %s",
                    len(ops), name, path)
        while ops:
            res = _write_ops(self.tracking_uri, ops, True)
            ops = ops[len(res["done"]):]
            if res["error"] is None:
                break
            if res["transient"]:
                _write_spill(path, ops)
                raise TrackingUnavailable(
                    f"MLflow tracking store {self.tracking_uri}: could not write the {len(ops)} "
                    f"writes kept in {path} ({res['error']}); they stay there")
            log.warning("MLflow write (%s) failed: %s", _describe(ops[0]), res["error"])
            self.errors.append(res["error"])
            ops = ops[1:]
        path.unlink()


class _GuardedClient:
    """The tracker's ``MlflowClient`` for the calls made in the manager process (the
    study's reads, the rule state artifact, a pipeline's tags): while the tracker's writes
    are failing, or after it gave up, a call raises :class:`TrackingUnavailable` at once
    instead of waiting out MLflow's own retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``:
    minutes against a dead server), so the end of a study never hangs on a gone store.
    Everything else is the client's own."""

    def __init__(self, client: Any, tracker: Tracker) -> None:
        self._client, self._tracker = client, tracker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            err = self._tracker._outage()
            if err is not None:
                raise err
            return attr(*args, **kwargs)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = attr.__doc__
        return call


def _read_spill(path: Path) -> list[dict[str, Any]]:
    ops = []
    with path.open("rb") as f:
        while True:
            try:
                ops.append(pickle.load(f))
            except EOFError:
                break
            except (pickle.UnpicklingError, ValueError) as exc:  # a write cut short (a crash)
                log.warning("%s ends with an unreadable record (%s); it is skipped", path, exc)
                break
    return ops


def _write_spill(path: Path, ops: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for op in ops:
            pickle.dump(op, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _describe(wire: dict[str, Any]) -> str:
    if wire["kind"] == "trials":
        return f"trials {[p['number'] for p in wire['payloads']]}"
    return f"{wire['kind']} of study run {wire['parent_run_id']}"


# -- the writer: module-level functions, so they run the same in a process or a thread ----
_clients: dict[str, Any] = {}
_executor: concurrent.futures.Executor | None = None
_executor_lock = threading.Lock()


def _writer() -> concurrent.futures.Executor:
    """One writer per manager process, shared by its studies, in submission order."""
    global _executor
    with _executor_lock:
        if _executor is None:
            if os.environ.get("HPO_MLOPS_TRACKING_THREAD") == "1":
                _executor = concurrent.futures.ThreadPoolExecutor(1, "hpo-tracker")
            else:
                _executor = concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_writer_init)
            atexit.register(_executor.shutdown, wait=True)
        return _executor


def _reset_writer() -> None:
    """Forget a writer process that died; the next write starts a new one."""
    global _executor
    with _executor_lock:
        old, _executor = _executor, None
    if old is not None:
        old.shutdown(wait=False, cancel_futures=True)


def _writer_init() -> None:
    # Ctrl-C is the manager's: it flushes the writer before it exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The queue retries (with backoff, in order); MLflow's own retries would hold each
    # call for minutes while a server is down, hiding the outage from the manager.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _client(uri: str) -> Any:
    if uri not in _clients:
        from mlflow.tracking import MlflowClient

        with _init_lock(uri):
            _clients[uri] = MlflowClient(uri)
    return _clients[uri]


_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                    "SERVICE_UNDER_MAINTENANCE", "DEADLINE_EXCEEDED", "IO_ERROR"}
_TRANSIENT_TYPES = {"OperationalError", "ConnectionError", "Timeout", "ConnectTimeout",
                    "ReadTimeout", "MaxRetryError", "RetryError", "ProtocolError",
                    "NewConnectionError", "ChunkedEncodingError", "RemoteDisconnected"}


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed later (an outage, a lock), not a refusal."""
    for e in _causes(exc):
        if isinstance(e, ConnectionError | TimeoutError | concurrent.futures.BrokenExecutor):
            return True
        if type(e).__name__ in _TRANSIENT_TYPES or getattr(e, "error_code", None) in _TRANSIENT_CODES:
            return True
        if _locked(e):
            return True
    return False


def _locked(exc: BaseException) -> bool:
    """sqlite's "database is locked" (another process writes the same file)."""
    return any("is locked" in str(e) or "database is busy" in str(e) for e in _causes(exc))


@contextlib.contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """Held while this process makes an ``MlflowClient`` of a sqlite store: MLflow
    migrates a new file then, and two processes doing that at once fail (alembic: "expected to
    match one row"), so studies started together on a new store take turns. The lock
    file is in ``~/.cache/hpo-mlops/locks``, not next to the database."""
    if not uri.startswith("sqlite:"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    folder = Path.home() / ".cache" / "hpo-mlops" / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(uri.encode()).hexdigest()[:24]
    with (folder / f"{key}.lock").open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _retry_locked(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, again after a jittered pause while sqlite says "locked"
    (for up to ``HPO_MLOPS_LOCK_RETRY_S``, 15 s; then the error goes up)."""
    deadline = time.monotonic() + _env_float("HPO_MLOPS_LOCK_RETRY_S", 15.0)
    for attempt in itertools.count():
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
            pause = min(1.0, 0.02 * 2 ** attempt) * random.uniform(0.5, 1.5)
            log.debug("sqlite store is locked (%s); again in %.2f s", exc, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _write_ops(uri: str, ops: list[dict[str, Any]], retry: bool) -> dict[str, Any]:
    """Do ``ops`` in order; stops at the first that fails.

    Returns ``{"done": [one result per op done], "error": None or the failure,
    "transient": whether it may succeed later}``. ``retry``: some of these may have been
    written by a call whose answer was lost; trial runs are looked up, not made twice.
    """
    done: list[Any] = []
    i = 0
    while i < len(ops):
        op = ops[i]
        j = i + 1
        if op["kind"] == "trials":  # consecutive trials of one study: one batch
            while j < len(ops) and ops[j]["kind"] == "trials" and all(
                    ops[j][k] == op[k] for k in ("experiment_id", "parent_run_id", "study",
                                                 "metric_names")):
                j += 1
        group = ops[i:j]
        try:
            done += _do_group(uri, group, retry)
        except Exception as exc:  # noqa: BLE001 - reported to the manager, which retries
            if len(group) > 1 and not _transient(exc):  # find which one is refused
                try:
                    for one in group:
                        done += _do_group(uri, [one], True)
                        i += 1
                except Exception as exc1:  # noqa: BLE001
                    exc = exc1
                else:
                    continue
            return {"done": done, "error": f"{type(exc).__name__}: {exc}",
                    "transient": _transient(exc)}
        i += len(group)
    return {"done": done, "error": None, "transient": False}


def _do_group(uri: str, group: list[dict[str, Any]], retry: bool) -> list[Any]:
    op = group[0]
    kind = op["kind"]
    if kind == "trials":
        payloads = [p for o in group for p in o["payloads"]]
        ids = _write_trials(uri, op["experiment_id"], op["parent_run_id"], op["study"],
                            payloads, op["metric_names"], lookup=retry)
        out, k = [], 0
        for o in group:
            out.append(ids[k : k + len(o["payloads"])])
            k += len(o["payloads"])
        return out
    if kind == "best":
        _retry_locked(_write_best, uri, op["parent_run_id"], op["params"], op["values"],
                      op["number"], op["metric_names"], op["finished"], op["ts"])
    elif kind == "study":
        _retry_locked(_write_study_metrics, uri, op["parent_run_id"], op["metrics"],
                      op["tags"], op["ts"])
    elif kind == "end":
        _retry_locked(_client(uri).set_terminated, op["parent_run_id"], op["status"])
    else:
        raise ValueError(f"unknown tracking write {kind!r}")
    return [None]


def _existing_runs(uri: str, experiment_id: str, parent_run_id: str) -> dict[int, str]:
    """The trial runs already under a study run: trial number -> run id."""
    client, out, token = _client(uri), {}, None
    while True:
        page = _retry_locked(client.search_runs, [experiment_id],
                             filter_string=f"tags.`{PARENT}` = '{parent_run_id}'",
                             max_results=1000, page_token=token)
        for run in page:
            number = run.data.tags.get(TRIAL)
            if number is not None:
                out.setdefault(int(number), run.info.run_id)
        token = page.token
        if not token:
            return out


def _trial_rows(rec: dict[str, Any], metric_names: list[str]) -> tuple[
        dict[str, str], list[tuple[str, str]], list[tuple[str, float, int, int]], str, int]:
    """What one trial's run holds: tags, params, metrics (key, value, ms, step), status, end."""
    state = TrialState(rec["state"])
    start, end_t, intermediate = rec["start"], rec["end"], rec["intermediate"]
    tags = {
        TRIAL: str(rec["number"]),
        STATE: state.value,
        PARAMS: json.dumps(rec["params"]),
        "hpo.attempts": str(rec["attempts"]),
        **{k: str(v) for k, v in rec["tags"].items()},
    }
    if rec["values"] is not None:
        tags["hpo.values"] = json.dumps(rec["values"])
    if rec.get("jobs"):
        tags["hpo.jobs"] = json.dumps(rec["jobs"])
    if intermediate:  # for resume (the scheduler's records); the latest reports that fit
        kept = intermediate[-300:]
        while len(text := json.dumps(kept)) > 7900:
            kept = kept[len(kept) // 4 :]
        tags["hpo.reports"] = text
    for key in ("worker", "host", "pruned_step", "budget"):
        if rec.get(key) is not None:
            tags[f"hpo.{key}"] = str(rec[key])
    if start is not None and end_t is not None:
        tags["hpo.duration_s"] = f"{end_t - start:.3f}"
    if rec["error"]:
        tags["hpo.error"] = rec["error"][-5000:]
    if rec["traceback"]:
        tags["hpo.traceback"] = rec["traceback"][-5000:]
    # the final values must be MLflow's "latest" (max step, then max timestamp)
    end = max(_ms(end_t), _ms(start) + len(intermediate))
    metrics = [(metric_names[0], float(v), _ms(start) + i, int(s))
               for i, (s, v) in enumerate(intermediate)]
    last_step = int(intermediate[-1][0]) if intermediate else 0
    metrics += [(k, float(v), end, last_step) for k, v in rec["metrics"].items()]
    metrics += _schedule_metrics(rec["tags"].get("hpo.pbt_params"), _ms(start))
    params = [(k, str(v)[:6000]) for k, v in rec["params"].items()]
    return tags, params, metrics, STATUS[state], end


def _schedule_metrics(own: str | None, start_ms: int) -> list[tuple[str, float, int, int]]:
    """A PBT member's numeric params over budget as metrics ``pbt.<name>`` (step: the budget
    they apply from), so MLflow's UI draws the schedule. MLflow params cannot change, so they
    keep the member's first params. These are the params its own jobs ran with, a list that
    only grows (the lineage schedule, ``hpo.pbt_schedule``, is rewritten on an exploit):
    timestamps are fixed by the entry, so a run written again (the member paused, then went
    on) repeats the same rows, which the store keeps once, rather than adding new ones."""
    if not own:
        return []
    out = []
    for i, (step, params) in enumerate(json.loads(own)):
        for k, v in (params or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out.append((f"pbt.{k}", float(v), start_ms + i, int(step)))
    return out


def _write_trials(uri: str, experiment_id: str, parent_run_id: str, study_name: str,
                  recs: list[dict[str, Any]], metric_names: list[str],
                  lookup: bool = False) -> list[str]:
    """Write a batch of trials; returns their run ids, in order.

    A trial may come twice in one batch (paused at a rung, then promoted and finished):
    its last payload holds everything, so only that one is written, into one run.
    ``lookup``: first find the runs the study already has (a retried batch may have been
    written, or half written, by a call whose answer was lost), so none is made twice.
    """
    last = {r["number"]: i for i, r in enumerate(recs)}
    todo = [recs[i] for i in sorted(last.values())]
    if lookup:
        for number, run_id in _existing_runs(uri, experiment_id, parent_run_id).items():
            _run_ids.setdefault((parent_run_id, number), run_id)
    for r in todo:  # a trial written in an earlier batch: same run
        r["run_id"] = r["run_id"] or _run_ids.get((parent_run_id, r["number"]))
    new = [r for r in todo if r["run_id"] is None]
    if new and _fast_path_ok.get(uri, True) and _fast_path_allowed():
        try:
            ids = _retry_locked(_insert_runs_sql, uri, experiment_id, parent_run_id,
                                study_name, new, metric_names)
            for r, run_id in zip(new, ids, strict=True):
                r["run_id"], r["_written"] = run_id, True
        except _NoFastPath:
            _fast_path_ok[uri] = False
        except Exception as exc:
            if _transient(exc):  # one transaction, rolled back: the whole batch is retried
                raise
            # a surprise (the store rolled back): the public API from now on
            log.debug("direct SQL write failed (%s); using MlflowClient", exc)
            _fast_path_ok[uri] = False
    for r in todo:
        if not r.pop("_written", False):
            r["run_id"] = _retry_locked(_write_trial, uri, experiment_id, parent_run_id,
                                        study_name, r, metric_names)
        _run_ids[(parent_run_id, r["number"])] = r["run_id"]
    return [recs[last[r["number"]]]["run_id"] for r in recs]


class _NoFastPath(Exception):
    pass


_fast_path_ok: dict[str, bool] = {}
_run_ids: dict[tuple[str, int], str] = {}  # (study run, trial number) -> trial run
_artifact_roots: dict[tuple[str, str], str] = {}


def _insert_runs_sql(uri: str, experiment_id: str, parent_run_id: str, study_name: str,
                     recs: list[dict[str, Any]], metric_names: list[str]) -> list[str]:
    """New trial runs in ONE transaction of MLflow's own SQLAlchemy store.

    MLflow's public API costs 3 transactions (create_run, log_batch, set_terminated) and
    ~12 ms of Python a run; rows written here through MLflow's own ORM models are the same
    rows (tests compare both paths through the public read API), ~10x cheaper per run.
    Any other store (REST server, file store), an MLflow outside ``FAST_PATH_MLFLOW``, or
    any surprise, uses the public API. ``user_id`` is what ``MlflowClient.create_run``
    writes when the run has no ``mlflow.user`` tag (ours have none): ``'unknown'``.
    """
    import uuid

    try:
        from mlflow.store.tracking.dbmodels.models import (
            SqlLatestMetric,
            SqlMetric,
            SqlParam,
            SqlRun,
            SqlTag,
        )
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.utils.uri import append_to_uri_path
    except ImportError as exc:
        raise _NoFastPath from exc
    client = _client(uri)
    store = client._tracking_client.store
    if type(store) is not SqlAlchemyStore or not _fast_path_allowed():
        raise _NoFastPath
    key = (uri, experiment_id)
    if key not in _artifact_roots:
        _artifact_roots[key] = client.get_experiment(experiment_id).artifact_location
    ids = []
    with store.ManagedSessionMaker(read_only=False) as session:
        for rec in recs:
            run_id = uuid.uuid4().hex
            tags, params, metrics, status, end = _trial_rows(rec, metric_names)
            name = f"trial-{rec['number']:04d}"
            tags = {PARENT: parent_run_id, STUDY: study_name, "mlflow.runName": name, **tags}
            rows, latest = [], {}
            for k, v, ts, step in metrics:
                is_nan, value = store.sanitize_metric_value(v)
                rows.append(SqlMetric(key=k, value=value, timestamp=ts, step=step,
                                      is_nan=is_nan, run_uuid=run_id))
                if k not in latest or (step, ts, value) >= latest[k][:3]:
                    latest[k] = (step, ts, value, is_nan)
            run = SqlRun(
                name=name, run_uuid=run_id, experiment_id=int(experiment_id),
                artifact_uri=append_to_uri_path(_artifact_roots[key], run_id,
                                                SqlAlchemyStore.ARTIFACTS_FOLDER_NAME),
                source_type="UNKNOWN", source_name="", entry_point_name="", user_id="unknown",
                status=status, start_time=_ms(rec["start"]), end_time=end, deleted_time=None,
                source_version="", lifecycle_stage="active",
            )
            run.tags = [SqlTag(key=k, value=v[:8000]) for k, v in tags.items()]
            run.params = [SqlParam(key=k, value=v) for k, v in params]
            run.metrics = rows
            run.latest_metrics = [
                SqlLatestMetric(key=k, step=st, timestamp=ts, value=val, is_nan=nan)
                for k, (st, ts, val, nan) in latest.items()
            ]
            session.add(run)
            ids.append(run_id)
    return ids


def _write_trial(uri: str, experiment_id: str, parent_run_id: str, study_name: str,
                 rec: dict[str, Any], metric_names: list[str]) -> str:
    """Create (or update) one trial's run through MLflow's public client API.

    The run is tagged with the trial's number when it is created, and ``rec["run_id"]``
    set at once, so a write retried after a failure part way finishes the same run.
    """
    from mlflow.entities import Metric, Param, RunTag

    client = _client(uri)
    tags, params, metrics, status, end = _trial_rows(rec, metric_names)
    run_id = rec["run_id"]
    if run_id is None:
        run_id = client.create_run(
            experiment_id, start_time=_ms(rec["start"]),
            tags={PARENT: parent_run_id, STUDY: study_name, TRIAL: str(rec["number"])},
            run_name=f"trial-{rec['number']:04d}",
        ).info.run_id
        rec["run_id"] = run_id
    else:
        client.update_run(run_id, status="RUNNING")
    metric_list = [Metric(k, v, ts, step) for k, v, ts, step in metrics]
    param_list = [Param(k, v) for k, v in params]
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    first = True
    for chunk in _chunks(metric_list, 1000) if metric_list else [[]]:
        client.log_batch(run_id, metrics=chunk, params=param_list[:100] if first else [],
                         tags=tag_list[:100] if first else [])
        first = False
    for extra in _chunks(param_list[100:], 100):
        client.log_batch(run_id, params=extra)
    for extra in _chunks(tag_list[100:], 100):
        client.log_batch(run_id, tags=extra)
    client.set_terminated(run_id, status, end_time=end)
    return run_id


def _write_best(uri: str, parent_run_id: str, params: dict, values: list[float], number: int,
                metric_names: list[str], finished: int, now: int) -> None:
    from mlflow.entities import Metric, RunTag

    metrics = [Metric(f"best_{m}", v, now, finished)
               for m, v in zip(metric_names, values, strict=False)]
    tags = [RunTag("hpo.best_trial", str(number)), RunTag("hpo.best_params", json.dumps(params))]
    tags += [RunTag(f"best.{k}", str(v)[:5000]) for k, v in params.items()][:98]
    _client(uri).log_batch(parent_run_id, metrics=metrics, tags=tags)


def _write_study_metrics(uri: str, parent_run_id: str, metrics: dict[str, float],
                         tags: dict[str, str], now: int) -> None:
    from mlflow.entities import Metric, RunTag

    _client(uri).log_batch(parent_run_id,
                           metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                           tags=[RunTag(k, str(v)) for k, v in tags.items()])
