"""dask-jobqueue clusters from a config dict, one factory per batch system.

A config reads like the batch system's own words::

    {"kind": "slurm", "queue": "gpu", "account": "proj42", "cores": 1, "memory": "16GB",
     "walltime": "02:00:00", "directives": ["--gres=gpu:1"], "resources": {"GPU": 1},
     "prologue": ["module load cuda"], "lifetime": "1h50m", "lifetime_stagger": "4m",
     "jobs": 4}                     # or "adapt": {"minimum": 0, "maximum": 16}

Every dask-jobqueue option of that batch system's ``*Cluster`` passes through under its
own name; ``directives``, ``prologue`` and ``skip_directives`` are short names for
``job_extra_directives``, ``job_script_prologue`` and ``job_directives_skip``.
hpo-mlops adds ``jobs``/``adapt`` (scaling), ``lifetime``/``lifetime_stagger``/
``lifetime_restart`` and ``resources`` (turned into ``dask-worker`` arguments) and
``worker_timeout`` (seconds to wait for a first worker before giving up).

Why wrap dask-jobqueue at all: its errors are not what a user of a config file can act on
(a rejected ``sbatch`` surfaces as a traceback logged from a background task, and then
nothing happens), a cancelled job is not replaced unless someone calls ``scale`` again,
and a manager that dies leaves jobs in the queue. Each factory here validates the config
up front, names the missing option and the batch system, reports the submit command's own
stderr, keeps ``jobs: N`` at N by replacing lost jobs, and records every job id it
submitted so that closing the study leaves none behind.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from hpo_mlops.cluster import SCHEDULER_CONFIG, ClusterError, ClusterFactory
from hpo_mlops.errors import ConfigError

logger = logging.getLogger(__name__)

#: where the rendered script shows the scheduler (``hpo-mlops cluster job-script``)
SCRIPT_SCHEDULER = "tcp://<scheduler-address>:8786"

#: short names -> dask-jobqueue's names
ALIASES = {
    "directives": "job_extra_directives",
    "prologue": "job_script_prologue",
    "skip_directives": "job_directives_skip",
}

#: options hpo-mlops itself reads; everything else goes to dask-jobqueue
OWN_OPTIONS = ("jobs", "adapt", "worker_timeout", "lifetime", "lifetime_stagger",
               "lifetime_restart", "resources")

#: dask-jobqueue parameters a config must not set (deprecated, or set by this factory)
_HIDDEN = {"self", "scheduler", "name", "job_cls", "loop", "asynchronous", "n_workers",
           "dashboard_address", "host", "base_class_kwargs", "job_kwargs", "kwargs",
           "extra", "env_extra", "header_skip", "job_extra", "ledger"}

#: ``adapt:`` keys -> ``cluster.adapt`` keywords
_ADAPT_KEYS = {"minimum": "minimum_jobs", "maximum": "maximum_jobs", "interval": "interval",
               "wait_count": "wait_count", "target_duration": "target_duration"}

#: with this target, ``Adaptive`` asks for one worker per trial in flight (queued or
#: running), so a study scales up while trials wait and down once they run out; the
#: default (5 s of estimated work per worker) would barely scale up for HPO trials
ADAPT_TARGET_DURATION = "100ms"

#: the default wait for a first worker: long enough for a queue that is merely busy,
#: short enough that a job which can never start does not hang the study
DEFAULT_WORKER_TIMEOUT = 600.0


def jobqueue() -> ModuleType:
    """``dask_jobqueue``, imported without keeping its SIGINT handler.

    Importing dask-jobqueue (0.9) sets the process's SIGINT handler to ``sys.exit()``
    (``dask_jobqueue/runner.py``, meant for its own runner processes). In the manager that
    turns Ctrl-C into a silent exit with status 0: no KeyboardInterrupt, so running trials
    would not be recorded as interrupted, and the shell would be told all went well.
    """
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    import dask_jobqueue

    if main and _from_jobqueue(signal.getsignal(signal.SIGINT)):
        keep = before if before is not None and not _from_jobqueue(before) else None
        signal.signal(signal.SIGINT, keep or signal.default_int_handler)
    return dask_jobqueue


def _from_jobqueue(handler: Any) -> bool:
    return getattr(handler, "__module__", "") == "dask_jobqueue.runner"


@dataclass
class JobLedger:
    """Every job a cluster submitted, closed, or failed to submit (shared by its jobs)."""

    submitted: dict[str, None] = field(default_factory=dict)  # job ids, in order
    closed: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


def submit_stderr(exc: BaseException) -> str:
    """The submit command's own message out of dask-jobqueue's ``RuntimeError`` text."""
    text = str(exc)
    match = re.search(r"stderr:\n(.*)", text, re.S)
    if match and match.group(1).strip():
        return match.group(1).strip()
    match = re.search(r"stdout:\n(.*?)\nstderr:", text, re.S)
    if match and match.group(1).strip():
        return match.group(1).strip()
    return text.strip() or type(exc).__name__


@functools.cache
def tracked_job_class(job_cls: type) -> type:
    """``job_cls`` that records its job id in a :class:`JobLedger` and never raises from
    ``start``: a refused submission is kept in the ledger for the factory to report, where
    dask-jobqueue would log a traceback from a background task and leave the job half
    started (which then also breaks ``cluster.close()``)."""
    from distributed.core import Status

    class TrackedJob(job_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, ledger: JobLedger | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.ledger = ledger if ledger is not None else JobLedger()

        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:  # noqa: BLE001 - reported by the factory, not lost
                self.ledger.errors.append(submit_stderr(exc))
                # "running" (with no job id) is what SpecCluster insists on after start;
                # anything else is an AssertionError logged from its event loop
                self.status = Status.running
            finally:
                if self.job_id:
                    self.ledger.submitted[str(self.job_id)] = None

        async def close(self) -> None:
            try:
                await super().close()
            finally:
                if self.job_id:
                    self.ledger.closed.add(str(self.job_id))
                self.status = Status.closed

    TrackedJob.__name__ = TrackedJob.__qualname__ = f"Tracked{job_cls.__name__}"
    return TrackedJob


def _missing_dirs(path: Any) -> list[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out: list[str] = []
    if not isinstance(path, str) or not path:
        return out
    path = os.path.abspath(os.path.expanduser(path))
    while path and not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def _check_int(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"cluster.{key}: must be an integer >= {low}, got {value!r}")
    return value


def _check_duration(key: str, value: Any) -> str:
    from dask.utils import parse_timedelta

    try:
        seconds = parse_timedelta(value, default="seconds")
    except (ValueError, TypeError, KeyError):
        seconds = None
    if isinstance(value, bool) or seconds is None or seconds <= 0:
        raise ConfigError(f"cluster.{key}: must be a duration such as '55m', '2h' or a number "
                          f"of seconds > 0, got {value!r}")
    return f"{int(math.ceil(seconds))}s"


def _check_str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"cluster.{key}: must be a list of strings, got {value!r}")
    return list(value)


class JobqueueFactory(ClusterFactory):
    """A dask-jobqueue cluster for one batch system, from config (subclassed per system)."""

    name = ""
    submits_jobs = True
    cluster_class = ""  # "SLURMCluster"; looked up in dask_jobqueue
    #: what each required option means, for the error that names it
    required: dict[str, str] = {
        "cores": "cores per job, e.g. cores: 4",
        "memory": "memory per job, e.g. memory: 16GB",
    }
    #: options the batch system calls by another name than a user may expect
    hints: dict[str, str] = {}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.ledger = JobLedger()
        self._cluster: Any = None
        opts = dict(options)
        for short, full in ALIASES.items():
            if short in opts:
                if full in opts:
                    raise ConfigError(f"cluster.{short}: give {short} or {full}, not both")
                opts[full] = opts.pop(short)
        self._check_known(opts)
        own = {k: opts.pop(k) for k in OWN_OPTIONS if k in opts}
        self._check_required(opts)
        self.jobs, self.adapt = self._scaling(own)
        self.worker_timeout = self.check_worker_timeout(
            own.get("worker_timeout", DEFAULT_WORKER_TIMEOUT))
        self.kwargs = self._job_kwargs(opts, own)

    # -- validation -------------------------------------------------------------------------
    @classmethod
    def job_class(cls) -> type:
        return getattr(jobqueue(), cls.cluster_class).job_cls

    @classmethod
    def known_options(cls) -> list[str]:
        """Every option this kind accepts: dask-jobqueue's own, the short names, ours."""
        jobqueue()
        from dask_jobqueue.core import Job, JobQueueCluster

        names: set[str] = set()
        for fn in (cls.job_class().__init__, Job.__init__, JobQueueCluster.__init__):
            names.update(p.name for p in inspect.signature(fn).parameters.values()
                         if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        names -= _HIDDEN
        return sorted(names | set(ALIASES) | set(OWN_OPTIONS))

    def _check_known(self, opts: dict[str, Any]) -> None:
        known = self.known_options()
        for key in opts:
            if key in known:
                continue
            if key in self.hints:
                hint = f" ({self.hints[key]})"
            else:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"cluster.{key}: unknown option for kind {self.name!r}{hint}; "
                              f"known: {', '.join(known)}")

    def _check_required(self, opts: dict[str, Any]) -> None:
        import dask

        for key, what in self.required.items():
            if opts.get(key) is None and dask.config.get(
                    f"jobqueue.{self.config_name(opts)}.{key}", None) is None:
                raise ConfigError(f"cluster.{key}: required for kind {self.name!r} ({what})")
        if "cores" in opts:
            _check_int("cores", opts["cores"], 1)
        if "processes" in opts:
            _check_int("processes", opts["processes"], 1)
            if "cores" in opts and opts["processes"] > opts["cores"]:
                raise ConfigError(f"cluster.processes: at most cores={opts['cores']} (each "
                                  f"worker process needs a core), got {opts['processes']}")
        for key in ("memory", "disk"):
            if opts.get(key) is not None:
                from dask.utils import parse_bytes

                try:
                    parse_bytes(opts[key])
                except (ValueError, TypeError):
                    raise ConfigError(f"cluster.{key}: must be a size such as '16GB', "
                                      f"got {opts[key]!r}") from None
        if "walltime" in opts and not isinstance(opts["walltime"], str):
            raise ConfigError(f"cluster.walltime: must be a string such as '02:00:00', "
                              f"got {opts['walltime']!r}")

    def config_name(self, opts: dict[str, Any] | None = None) -> str:
        opts = self.options if opts is None else opts
        return opts.get("config_name") or self.job_class().config_name

    def _scaling(self, own: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
        if "jobs" in own and "adapt" in own:
            raise ConfigError("cluster.jobs: give jobs (a fixed number) or adapt "
                              "({minimum, maximum}), not both")
        if "adapt" not in own:
            return _check_int("jobs", own.get("jobs", 1), 1), None
        adapt = own["adapt"]
        if not isinstance(adapt, dict):
            raise ConfigError(f"cluster.adapt: must be a mapping such as "
                              f"{{minimum: 0, maximum: 10}}, got {adapt!r}")
        unknown = sorted(set(adapt) - set(_ADAPT_KEYS))
        if unknown:
            raise ConfigError(f"cluster.adapt.{unknown[0]}: unknown option; known: "
                              f"{', '.join(_ADAPT_KEYS)}")
        if "maximum" not in adapt:
            raise ConfigError(f"cluster.adapt.maximum: required for kind {self.name!r} "
                              "(the most jobs to run at once)")
        low = _check_int("adapt.minimum", adapt.get("minimum", 0), 0)
        high = _check_int("adapt.maximum", adapt["maximum"], 1)
        if low > high:
            raise ConfigError(f"cluster.adapt.minimum: must be <= maximum={high}, got {low}")
        out = {_ADAPT_KEYS[k]: v for k, v in adapt.items()}
        out["minimum_jobs"] = low
        out.setdefault("target_duration", ADAPT_TARGET_DURATION)
        return None, out

    def _job_kwargs(self, opts: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
        """dask-jobqueue keywords: the user's, plus ours turned into dask-worker arguments."""
        import dask

        kwargs = dict(opts)
        extra = _check_str_list("worker_extra_args", kwargs.pop("worker_extra_args", []))
        if "lifetime" in own:
            extra += ["--lifetime", _check_duration("lifetime", own["lifetime"])]
            if "lifetime_stagger" in own:
                extra += ["--lifetime-stagger",
                          _check_duration("lifetime_stagger", own["lifetime_stagger"])]
            if own.get("lifetime_restart"):
                extra += ["--lifetime-restart"]
        elif "lifetime_stagger" in own or "lifetime_restart" in own:
            raise ConfigError("cluster.lifetime: required with lifetime_stagger/lifetime_restart "
                              "(how long each worker lives, e.g. lifetime: 55m)")
        if "resources" in own:
            res = own["resources"]
            if (not isinstance(res, dict) or not res
                    or not all(isinstance(k, str) and k and isinstance(v, int | float)
                               and not isinstance(v, bool) and v > 0 for k, v in res.items())):
                raise ConfigError(f"cluster.resources: must map names to amounts > 0 per "
                                  f"worker, such as {{GPU: 1}}, got {res!r}")
            extra += ["--resources", ",".join(f"{k}={v:g}" for k, v in res.items())]
        kwargs["worker_extra_args"] = extra
        for key in ("job_script_prologue", "job_directives_skip"):
            if key in kwargs:
                kwargs[key] = _check_str_list(key, kwargs[key])
        if "job_extra_directives" in kwargs:
            kwargs["job_extra_directives"] = self._directives(kwargs["job_extra_directives"])
        # One single-threaded worker process per core, like the LocalCluster default: HPO
        # objectives are mostly CPU-bound Python, where threads would share one GIL.
        if ("processes" not in kwargs and "cores" in kwargs and dask.config.get(
                f"jobqueue.{self.config_name(opts)}.processes", None) is None):
            kwargs["processes"] = kwargs["cores"]
        return kwargs

    def _directives(self, value: Any) -> Any:
        return _check_str_list("directives", value)

    # -- the cluster ------------------------------------------------------------------------
    def _cluster_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.kwargs)
        sched = dict(kwargs.pop("scheduler_options", None) or {})
        # any free port: dask-jobqueue asks for :8787, taken as soon as two studies run
        sched.setdefault("dashboard_address", ":0")
        kwargs["scheduler_options"] = sched
        kwargs.setdefault("silence_logs", "error")
        return kwargs

    def create(self) -> Any:
        import dask

        cls = getattr(jobqueue(), self.cluster_class)
        try:
            with dask.config.set(SCHEDULER_CONFIG):
                cluster = cls(job_cls=tracked_job_class(cls.job_cls), ledger=self.ledger,
                              **self._cluster_kwargs())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cluster (kind {self.name!r}): {exc}") from None
        self._cluster = cluster
        if self.adapt is not None:
            cluster.adapt(**self.adapt)
        else:
            # Submit now, then keep N: dask-jobqueue does not replace a job that was
            # cancelled or reached its walltime unless scale/adapt is asked again.
            cluster.scale(jobs=self.jobs)
            cluster.adapt(minimum_jobs=self.jobs, maximum_jobs=self.jobs,
                          target_duration=ADAPT_TARGET_DURATION)
        return cluster

    def _processes(self) -> int:
        import dask

        return int(self.kwargs.get("processes") or dask.config.get(
            f"jobqueue.{self.config_name()}.processes", None) or 1)

    def _cores(self) -> int:
        import dask

        return int(self.kwargs.get("cores") or dask.config.get(
            f"jobqueue.{self.config_name()}.cores", None) or 1)

    def planned(self) -> tuple[int, int] | None:
        jobs = self.jobs if self.adapt is None else self.adapt["maximum_jobs"]
        return jobs * self._processes(), jobs * self._cores()

    def wait(self, client: Any) -> None:
        """Block until a worker joined; fail with the batch system's words otherwise."""
        submit = self.job_class().submit_command or self.name
        deadline = math.inf if self.worker_timeout is None else time.monotonic() + self.worker_timeout
        while True:
            if self.ledger.errors:
                said = "; ".join(line.strip() for line in self.ledger.errors[0].splitlines()
                                 if line.strip())
                raise ClusterError(  # one line: the CLI prints errors as one line
                    f"cluster kind {self.name!r}: {submit.split()[0]} refused the worker "
                    f"job: {said}")
            if client.scheduler_info(n_workers=-1)["workers"]:
                return
            if time.monotonic() >= deadline:
                ids = list(self.ledger.submitted)
                states = self.job_states(ids)
                raise ClusterError(
                    f"cluster kind {self.name!r}: no worker joined within "
                    f"{self.worker_timeout:g} s (cluster.worker_timeout); "
                    f"{len(ids)} job(s) submitted"
                    + (f": {states}" if states else (f": {', '.join(ids)}" if ids else ""))
                    + "; cancelling them. Check the queue's limits and the job logs"
                    + (f" in {self.kwargs['log_directory']}" if self.kwargs.get("log_directory") else "")
                    + ", or raise worker_timeout."
                )
            time.sleep(0.2)

    def job_states(self, job_ids: list[str]) -> str:
        """The batch system's view of these jobs, for messages ('' if it cannot tell)."""
        return ""

    def cleanup(self) -> None:
        """Cancel any job the cluster did not close itself (a failed close, a job submitted
        while it was closing), so the queue holds none of this study's jobs afterwards."""
        leftover = [j for j in self.ledger.submitted if j not in self.ledger.closed]
        cancel = getattr(self._cluster, "job_cls", None) and self._cluster.job_cls.cancel_command
        if leftover and cancel:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([*shlex.split(cancel), *leftover], capture_output=True,
                               timeout=60, check=False)
            self.ledger.closed.update(leftover)

    def job_script(self) -> str:
        """The script one worker job would be submitted with; needs no batch system."""
        kwargs = {k: v for k, v in self.kwargs.items()
                  if k not in ("scheduler_options", "silence_logs", "shared_temp_directory",
                               "scheduler_cls", "security")}
        made = _missing_dirs(kwargs.get("log_directory"))
        try:
            job = self.job_class()(SCRIPT_SCHEDULER, name="dummy-name", **kwargs)
            return job.job_script()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cluster (kind {self.name!r}): {exc}") from None
        finally:  # dask-jobqueue creates log_directory; printing a script should not
            for path in made:
                with contextlib.suppress(OSError):
                    os.rmdir(path)


class SlurmFactory(JobqueueFactory):
    """Slurm (``sbatch``); ``partition`` is accepted for ``queue``."""

    name = "slurm"
    cluster_class = "SLURMCluster"

    def __init__(self, **options: Any) -> None:
        if "partition" in options:
            if "queue" in options:
                raise ConfigError("cluster.partition: give partition or queue, not both")
            options = {("queue" if k == "partition" else k): v for k, v in options.items()}
        super().__init__(**options)

    @classmethod
    def known_options(cls) -> list[str]:
        return sorted({*super().known_options(), "partition"} - {"project"})

    def job_states(self, job_ids: list[str]) -> str:
        if not job_ids:
            return ""
        try:
            out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r"],
                                 capture_output=True, text=True, timeout=20, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
        rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
        return ", ".join(f"{r[0]} {r[1]}" + (f" ({r[2]})" if len(r) > 2 and r[2] != "None" else "")
                         for r in rows if len(r) >= 2)

    def cleanup(self) -> None:
        """Also wait (briefly) until ``squeue`` lists none of our jobs: a cancelled job stays
        COMPLETING while its processes exit, and "the queue is empty after the study" should
        hold when ``optimize`` returns, not a moment later."""
        super().cleanup()
        ids = list(self.ledger.submitted)
        if not ids:
            return

        def gone() -> bool:
            try:
                res = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i"],
                                     capture_output=True, text=True, timeout=20, check=False)
            except (OSError, subprocess.SubprocessError):
                return True
            # squeue -j fails for ids it no longer knows at all: nothing left to wait for
            return res.returncode != 0 or not res.stdout.strip()

        from hpo_mlops.cluster import poll

        if not poll(gone, timeout=45, interval=0.25):
            logger.warning("jobs %s were cancelled but are still listed by squeue", ids)


