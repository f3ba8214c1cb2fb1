"""The user's own tasks from CSV files: one file per task, one row per example.

Each file has numeric feature columns and one label column (the last by default, or named / numbered).
Preprocessing follows the UCI tasks (Appendix A.2): missing cells (empty, ``?``, ``NA``, ``nan``)
take the training part's median, features are scaled to [0, 1] with the training part's min and max,
labels are mapped to 0..C-1, and each task gets a seeded random train / validation split.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from softorder.data.uci import encode_labels, scale_features, split_indices
from softorder.tasks import OutputKind, TaskArrays, TaskSpec, TensorTasks

MISSING = {"", "?", "na", "nan", "null", "none"}


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_csv_table(path: str | Path) -> tuple[list[str] | None, list[list[str]]]:
    """Header (or None when the first row is all numbers or missing cells) and data rows as strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    with path.open(newline="") as f:
        sample = f.read(8192)
        f.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t ")
        except csv.Error:
            dialect = csv.excel
        rows = [[c.strip() for c in row] for row in csv.reader(f, dialect) if any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"task file {path} is empty")
    header = None
    if any(not _is_number(c) and c.lower() not in MISSING for c in rows[0]):
        header, rows = rows[0], rows[1:]
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        bad = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
        raise ValueError(f"task file {path}: row {bad + 1 + (header is not None)} has {len(rows[bad])} cells, the first row {len(rows[0])}")
    if not rows:
        raise ValueError(f"task file {path} has a header but no rows")
    return header, rows


def csv_task(
    path: str | Path,
    name: str | None = None,
    *,
    label: str | int = -1,
    kind: OutputKind | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> TaskArrays:
    """One task from a CSV file. ``label`` is a column name or index (default: the last column).

    ``kind`` defaults to ``binary`` for two label values and ``multiclass`` otherwise; pass
    ``regression`` for numeric targets. Inputs (n, features) in [0, 1]; labels (n,).
    """
    path = Path(path)
    name = name or path.stem
    header, rows = read_csv_table(path)
    columns = len(rows[0])
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        if header is None or label not in header:
            raise KeyError(f"task {name!r}: no column named {label!r} in {path} (columns: {header})")
        label_col = header.index(label)
    else:
        label_col = int(label)
        if not -columns <= label_col < columns:
            raise KeyError(f"task {name!r}: label column {label_col} is out of range for {columns} columns in {path}")
        label_col %= columns
    if columns < 2:
        raise ValueError(f"task {name!r}: {path} needs at least one feature column besides the label")

    raw_labels = np.asarray([r[label_col] for r in rows])
    feature_rows = [[c for j, c in enumerate(r) if j != label_col] for r in rows]
    x = np.full((len(rows), columns - 1), np.nan)
    for i, r in enumerate(feature_rows):
        for j, cell in enumerate(r):
            if cell.lower() in MISSING:
                continue
            if not _is_number(cell):
                col = [c for k, c in enumerate(header) if k != label_col][j] if header else j
                raise ValueError(f"task {name!r}: non-numeric feature {cell!r} in {path}, row {i + 1}, column {col!r}")
            x[i, j] = float(cell)
    if any(v.lower() in MISSING for v in raw_labels):
        raise ValueError(f"task {name!r}: {path} has rows with a missing label")

    if kind == "regression":
        y_all = raw_labels.astype(np.float64)
        spec = TaskSpec(name, (x.shape[1],), "regression", 1)
        train, held = split_indices(np.zeros(len(rows), dtype=np.int64), val_fraction, split_seed)
        y_tensor = lambda idx: torch.tensor(y_all[idx], dtype=torch.float32).unsqueeze(1)  # noqa: E731
    else:
        y_all, classes = encode_labels(raw_labels)
        if len(classes) < 2:
            raise ValueError(f"task {name!r}: {path} has only one label value ({classes[0]!r})")
        kind = kind or ("binary" if len(classes) == 2 else "multiclass")
        spec = TaskSpec(name, (x.shape[1],), kind, 1 if kind == "binary" else len(classes))
        train, held = split_indices(y_all, val_fraction, split_seed)
        y_tensor = lambda idx: torch.tensor(y_all[idx], dtype=torch.long)  # noqa: E731
    x_train, x_val = scale_features(x[train], x[held])
    return TaskArrays(spec, {"train": (torch.from_numpy(x_train), y_tensor(train)), "val": (torch.from_numpy(x_val), y_tensor(held))})


def csv_tasks(paths: Sequence[str | Path], *, labels: Sequence[str | int] | None = None, split_seed: int = 0, val_fraction: float = 0.2) -> TensorTasks:
    """Several CSV files as one task set, a task per file named after the file."""
    labels = list(labels) if labels is not None else [-1] * len(paths)
    if len(labels) != len(paths):
        raise ValueError(f"{len(paths)} task files but {len(labels)} label columns")
    return TensorTasks([csv_task(p, label=l, split_seed=split_seed, val_fraction=val_fraction) for p, l in zip(paths, labels)])
