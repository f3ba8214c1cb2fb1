"""What a task is, and the data interface that training reads from.

A task has a name, an input shape, and an output kind that fixes its decoder activation, its loss
and its metric (paper, Appendix A: cross-entropy for classification, mean squared error for
regression). A :class:`MultitaskData` hands out one :class:`Batch` per training iteration holding
rows of every task; batch ``i`` depends only on ``(seed, i)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

OutputKind = Literal["binary", "multiclass", "regression"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, the shape of one input row, and what it predicts.

    ``num_outputs`` is the number of classes for ``multiclass``, 1 for ``binary`` and the
    number of target values for ``regression``.
    """

    name: str
    input_shape: tuple[int, ...]
    kind: OutputKind
    num_outputs: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a task needs a non-empty name")
        if self.kind not in ("binary", "multiclass", "regression"):
            raise ValueError(f"task {self.name!r}: unknown output kind {self.kind!r}")
        if self.kind == "binary" and self.num_outputs != 1:
            raise ValueError(f"task {self.name!r}: a binary task has num_outputs=1")
        if self.kind == "multiclass" and self.num_outputs < 2:
            raise ValueError(f"task {self.name!r}: a multiclass task needs at least 2 classes")
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss over rows. ``logits`` (n, num_outputs) are pre-activation decoder outputs."""
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(logits.reshape(-1), target.reshape(-1).float())
        if self.kind == "multiclass":
            return F.cross_entropy(logits, target.long())
        return F.mse_loss(logits, target.float())

    def error_sum(self, logits: Tensor, target: Tensor) -> float:
        """Summed error over rows: misclassifications, or squared error (mean over outputs)."""
        if self.kind == "binary":
            return float(((logits.reshape(-1) > 0).long() != target.reshape(-1).long()).sum())
        if self.kind == "multiclass":
            return float((logits.argmax(dim=1) != target.long()).sum())
        return float(((logits - target.float()) ** 2).mean(dim=tuple(range(1, logits.dim()))).sum())

    def predict(self, logits: Tensor) -> Tensor:
        """Decoder activation: sigmoid (binary), softmax (multiclass) or identity (regression)."""
        if self.kind == "binary":
            return torch.sigmoid(logits)
        if self.kind == "multiclass":
            return torch.softmax(logits, dim=-1)
        return logits

    def check_targets(self, y: Tensor, where: str) -> None:
        """Raise a clear error if ``y`` holds labels outside this task's range."""
        if y.numel() == 0:
            return
        if self.kind == "regression":
            if not torch.isfinite(y.float()).all():
                raise ValueError(f"task {self.name!r}: non-finite regression targets in {where}")
            return
        high = 2 if self.kind == "binary" else self.num_outputs
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= high:
            raise ValueError(
                f"task {self.name!r}: labels in {where} range over [{lo}, {hi}], "
                f"expected 0..{high - 1} for a {self.kind} task"
            )


@dataclass
class Batch:
    """Rows for several tasks.

    ``inputs`` is either a dict ``task -> (n_t, *input_shape)`` (every task its own rows) or one
    tensor ``(n, *input_shape)`` whose rows are given to every task (a shared encoder, e.g. CelebA).
    ``targets`` maps task -> ``(n_t,)`` labels or ``(n_t, k)`` regression targets.
    """

    inputs: dict[str, Tensor] | Tensor
    targets: dict[str, Tensor]

    def to(self, device: torch.device | str) -> Batch:
        if isinstance(self.inputs, Tensor):
            inputs: dict[str, Tensor] | Tensor = self.inputs.to(device)
        else:
            inputs = {k: v.to(device) for k, v in self.inputs.items()}
        return Batch(inputs, {k: v.to(device) for k, v in self.targets.items()})

    def rows(self, task: str) -> int:
        return int(self.targets[task].shape[0])


class MultitaskData(ABC):
    """A set of tasks with train / val / test rows.

    Subclasses implement :meth:`train_batch` (a pure function of ``(iteration, seed)``) and
    :meth:`eval_batches`.
    """

    specs: tuple[TaskSpec, ...]
    shared_input: bool = False

    @property
    def task_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def spec(self, name: str) -> TaskSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(f"no task named {name!r}; tasks are {self.task_names}")

    @abstractmethod
    def train_batch(self, iteration: int, batch_size: int, seed: int) -> Batch:
        """Training batch number ``iteration``: ``batch_size`` rows of every task (or shared rows)."""

    @abstractmethod
    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """All rows of ``split`` ('train', 'val' or 'test'), in order, in batches of at most
        ``batch_size`` input rows in all (so memory stays bounded however many tasks there are)."""

    @abstractmethod
    def split_sizes(self) -> dict[str, dict[str, int]]:
        """``task -> split -> number of rows`` (0 where a split is absent)."""

    def has_split(self, split: str) -> bool:
        return any(sizes.get(split, 0) > 0 for sizes in self.split_sizes().values())


