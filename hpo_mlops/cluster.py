"""Where trials run: the manager only ever sees a ``distributed.Client``.

``connect`` takes one of: an existing ``client``, the ``address`` of a running scheduler,
a ``cluster`` (a ready cluster object, or a config dict ``{"kind": "slurm", ...}`` built by
a registered cluster factory), or nothing (a LocalCluster with one single-threaded worker
process per core). It closes only what it created.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from hpo_mlops import registry
from hpo_mlops.errors import ConfigError


class ClusterFactory:
    """Config -> a ``distributed`` cluster object. Plugins subclass this (entry points)."""

    name = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def create(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, **self.options}


class LocalClusterFactory(ClusterFactory):
    """A laptop cluster: processes, one thread each, so CPU-bound trials run in parallel."""

    name = "local"

    def __init__(self, n_workers: int | None = None, threads_per_worker: int = 1,
                 processes: bool = True, **options: Any) -> None:
        if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
            raise ConfigError(f"cluster.n_workers: must be an integer >= 1, got {n_workers!r}")
        super().__init__(n_workers=n_workers, threads_per_worker=threads_per_worker,
                         processes=processes, **options)

    def create(self) -> Any:
        import dask
        from distributed import LocalCluster

        opts = dict(self.options)
        opts["n_workers"] = opts["n_workers"] or os.cpu_count() or 1
        opts.setdefault("silence_logs", logging.ERROR)
        try:
            import bokeh  # noqa: F401

            opts.setdefault("dashboard_address", ":0")
        except ImportError:
            opts.setdefault("dashboard_address", None)
        # Send every trial to a worker at once: the manager keeps its own small queue of
        # ready trials, and a scheduler-side queue would add a round trip per trial.
        with dask.config.set({"distributed.scheduler.worker-saturation": float("inf")}):
            return LocalCluster(**opts)


def build_cluster(spec: Any) -> Any:
    """A config dict ``{"kind": ..., **options}`` -> a cluster object (ready objects pass)."""
    if not isinstance(spec, dict):
        return spec
    options = dict(spec)
    kind = options.pop("kind", "local")
    factory = registry.create(registry.CLUSTERS, {"name": kind, **options}, ClusterFactory)
    return factory.create()


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
    owned: list[Any] = []
    try:
        if address is not None:
            c = Client(address)
        else:
            if cluster is None:
                cluster = {"kind": "local", "n_workers": n_workers}
            elif (isinstance(cluster, dict) and n_workers is not None
                  and cluster.get("kind", "local") == "local"):
                cluster = {**cluster, "n_workers": n_workers}
            created = build_cluster(cluster)
            if created is not cluster:
                owned.append(created)
            c = Client(created)
        owned.insert(0, c)
        yield c
    finally:
        for obj in owned:
            with contextlib.suppress(Exception):
                obj.close()
