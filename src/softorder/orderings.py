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
(:mod:`softorder._kernels`). ``forward_shared`` runs rows given to every task (a shared encoder)
through the first depth once. ``docs/performance.md`` has the measurements behind these choices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softorder._kernels import dense_by_runs, dropout, fused_soft_ordering, grouped_forward, grouped_to_rows, rows_to_grouped, scale_runs
from softorder._kernels.mixing import check_identity_shape
from softorder.layers import ConvPool, Dense, fused_bank, layer_width, pad_channels

Gate = Literal["softmax", "sigmoid"]


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
        if len(widths) > 1 and None not in widths:
            raise ValueError(f"the shared layers must all have one width, so that any can follow any other; got widths {sorted(widths)}")
        self.width = widths.pop() if len(widths) == 1 else None  # None: user modules
        self._layers_read_narrow = all(isinstance(l, (Dense, ConvPool)) for l in layers)
        self._bank = fused_bank(layers)  # the library's layers of one configuration, else None
        self._dense_bank = self._bank is not None and self._bank.kind == "dense"

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def mixing(self) -> Tensor:
        """Weight of layer j at depth k for task t: (num_tasks, L, depth)."""
        raise NotImplementedError

    @classmethod
    def from_options(cls, make_layers: Callable[[], Sequence[nn.Module]], num_tasks: int, *, dropout: float = 0.0,
                     identity_layer: bool = False, gate: Gate = "softmax", seed: int = 0) -> OrderedCore:
        """A core of this ordering from the options every ordering is built from by name
        (:func:`softorder.make_core`). ``gate`` concerns soft ordering only; the identity layer, which
        is soft ordering's, is refused elsewhere."""
        if identity_layer:
            raise ValueError(f"the identity layer is part of soft ordering, not of {cls.__name__}")
        return cls(make_layers(), num_tasks, dropout=dropout)  # type: ignore[call-arg]

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
        return pad_channels(h, self.width)

    def _drop(self, h: Tensor) -> Tensor:
        """Dropout after a shared layer (the paper's regularisation of every ordering)."""
        return dropout(h, self.dropout, self.training) if self.dropout > 0 else h

    def _widen(self, h: Tensor) -> Tensor:
        """A narrow input as the layers will read it: as it is for the library's layers (which read
        missing channels as zeros without making them), zero-padded for any other module."""
        return h if self._layers_read_narrow else self._pad(h)

    def _task_runs(self, task: Tensor) -> Tensor | None:
        """The task of each run when the rows form equal runs of one task each (a training batch),
        long enough to use :meth:`_through_runs`; else None (the rows are then routed by layer)."""
        if not self._dense_bank or task.numel() == 0:
            return None
        changes = (task[1:] != task[:-1]).nonzero()
        run = int(changes[0]) + 1 if changes.numel() else task.numel()
        # each run gets a copy of its layer's weights (C x C) for the batched product: worth it once
        # a run has at least C rows (measured: docs/extensions.md, "Step time")
        if run < self.width or task.numel() % run:
            return None
        starts = task[::run]
        return starts if bool((task.view(-1, run) == starts.unsqueeze(1)).all()) else None

    def _through_runs(self, h: Tensor, layer_of_run: Tensor, scale: Tensor | None = None) -> Tensor:
        """Rows in G equal runs (G * n, C); run g through layer ``layer_of_run[g]``, times
        ``scale[g]`` (G,) when given: one batched product over the runs, no rows moved. -> (G * n, C)."""
        if not bool((layer_of_run == layer_of_run[0]).all()):
            return dense_by_runs(self.layers, layer_of_run, h, scale)
        y = self._apply_checked(int(layer_of_run[0]), h)
        return y if scale is None else scale_runs(y, scale)

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
        temperature: float = 1.0,
    ) -> None:
        super().__init__(layers, num_tasks, depth, dropout)
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"gate must be 'softmax' or 'sigmoid', got {gate!r}")
        self.gate, self.identity_layer = gate, bool(identity_layer)
        # softmax(S / temperature); lowering it hardens the orders. A buffer, so that checkpoints keep
        # it (an annealed run resumes at its temperature); read through a float copy.
        self.register_buffer("softmax_temperature", torch.tensor(1.0))
        self.temperature = float(temperature)
        self.register_load_state_dict_pre_hook(_default_temperature)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_temperature())
        rows = self.num_layers + int(self.identity_layer)
        self.logits = nn.Parameter(torch.zeros(self.num_tasks, rows, self.depth))

    @classmethod
    def from_options(cls, make_layers: Callable[[], Sequence[nn.Module]], num_tasks: int, *, dropout: float = 0.0,
                     identity_layer: bool = False, gate: Gate = "softmax", seed: int = 0) -> OrderedCore:
        return cls(make_layers(), num_tasks, identity_layer=identity_layer, gate=gate, dropout=dropout)

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"the temperature must be positive, got {value}")
        self._temperature = float(value)
        self.softmax_temperature.fill_(self._temperature)

    def _sync_temperature(self) -> None:
        self._temperature = float(self.softmax_temperature)

    def mixing(self) -> Tensor:
        """(num_tasks, L [+1], depth) weights: softmax over dim 1 (of S / temperature), or
        elementwise sigmoid."""
        if self.gate == "softmax":
            return torch.softmax(self.logits / self._temperature, dim=1)
        return torch.sigmoid(self.logits)

    def forward(self, h: Tensor, task: Tensor) -> Tensor:
        """Eq. 7, depth by depth: each row becomes the sum over the shared layers of its task's weight
        for the layer times the layer's output (dropout applied), plus the identity layer's term."""
        self._check_task(h, task)
        weights = self.mixing()[task]  # (N, L [+1], depth): each row's task's weights
        p = self.dropout if self.training else 0.0
        if self._bank is not None:  # the library's layers: the fused path, equal to the loop below
            return fused_soft_ordering(self._bank, h, weights.unsqueeze(0), dropout=p, identity=self._pad if self.identity_layer else None)
        for k in range(self.depth):
            x = self._pad(h)
            outs = [dropout(self._apply_checked(j, x), p, self.training) for j in range(self.num_layers)]
            h = sum(_per_row(weights[:, j, k], y) for j, y in enumerate(outs))
            if self.identity_layer:
                check_identity_shape(x.shape[1:], outs[0].shape[1:])
                h = h + _per_row(weights[:, self.num_layers, k], x)
        return h

    def forward_shared(self, z: Tensor, tasks: Tensor) -> Tensor:
        if self._bank is None:
            return super().forward_shared(z, tasks)
        tasks = self._check_shared(z, tasks)
        weights = self.mixing()[tasks].unsqueeze(1).expand(-1, z.shape[0], -1, -1)  # (T, B, L [+1], depth)
        p = self.dropout if self.training else 0.0  # the first depth runs once on the B rows
        return fused_soft_ordering(self._bank, z, weights, dropout=p, identity=self._pad if self.identity_layer else None)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, depth={self.depth}, gate={self.gate!r}, "
            f"identity_layer={self.identity_layer}, dropout={self.dropout}"
        )


