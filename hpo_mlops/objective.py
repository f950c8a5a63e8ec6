"""Objectives: a Python callable or an external command, and their result parsing.

``as_metrics`` is the one place that decides what a returned value means, so a NaN or a
string is a failed trial with a message, never a best value.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import numbers
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hpo_mlops.trial import Trial

Objective = Callable[[dict[str, Any], Trial], Any]


class TrialFailed(Exception):  # noqa: N818
    """The objective's result is unusable (message says why); the trial is FAILED."""


def as_metrics(raw: Any, metrics: Sequence[str]) -> dict[str, float]:
    """Turn an objective's return value into ``{metric: float}``.

    Accepted: a number (single objective), a sequence of numbers in metric order, or a
    dict holding every study metric (other numeric entries are kept as extra metrics).
    """
    if isinstance(raw, Mapping):
        missing = [m for m in metrics if m not in raw]
        if missing:
            raise TrialFailed(
                f"objective returned {_short(raw)} without the study metric(s) {missing}"
            )
        out = {}
        for k, v in raw.items():
            if hasattr(v, "item") and not isinstance(v, str):
                v = v.item()  # numpy / torch scalars
            if k in metrics:
                out[str(k)] = _number(v, str(k))
            elif isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
                out[str(k)] = float(v)
        return out
    if isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
        if len(raw) != len(metrics):
            raise TrialFailed(
                f"objective returned {len(raw)} values for {len(metrics)} metric(s) {list(metrics)}"
            )
        return {m: _number(v, m) for m, v in zip(metrics, raw, strict=True)}
    if len(metrics) > 1:
        raise TrialFailed(
            f"a multi-objective study needs a dict or list with {list(metrics)}, got {_short(raw)}"
        )
    return {metrics[0]: _number(raw, metrics[0])}


def _number(v: Any, name: str) -> float:
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TrialFailed(f"metric {name!r} is not a number: {_short(v)}")
    v = float(v)
    if not math.isfinite(v):
        raise TrialFailed(f"metric {name!r} is {v}; a trial needs a finite value")
    return v


def _short(v: Any, n: int = 200) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


#: seconds a command's process group gets between SIGTERM and SIGKILL
DEFAULT_GRACE = 5.0

_log = logging.getLogger(__name__)

_EOF = object()  # the stdout reader reached the end of the pipe
_IDLE = object()  # nothing was printed for a poll interval (or stdout is closed)


