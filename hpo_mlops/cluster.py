"""Where trials run: the manager only ever sees a ``distributed.Client``.

``connect`` takes one of: an existing ``client``, the ``address`` of a running scheduler,
a ``cluster`` (a ready cluster object, or a config dict ``{"kind": "slurm", ...}`` built by
a registered cluster factory; ``{"address": ...}`` names a running scheduler), or nothing
(a LocalCluster with one single-threaded worker process per core). It closes only what it
created; for a batch-system cluster that means cancelling every job it submitted.

Clusters built here run their scheduler with ``allowed-failures = 0``: a worker lost
mid-trial fails that task at once, and the *manager* decides to re-run it (``max_retries``),
so the number of attempts it records is exact and the objective sees ``trial.attempt``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from hpo_mlops import registry
from hpo_mlops.errors import ConfigError, HPOError

#: scheduler settings for clusters created here (see the module docstring)
SCHEDULER_CONFIG: dict[str, Any] = {"distributed.scheduler.allowed-failures": 0}


class ClusterError(HPOError, RuntimeError):
    """The cluster gave no workers: the batch system refused the jobs, or none started in
    time. The message carries the batch system's own words where it had any."""


class ClusterFactory:
    """Config -> a ``distributed`` cluster object. Plugins subclass this (entry points).

    Besides ``create``, the manager calls three hooks, all optional, because a batch
    cluster starts empty and fills up at the queue's pace: ``planned`` (how big it will
    get, so trials are queued for workers that have not joined yet), ``wait`` (block
    until a first worker joined, or fail clearly) and ``cleanup`` (after close: make sure
    no job is left in the queue).
    """

    name = ""
    #: True for clusters whose workers are batch jobs: ``connect`` then turns SIGTERM (a
    #: ``kill``, the manager's own job reaching its walltime) into KeyboardInterrupt, so
    #: the study records its running trials and the jobs are cancelled on the way out
    submits_jobs = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    def create(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, **self.options}

    def job_script(self) -> str:
        """The batch script one worker job would be submitted with (nothing is submitted)."""
        raise ConfigError(f"cluster kind {self.name!r} submits no batch jobs, so it has no job script")

    def planned(self) -> tuple[int, int] | None:
        """(workers, threads) the cluster is scaling to; ``None``: count what has joined."""
        return None

    def wait(self, client: Any) -> None:
        """Return once the cluster can run a trial; raise :class:`ClusterError` if it cannot."""

    @staticmethod
    def check_worker_timeout(value: Any) -> float | None:
        """``cluster.worker_timeout``: seconds > 0, or ``None`` to wait for ever."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or value <= 0):
            raise ConfigError(f"cluster.worker_timeout: must be a number of seconds > 0 "
                              f"(or null to wait for ever), got {value!r}")
        return None if value is None else float(value)

    def cleanup(self) -> None:
        """Called after the cluster was closed, even if closing failed."""


#: seconds a study waits with no worker at all (all lost) before it stops, for clusters
#: that set no ``worker_timeout`` of their own
DEFAULT_WORKER_TIMEOUT = 120.0


class LocalClusterFactory(ClusterFactory):
    """A laptop cluster: processes, one thread each, so CPU-bound trials run in parallel."""

    name = "local"

    def __init__(self, n_workers: int | None = None, threads_per_worker: int = 1,
                 processes: bool = True, worker_timeout: float | None = DEFAULT_WORKER_TIMEOUT,
                 **options: Any) -> None:
        # 0 is a scheduler alone: a service whose trials all come from HTTP clients
        if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 0):
            raise ConfigError(f"cluster.n_workers: must be an integer >= 1, got {n_workers!r}")
        #: how long the study may go on with every worker gone (they do not come back on
        #: their own: a LocalCluster's nanny restarts a crashed worker, not a closed one)
        self.worker_timeout = self.check_worker_timeout(worker_timeout)  # None: for ever
        super().__init__(n_workers=n_workers, threads_per_worker=threads_per_worker,
                         processes=processes, **options)

    def create(self) -> Any:
        import dask
        from distributed import LocalCluster

        opts = dict(self.options)
        if opts["n_workers"] is None:
            opts["n_workers"] = os.cpu_count() or 1
        opts.setdefault("silence_logs", logging.ERROR)
        # any free port: a second study (or another cluster) on this machine must not clash
        opts.setdefault("dashboard_address", ":0")
        # Send every trial to a worker at once: the manager keeps its own small queue of
        # ready trials, and a scheduler-side queue would add a round trip per trial.
        with dask.config.set({"distributed.scheduler.worker-saturation": float("inf"),
                              **SCHEDULER_CONFIG}):
            return LocalCluster(**opts)


def make_factory(spec: dict[str, Any]) -> ClusterFactory:
    """A config dict ``{"kind": ..., **options}`` -> its (validated) factory."""
    options = dict(spec)
    kind = options.pop("kind", "local")
    if not isinstance(kind, str):
        raise ConfigError(f"cluster.kind: must be a name, got {kind!r}; "
                          f"registered: {', '.join(registry.names(registry.CLUSTERS))}")
    return registry.create(registry.CLUSTERS, {"name": kind, **options}, ClusterFactory)


def build_cluster(spec: Any) -> Any:
    """A config dict ``{"kind": ..., **options}`` -> a cluster object (ready objects pass)."""
    if not isinstance(spec, dict):
        return spec
    return make_factory(spec).create()


def job_script(config: dict[str, Any]) -> str:
    """The job script a cluster config would submit for one worker, without submitting it.

    Backs ``hpo-mlops cluster job-script``; needs no batch system, only the config.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"cluster: must be a mapping with a 'kind', got {config!r}")
    return make_factory(config).job_script()


