"""Early-stopping schedulers: pure decision rules on reported values.

They run inside the Dask scheduler plugin (:mod:`hpo_mlops.dask_plugin`), but have no
Dask and no I/O in them, so each is tested on hand-made report sequences.
"""

from hpo_mlops.schedulers.base import Decision, Job, Scheduler

__all__ = ["Decision", "Job", "Scheduler"]