class Command:
    """An external program as objective, in any language.

    ``argv`` (a list, or a string split like a shell) may hold ``{param}`` placeholders,
    plus ``{trial_number}`` and ``{budget}``. The last line of stdout that parses as JSON
    is the result. A JSON line printed earlier that holds ``"step"`` and the primary
    metric is a report (so commands can be pruned). A non-zero exit is a failed trial,
    with the tail of stderr recorded.

    The command starts in a session (and process group) of its own, and the whole group
    is ended however the trial ends, so that nothing it started (``bash -c "python
    train.py"``, a launcher's workers) lives on holding a GPU: the group gets SIGTERM,
    ``grace`` seconds (default 5) to exit, then SIGKILL. That happens when the trial is
    pruned, when it runs past ``timeout`` seconds (if given; the trial is then FAILED),
    when the Python side stops by an exception or KeyboardInterrupt (a second interrupt
    during the grace skips to SIGKILL), when the Dask task running it is cancelled, and
    at interpreter exit for commands still running. It also happens when the command
    exits normally: a background child it left in its group is ended too (with a
    warning in the worker log), so a command must not rely on leaving daemons behind.
    Processes that start a session of their own (``setsid``, some launchers) leave the
    group and cannot be reached this way. As the command has its own session, a Ctrl-C
    at a terminal reaches it only through this cleanup, after the grace at most.
    """

    def __init__(self, argv: str | Sequence[str], cwd: str | None = None,
                 env: Mapping[str, str] | None = None, metric: str | None = None,
                 timeout: float | None = None, grace: float = DEFAULT_GRACE) -> None:
        self.argv = shlex.split(argv) if isinstance(argv, str) else [str(a) for a in argv]
        if not self.argv:
            raise ValueError("objective command is empty")
        if timeout is not None and not (_is_real(timeout) and timeout > 0):
            raise ValueError(f"command timeout must be a number of seconds > 0, got {timeout!r}")
        if not (_is_real(grace) and grace >= 0):
            raise ValueError(f"command grace must be a number of seconds >= 0, got {grace!r}")
        self.cwd = cwd
        self.env = dict(env) if env else None
        self.metric = metric
        self.timeout = None if timeout is None else float(timeout)
        self.grace = float(grace)
        #: seconds between checks of the exit, the timeout and the Dask task's cancellation
        self.poll = 0.1

    def __repr__(self) -> str:
        return f"Command({shlex.join(self.argv)!r})"

    def render(self, params: Mapping[str, Any], trial: Trial) -> list[str]:
        values = {**params, "trial_number": trial.number, "budget": trial.budget}
        try:
            return [a.format_map(values) for a in self.argv]
        except KeyError as exc:
            raise TrialFailed(
                f"command placeholder {{{exc.args[0]}}} is not a parameter; "
                f"known: {', '.join(values)}"
            ) from None

    def __call__(self, params: dict[str, Any], trial: Trial) -> Any:
        argv = self.render(params, trial)
        env = {**os.environ, **(self.env or {}), "HPO_TRIAL_NUMBER": str(trial.number)}
        task = _dask_task()
        try:
            proc = subprocess.Popen(
                argv, cwd=self.cwd, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1,
                start_new_session=True,  # its own session and process group: pgid == pid
            )
        except OSError as exc:
            raise TrialFailed(f"cannot start {argv[0]!r}: {exc}") from None
        group = _Group(proc, self.grace)
        stderr_tail: deque[str] = deque(maxlen=40)
        lines: queue.Queue[Any] = queue.Queue()
        readers = [
            threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True),
            threading.Thread(target=stderr_tail.extend, args=(proc.stderr,), daemon=True),
        ]
        for t in readers:
            t.start()
        try:
            last, pruned = self._follow(proc, trial, task, lines, stderr_tail)
            if pruned:
                return last  # the report line; the group is ended on the way out
            left = group.end()  # exited: end what it left running in its group
            if left:
                _log.warning("trial %s: %s exited but left %d process(es) in its group; "
                             "ended them", trial.number, shlex.join(argv), left)
            for t in readers:  # the output printed before the exit, the result among it
                t.join(timeout=1.0)
            while True:
                try:
                    item = lines.get_nowait()
                except queue.Empty:
                    break
                if item is not _EOF and (parsed := _json_line(item)) is not None:
                    last = parsed
            if proc.returncode != 0:
                tail = "".join(stderr_tail.copy()).strip()
                raise TrialFailed(f"command exited with code {proc.returncode}: "
                                  f"{tail[-2000:] or '(no stderr)'}")
            if last is None:
                raise TrialFailed("command printed no JSON line on stdout "
                                  "(the last one is the result)")
            return last
        finally:
            group.end()  # pruned, timed out, cancelled, an exception: SIGTERM, grace, SIGKILL
            for t in readers:
                t.join(timeout=1.0)
            if not any(t.is_alive() for t in readers):  # else a process that left the
                for stream in (proc.stdout, proc.stderr):  # group holds the pipes
                    with contextlib.suppress(Exception):
                        stream.close()

    def _follow(self, proc: subprocess.Popen, trial: Trial, task: Any,
                lines: queue.Queue[Any], stderr_tail: deque[str]) -> tuple[Any, bool]:
        """Read the command's output until it exits or is pruned (the command then still
        runs): (the last JSON line read, whether it was pruned)."""
        deadline = time.monotonic() + self.timeout if self.timeout else math.inf
        next_check = time.monotonic() + self.poll
        last = None
        eof = False
        while True:
            tick = max(0.0, min(self.poll, deadline - time.monotonic()))
            item: Any = _IDLE
            if eof:  # stdout closed: wait for the exit, checking the timeout on the way
                try:
                    proc.wait(timeout=tick)
                    return last, False
                except subprocess.TimeoutExpired:
                    pass
            else:
                with contextlib.suppress(queue.Empty):
                    item = lines.get(timeout=tick)
            if item is _EOF:
                eof = True
            elif item is not _IDLE and (parsed := _json_line(item)) is not None:
                last = parsed
                if (isinstance(parsed, dict) and "step" in parsed and self.metric in parsed
                        and isinstance(parsed["step"], int)):
                    trial.report(parsed[self.metric], parsed["step"])
                    if trial.should_prune():
                        return parsed, True
            elif item is _IDLE and proc.poll() is not None:
                # exited, and quiet for a poll interval: what it started holds stdout open
                return last, False
            now = time.monotonic()
            if now >= deadline:
                tail = "".join(stderr_tail.copy()).strip()[-2000:]
                raise TrialFailed(f"command ran past its timeout of {self.timeout:g} s; its "
                                  f"process group was ended. stderr: {tail or '(none)'}")
            if task is not None and now >= next_check:
                next_check = now + self.poll
                if _task_cancelled(task):
                    raise TrialFailed("the trial's Dask task was cancelled; its process "
                                      "group was ended")


