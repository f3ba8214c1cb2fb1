"""Distributed runs: sweeps of trials on Ray, and data-parallel training under torchrun.

- :func:`sweep_executor` / :func:`ray_executor`: run an experiment's trials as Ray tasks
  (``softorder sweep``), locally or on a cluster, with retries; one after another without Ray.
- :mod:`softorder.distributed.data_parallel`: what :func:`softorder.train.fit` does when started in
  several processes (torchrun): every process a share of every batch, gradients summed.
- :func:`run_experiment_data_parallel`: an experiment's trials, each trained by all the processes
  of a torchrun job (``torchrun ... -m softorder.distributed EXPERIMENT``).

See docs/distributed.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded when first used: importing softorder (whose training loop uses data_parallel) must not load
# the launchers, which load the experiment framework and, for sweeps, Ray.
_WHERE = {
    "DataParallel": "data_parallel",
    "SingleProcess": "data_parallel",
    "init_process_group": "data_parallel",
    "setup_data_parallel": "data_parallel",
    "ray_available": "sweep",
    "ray_executor": "sweep",
    "sweep_executor": "sweep",
    "run_experiment_data_parallel": "torchrun",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