def _default_temperature(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """State dicts written before the temperature was kept hold none: they were trained at 1."""
    state_dict.setdefault(prefix + "softmax_temperature", torch.tensor(1.0))


def apply_by_group(h: Tensor, group: Tensor, num_groups: int, fn: Callable[[int, Tensor], Tensor]) -> Tensor:
    """``fn(g, rows)`` on the rows of each group g (group (N,) of indices below num_groups), results
    put back in the rows' order: one call per group present, never one per row."""
    perm, inverse, counts = sort_by_group(group, num_groups)
    sizes = counts.tolist()
    out = torch.cat([fn(g, rows) for g, rows in enumerate(permute_rows(h, perm, inverse).split(sizes)) if sizes[g] > 0])
    return permute_rows(out, inverse, perm)


class _PermuteRows(torch.autograd.Function):
    """Rows in a permuted order, forward and backward both gathers (measured: docs/extensions.md)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return _gather_rows(x, perm)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return _gather_rows(grad, inverse), None, None


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[index] along rows: index_select (4x faster than indexing on the CPU) for contiguous x;
    indexing otherwise, which keeps a channels-last layout."""
    return x.index_select(0, index) if x.is_contiguous() else x[index]


def permute_rows(x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:
    """x (N, ...) with its rows in the order ``perm``, a permutation of N with inverse ``inverse``;
    the gradient flows back through the inverse gather (no scatter-add)."""
    return _PermuteRows.apply(x, perm, inverse)


def sort_by_group(group: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """The permutation that sorts rows by group (stable), its inverse (for :func:`permute_rows`),
    and the rows per group (num_groups,)."""
    perm = torch.argsort(group, stable=True)
    inverse = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))
    return perm, inverse, torch.bincount(group, minlength=num_groups)


def pad_groups(rows: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor | None]:
    """Group-major rows (N, ...) of groups of ``sizes`` rows as equal groups: group i's rows at
    [i * n, i * n + size_i) with zero rows after them, n the largest size; and where each row went
    (None when the groups were equal already)."""
    per_group = int(sizes.max())
    if not bool((sizes != per_group).any()):
        return rows, None
    offsets = torch.repeat_interleave(torch.arange(len(sizes), device=rows.device) * per_group, sizes)
    slot = offsets + torch.arange(rows.shape[0], device=rows.device) - torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
    return rows.new_zeros(len(sizes) * per_group, *rows.shape[1:]).index_copy(0, slot, rows), slot


def _per_row(w: Tensor, y: Tensor) -> Tensor:
    """Row n of y (N, ...) scaled by w[n]."""
    return w.view(-1, *([1] * (y.dim() - 1))) * y


class HardOrdering(OrderedCore):
    """A fixed layer per task and depth, ``order[t, k]``; each row goes through exactly one layer.

    Rows are grouped by the layer they use at each depth (a loop over layers, never over tasks), so
    the cost is that of a plain network of the same depth. A training batch of the library's Dense
    layers, whose rows come in equal runs of one task each, runs instead as one batched product per
    depth over the runs, each with its task's layer, so no rows are moved.
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
        """Eq. 2 / Eq. 3: at depth k every row goes through its task's layer ``order[t, k]``."""
        self._check_task(h, task)
        return self._through(self._widen(h), task, first_depth=0)

    def forward_shared(self, z: Tensor, tasks: Tensor) -> Tensor:
        tasks = self._check_shared(z, tasks)
        first = self.order[tasks, 0]  # (T,): each task's layer at depth 0, run once per distinct layer
        outs = {j: self._apply_checked(j, self._widen(z)) for j in first.unique().tolist()}
        h = self._drop(torch.cat([outs[j] for j in first.tolist()]))  # (T * B, ...), task-major
        return self._through(h, tasks.repeat_interleave(z.shape[0]), first_depth=1)

    def _through(self, h: Tensor, task: Tensor, first_depth: int) -> Tensor:
        """Depths ``first_depth``.. : row n through its task's layer ``order[task[n], k]``, then dropout."""
        same_order = bool((self.order == self.order[0]).all())  # parallel ordering: one product per depth
        runs = None if same_order else self._task_runs(task)
        route = self.order[task] if runs is None else self.order[runs]  # (N or runs, depth)
        for k in range(first_depth, self.depth):
            h = self._drop(self._route(h, route[:, k]) if runs is None else self._through_runs(h, route[:, k]))
        return h

    def _route(self, h: Tensor, layer_of_row: Tensor) -> Tensor:
        """Apply layer ``layer_of_row[n]`` to row n of h, one call per layer used (measured faster
        than one batched product over the layers' padded groups: docs/extensions.md)."""
        if layer_of_row.numel() == 0 or bool((layer_of_row == layer_of_row[0]).all()):
            return self._apply_checked(int(layer_of_row[0]) if layer_of_row.numel() else 0, h)
        return apply_by_group(h, layer_of_row, self.num_layers, lambda j, rows: self._apply_checked(j, rows))


class ParallelOrdering(HardOrdering):
    """Parallel ordering (paper Eq. 2): every task applies layer k at depth k, k = 1..L."""

    def __init__(self, layers: Sequence[nn.Module], num_tasks: int, *, dropout: float = 0.0) -> None:
        order = torch.arange(len(layers)).expand(num_tasks, len(layers)).clone()
        super().__init__(layers, num_tasks, order, dropout)


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

    @classmethod
    def from_options(cls, make_layers: Callable[[], Sequence[nn.Module]], num_tasks: int, *, dropout: float = 0.0,
                     identity_layer: bool = False, gate: Gate = "softmax", seed: int = 0) -> OrderedCore:
        if identity_layer:
            raise ValueError("the identity layer is part of soft ordering, not of PermutedOrdering")
        return cls(make_layers(), num_tasks, seed=seed, dropout=dropout)


class SingleTaskCores(OrderedCore):
    """Single-task baseline: each task its own copy of the layers, in parallel order.

    ``make_layers()`` is called once per task; ``task_layers[t]`` holds task t's copy, and ``layers``
    is task 0's (registered once, under ``task_layers``). With the library's layers all tasks
    run at once, one batched product or grouped convolution per depth
    (:func:`~softorder.layers.grouped_forward`; tasks with fewer rows than the largest are padded
    with zero rows); other modules run one task's rows at a time.
    """

    def __init__(self, make_layers: Callable[[], Sequence[nn.Module]], num_tasks: int, *, dropout: float = 0.0) -> None:
        copies = [nn.ModuleList(make_layers()) for _ in range(num_tasks)]
        super().__init__(list(copies[0]), num_tasks, None, dropout)
        del self._modules["layers"]  # task 0's copy lives in task_layers; see the property below
        self.task_layers = nn.ModuleList(copies)
        self._register_load_state_dict_pre_hook(_drop_duplicate_layer_keys)
        self._grouped = all(fused_bank([c[k] for c in copies]) is not None for k in range(self.num_layers))

    @classmethod
    def from_options(cls, make_layers: Callable[[], Sequence[nn.Module]], num_tasks: int, *, dropout: float = 0.0,
                     identity_layer: bool = False, gate: Gate = "softmax", seed: int = 0) -> OrderedCore:
        if identity_layer:
            raise ValueError("the identity layer is part of soft ordering, not of SingleTaskCores")
        return cls(make_layers, num_tasks, dropout=dropout)

    @property
    def layers(self) -> nn.ModuleList:  # type: ignore[override]
        return self.task_layers[0]

    def mixing(self) -> Tensor:
        eye = torch.eye(self.num_layers)
        return eye.expand(self.num_tasks, self.num_layers, self.num_layers).clone()

    def forward(self, h: Tensor, task: Tensor) -> Tensor:
        """Eq. 2 without sharing: each task's rows through its own copy of the layers."""
        self._check_task(h, task)
        if not self._grouped:  # other modules: one task's rows at a time
            return apply_by_group(self._pad(h), task, self.num_tasks, self._through_copy)
        perm, inverse, counts = sort_by_group(task, self.num_tasks)
        return permute_rows(self._through_copies(permute_rows(h, perm, inverse), counts), inverse, perm)

    def _through_copy(self, t: int, rows: Tensor) -> Tensor:
        for layer in self.task_layers[t]:
            rows = self._drop(layer(rows))
        return rows

    def _through_copies(self, rows: Tensor, counts: Tensor) -> Tensor:
        """Task-major rows (N, ...), ``counts`` (num_tasks,) per task -> (N, ...), every depth one
        batched product or grouped convolution over the tasks present."""
        present = counts.nonzero().flatten()
        rows, slot = pad_groups(rows, counts[present])
        ids = present.tolist()
        x = rows_to_grouped(rows, len(ids))  # kept in the grouped layout from depth to depth
        for k in range(self.num_layers):
            x = self._drop(grouped_forward([self.task_layers[t][k] for t in ids], x))
        rows = grouped_to_rows(x, len(ids))
        return rows if slot is None else rows[slot]


def _drop_duplicate_layer_keys(state_dict: dict, prefix: str, *args: object) -> None:
    """Checkpoints written before task 0's layers were registered once also hold them as ``layers.*``."""
    for key in [k for k in state_dict if k.startswith(prefix + "layers.")]:
        del state_dict[key]


# The registry of orderings: name -> core class, used by build_model, the command line and the presets.
ORDERINGS: dict[str, type[OrderedCore]] = {
    "single": SingleTaskCores,
    "parallel": ParallelOrdering,
    "permuted": PermutedOrdering,
    "soft": SoftOrdering,
}


def ordering_class(name: str) -> type[OrderedCore]:
    """The core class registered as ``name``; an unknown name is refused with the choices."""
    try:
        return ORDERINGS[name]
    except KeyError:
        raise ValueError(f"unknown ordering {name!r}; expected one of {list(ORDERINGS)}") from None
