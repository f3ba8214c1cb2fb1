"""The user's own tasks from CSV files: one file per task, one row per example.

Each file has numeric feature columns and one label column (the last by default, or named / numbered).
Preprocessing follows the UCI tasks (Appendix A.2): missing cells (empty, ``?``, ``NA``, ``nan``)
take the training part's median, features are scaled to [0, 1] with the training part's min and max,
labels are mapped to 0..C-1 (compared as numbers when they are numbers), and each task gets a seeded
random train / validation split. The fitted preprocessing (:class:`CsvPreprocessing`) is kept with a
trained model, so that new rows are read exactly as the training rows were.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softorder.data.uci import split_indices
from softorder.tasks import OutputKind, TaskArrays, TaskSpec, TensorTasks

MISSING = {"", "?", "na", "nan", "null", "none"}
KINDS = ("binary", "multiclass", "regression")
MAX_GUESSED_CLASSES = 20  # a numeric label with more distinct values needs --kind


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def read_csv_table(path: str | Path) -> tuple[list[str] | None, list[list[str]]]:
    """Header (or None when the first row is all numbers or missing cells) and data rows as strings.
    A UTF-8 byte-order mark is dropped; any other encoding than UTF-8 is refused by name."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"task file {path} is a directory, not a CSV file")
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            sample = f.read(8192)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t ")
            except csv.Error:
                dialect = csv.excel
            rows = [[c.strip() for c in row] for row in csv.reader(f, dialect) if any(c.strip() for c in row)]
    except UnicodeDecodeError as error:
        raise ValueError(f"task file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    if not rows:
        raise ValueError(f"task file {path} is empty")
    header = None
    if any(_number(c) is None and c.lower() not in MISSING for c in rows[0]):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise ValueError(f"task file {path} has a header but no rows")
    bad = next((i for i, r in enumerate(rows) if len(r) != len(rows[0])), None)
    if bad is not None:
        raise ValueError(f"task file {path}: row {bad + 1 + (header is not None)} has {len(rows[bad])} cells, the first row {len(rows[0])}")
    return header, rows


@dataclass
class CsvPreprocessing:
    """How one task's CSV rows become model inputs and labels: fitted on the training part.

    ``columns``: the feature columns' names (header) or ``column N`` (1-based), in order;
    ``label``: the label column's name; ``median``/``low``/``high``: per feature, for missing cells
    and min-max scaling; ``classes``: the label values in class order (None for regression).
    """

    task: str
    columns: list[str]
    label: str
    header: bool
    median: list[float]
    low: list[float]
    high: list[float]
    kind: str
    classes: list[str] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CsvPreprocessing:
        return cls(**values)

    def features(self, path: Path, header: list[str] | None, rows: list[list[str]]) -> np.ndarray:
        """New rows of a file (its header and string rows) as scaled inputs (n, features) float32.
        The file's feature columns must be the training ones (the label column may be absent)."""
        names = header if header is not None else [f"column {j + 1}" for j in range(len(rows[0]))]
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise ValueError(f"{path}: task {self.task!r} was trained on columns {self.columns}; missing {missing} (file has {names})")
        index = [names.index(c) for c in self.columns]
        return _scaled(self, _numeric_block(path, header, rows, index))


def _numeric_block(path: Path, header: list[str] | None, rows: list[list[str]], index: Sequence[int]) -> np.ndarray:
    """The cells of columns ``index`` as float64 (NaN for missing cells); a non-number is named by
    file, row and column."""
    x = np.full((len(rows), len(index)), np.nan)
    for i, row in enumerate(rows):
        for out, j in enumerate(index):
            cell = row[j]
            if cell.lower() in MISSING:
                continue
            value = _number(cell)
            if value is None or not math.isfinite(value):
                column = header[j] if header else f"column {j + 1}"
                raise ValueError(f"{path}, row {i + 1 + (header is not None)}, column {column!r}: {cell!r} is not a finite number")
            x[i, out] = value
    return x


def _label_column(path: Path, header: list[str] | None, columns: int, label: str | int) -> int:
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        if header is None or label not in header:
            choices = header if header is not None else f"numbers 0..{columns - 1} (the file has no header)"
            raise ValueError(f"{path}: no column named {label!r}; choose one of {choices}")
        return header.index(label)
    index = int(label)
    if not -columns <= index < columns:
        raise ValueError(f"{path}: label column {index} is out of range for {columns} columns")
    return index % columns


def _encode(path: Path, raw: list[str], kind: str | None, label_name: str, first_row: int) -> tuple[np.ndarray, str, list[str] | None]:
    """Labels (n,) as class indices (or values for regression), the task's kind, the class values."""
    values = [_number(v) for v in raw]
    numeric = all(v is not None for v in values)
    if numeric:
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)  # type: ignore[arg-type]
        if bad is not None:
            raise ValueError(f"{path}, row {bad + first_row}, column {label_name!r}: label {raw[bad]!r} is not a finite number")
    if kind == "regression":
        if not numeric:
            bad = next(i for i, v in enumerate(values) if v is None)
            raise ValueError(f"{path}, row {bad + first_row}, column {label_name!r}: {raw[bad]!r} is not a number, and --kind regression needs numbers")
        return np.asarray(values, dtype=np.float64), "regression", None
    keys = values if numeric else raw  # 1 and 1.0 are one class
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise ValueError(f"{path}: the label column {label_name!r} has only one value ({raw[0]!r})")
    if kind is None and numeric and len(distinct) > MAX_GUESSED_CLASSES:
        raise ValueError(f"{path}: the label column {label_name!r} has {len(distinct)} distinct numbers; give --kind regression "
                         f"for a continuous target, or --kind multiclass to treat them as {len(distinct)} classes")
    kind = kind or ("binary" if len(distinct) == 2 else "multiclass")
    if kind == "binary" and len(distinct) != 2:
        raise ValueError(f"{path}: --kind binary needs two label values, the column {label_name!r} has {len(distinct)}")
    index = {v: i for i, v in enumerate(distinct)}
    names = [f"{v:g}" for v in distinct] if numeric else [str(v) for v in distinct]
    return np.asarray([index[k] for k in keys], dtype=np.int64), kind, names


