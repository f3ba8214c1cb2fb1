"""Distributed runs: sweeps of trials on Ray, and data-parallel training under torchrun.

- :func:`sweep_executor` / :func:`ray_executor`: run an experiment's trials as Ray tasks
  (``softorder sweep``), locally or on a cluster, with retries; one after another without Ray.
- :mod:`softorder.distributed.data_parallel`: what :func:`softorder.train.fit` does when started in
  several processes (torchrun): every process a share of every batch, gradients summed.
- :func:`run_experiment_data_parallel`: an experiment's trials, each trained by all the processes
  of a torchrun job (``torchrun ... -m softorder.distributed EXPERIMENT``).

See docs/distributed.md.
"""

from softorder.distributed.data_parallel import DataParallel, init_process_group, setup_data_parallel
from softorder.distributed.sweep import ray_available, ray_executor, sweep_executor
from softorder.distributed.torchrun import run_experiment_data_parallel

__all__ = [
    "DataParallel",
    "init_process_group",
    "ray_available",
    "ray_executor",
    "run_experiment_data_parallel",
    "setup_data_parallel",
    "sweep_executor",
]
