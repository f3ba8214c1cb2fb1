"""The main job: soft against parallel ordering on four small tasks that ship with scikit-learn.

Iris, wine, breast cancer and digits have nothing in common a priori (like the paper's UCI tasks,
Sec. 4.2), need no download, and train in about a minute on two CPU cores. Prints a table of test
error per task and ordering and writes the figure of learned layer usage by depth.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MinMaxScaler

from softorder._io import atomic_write_json
from softorder.analysis import mixing_of, plot_layer_usage
from softorder.model import build_model
from softorder.tasks import TaskArrays, TaskSpec, TensorTasks
from softorder.train import TrainConfig, fit

BUNDLED = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast-cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
}


def bundled_tasks(test_size: float = 0.25, split_seed: int = 0) -> TensorTasks:
    """scikit-learn's bundled classification sets as tasks; features scaled to [0, 1] on the train part."""
    tasks = []
    for name, load in BUNDLED.items():
        x, y = load(return_X_y=True)
        classes, y = np.unique(y, return_inverse=True)
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=split_seed, stratify=y)
        scaler = MinMaxScaler().fit(x_tr)
        x_tr, x_te = scaler.transform(x_tr), np.clip(scaler.transform(x_te), 0.0, 1.0)
        kind = "binary" if len(classes) == 2 else "multiclass"
        spec = TaskSpec(name, (x.shape[1],), kind, 1 if kind == "binary" else len(classes))
        as_t = lambda a, b: (torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.long))  # noqa: E731
        tasks.append(TaskArrays(spec, {"train": as_t(x_tr, y_tr), "test": as_t(x_te, y_te)}))
    return TensorTasks(tasks)


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    iterations: int = 4000,
    orderings: tuple[str, ...] = ("parallel", "soft"),
    seed: int = 0,
    progress: bool = True,
    out: TextIO | None = None,
) -> dict[str, dict[str, float]]:
    """Train each ordering on the bundled tasks; returns ``{ordering: {task: test error}}``."""
    out = out or sys.stdout
    out_dir = Path(out_dir)
    data = bundled_tasks()
    results: dict[str, dict[str, float]] = {}
    for ordering in orderings:
        model = build_model(data.specs, ordering=ordering, layer="dense", width=32, depth=4, encoder="learned", dropout=0.2, seed=seed)
        config = TrainConfig(iterations=iterations, batch_size=32, eval_every=1000, eval_splits=("test",), seed=seed, progress=progress)
        print(f"training {ordering} ordering on {len(data.specs)} tasks for {iterations} iterations", file=out)
        history = fit(model, data, config)
        results[ordering] = {n: history.last[f"test_error/{n}"] for n in data.task_names}
        if ordering == "soft":
            figure = plot_layer_usage(mixing_of(model), data.task_names, out_dir / "layer_usage.png", title="Learned layer usage by depth: soft ordering on four scikit-learn tasks")
            print(f"wrote {figure}", file=out)
    atomic_write_json(out_dir / "results.json", {"iterations": iterations, "seed": seed, "test_error": results})
    _print_table(results, data.task_names, out)
    return results


def _print_table(results: dict[str, dict[str, float]], tasks: list[str], out: TextIO) -> None:
    orderings = list(results)
    width = max(len(t) for t in tasks + ["mean"]) + 2
    print("\ntest error (%)", file=out)
    print("task".ljust(width) + "".join(o.rjust(10) for o in orderings), file=out)
    for t in tasks:
        print(t.ljust(width) + "".join(f"{100 * results[o][t]:10.2f}" for o in orderings), file=out)
    means = {o: float(np.mean([results[o][t] for t in tasks])) for o in orderings}
    print("mean".ljust(width) + "".join(f"{100 * means[o]:10.2f}" for o in orderings), file=out)