def _read_lines(stream: Any, lines: queue.Queue[Any]) -> None:
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):  # the pipe was closed under us
        pass
    finally:
        lines.put(_EOF)


class _Group:
    """A command's process group (its session: pgid == the command's pid), to be ended."""

    def __init__(self, proc: subprocess.Popen, grace: float) -> None:
        self.proc, self.pgid, self.grace = proc, proc.pid, grace
        with _LIVE_LOCK:
            _LIVE[self.pgid] = self

    def alive(self) -> bool:
        self.proc.poll()  # reap the leader: a zombie is no member that holds anything
        return _group_alive(self.pgid)

    def end(self) -> int:
        """SIGTERM the group, wait up to ``grace`` s, SIGKILL; how many processes it had."""
        try:
            if not self.alive():
                return 0
            left = _count_members(self.pgid)
            _killpg(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            try:
                while self.alive() and time.monotonic() < deadline:
                    time.sleep(0.02)
            finally:  # a second interrupt during the grace skips to SIGKILL
                if self.alive():
                    _killpg(self.pgid, signal.SIGKILL)
                    kill_deadline = time.monotonic() + 5.0
                    while self.alive() and time.monotonic() < kill_deadline:
                        time.sleep(0.01)
            return left
        finally:
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=1.0)
            with _LIVE_LOCK:
                _LIVE.pop(self.pgid, None)


#: groups of commands still running in this process, ended at interpreter exit
_LIVE: dict[int, _Group] = {}
_LIVE_LOCK = threading.Lock()


@atexit.register
def _end_live_groups() -> None:
    with _LIVE_LOCK:
        groups = list(_LIVE.values())
    for g in groups:
        _killpg(g.pgid, signal.SIGTERM)
    deadline = time.monotonic() + max((g.grace for g in groups), default=0.0)
    while any(g.alive() for g in groups) and time.monotonic() < deadline:
        time.sleep(0.05)
    for g in groups:
        if g.alive():
            _killpg(g.pgid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, not yet reaped, do not count:
    where PID 1 does not reap, an orphan's zombie stays in the group for ever)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _count_members(pgid) > 0


def _count_members(pgid: int) -> int:
    """Running (non-zombie) processes of a group, from /proc; 1 where there is no /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return 1
    n = 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            n += 1
    return n


def _dask_task() -> tuple[Any, Any] | None:
    """(worker, key) of the Dask task this thread runs, or ``None`` outside a Dask task."""
    try:
        from distributed.worker import get_worker, thread_state
    except ImportError:
        return None
    key = getattr(thread_state, "key", None)
    if key is None:
        return None
    try:
        return get_worker(), key
    except ValueError:
        return None


def _task_cancelled(task: tuple[Any, Any]) -> bool:
    """Whether the worker dropped the task (``future.cancel()``, the study interrupted):
    Dask does not stop a running task's thread, so the command would run on unseen."""
    worker, key = task
    try:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")
    except Exception:  # an internal API that moved: never fail a trial over it
        return False


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _json_line(line: str) -> Any:
    line = line.strip()
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def make_objective(objective: Any, metric: str) -> Objective:
    """A callable stays as it is; a list or string of argv becomes a :class:`Command`."""
    if isinstance(objective, Command):
        if objective.metric is None:
            objective.metric = metric
        return objective
    if isinstance(objective, str) or (
        isinstance(objective, Sequence) and objective and all(isinstance(a, str) for a in objective)
    ):
        return Command(objective, metric=metric)
    if callable(objective):
        return objective
    raise TypeError(
        "objective must be a callable objective(params, trial) or a command "
        f"(a list of strings such as ['python', 'train.py', '--lr', '{{lr}}']), got {objective!r}"
    )
