"""The ten UCI classification tasks of the paper (Sec. 4.2, Fig. 5a, Appendix A.2).

Seven are parsed from the original UCI files under ``<data_dir>/uci/``; Iris, Wine and Breast
cancer (Wisconsin diagnostic) come from the copies bundled with scikit-learn.

Preprocessing, per task (all statistics from the training part only):

* one random 80/20 train / held-out split, stratified by class where every class has at least two
  rows, made with ``split_seed`` (default 0) and so fixed across trials whatever the trial seed;
* missing cells (``?``, in Hepatitis and Heart disease) are replaced by the training-part median of
  their feature;
* every feature is scaled to [0, 1] with the training part's min and max; held-out values outside
  that range are clipped to [0, 1]; a feature constant on the training part becomes 0;
* labels are mapped to ``0..C-1`` in sorted order of their values (numeric order for numeric
  labels). Heart disease keeps its five classes 0..4, as in the paper's Fig. 5a.

Every task is ``multiclass`` with ``C`` outputs, matching the paper's softmax decoders.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from softorder.data._checks import require_int
from softorder.data.download import DataFile, ensure_file
from softorder.data.errors import DataCorruptError
from softorder.data.paths import resolve_data_dir
from softorder.tasks import TaskArrays, TaskSpec, TensorTasks

DATASET = "uci"
UCI_BASE = "https://archive.ics.uci.edu/ml/machine-learning-databases/"


@dataclass(frozen=True)
class UciSource:
    """One task of Fig. 5a and how its file is laid out."""

    name: str
    title: str
    features: int
    classes: int
    samples: int
    file: DataFile | None = None  # None: bundled with scikit-learn
    sklearn_loader: str | None = None
    sep: str | None = None  # None: any whitespace
    label_col: int = -1  # 0: first column, -1: last
    has_row_name: bool = False  # a sequence name in the first column (Ecoli, Yeast)

    @property
    def columns(self) -> int:
        return self.features + 1 + int(self.has_row_name)


def _tokens(path: Path, sep: str | None) -> list[list[str]]:
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataCorruptError(f"{path} is not a plain-text UCI file ({exc})") from exc
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        rows.append([t.strip() for t in line.split(sep)] if sep else line.split())
    return rows


def cells_sha256(path: Path, sep: str | None = None) -> str:
    """A checksum of a UCI file's cells, independent of line endings and spacing."""
    rows = _tokens(path, sep)
    return hashlib.sha256("\n".join("\x1f".join(r) for r in rows).encode()).hexdigest()


def _uci_file(name: str, urls: tuple[str, ...], sha256: str, content: str, sep: str | None) -> DataFile:
    digest = functools.partial(cells_sha256, sep=sep)
    return DataFile(DATASET, name, urls=urls, sha256=sha256, content_sha256=content, content_digest=digest)