#: factories of the clients ``connect`` created from a config, by ``id(client)``
_FACTORIES: dict[int, ClusterFactory] = {}


def planned_capacity(client: Any) -> tuple[int, int] | None:
    """(workers, threads) the client's cluster is scaling to, if ``connect`` built it."""
    factory = _FACTORIES.get(id(client))
    return factory.planned() if factory is not None else None



def worker_timeout(client: Any) -> float:
    """How long the client's cluster may have no worker before the study stops."""
    factory = _FACTORIES.get(id(client))
    if not hasattr(factory, "worker_timeout"):  # the user's own client or cluster object
        return DEFAULT_WORKER_TIMEOUT
    limit = factory.worker_timeout
    return math.inf if limit is None else float(limit)  # None: the user asked to wait for ever


def wait_for_workers(client: Any) -> None:
    """Block until the client's cluster can run a trial, or raise :class:`ClusterError`.

    Only clusters ``connect`` built from a config wait (with their ``worker_timeout``);
    a client or cluster object given by the user is theirs to size.
    """
    factory = _FACTORIES.get(id(client))
    if factory is not None:
        factory.wait(client)


def _address_of(cluster: dict[str, Any]) -> str:
    extra = sorted(set(cluster) - {"address", "kind"})
    if extra or cluster.get("kind", "address") not in ("address", None):
        raise ConfigError(
            "cluster.address: a running scheduler takes no other cluster options, got "
            f"{', '.join(extra) or 'kind=' + repr(cluster.get('kind'))}"
        )
    address = cluster["address"]
    if not isinstance(address, str) or not address:
        raise ConfigError(f"cluster.address: must be a scheduler address such as "
                          f"'tcp://host:8786', got {address!r}")
    return address


@contextlib.contextmanager
def connect(client: Any = None, address: str | None = None, cluster: Any = None,
            n_workers: int | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client``; close what was created here, on any exit."""
    from distributed import Client

    given = [n for n, v in (("client", client), ("address", address), ("cluster", cluster))
             if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give at most one of client=, address=, cluster=; got {', '.join(given)}")
    if client is not None:
        yield client
        return
    if isinstance(cluster, dict) and "address" in cluster:
        address, cluster = _address_of(cluster), None
    owned: list[Any] = []
    factory: ClusterFactory | None = None
    c: Any = None
    stack = contextlib.ExitStack()
    try:
        if address is not None:
            c = Client(address)
        else:
            if cluster is None:
                cluster = {"kind": "local", "n_workers": n_workers}
            elif (isinstance(cluster, dict) and n_workers is not None
                  and cluster.get("kind", "local") == "local"):
                cluster = {**cluster, "n_workers": n_workers}
            if isinstance(cluster, dict):
                factory = make_factory(cluster)
                if factory.submits_jobs:
                    stack.enter_context(_sigterm_interrupts())
                created = factory.create()
                owned.append(created)
            else:
                created = cluster
            c = Client(created)
            if factory is not None:
                _FACTORIES[id(c)] = factory
        owned.insert(0, c)
        yield c
    finally:
        if c is not None:
            _FACTORIES.pop(id(c), None)
        for obj in owned:
            with contextlib.suppress(Exception):
                obj.close()
        if factory is not None:
            factory.cleanup()
        stack.close()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs (only where
    nobody installed a SIGTERM handler): the default would kill the manager on the spot
    and leave its batch jobs queued or running until their walltime."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def poll(condition: Any, timeout: float, interval: float = 0.1) -> bool:
    """Call ``condition()`` until it is true or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
