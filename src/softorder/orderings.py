"""The ordered core: how a bank of shared layers is applied at every depth, per task.

All three orderings of the paper take rows of many tasks at once, ``h`` of shape (N, ...) with a
task index per row ``task`` of shape (N,), and differ only in the per-task mixing of layers at each
depth, ``mixing()`` of shape (num_tasks, L, depth):

* :class:`ParallelOrdering`, Eq. 2: layer k at depth k for every task (one-hot mixing).
* :class:`PermutedOrdering`, Eq. 3: layer rho_t(k) at depth k, a fixed permutation per task.
* :class:`SoftOrdering`, Eq. 7: a learned softmax (or sigmoid) weighting of all L layers.

:class:`SingleTaskCores` is the single-task baseline: every task its own copy of the layers, applied
in parallel order. No ordering loops over tasks in Python; soft ordering runs all L layers of a
depth as one product over all rows when the layers are the library's :class:`~softorder.Dense` or
:class:`~softorder.ConvPool`, and with ReLU layers it applies the activation, dropout and the mixing
of a depth in one autograd node that keeps a single tensor for the backward pass
(:class:`_ReluDropoutMix`). ``forward_shared`` runs rows given to every task (a shared encoder)
through the first depth once. ``docs/performance.md`` has the measurements behind these choices.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from softorder.layers import ConvPool, Dense, fused_bank, grouped_forward, grouped_to_rows, layer_width, rows_to_grouped

Gate = Literal["softmax", "sigmoid"]


# --- dropout and mixing kernels ------------------------------------------------------------------


def keep_mask(shape: Sequence[int], p: float, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Dropout's keep mask: a tensor of ``shape`` whose entries are 1 with probability ``1 - p``, else 0.

    On the CPU, when ``1 - p`` is a multiple of 2**-b for b in 1, 2, 4 or 8 (p = 0.5: b = 1;
    p = 0.25 or 0.75: b = 2; any multiple of 1/256: b = 8), each entry reads its own b random bits
    of 32-bit draws of the global generator and is kept when they, read as an integer, are below
    2**b (1 - p): the same distribution as ``bernoulli_(1 - p)``, exactly, at a fraction of its cost
    (which is one double-precision draw per entry). With b < 8 every random byte is turned into
    8 / b entries at once by a lookup in a (256, 8 / b) table. Any other ``p``, and other devices,
    use ``bernoulli_`` as ``torch.nn.functional.dropout`` does.
    """
    shape = tuple(int(s) for s in shape)
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    keep = 1.0 - float(p)
    bits = _bits_per_entry(keep) if device.type == "cpu" else None
    numel = math.prod(shape)
    if bits is None:
        return torch.empty(shape, device=device, dtype=dtype).bernoulli_(keep)
    per_byte = 8 // bits
    num_bytes = -(-numel // per_byte)
    words = torch.randint(-(2**31), 2**31, (-(-num_bytes // 4),), dtype=torch.int32, device=device)
    random_bytes = words.view(torch.uint8)[:num_bytes]
    if bits == 8:
        out = torch.empty(shape, device=device, dtype=dtype)
        torch.lt(random_bytes.view(shape), int(keep * 256), out=out)
        return out
    flat = torch.empty(num_bytes * per_byte, device=device, dtype=dtype)
    torch.index_select(_keep_table(bits, keep, dtype), 0, random_bytes.int(), out=flat.view(num_bytes, per_byte))
    return flat[:numel].view(shape)


def _bits_per_entry(keep: float) -> int | None:
    """The fewest random bits b in (1, 2, 4, 8) with ``keep * 2**b`` a whole number, or None."""
    for bits in (1, 2, 4, 8):
        scaled = keep * 2**bits
        if 0.0 < scaled < 2**bits and scaled == int(scaled):
            return bits
    return None


@functools.cache
def _keep_table(bits: int, keep: float, dtype: torch.dtype) -> Tensor:
    """(256, 8 // bits): entry [v, i] is 1 when the i-th group of ``bits`` bits of byte v is below
    ``keep * 2**bits``, else 0."""
    values = torch.arange(256).unsqueeze(1)
    shifts = torch.arange(0, 8, bits)
    groups = (values >> shifts) & (2**bits - 1)  # (256, 8 // bits)
    return (groups < int(keep * 2**bits)).to(dtype)


def dropout(h: Tensor, p: float, training: bool) -> Tensor:
    """``torch.nn.functional.dropout`` (entries zeroed with probability p, the rest scaled by
    1 / (1 - p)), drawing its mask with :func:`keep_mask`."""
    if not training or p == 0.0:
        return h
    if h.dim() == 4 and not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last):
        n, c, height, width = h.shape  # a mask in the same memory layout keeps the product channels-last
        mask = keep_mask((n, height, width, c), p, device=h.device, dtype=h.dtype).permute(0, 3, 1, 2)
    else:
        mask = keep_mask(h.shape, p, device=h.device, dtype=h.dtype)
    return h * mask.div_(1.0 - p)


def mix(outs: Tensor, w: Tensor) -> Tensor:
    """Weighted sum over layers: outs (..., L, C), w (..., L) -> (..., C).

    An elementwise product and a sum, not a batched product of (1 x L) by (L x F) matrices: on the
    CPU the latter (and its backward) runs as many tiny matrix products (see docs/performance.md).
    """
    return (outs * w.unsqueeze(-1)).sum(-2)


class _ReluDropoutMix(torch.autograd.Function):
    """One depth of soft ordering after the layers' products, as one autograd node.

    ``pre`` (R, S, L, C): the L layers' pre-activations for R input rows at S positions (1 for dense
    layers, H' * W' for channels-last convolutions); ``w`` (G, R, L): mixing weights (already scaled
    by 1 / (1 - p) under dropout); ``mask`` (G, R, S, L, C) of 0/1 or None.
    Returns ``out[g, r, s] = sum_l w[g, r, l] * relu(pre[r, s, l]) * mask[g, r, s, l]``, (G, R, S, C):
    G groups of rows share the same R inputs (G > 1 only for rows given to every task,
    :meth:`forward_shared`).

    The backward needs only ``act = relu(pre) * mask`` (written into the mask's storage): ReLU's
    and dropout's gradient masks are both ``act > 0`` (a dropped entry is 0, a kept one is positive
    exactly where ReLU passes gradient), so neither the mask nor the ReLU output is kept apart.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, w: Tensor, mask: Tensor | None) -> Tensor:  # type: ignore[override]
        if mask is None:
            act = torch.relu(pre).unsqueeze(0)  # (1, R, S, L, C)
        else:
            act = mask.mul_(pre).relu_()  # (G, R, S, L, C), in place: the mask is ours
        weight = w.unsqueeze(2).unsqueeze(-1)  # (G, R, 1, L, 1)
        out = act[:, :, :, 0] * weight[:, :, :, 0]  # (G, R, S, C)
        for j in range(1, act.shape[3]):
            out.addcmul_(act[:, :, :, j], weight[:, :, :, j])
        ctx.save_for_backward(act, w)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        act, w = ctx.saved_tensors
        grad_pre = grad_w = buf = None
        g = grad.unsqueeze(3)  # (G, R, S, 1, C)
        if ctx.needs_input_grad[1]:
            buf = torch.mul(act, g)  # (G, R, S, L, C)
            grad_w = buf.sum((2, 4))  # (G, R, L)
        if ctx.needs_input_grad[0]:
            weight = w.unsqueeze(2).unsqueeze(-1)  # (G, R, 1, L, 1)
            grad_act = torch.mul(g, weight, out=buf) if buf is not None else g * weight  # reuses buf
            torch.ops.aten.threshold_backward.grad_input(grad_act, act, 0, grad_input=grad_act)
            grad_pre = grad_act.sum(0) if grad_act.shape[0] > 1 else grad_act[0]
        return grad_pre, grad_w, None


class OrderedCore(nn.Module):
    """Base class: shared ``layers`` applied at ``depth`` depths, with dropout after each layer."""

    def __init__(self, layers: Sequence[nn.Module], num_tasks: int, depth: int | None, dropout: float) -> None:
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("an ordered core needs at least one layer")
        if not all(isinstance(l, nn.Module) for l in layers):
            raise TypeError("every layer must be a torch.nn.Module")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.layers = nn.ModuleList(layers)
        self.num_tasks = int(num_tasks)
        self.depth = len(layers) if depth is None else int(depth)
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")
        self.dropout = float(dropout)
        widths = {layer_width(l) for l in layers}
        self.width = widths.pop() if len(widths) == 1 else None  # None: user modules, or mixed widths
        self._layers_read_narrow = all(isinstance(l, (Dense, ConvPool)) for l in layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def mixing(self) -> Tensor:
        """Weight of layer j at depth k for task t: (num_tasks, L, depth)."""
        raise NotImplementedError

    def _check_task(self, h: Tensor, task: Tensor) -> None:
        if task.dim() != 1 or task.shape[0] != h.shape[0]:
            raise ValueError(f"task must have shape (N,) = ({h.shape[0]},), got {tuple(task.shape)}")
        if task.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"task must be an integer tensor, got {task.dtype}")
        if task.numel() and (int(task.min()) < 0 or int(task.max()) >= self.num_tasks):
            raise ValueError(f"task indices must be in [0, {self.num_tasks}), got [{int(task.min())}, {int(task.max())}]")

    def forward_shared(self, z: Tensor, tasks: Tensor) -> Tensor:
        """Rows given to every task: z (B, C, ...) and task indices tasks (T,) -> (T * B, C', ...).

        Equals ``forward(z.repeat(T, 1, ...), tasks.repeat_interleave(B))`` (rows task-major), dropout
        masks included; orderings that can, compute the first depth once on the B rows instead of
        T times (the shared encoder of the paper's CelebA model gives every task the same rows).
        """
        tasks = self._check_shared(z, tasks)
        h = z.repeat(tasks.shape[0], *([1] * (z.dim() - 1)))
        return self(h, tasks.repeat_interleave(z.shape[0]))

    def _check_shared(self, z: Tensor, tasks: Tensor) -> Tensor:
        tasks = torch.as_tensor(tasks, device=z.device)
        if z.dim() < 2:
            raise ValueError(f"z must have shape (B, C, ...), got {tuple(z.shape)}")
        self._check_task(tasks, tasks)
        return tasks

    def _pad(self, h: Tensor) -> Tensor:
        """Zero-pad dim 1 of a narrow input up to the layers' width."""
        if self.width is None or h.shape[1] >= self.width:
            return h
        return F.pad(h, [0, 0] * (h.dim() - 2) + [0, self.width - h.shape[1]])

    def _widen(self, h: Tensor) -> Tensor:
        """A narrow input as the layers will read it: as it is for the library's layers (which read
        missing channels as zeros without making them), zero-padded for any other module."""
        return h if self._layers_read_narrow else self._pad(h)

    def _apply_checked(self, j: int, h: Tensor) -> Tensor:
        """Layer j on h, checking it keeps the channel count so that layers can follow each other."""
        y = self.layers[j](h)
        channels = h.shape[1] if self.width is None else max(h.shape[1], self.width)  # narrow inputs widen
        if y.dim() != h.dim() or y.shape[0] != h.shape[0] or y.shape[1] != channels:
            raise ValueError(
                f"shared layer {j} ({type(self.layers[j]).__name__}) maps rows of shape {tuple(h.shape[1:])} "
                f"to {tuple(y.shape[1:])}: shared layers must keep the number of channels (dim 1)"
            )
        return y


class SoftOrdering(OrderedCore):
    """Soft ordering of shared layers (paper Eq. 7).

    At depth k every row of task t becomes ``sum_j mixing()[t, j, k] * dropout(layer_j(h))``, plus
    ``mixing()[t, L, k] * h`` with the identity layer. ``logits`` (num_tasks, L [+1], depth) is the
    paper's tensor S, initialised to equal values; ``gate`` turns it into weights with a softmax over
    layers (the paper's main method) or an independent sigmoid per entry (its Sec. 5).

    ``forward(h, task)``: h (N, C, ...), task (N,) -> (N, C, ...'). ``h`` may have fewer channels
    than the layers' width; the rest are read as zeros (Sec. 4.3), without being materialised when
    the layers are a fused library bank.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        num_tasks: int,
        *,
        depth: int | None = None,
        identity_layer: bool = False,
        gate: Gate = "softmax",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(layers, num_tasks, depth, dropout)
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"gate must be 'softmax' or 'sigmoid', got {gate!r}")
        self.gate, self.identity_layer = gate, bool(identity_layer)
        rows = self.num_layers + int(self.identity_layer)
        self.logits = nn.Parameter(torch.zeros(self.num_tasks, rows, self.depth))
        self._bank = fused_bank(self.layers)

    def mixing(self) -> Tensor:
        """(num_tasks, L [+1], depth) weights: softmax over dim 1, or elementwise sigmoid."""
        return torch.softmax(self.logits, dim=1) if self.gate == "softmax" else torch.sigmoid(self.logits)

    def forward(self, h: Tensor, task: Tensor) -> Tensor:
        self._check_task(h, task)
        return self._run(h, self.mixing()[task].unsqueeze(0))  # weights (1, N, L[+1], depth)

    def forward_shared(self, z: Tensor, tasks: Tensor) -> Tensor:
        tasks = self._check_shared(z, tasks)
        weights = self.mixing()[tasks].unsqueeze(1)  # (T, 1, L[+1], depth)
        return self._run(z, weights.expand(-1, z.shape[0], -1, -1))  # the first depth runs on B rows

    def _run(self, h: Tensor, weights: Tensor) -> Tensor:
        """h (R, C, ...) and weights (G, R, L[+1], depth) -> (G * R, ...): G groups of rows share the
        R input rows (G = 1, except for rows given to every task), each with its own weights."""
        fused = self._bank.weights() if self._bank is not None else None  # concatenated once per forward
        for k in range(self.depth):
            if k == 1:
                weights = weights.reshape(1, -1, *weights.shape[2:])  # (1, G * R, L[+1], depth)
            h = self._depth(k, h, weights[:, :, :, k], fused)
        return h

    def _depth(self, k: int, h: Tensor, w: Tensor, fused: tuple[Tensor, Tensor | None] | None) -> Tensor:
        """Depth k: h (R, C, ...), w (G, R, L[+1]) -> (G * R, C', ...).

        The layers' outputs are laid out (R, S, L, C): S positions, channels last, for a fused bank
        (convolutions then stay channels-last from depth to depth); one position holding every
        feature for other modules."""
        num_layers = self.num_layers
        groups, rows = w.shape[0], h.shape[0]
        drop = self.training and self.dropout > 0
        sites = fused is not None
        w_layers = w[:, :, :num_layers]
        if drop:
            w_layers = w_layers / (1.0 - self.dropout)  # dropout's scaling, moved onto the weights
        if sites and self._bank.activation == "relu":  # type: ignore[union-attr]
            pre, out_shape = self._bank.pre_activation(h, *fused)  # type: ignore[union-attr]  # (R, S, L, C)
            mask = keep_mask((groups, *pre.shape), self.dropout, device=pre.device, dtype=pre.dtype) if drop else None
            mixed = _ReluDropoutMix.apply(pre, w_layers, mask)  # (G, R, S, C)
        else:
            if sites:
                outs, out_shape = self._bank(h, *fused)  # type: ignore[misc]  # (R, S, L, C)
            else:
                hp = self._pad(h)
                outs = torch.stack([self._apply_checked(j, hp) for j in range(num_layers)], dim=1)  # (R, L, ...)
                out_shape = tuple(outs.shape[2:])
                outs = outs.flatten(2).unsqueeze(1)  # (R, 1, L, F)
            outs = outs.unsqueeze(0)
            if drop:
                mask = keep_mask((groups, *outs.shape[1:]), self.dropout, device=outs.device, dtype=outs.dtype)
                outs = outs * mask
            mixed = mix(outs, w_layers.unsqueeze(2))  # (G, R, S, C)
        if self.identity_layer:
            hp = self._pad(h)
            if tuple(hp.shape[1:]) != tuple(out_shape):
                raise ValueError(
                    f"the identity layer needs shared layers that keep the row shape; depth {k} maps "
                    f"{tuple(hp.shape[1:])} to {tuple(out_shape)}"
                )
            mixed = mixed + w[:, :, num_layers, None, None] * _to_sites(hp, sites)
        return _from_sites(mixed.flatten(0, 1), out_shape, sites)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, depth={self.depth}, gate={self.gate!r}, "
            f"identity_layer={self.identity_layer}, dropout={self.dropout}"
        )


def _to_sites(h: Tensor, channels_last: bool) -> Tensor:
    """Rows (R, C, *spatial) as (R, S, C) with channels last, or as (R, 1, F) with every feature."""
    if channels_last:
        return h.permute(0, *range(2, h.dim()), 1).reshape(h.shape[0], -1, h.shape[1])
    return h.reshape(h.shape[0], 1, -1)


def _from_sites(x: Tensor, shape: Sequence[int], channels_last: bool) -> Tensor:
    """The inverse of :func:`_to_sites`: x (M, S, C) -> rows (M, *shape), a view (channels-last
    memory for convolutions' outputs)."""
    if channels_last:
        spatial = len(shape) - 1
        return x.view(x.shape[0], *shape[1:], shape[0]).permute(0, spatial + 1, *range(1, spatial + 1))
    return x.view(x.shape[0], *shape)


class HardOrdering(OrderedCore):
    """A fixed layer per task and depth, ``order[t, k]``; each row goes through exactly one layer.

    Rows are grouped by the layer they use at each depth (a loop over layers, never over tasks), so
    the cost is that of a plain network of the same depth.
    """

    def __init__(self, layers: Sequence[nn.Module], num_tasks: int, order: Tensor, dropout: float) -> None:
        order = torch.as_tensor(order, dtype=torch.long)
        super().__init__(layers, num_tasks, order.shape[1] if order.dim() == 2 else None, dropout)
        if order.shape != (self.num_tasks, self.depth):
            raise ValueError(f"order must have shape (num_tasks, depth) = ({self.num_tasks}, {self.depth}), got {tuple(order.shape)}")
        if int(order.min()) < 0 or int(order.max()) >= self.num_layers:
            raise ValueError(f"order entries must be layer indices in [0, {self.num_layers})")
        self.register_buffer("order", order)

    def mixing(self) -> Tensor:
        """One-hot (num_tasks, L, depth): 1 where layer j is task t's layer at depth k."""
        return F.one_hot(self.order, self.num_layers).transpose(1, 2).to(torch.get_default_dtype())

    def forward(self, h: Tensor, task: Tensor) -> Tensor:
        self._check_task(h, task)
        h = self._widen(h)
        route = self.order[task]  # (N, depth)
        for k in range(self.depth):
            h = self._route(h, route[:, k])
            if self.dropout > 0:
                h = dropout(h, self.dropout, self.training)
        return h

    def forward_shared(self, z: Tensor, tasks: Tensor) -> Tensor:
        tasks = self._check_shared(z, tasks)
        first = self.order[tasks, 0]  # (T,): each task's layer at depth 0, run once per distinct layer
        outs = {j: self._apply_checked(j, self._widen(z)) for j in first.unique().tolist()}
        h = torch.cat([outs[j] for j in first.tolist()])  # (T * B, ...), task-major
        if self.dropout > 0:
            h = dropout(h, self.dropout, self.training)
        route = self.order[tasks.repeat_interleave(z.shape[0])]  # (T * B, depth)
        for k in range(1, self.depth):
            h = self._route(h, route[:, k])
            if self.dropout > 0:
                h = dropout(h, self.dropout, self.training)
        return h

    def _route(self, h: Tensor, layer_of_row: Tensor) -> Tensor:
        """Apply layer ``layer_of_row[n]`` to row n of h."""
        first = int(layer_of_row[0]) if layer_of_row.numel() else 0
        if layer_of_row.numel() == 0 or bool((layer_of_row == first).all()):
            return self._apply_checked(first, h)
        perm = torch.argsort(layer_of_row, stable=True)
        counts = torch.bincount(layer_of_row, minlength=self.num_layers).tolist()
        pieces = [
            self._apply_checked(j, rows)
            for j, rows in enumerate(h[perm].split(counts))
            if counts[j] > 0
        ]
        sorted_out = torch.cat(pieces)
        return torch.empty_like(sorted_out).index_copy(0, perm, sorted_out)


class ParallelOrdering(HardOrdering):
    """Parallel ordering (paper Eq. 2): every task applies layer k at depth k, k = 1..L."""

    def __init__(self, layers: Sequence[nn.Module], num_tasks: int, *, dropout: float = 0.0) -> None:
        order = torch.arange(len(layers)).expand(num_tasks, len(layers)).clone()
        super().__init__(layers, num_tasks, order, dropout)

    def forward(self, h: Tensor, task: Tensor) -> Tensor:
        self._check_task(h, task)
        h = self._widen(h)
        for k in range(self.depth):
            h = self._apply_checked(k, h)
            if self.dropout > 0:
                h = dropout(h, self.dropout, self.training)
        return h


class PermutedOrdering(HardOrdering):
    """Permuted ordering (paper Eq. 3): task t applies layer rho_t(k) at depth k.

    ``permutations`` (num_tasks, L) gives each task's order; by default one random permutation per
    task is drawn from ``seed`` before training and then fixed.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        num_tasks: int,
        *,
        permutations: Tensor | Sequence[Sequence[int]] | None = None,
        seed: int = 0,
        dropout: float = 0.0,
    ) -> None:
        num_layers = len(layers)
        if permutations is None:
            gen = torch.Generator().manual_seed(seed)
            order = torch.stack([torch.randperm(num_layers, generator=gen) for _ in range(num_tasks)])
        else:
            order = torch.as_tensor(permutations, dtype=torch.long)
            expected = torch.arange(num_layers)
            if order.dim() != 2 or order.shape != (num_tasks, num_layers):
                raise ValueError(f"permutations must have shape ({num_tasks}, {num_layers}), got {tuple(order.shape)}")
            for t, row in enumerate(order):
                if not torch.equal(row.sort().values, expected):
                    raise ValueError(f"permutations[{t}] = {row.tolist()} is not a permutation of 0..{num_layers - 1}")
        super().__init__(layers, num_tasks, order, dropout)


class SingleTaskCores(OrderedCore):
    """Single-task baseline: each task its own copy of the layers, in parallel order.

    ``make_layers()`` is called once per task. ``layers`` holds task 0's copy (so ``width`` and the
    layer count are known); ``task_layers[t]`` holds task t's. With the library's layers all tasks
    run at once, one batched product or grouped convolution per depth
    (:func:`~softorder.layers.grouped_forward`; tasks with fewer rows than the largest are padded
    with zero rows); other modules run one task's rows at a time.
    """

    def __init__(self, make_layers: Callable[[], Sequence[nn.Module]], num_tasks: int, *, dropout: float = 0.0) -> None:
        copies = [nn.ModuleList(make_layers()) for _ in range(num_tasks)]
        super().__init__(list(copies[0]), num_tasks, None, dropout)
        self.task_layers = nn.ModuleList(copies)
        self._grouped = all(fused_bank([c[k] for c in copies]) is not None for k in range(self.num_layers))

    def mixing(self) -> Tensor:
        eye = torch.eye(self.num_layers)
        return eye.expand(self.num_tasks, self.num_layers, self.num_layers).clone()

    def forward(self, h: Tensor, task: Tensor) -> Tensor:
        self._check_task(h, task)
        perm = torch.argsort(task, stable=True)
        counts = torch.bincount(task, minlength=self.num_tasks)
        present = counts.nonzero().flatten()
        rows = h[perm]  # task-major
        if self._grouped:
            out = self._forward_grouped(rows, counts, present)
        else:
            out = torch.cat([self._forward_task(t, part) for t, part in zip(present.tolist(), rows.split(counts[present].tolist()))])
        return torch.empty_like(out).index_copy(0, perm, out)

    def _forward_grouped(self, rows: Tensor, counts: Tensor, present: Tensor) -> Tensor:
        """Task-major rows (N, ...) of the tasks ``present`` (P,), ``counts`` rows each -> (N, ...)."""
        sizes = counts[present]
        per_task = int(sizes.max())
        ragged = bool((sizes != per_task).any())
        if ragged:  # place task i's rows at [i * per_task, i * per_task + count)
            offsets = torch.repeat_interleave(torch.arange(len(present), device=rows.device) * per_task, sizes)
            slot = offsets + torch.arange(rows.shape[0], device=rows.device) - torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
            rows = rows.new_zeros(len(present) * per_task, *rows.shape[1:]).index_copy(0, slot, rows)
        ids = present.tolist()
        x = rows_to_grouped(rows, len(ids))  # kept in the grouped layout from depth to depth
        for k in range(self.num_layers):
            x = grouped_forward([self.task_layers[t][k] for t in ids], x)
            if self.dropout > 0:
                x = dropout(x, self.dropout, self.training)
        rows = grouped_to_rows(x, len(ids))
        return rows[slot] if ragged else rows

    def _forward_task(self, t: int, rows: Tensor) -> Tensor:
        rows = self._pad(rows)
        for layer in self.task_layers[t]:
            rows = layer(rows)
            if self.dropout > 0:
                rows = dropout(rows, self.dropout, self.training)
        return rows


ORDERINGS = ("single", "parallel", "permuted", "soft")