class PBSFactory(JobqueueFactory):
    """PBS / Torque (``qsub``)."""

    name = "pbs"
    cluster_class = "PBSCluster"

    @classmethod
    def known_options(cls) -> list[str]:
        return sorted(set(super().known_options()) - {"project"})


class MoabFactory(PBSFactory):
    """Moab (``msub``); the same options as PBS."""

    name = "moab"
    cluster_class = "MoabCluster"


class SGEFactory(JobqueueFactory):
    """Sun/Son of/Univa Grid Engine (``qsub``)."""

    name = "sge"
    cluster_class = "SGECluster"
    hints = {"account": "SGE calls it project (qsub -P)"}


class LSFFactory(JobqueueFactory):
    """IBM Spectrum LSF (``bsub``)."""

    name = "lsf"
    cluster_class = "LSFCluster"
    hints = {"account": "LSF calls it project (bsub -P)"}


class OARFactory(JobqueueFactory):
    """OAR (``oarsub``)."""

    name = "oar"
    cluster_class = "OARCluster"
    hints = {"account": "OAR calls it project (oarsub --project)"}


class HTCondorFactory(JobqueueFactory):
    """HTCondor (``condor_submit``); directives are a mapping of submit-file commands."""

    name = "htcondor"
    cluster_class = "HTCondorCluster"
    required = {**JobqueueFactory.required, "disk": "scratch disk per job, e.g. disk: 10GB"}
    hints = {"queue": "HTCondor has no queues; use directives such as "
                      "{requirements: ...} to choose machines",
             "walltime": "HTCondor has no walltime option; a lifetime retires workers "
                         "before a machine's limit",
             "account": "HTCondor takes accounting_group in directives"}

    def _directives(self, value: Any) -> Any:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"cluster.directives: for kind 'htcondor' a mapping of submit "
                              f"commands such as {{request_gpus: 1}}, got {value!r}")
        return dict(value)