SOURCES: tuple[UciSource, ...] = (
    UciSource(
        "australian", "Australian credit", 14, 2, 690,
        file=_uci_file(
            "australian.dat", (UCI_BASE + "statlog/australian/australian.dat",),
            "3abe5af151afa50b999a9ba21cbc884e80d80a4050b716cf88b34a2e6ecb731c",
            "d4dc12733e4a6416633bc265d86844707216cad998e91bcf7e0378673d3200c1", None,
        ),
    ),
    UciSource("breast_cancer", "Breast cancer", 30, 2, 569, sklearn_loader="load_breast_cancer"),
    UciSource(
        "ecoli", "Ecoli", 7, 8, 336,
        file=_uci_file(
            "ecoli.data", (UCI_BASE + "ecoli/ecoli.data",),
            "def2b9bcbadbcf52674503f02219c60f25d4cb5072bd2d0015715f0b19b740e9",
            "8e7c0268d7e836bc904836ea7398ccb865d361ef1383e03c35c11898bbcf3ed8", None,
        ),
        has_row_name=True,
    ),
    UciSource(
        "german", "German credit", 24, 2, 1000,
        file=_uci_file(
            "german.data-numeric", (UCI_BASE + "statlog/german/german.data-numeric",),
            "c6a34b586a10b0abc85ba5cd07cd83c1ca821b25288290a6c2448a1b60b25449",
            "cfb03ab95e7ca985bc8c1a5cb182f78a9bf277e1798592515ba66a3292d4e566", None,
        ),
    ),
    UciSource(
        "heart_disease", "Heart disease", 13, 5, 303,
        file=_uci_file(
            "processed.cleveland.data", (UCI_BASE + "heart-disease/processed.cleveland.data",),
            "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
            "93000a92560fdf801db28f5402db6134fd4fd7c167cae970f45faabe6a9aaa5a", ",",
        ),
        sep=",",
    ),
    UciSource(
        "hepatitis", "Hepatitis", 19, 2, 155,
        file=_uci_file(
            "hepatitis.data", (UCI_BASE + "hepatitis/hepatitis.data",),
            "9971f9d18abb4fc9dd6749eefb0f864b36fa7bdd59f54188c0b148a5c28214bc",
            "8954084586d8610fcc88da79ec7441ab80520e168ad82ee400fa08ad6d89aa51", ",",
        ),
        sep=",",
        label_col=0,
    ),
    UciSource("iris", "Iris", 4, 3, 150, sklearn_loader="load_iris"),
    UciSource(
        "pima", "Pima diabetes", 8, 2, 768,
        file=_uci_file(
            "pima-indians-diabetes.data",
            (
                UCI_BASE + "pima-indians-diabetes/pima-indians-diabetes.data",
                # withdrawn from the UCI site; a widely used copy (accepted only if its cells match)
                "https://raw.githubusercontent.com/jbrownlee/Datasets/master/pima-indians-diabetes.data.csv",
            ),
            "06f5b7c2cd7bca686fda4f92eab5f61e7ff6426a9acefa2e3dda04fc54293cf5",
            "e6af91abb8a4c38c3ecbaea093501b1f6b1b1bd30d192b872293a58f8efb16a9", ",",
        ),
        sep=",",
    ),
    UciSource("wine", "Wine", 13, 3, 178, sklearn_loader="load_wine"),
    UciSource(
        "yeast", "Yeast", 8, 10, 1484,
        file=_uci_file(
            "yeast.data", (UCI_BASE + "yeast/yeast.data",),
            "65ba3a5584662ba5864b652333c1d480399388442fc5cc4063dab27a9fe4b5be",
            "536a4fd00c4d49bb476816868d2f63ba726f3cfd644abecf7047b301eacb3b0c", None,
        ),
        has_row_name=True,
    ),
)
TASK_NAMES: tuple[str, ...] = tuple(s.name for s in SOURCES)
FILES: dict[str, DataFile] = {s.name: s.file for s in SOURCES if s.file is not None}


def source(name: str) -> UciSource:
    for s in SOURCES:
        if s.name == name:
            return s
    raise ValueError(f"unknown UCI task {name!r}; the tasks are {list(TASK_NAMES)}")


