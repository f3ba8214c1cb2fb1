"""A trained model as a self-describing folder: how to build it, its weights, how its inputs are read.

A folder holds ``model.json`` (the tasks, the ``build_model`` arguments, the CSV preprocessing of
each task when it came from CSV files, and free metadata such as validation errors) and
``weights.pt`` (the ``state_dict``, written with ``torch.save`` and read back with
``weights_only=True``: tensors only, no code). ``softorder fit --out RUN`` writes one folder per
ordering, ``RUN/<ordering>/model``; :func:`load` reads either.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from softorder._io import atomic_write_bytes, atomic_write_json
from softorder.data.csv_tasks import CsvPreprocessing
from softorder.model import MultitaskModel, build_model
from softorder.tasks import TaskSpec

MODEL_FILE, WEIGHTS_FILE, FORMAT_VERSION = "model.json", "weights.pt", 1


@dataclass
class SavedModel:
    """A model with what it takes to rebuild it (``build``: build_model's keyword arguments) and,
    for tasks read from CSV files, their fitted preprocessing."""

    model: MultitaskModel
    build: dict[str, Any]
    preprocessing: dict[str, CsvPreprocessing] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the folder ``path`` (model.json and weights.pt, each atomically)."""
        path = Path(path)
        buf = io.BytesIO()
        torch.save(self.model.state_dict(), buf)
        atomic_write_bytes(path / WEIGHTS_FILE, buf.getvalue())
        specs = [{"name": s.name, "input_shape": list(s.input_shape), "kind": s.kind, "num_outputs": s.num_outputs} for s in self.model.specs]
        atomic_write_json(path / MODEL_FILE, {"format": FORMAT_VERSION, "tasks": specs, "build": self.build,
                                              "preprocessing": {n: p.to_dict() for n, p in self.preprocessing.items()},
                                              "metadata": self.metadata})
        return path

    @classmethod
    def read(cls, path: str | Path) -> SavedModel:
        """The model saved in folder ``path``, ready to predict (evaluation mode)."""
        path = Path(path)
        try:
            doc = json.loads((path / MODEL_FILE).read_text())
            specs = [TaskSpec(t["name"], tuple(t["input_shape"]), t["kind"], t["num_outputs"]) for t in doc["tasks"]]
            model = build_model(specs, **doc["build"])
            model.load_state_dict(torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{path} is not a saved model: {Path(error.filename).name} is missing") from None
        except (json.JSONDecodeError, KeyError, TypeError, RuntimeError) as error:
            raise ValueError(f"{path}: the saved model could not be read ({type(error).__name__}: {error})") from None
        preprocessing = {n: CsvPreprocessing.from_dict(p) for n, p in doc.get("preprocessing", {}).items()}
        return cls(model.eval(), doc["build"], preprocessing, doc.get("metadata", {}))

    @torch.no_grad()
    def predict(self, task: str, inputs: Tensor) -> Tensor:
        """Task ``task``'s predictions for inputs (n, *input_shape): class probabilities (n, C),
        the probability of the positive class (n, 1), or regression values (n, k)."""
        if task not in self.model.task_index:
            raise ValueError(f"no task {task!r} in this model; its tasks are {self.model.task_names}")
        self.model.eval()
        logits = self.model({task: inputs})[task]
        return self.model.specs[self.model.task_index[task]].predict(logits)


def load(run: str | Path, ordering: str | None = None, *, quiet: bool = False) -> SavedModel:
    """A trained model from a saved-model folder, or from a ``softorder fit --out RUN`` folder.

    RUN holds one model per ordering trained; ``ordering`` picks one, and by default the one with
    the lowest mean validation error is loaded (said on standard error unless ``quiet``).
    """
    run = Path(run)
    if (run / MODEL_FILE).is_file():
        return SavedModel.read(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} does not exist")
    saved = {p.parent.parent.name: p.parent for p in sorted(run.glob(f"*/model/{MODEL_FILE}"))}
    if not saved:
        raise FileNotFoundError(f"{run} holds no saved model (looked for {MODEL_FILE} and */model/{MODEL_FILE})")
    if ordering is not None:
        if ordering not in saved:
            raise ValueError(f"{run} holds no {ordering!r} model; it holds {sorted(saved)}")
        return SavedModel.read(saved[ordering])
    models = {name: SavedModel.read(folder) for name, folder in saved.items()}
    best = min(models, key=lambda n: models[n].metadata.get("mean_val_error", float("inf")))
    if len(models) > 1 and not quiet:
        error = models[best].metadata.get("mean_val_error")
        shown = f" ({100 * error:.2f}%)" if error is not None else ""
        print(f"softorder: {run} holds {', '.join(sorted(models))}; using {best}, the lowest mean validation error{shown} "
              "(choose with ordering= / --ordering)", file=sys.stderr)
    return models[best]
