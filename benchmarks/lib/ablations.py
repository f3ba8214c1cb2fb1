"""Each optimization of the library switched off on its own, to measure what it gives.

Each context manager patches one piece of the current library back to the plain way of doing it,
for the duration of a call; the models and their parameters stay the same. Patching is done by
wrapping each candidate's step, so candidates with and without a patch interleave in one run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

import softorder._kernels.bank as bank_mod
import softorder._kernels.masks as masks_mod
import softorder._kernels.mixing as mixing_mod
import softorder.layers as layers_mod
import softorder.orderings as orderings_mod
from softorder.orderings import HardOrdering, OrderedCore, SoftOrdering


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _bernoulli_mask(shape, p, *, device=None, dtype=None) -> Tensor:
    return torch.empty(tuple(shape), device=device, dtype=dtype or torch.get_default_dtype()).bernoulli_(1.0 - p)


def bernoulli_masks() -> contextlib.AbstractContextManager:
    """Dropout masks from bernoulli_ (as torch.nn.functional.dropout draws them on the CPU)."""
    stack = contextlib.ExitStack()
    stack.enter_context(_patched(mixing_mod, "keep_mask", _bernoulli_mask))  # soft ordering's fused path
    stack.enter_context(_patched(masks_mod, "keep_mask", _bernoulli_mask))  # dropout() everywhere else
    return stack


def _bytes_only(keep: float) -> int | None:
    scaled = keep * 256
    return 8 if 0.0 < scaled < 256 and scaled == int(scaled) else None


def byte_masks() -> contextlib.AbstractContextManager:
    """One random byte per mask entry for any 1 - p that is a multiple of 1/256 (the masks before
    the bit table: p = 0.5 reads 8 bits per entry instead of 1)."""
    return _patched(masks_mod, "_bits_per_entry", _bytes_only)


def _bmm_mix(outs: Tensor, w: Tensor) -> Tensor:
    outs = outs.expand(*w.shape[:-1], *outs.shape[-2:])
    y = torch.bmm(w.reshape(-1, 1, w.shape[-1]), outs.reshape(-1, *outs.shape[-2:]))
    return y.view(*w.shape[:-1], outs.shape[-1])


def bmm_mixing() -> contextlib.AbstractContextManager:
    """Mixing as a batched product (N x (1 x L) @ (L x F)), where the unfused path mixes."""
    return _patched(mixing_mod, "mix", _bmm_mix)


@contextlib.contextmanager
def unfused_depth(core: SoftOrdering) -> Iterator[None]:
    """No _ReluDropoutMix node: ReLU (before pooling), dropout and mixing as separate autograd ops."""
    bank = core._bank
    if bank is None:
        yield
        return
    old = bank.activation
    bank.activation = f"{old} (unfused)"  # SoftOrdering._depth takes its generic path
    try:
        yield
    finally:
        bank.activation = old


def repeated_rows() -> contextlib.AbstractContextManager:
    """Rows given to every task copied T times before the core (no forward_shared first depth)."""
    stack = contextlib.ExitStack()
    stack.enter_context(_patched(SoftOrdering, "forward_shared", OrderedCore.forward_shared))
    stack.enter_context(_patched(HardOrdering, "forward_shared", OrderedCore.forward_shared))
    return stack


def _gathering_forward_stacked(self, x: Tensor, task_ids) -> Tensor:
    idx = torch.as_tensor(list(task_ids), device=self.weight.device)
    return self._phi(torch.baddbmm(self.bias[idx], x.reshape(x.shape[0], x.shape[1], -1), self.weight[idx]))


def gathered_task_weights() -> contextlib.AbstractContextManager:
    """TaskDense gathers weight[idx] (a copy, and an index_put in backward) even for all tasks."""
    return _patched(layers_mod.TaskDense, "forward_stacked", _gathering_forward_stacked)


def _plain_dropout(h: Tensor, p: float, training: bool) -> Tensor:
    return F.dropout(h, p, training)


def plain_dropout() -> contextlib.AbstractContextManager:
    """torch.nn.functional.dropout in the hard orderings (parallel, permuted, single-task)."""
    return _patched(orderings_mod, "dropout", _plain_dropout)


def conv_then_pool_first_depth() -> contextlib.AbstractContextManager:
    """No narrow_conv_max_pool: a 1-channel input goes through conv2d (its weights' first channel) and pooling."""
    return _patched(bank_mod, "NARROW_CONTRACTION", 0)


def wrap(step: Callable[[], None], *managers: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], None]:
    """``step`` run inside fresh instances of the given context managers."""

    def run() -> None:
        with contextlib.ExitStack() as stack:
            for m in managers:
                stack.enter_context(m())
            step()

    return run