def parse_uci_file(src: UciSource, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``path`` as laid out in ``src``: features ``(n, f)`` float64 (NaN where ``?``) and the
    raw label strings ``(n,)``."""
    rows = _tokens(path, src.sep)
    if not rows:
        raise DataCorruptError(f"{path} has no rows")
    features, labels = [], []
    for lineno, row in enumerate(rows, start=1):
        if len(row) != src.columns:
            raise DataCorruptError(
                f"{path}, data row {lineno}: {len(row)} columns, expected {src.columns} for {src.title}"
            )
        label = row[src.label_col]
        cells = row[1:] if src.label_col == 0 else row[:-1]
        if src.has_row_name:
            cells = cells[1:]
        if label in ("", "?"):
            raise DataCorruptError(f"{path}, data row {lineno}: missing label")
        values = []
        for cell in cells:
            if cell == "?":
                values.append(np.nan)
                continue
            try:
                values.append(float(cell))
            except ValueError:
                raise DataCorruptError(f"{path}, data row {lineno}: {cell!r} is not a number") from None
        features.append(values)
        labels.append(label)
    x = np.asarray(features, dtype=np.float64)
    if not np.isfinite(x[~np.isnan(x)]).all():
        raise DataCorruptError(f"{path}: non-finite feature values")
    return x, np.asarray(labels)


def encode_labels(raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map label values to ``0..C-1`` in sorted order (numeric order when all are numbers)."""
    values = sorted(set(raw.tolist()))
    try:
        numeric = {v: float(v) for v in values}
        values = sorted(values, key=lambda v: numeric[v])
    except (TypeError, ValueError):
        pass
    index = {v: i for i, v in enumerate(values)}
    return np.asarray([index[v] for v in raw.tolist()], dtype=np.int64), [str(v) for v in values]


def load_raw(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = True, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One task's rows before splitting: features ``(n, f)`` float64 with NaN for missing cells,
    labels ``(n,)`` int64 in ``0..C-1``, and the original label values in class order."""
    src = source(name)
    if src.sklearn_loader is not None:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, src.sklearn_loader)()
        x, raw = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
        y, classes = encode_labels(raw.astype(str) if raw.dtype.kind in "US" else raw)
        return x, y, classes
    assert src.file is not None
    path = ensure_file(src.file, resolve_data_dir(data_dir), download_missing=download, verify=verify)
    x, raw = parse_uci_file(src, path)
    y, classes = encode_labels(raw)
    if len(classes) < 2:
        raise DataCorruptError(f"{path}: only one class ({classes[0]!r}) in the label column")
    return x, y, classes


def split_indices(y: np.ndarray, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and held-out parts: a random split, stratified by class when
    every class has at least two rows (and the held-out part can hold one row of each)."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    counts = np.bincount(y)
    n_val = int(np.ceil(val_fraction * n))
    stratify = y if counts[counts > 0].min() >= 2 and n_val >= (counts > 0).sum() else None
    train, val = train_test_split(
        np.arange(n), test_size=val_fraction, random_state=int(split_seed), stratify=stratify
    )
    return np.sort(train), np.sort(val)


def scale_features(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Impute missing cells with the training median, then min-max scale to [0, 1] with the
    training min/max (clipping the other parts). Returns float32 arrays, training part first."""
    median = np.zeros(x_train.shape[1])
    has_value = (~np.isnan(x_train)).any(axis=0)
    if has_value.any():
        median[has_value] = np.nanmedian(x_train[:, has_value], axis=0)
    out = []
    lo = hi = None
    for part in (x_train, *others):
        part = np.where(np.isnan(part), median, part)
        if lo is None:
            lo, hi = part.min(axis=0), part.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        scaled = np.where(hi > lo, (part - lo) / span, 0.0)
        out.append(np.clip(scaled, 0.0, 1.0).astype(np.float32))
    return out


def uci_tasks(
    data_dir: str | os.PathLike[str] | None = None,
    tasks: Sequence[str] | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.2,
    holdout_split: str = "val",
    *,
    download: bool = True,
    verify: bool = True,
) -> TensorTasks:
    """The UCI tasks of Fig. 5a (all ten, or those named in ``tasks``, in that order).

    Each task has a ``train`` split and a held-out split named ``holdout_split`` (``"val"``, as in
    A.2, or ``"test"``): inputs ``(n, features)`` float32 in [0, 1], labels ``(n,)`` int64 in
    ``0..C-1``; kind ``multiclass`` with ``C`` outputs.
    """
    names = list(TASK_NAMES if tasks is None else tasks)
    if not names:
        raise ValueError("tasks is empty")
    for n in names:
        source(n)
    if holdout_split not in ("val", "test"):
        raise ValueError(f"holdout_split must be 'val' or 'test', got {holdout_split!r}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    split_seed = require_int("split_seed", split_seed, 0)
    out = []
    for name in names:
        x, y, classes = load_raw(name, data_dir, download=download, verify=verify)
        train, held = split_indices(y, float(val_fraction), split_seed)
        x_train, x_held = scale_features(x[train], x[held])
        spec = TaskSpec(name, (x.shape[1],), "multiclass", len(classes))
        out.append(
            TaskArrays(
                spec,
                {
                    "train": (torch.from_numpy(x_train), torch.from_numpy(y[train])),
                    holdout_split: (torch.from_numpy(x_held), torch.from_numpy(y[held])),
                },
            )
        )
    return TensorTasks(out)
