"""In-memory tasks whose inputs are stored as small integers and handed out as float32.

MNIST pixels (0..255) and Omniglot ink counts take a quarter of the memory as ``uint8``; every batch
is converted on the fly, ``float32 = stored * scale``, so the trainer sees the same tensors a
:class:`~softorder.tasks.TensorTasks` of floats would give.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from softorder.tasks import Batch, TaskArrays, TensorTasks


class CompactTensorTasks(TensorTasks):
    """A :class:`TensorTasks` whose inputs are ``uint8`` tensors, returned as ``float32 * scale``.

    Args:
        tasks: the tasks; every split's inputs must be ``torch.uint8``.
        scale: the factor from stored integers to float inputs (1/255 for 8-bit pixels).
    """

    def __init__(self, tasks: Sequence[TaskArrays], scale: float) -> None:
        for t in tasks:
            for split, (x, _) in t.splits.items():
                if x.dtype != torch.uint8:
                    raise TypeError(f"task {t.spec.name!r}, {split}: inputs must be uint8, got {x.dtype}")
        super().__init__(tasks)
        self.scale = float(scale)

    def _to_float(self, x: Tensor) -> Tensor:
        return x.to(torch.float32).mul_(self.scale)

    def _convert(self, batch: Batch) -> Batch:
        assert isinstance(batch.inputs, dict)
        return Batch({k: self._to_float(v) for k, v in batch.inputs.items()}, batch.targets)

    def train_batch(self, iteration: int, batch_size: int, seed: int) -> Batch:
        return self._convert(super().train_batch(iteration, batch_size, seed))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        for batch in super().eval_batches(split, batch_size):
            yield self._convert(batch)

    def subset(self, names: Sequence[str]) -> CompactTensorTasks:
        missing = [n for n in names if n not in self.tasks]
        if missing:
            raise KeyError(f"unknown tasks {missing}; tasks are {self.task_names}")
        return CompactTensorTasks([self.tasks[n] for n in names], self.scale)

    def split_arrays(self, name: str, split: str) -> tuple[Tensor, Tensor]:
        """All rows of one task's split as ``(float32 inputs, labels)``."""
        x, y = self.tasks[name].splits[split]
        return self._to_float(x), y
