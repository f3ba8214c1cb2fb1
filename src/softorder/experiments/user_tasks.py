"""``softorder fit``: the paper's models on the user's own tasks (CSV files), and ``softorder predict``.

Trains each requested ordering on the tasks, with checkpoints in ``out_dir/<ordering>`` (rerun to
resume), prints validation error per task and ordering, writes ``results.json``, a saved model per
ordering (``out_dir/<ordering>/model``, see :mod:`softorder.saved`) and, for soft ordering, the
figures of learned layer usage and of task relatedness. With ``from_run`` the shared layers of an
earlier run are reused frozen (the paper's Sec. 6 building blocks): only the new tasks' soft order,
encoders and decoders are learned. A folder holding a run with other settings or other data is
refused, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from softorder._io import atomic_write_json, check_writable_dir, differing_keys
from softorder.analysis import mixing_of, plot_layer_usage, plot_task_similarity
from softorder.data.csv_tasks import CsvTasks, csv_tasks, read_csv_table
from softorder.experiments.tensorboard_log import eval_logger
from softorder.model import build_model
from softorder.orderings import ORDERINGS, SingleTaskCores
from softorder.saved import SavedModel, load
from softorder.train import TrainConfig, fit
from softorder.transfer import assemble_for_new_tasks

RUN_FILE = "run.json"


def train_user_tasks(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str | int] | None = None,
    kinds: Sequence[str | None] | None = None,
    orderings: Sequence[str] | None = None,
    width: int = 32,
    depth: int = 4,
    dropout: float = 0.2,
    identity_layer: bool = False,
    iterations: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    from_run: str | Path | None = None,
    progress: bool = True,
    out: TextIO | None = None,
) -> dict[str, dict[str, float]]:
    """Train every ordering (default: parallel and soft; with ``from_run`` soft, over the reused
    layers) on the CSV tasks; returns ``{ordering: {task: validation error}}``."""
    out = out or sys.stdout
    if from_run is not None and orderings is not None and list(orderings) != ["soft"]:
        raise ValueError(f"reusing the layers of {from_run} trains a soft order over them; ordering(s) {list(orderings)} cannot be asked with it")
    orderings = orderings or (("soft",) if from_run is not None else ("parallel", "soft"))
    unknown = [o for o in orderings if o not in ORDERINGS]
    if unknown:
        raise ValueError(f"unknown ordering(s) {unknown}; expected some of {list(ORDERINGS)}")
    base, base_dir = _base_model(from_run, out) if from_run is not None else (None, None)
    data = csv_tasks(paths, labels=labels, kinds=kinds)  # every file is checked before any training
    out_dir = check_writable_dir(Path(out_dir))
    settings = {"files": [_fingerprint(p) for p in paths], "labels": [str(l) for l in (labels or [])], "kinds": list(kinds or []),
                "orderings": list(orderings), "width": width, "depth": depth, "dropout": dropout, "identity_layer": identity_layer,
                "iterations": iterations, "batch_size": batch_size, "lr": lr, "seed": seed,
                "from": None if base_dir is None else {"folder": str(base_dir.resolve()), **_fingerprint(base_dir / "weights.pt")}}
    _claim(out_dir, settings)
    config = TrainConfig(iterations=iterations, batch_size=batch_size, lr=lr, eval_every=max(1, iterations // 10), eval_splits=("val",), seed=seed, progress=progress)
    results = {o: _train_one(o, data, config, out_dir, base, out, width=width, depth=depth, dropout=dropout, identity_layer=identity_layer, seed=seed)
               for o in orderings}
    atomic_write_json(out_dir / "results.json", {"val_error": results, "tasks": data.task_names, "config": config.to_dict()})
    _print_table(results, data.task_names, out)
    return results


def _train_one(ordering: str, data: CsvTasks, config: TrainConfig, out_dir: Path, base: SavedModel | None, out: TextIO, **arch: Any) -> dict[str, float]:
    """Train one ordering, save its model and figures; returns its validation error per task."""
    if base is None:
        build = {"ordering": ordering, **{k: arch[k] for k in ("width", "depth", "dropout", "seed")},
                 "identity_layer": arch["identity_layer"] and ordering == "soft"}
        model = build_model(data.specs, **build)
    else:
        model = assemble_for_new_tasks(base.model, data.specs, dropout=arch["dropout"], identity_layer=arch["identity_layer"], seed=arch["seed"])
        layer = model.core.layers[0]
        build = {"ordering": "soft", "layer": layer.kind, "width": model.core.width, "depth": model.core.depth, "dropout": arch["dropout"],
                 "identity_layer": arch["identity_layer"], "activation": layer.activation, "seed": arch["seed"]}
    print(f"training {ordering} ordering on {len(data.specs)} tasks" + (" over the reused layers" if base else ""), file=out)
    history = fit(model, data, config, run_dir=out_dir / ordering, on_eval=eval_logger(ordering, model, config.iterations))
    errors = {n: history.last[f"val_error/{n}"] for n in data.task_names}
    metadata = {"ordering": ordering, "val_error": errors, "mean_val_error": float(np.mean(list(errors.values()))),
                "reused_layers_of": base.metadata.get("source") if base else None, "source": str(out_dir / ordering / "model")}
    SavedModel(model, build, data.preprocessing, metadata).save(out_dir / ordering / "model")
    if ordering == "soft":
        mixing = mixing_of(model)
        plot_layer_usage(mixing, data.task_names, out_dir / "layer_usage.png", identity_layer=arch["identity_layer"])
        if len(data.specs) > 1:
            plot_task_similarity(mixing, data.task_names, out_dir / "task_similarity.png")
    return errors


def _base_model(from_run: str | Path, out: TextIO) -> tuple[SavedModel, Path]:
    """The model whose shared layers a ``--from`` run reuses (the soft one where there is one),
    and its folder."""
    run = Path(from_run)
    folder = run / "soft" / "model" if (run / "soft" / "model").is_dir() else run
    base = load(folder)
    if isinstance(base.model.core, SingleTaskCores):
        raise ValueError(f"{from_run}: a single-task model has no shared layers to reuse; train soft or parallel ordering there")
    print(f"reusing the shared layers of {folder} ({base.metadata.get('ordering', '?')} ordering), frozen", file=out)
    if not (folder / "weights.pt").is_file():  # a fit run's folder: load() chose one of its orderings
        folder = Path(base.metadata["source"])
    return base, folder


def _fingerprint(path: str | Path) -> dict[str, str]:
    path = Path(path)
    return {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _claim(out_dir: Path, settings: dict[str, Any]) -> None:
    """Record the run's settings and data in ``out_dir``, or refuse a folder holding another run."""
    path = out_dir / RUN_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path} is damaged; delete {out_dir} or use another --out") from None
        differ = differing_keys(previous, settings)
        if differ:
            raise ValueError(f"{out_dir} holds a run with other settings or data ({', '.join(differ)}); use another --out, or the same files and settings to resume")
    elif any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and holds no softorder fit run; use another --out")
    atomic_write_json(path, settings)