def csv_task(
    path: str | Path,
    name: str | None = None,
    *,
    label: str | int = -1,
    kind: OutputKind | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> tuple[TaskArrays, CsvPreprocessing]:
    """One task from a CSV file, and its fitted preprocessing. ``label`` is a column name or index
    (default: the last column). ``kind`` defaults to ``binary`` for two label values and
    ``multiclass`` for more (a numeric label with more than 20 values needs it given); pass
    ``regression`` for numeric targets. Inputs (n, features) in [0, 1]; labels (n,) or (n, 1)."""
    path = Path(path)
    name = name or path.stem
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {list(KINDS)}")
    header, rows = read_csv_table(path)
    columns = len(rows[0])
    if columns < 2:
        raise ValueError(f"{path} needs at least one feature column besides the label")
    label_col = _label_column(path, header, columns, label)
    names = header if header is not None else [f"column {j + 1}" for j in range(columns)]
    feature_cols = [j for j in range(columns) if j != label_col]
    raw = [r[label_col] for r in rows]
    missing = next((i for i, v in enumerate(raw) if v.lower() in MISSING), None)
    if missing is not None:
        raise ValueError(f"{path}, row {missing + 1 + (header is not None)}: the label ({names[label_col]!r}) is missing")
    y, kind, classes = _encode(path, raw, kind, names[label_col], 1 + (header is not None))
    x = _numeric_block(path, header, rows, feature_cols)
    train, held = split_indices(y if classes is not None else np.zeros(len(rows), dtype=np.int64), val_fraction, split_seed)
    prep = _fit_preprocessing(name, [names[j] for j in feature_cols], names[label_col], header is not None, x[train], kind, classes)
    spec = TaskSpec(name, (x.shape[1],), kind, 1 if kind in ("binary", "regression") else len(classes or []))  # type: ignore[arg-type]
    target = (lambda idx: torch.tensor(y[idx], dtype=torch.float32).unsqueeze(1)) if kind == "regression" else (lambda idx: torch.tensor(y[idx], dtype=torch.long))
    splits = {"train": (torch.from_numpy(_scaled(prep, x[train])), target(train)), "val": (torch.from_numpy(_scaled(prep, x[held])), target(held))}
    return TaskArrays(spec, splits), prep


def _fit_preprocessing(task: str, columns: list[str], label: str, header: bool, x_train: np.ndarray, kind: str,
                       classes: list[str] | None) -> CsvPreprocessing:
    """Medians for missing cells, then min and max, from the training rows."""
    median = np.zeros(x_train.shape[1])
    has_value = (~np.isnan(x_train)).any(axis=0)
    if has_value.any():
        median[has_value] = np.nanmedian(x_train[:, has_value], axis=0)
    filled = np.where(np.isnan(x_train), median, x_train)
    return CsvPreprocessing(task, columns, label, header, median.tolist(), filled.min(axis=0).tolist(), filled.max(axis=0).tolist(), kind, classes)


def _scaled(prep: CsvPreprocessing, x: np.ndarray) -> np.ndarray:
    """Rows already parsed to numbers (NaN for missing) through the fitted preprocessing."""
    x = np.where(np.isnan(x), np.asarray(prep.median), x)
    low, high = np.asarray(prep.low), np.asarray(prep.high)
    span = np.where(high > low, high - low, 1.0)
    return np.clip(np.where(high > low, (x - low) / span, 0.0), 0.0, 1.0).astype(np.float32)


class CsvTasks(TensorTasks):
    """Tasks read from CSV files, with each task's fitted preprocessing (``preprocessing[name]``)."""

    def __init__(self, tasks: Sequence[tuple[TaskArrays, CsvPreprocessing]]) -> None:
        super().__init__([t for t, _ in tasks])
        self.preprocessing = {p.task: p for _, p in tasks}


def csv_tasks(paths: Sequence[str | Path], *, labels: Sequence[str | int] | None = None, kinds: Sequence[str | None] | None = None,
              split_seed: int = 0, val_fraction: float = 0.2) -> CsvTasks:
    """Several CSV files as one task set, a task per file named after the file; every file is read
    and checked before any is used."""
    labels = list(labels) if labels is not None else [-1] * len(paths)
    kinds = list(kinds) if kinds is not None else [None] * len(paths)
    if len(labels) != len(paths):
        raise ValueError(f"{len(paths)} task files but {len(labels)} label columns")
    if len(kinds) != len(paths):
        raise ValueError(f"{len(paths)} task files but {len(kinds)} kinds")
    names = [Path(p).stem for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two task files share the name {twice[0]!r}; tasks are named after their files")
    return CsvTasks([csv_task(p, label=l, kind=k, split_seed=split_seed, val_fraction=val_fraction) for p, l, k in zip(paths, labels, kinds)])  # type: ignore[arg-type]
