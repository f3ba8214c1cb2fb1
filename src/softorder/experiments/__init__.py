"""One module per experiment of the paper, each a named preset for ``softorder reproduce NAME``.

Each module defines ``EXPERIMENT``, an :class:`~softorder.experiments.runner.Experiment`.
"""

from __future__ import annotations

import importlib

from softorder.experiments.runner import Experiment

# preset name -> module under softorder.experiments
PRESETS: dict[str, str] = {
    "random-tasks": "random_tasks",
    "mnist": "mnist",
    "visualize": "visualize",
    "uci": "uci",
    "omniglot": "omniglot",
    "celeba": "celeba",
    "building-blocks": "building_blocks",  # beyond the paper: Sec. 6's reusable layers
    "sparse-orders": "sparse_orders",  # beyond the paper: Sec. 6's sparse gating, hardened orders
}


def get_experiment(name: str) -> Experiment:
    """The preset called ``name``; a clear error for unknown or not yet available presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown experiment {name!r}; presets are {', '.join(PRESETS)}")
    try:
        module = importlib.import_module(f"softorder.experiments.{PRESETS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"softorder.experiments.{PRESETS[name]}":
            raise KeyError(f"experiment {name!r} is not implemented in this version") from None
        raise
    return module.EXPERIMENT