def _print_table(results: dict[str, dict[str, float]], names: list[str], out: TextIO) -> None:
    pad = max(len(n) for n in names + ["mean"]) + 2
    print("\nvalidation error (%)", file=out)
    print("task".ljust(pad) + "".join(o.rjust(10) for o in results), file=out)
    for n in names:
        print(n.ljust(pad) + "".join(f"{100 * results[o][n]:10.2f}" for o in results), file=out)
    print("mean".ljust(pad) + "".join(f"{100 * np.mean(list(results[o].values())):10.2f}" for o in results), file=out)


def predict_csv(run: str | Path, path: str | Path, task: str, *, ordering: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Predictions for every row of a CSV file with a trained task's columns: the header and rows
    of the output (the predicted label and each class's probability, or the predicted value)."""
    saved = load(run, ordering)
    if task not in saved.model.task_index:
        raise ValueError(f"no task {task!r} in {run}; its tasks are {saved.model.task_names}")
    prep = saved.preprocessing.get(task)
    if prep is None:
        raise ValueError(f"{run}: task {task!r} was not trained from a CSV file, so its preprocessing is unknown")
    header, rows = read_csv_table(path)
    import torch

    predictions = saved.predict(task, torch.from_numpy(prep.features(Path(path), header, rows)))
    if prep.kind == "regression":
        return ["predicted"], [[f"{v:.6g}"] for v in predictions[:, 0].tolist()]
    classes = prep.classes or []
    probs = torch.cat([1 - predictions, predictions], dim=1) if prep.kind == "binary" else predictions
    out = [[classes[int(p.argmax())]] + [f"{v:.6f}" for v in p.tolist()] for p in probs]
    return ["predicted"] + [f"p({c})" for c in classes], out
