"""``softorder train``: the paper's models on the user's own tasks (CSV files).

Trains each requested ordering on the tasks, with checkpoints in ``out_dir/<ordering>`` (rerun to
resume), prints validation error per task and ordering, writes ``results.json`` and, for soft
ordering, the figures of learned layer usage and of task relatedness read from the soft orders.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from softorder._io import atomic_write_json
from softorder.analysis import mixing_of, plot_layer_usage, plot_task_similarity
from softorder.data.csv_tasks import csv_tasks
from softorder.model import build_model
from softorder.orderings import ORDERINGS
from softorder.train import TrainConfig, fit


def train_user_tasks(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str | int] | None = None,
    orderings: Sequence[str] = ("parallel", "soft"),
    width: int = 32,
    depth: int = 4,
    dropout: float = 0.2,
    identity_layer: bool = False,
    iterations: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    out: TextIO | None = None,
) -> dict[str, dict[str, float]]:
    """Train every ordering on the CSV tasks; returns ``{ordering: {task: validation error}}``."""
    out = out or sys.stdout
    unknown = [o for o in orderings if o not in ORDERINGS]
    if unknown:
        raise ValueError(f"unknown ordering(s) {unknown}; expected some of {list(ORDERINGS)}")
    data = csv_tasks(paths, labels=labels)  # every file is checked before any training
    out_dir = Path(out_dir)
    config = TrainConfig(iterations=iterations, batch_size=batch_size, lr=lr, eval_every=max(1, iterations // 10), eval_splits=("val",), seed=seed, progress=progress)
    results: dict[str, dict[str, float]] = {}
    for ordering in orderings:
        model = build_model(
            data.specs,
            ordering=ordering,
            width=width,
            depth=depth,
            dropout=dropout,
            identity_layer=identity_layer and ordering == "soft",
            seed=seed,
        )
        print(f"training {ordering} ordering on {len(data.specs)} tasks", file=out)
        history = fit(model, data, config, run_dir=out_dir / ordering)
        results[ordering] = {n: history.last[f"val_error/{n}"] for n in data.task_names}
        if ordering == "soft":
            mixing = mixing_of(model)
            plot_layer_usage(mixing, data.task_names, out_dir / "layer_usage.png", identity_layer=identity_layer)
            if len(data.specs) > 1:
                plot_task_similarity(mixing, data.task_names, out_dir / "task_similarity.png")
    atomic_write_json(out_dir / "results.json", {"val_error": results, "tasks": data.task_names, "config": config.to_dict()})
    names = data.task_names
    pad = max(len(n) for n in names + ["mean"]) + 2
    print("\nvalidation error (%)", file=out)
    print("task".ljust(pad) + "".join(o.rjust(10) for o in results), file=out)
    for n in names:
        print(n.ljust(pad) + "".join(f"{100 * results[o][n]:10.2f}" for o in results), file=out)
    print("mean".ljust(pad) + "".join(f"{100 * np.mean(list(results[o].values())):10.2f}" for o in results), file=out)
    return results
