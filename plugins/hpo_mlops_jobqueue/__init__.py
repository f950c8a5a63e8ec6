"""dask-jobqueue clusters (Slurm, PBS, SGE, LSF, HTCondor, OAR, Moab) from configuration.

Registered in the entry-point group ``hpo_mlops.clusters`` under the batch system's name,
exactly as a third-party cluster plugin would be; see :mod:`hpo_mlops_jobqueue.factory`.
"""

from hpo_mlops_jobqueue.factory import (
    HTCondorFactory,
    JobqueueFactory,
    LSFFactory,
    MoabFactory,
    OARFactory,
    PBSFactory,
    SGEFactory,
    SlurmFactory,
)

__all__ = ["HTCondorFactory", "JobqueueFactory", "LSFFactory", "MoabFactory", "OARFactory",
           "PBSFactory", "SGEFactory", "SlurmFactory"]