SEED_STRIDE = 1_000_003  # a prime: streams derived from (seed, index) pairs do not collide for small indices


def batch_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator that draws training batch ``iteration`` of a run seeded with ``seed``."""
    return torch.Generator().manual_seed((int(seed) * SEED_STRIDE + int(iteration)) % (2**63))


@dataclass
class TaskArrays:
    """In-memory rows of one task: ``splits[split] = (x, y)``."""

    spec: TaskSpec
    splits: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


class TensorTasks(MultitaskData):
    """Tasks held in memory as tensors, each with its own inputs (MNIST, UCI, Omniglot, random).

    Validates everything up front: input shapes against each spec, finite inputs, labels in range.
    Training batches sample rows with replacement across iterations (without replacement within
    one batch where the task has enough rows).
    """

    shared_input = False

    def __init__(self, tasks: Sequence[TaskArrays]) -> None:
        if not tasks:
            raise ValueError("TensorTasks needs at least one task")
        names = [t.spec.name for t in tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate task names: {dupes}")
        for t in tasks:
            _validate_task_arrays(t)
        self.tasks = {t.spec.name: t for t in tasks}
        self.specs = tuple(t.spec for t in tasks)

    def train_batch(self, iteration: int, batch_size: int, seed: int) -> Batch:
        gen = batch_generator(seed, iteration)
        inputs, targets = {}, {}
        for name, task in self.tasks.items():
            x, y = task.splits["train"]
            n = x.shape[0]
            if batch_size <= n:
                idx = torch.randperm(n, generator=gen)[:batch_size]
            else:
                idx = torch.randint(n, (batch_size,), generator=gen)
            inputs[name], targets[name] = x[idx], y[idx]
        return Batch(inputs, targets)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Tasks are packed one after another: a batch holds at most one slice of each task.
        inputs: dict[str, Tensor] = {}
        targets: dict[str, Tensor] = {}
        room = batch_size
        for name, task in self.tasks.items():
            if split not in task.splits:
                continue
            x, y = task.splits[split]
            start = 0
            while start < x.shape[0]:
                take = min(room, x.shape[0] - start)
                inputs[name], targets[name] = x[start : start + take], y[start : start + take]
                start += take
                room -= take
                if room == 0:
                    yield Batch(inputs, targets)
                    inputs, targets, room = {}, {}, batch_size
        if inputs:
            yield Batch(inputs, targets)

    def split_sizes(self) -> dict[str, dict[str, int]]:
        return {
            name: {s: (int(t.splits[s][0].shape[0]) if s in t.splits else 0) for s in SPLITS}
            for name, t in self.tasks.items()
        }

    def subset(self, names: Sequence[str]) -> TensorTasks:
        """The same data restricted to the named tasks, in the given order."""
        missing = [n for n in names if n not in self.tasks]
        if missing:
            raise KeyError(f"unknown tasks {missing}; tasks are {self.task_names}")
        return TensorTasks([self.tasks[n] for n in names])


def _validate_task_arrays(task: TaskArrays) -> None:
    spec = task.spec
    if "train" not in task.splits or task.splits["train"][0].shape[0] == 0:
        raise ValueError(f"task {spec.name!r} has no training rows")
    for split, (x, y) in task.splits.items():
        if split not in SPLITS:
            raise ValueError(f"task {spec.name!r}: unknown split {split!r}; expected one of {SPLITS}")
        if tuple(x.shape[1:]) != spec.input_shape:
            raise ValueError(
                f"task {spec.name!r}, {split}: inputs have row shape {tuple(x.shape[1:])}, "
                f"spec says {spec.input_shape}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"task {spec.name!r}, {split}: {x.shape[0]} inputs but {y.shape[0]} targets")
        if x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"task {spec.name!r}, {split}: {bad} non-finite input values")
        spec.check_targets(y, split)


def mean_or_nan(values: Mapping[str, float]) -> float:
    vals = [v for v in values.values() if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")
