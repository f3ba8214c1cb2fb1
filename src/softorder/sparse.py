"""Sparse and hardened soft orders (beyond the paper; its Sec. 6 points this way).

Soft ordering evaluates every shared layer at every depth: L times parallel ordering's arithmetic,
in training and at inference. Two ways out:

- :class:`TopKSoftOrdering` evaluates, for each task and depth, only the k layers of highest weight,
  mixed with their weights renormalised over those k. Each layer runs only on the rows of the tasks
  that selected it (rows grouped by layer, one call per layer; a training batch of Dense layers,
  in equal runs of one task each, as one batched product over the runs), so a step costs about
  k / L of dense soft ordering's layer work; rows given to every task run the first depth once. In training the
  k layers are drawn without replacement in proportion to the softmax weights (Gumbel top-k), so
  every layer stays reachable, and the gradient reaches all of S through a straight-through term:
  the mixing weights' values are the renormalised ones, their gradient is the full softmax's.
  The alternative rule, ``gating="noisy"``, is noisy top-k gating (Shazeer et al., 2017): learned
  Gaussian noise on S, the top k of the noisy scores, and a term that balances the layers' total
  weight over the tasks at each depth (:meth:`TopKSoftOrdering.auxiliary_loss`).
- :func:`harden` turns a trained soft ordering into a core that applies only each task's top-k
  layers per depth; k = 1 gives a hard per-task order (a :class:`~softorder.orderings.HardOrdering`)
  at parallel ordering's cost.

Soft orders can also be made to end hard by lowering ``SoftOrdering.temperature`` during training
(:func:`temperature_schedule`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from softorder.orderings import HardOrdering, SoftOrdering, _per_row, apply_by_group


GATINGS = ("gumbel", "noisy")


class TopKSoftOrdering(SoftOrdering):
    """Soft ordering over the k highest-weighted layers per (task, depth); k = L is Eq. 7 itself.

    ``forward(h, task)``: h (N, C, ...), task (N,) -> (N, C, ...'). In training (with ``sample``)
    the k layers are drawn by the ``gating`` rule: "gumbel" (Gumbel top-k, straight-through
    weights) or "noisy" (noisy top-k gating); in evaluation, and with ``sample=False``, they are
    the k largest of S. ``balance`` weighs the balancing term (default 0.1 with noisy gating, as
    Shazeer et al.'s importance term, else 0). The identity layer and sigmoid gates are not offered.
    """

    def __init__(self, layers: Sequence[nn.Module], num_tasks: int, *, k: int, depth: int | None = None,
                 dropout: float = 0.0, temperature: float = 1.0, sample: bool = True,
                 gating: str = "gumbel", balance: float | None = None) -> None:
        super().__init__(layers, num_tasks, depth=depth, dropout=dropout, temperature=temperature)
        if not 1 <= int(k) <= self.num_layers:
            raise ValueError(f"k must be between 1 and the {self.num_layers} layers, got {k}")
        if gating not in GATINGS:
            raise ValueError(f"unknown gating {gating!r}; expected one of {list(GATINGS)}")
        if gating == "noisy" and int(k) < 2:
            raise ValueError("noisy top-k gating needs k >= 2: with one layer kept its weight is 1, so the "
                             "task losses give S no gradient; use gating='gumbel' for k = 1")
        self.k, self.sample, self.gating = int(k), bool(sample), gating
        self.balance = float(balance if balance is not None else (0.1 if gating == "noisy" else 0.0))
        if self.balance < 0:
            raise ValueError(f"balance must be at least 0, got {balance}")
        if gating == "noisy":  # softplus of these is the noise's standard deviation per (task, layer, depth)
            self.noise_logits = nn.Parameter(torch.zeros_like(self.logits))
        self._bank = None  # the layers run on the rows that selected them, not as one bank
        self._gates: Tensor | None = None  # (num_tasks, L, depth): the latest training selection's weights

    def selection(self) -> tuple[Tensor, Tensor]:
        """The layers each task uses at each depth, (num_tasks, k, depth), and their weights, the
        softmax renormalised over them (values), with the full softmax's gradient."""
        scores = self.logits / self.temperature
        drawn = self.training and self.sample
        if self.gating == "noisy":  # the gradient is that of the softmax over the kept noisy scores
            if drawn:
                scores = scores + torch.randn_like(scores) * F.softplus(self.noise_logits)
            chosen = scores.detach().topk(self.k, dim=1).indices
            weights = torch.softmax(scores.gather(1, chosen), dim=1)
        else:
            if drawn:
                uniform = torch.rand_like(scores).clamp_(1e-12, 1.0)
                chosen = (scores.detach() - torch.log(-torch.log(uniform))).topk(self.k, dim=1).indices
            else:
                chosen = scores.detach().topk(self.k, dim=1).indices
            full = torch.softmax(scores, dim=1).gather(1, chosen)  # (T, k, depth)
            renormalised = torch.softmax(scores.gather(1, chosen), dim=1)
            weights = renormalised.detach() + full - full.detach()
        if self.training and self.balance > 0:
            self._gates = torch.zeros_like(scores).scatter(1, chosen, weights)
        return chosen, weights

    def auxiliary_loss(self) -> Tensor | None:
        """The balancing term of the latest training forward, then forgotten: ``balance`` times the
        sum over depths of the squared coefficient of variation, over the L layers, of each layer's
        total weight over the tasks (Shazeer et al.'s importance loss). None when there is none."""
        gates, self._gates = self._gates, None
        if gates is None:
            return None
        importance = gates.sum(dim=0)  # (L, depth)
        return self.balance * (importance.var(dim=0, unbiased=False) / importance.mean(dim=0).pow(2)).sum()

    def forward(self, h: Tensor, task: Tensor) -> Tensor:
        self._check_task(h, task)
        chosen, weights = self.selection()
        return self._depths(self._widen(h), task, chosen, weights, first=0)

    def forward_shared(self, z: Tensor, tasks: Tensor) -> Tensor:
        """Rows given to every task: at the first depth each chosen layer runs once on the B rows
        (dropout and weights then per task), as dense soft ordering's forward_shared does."""
        tasks = self._check_shared(z, tasks)
        every_chosen, every_weight = self.selection()
        chosen, weights = every_chosen[tasks], every_weight[tasks]  # (T, k, depth)
        x = self._widen(z)
        outs = {j: self._apply_checked(j, x) for j in chosen[:, :, 0].unique().tolist()}
        per_row = lambda w: w.repeat_interleave(z.shape[0], dim=0)  # noqa: E731  (T, ...) -> (T * B, ...)
        h = sum(_per_row(per_row(weights[:, i, 0]), self._drop(torch.cat([outs[j] for j in chosen[:, i, 0].tolist()])))
                for i in range(self.k))
        return self._depths(h, tasks.repeat_interleave(z.shape[0]), every_chosen, every_weight, first=1)

    def _depths(self, h: Tensor, task: Tensor, chosen: Tensor, weights: Tensor, first: int) -> Tensor:
        """Depths ``first``.. of rows h (N, ...) of tasks ``task`` (N,); chosen and weights
        (num_tasks, k, depth). Rows in equal runs of one task each go by runs, others by layer."""
        runs = self._task_runs(task)
        by = task if runs is None else runs
        chosen, weights = chosen[by], weights[by]  # (N or runs, k, depth)
        depth = self._sparse_depth if runs is None else self._sparse_depth_runs
        for d in range(first, self.depth):
            h = depth(self._widen(h), chosen[:, :, d], weights[:, :, d])
        return h

    def _sparse_depth(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        """x (N, C, ...), chosen and weights (N, k) -> (N, C', ...): every row through each of the k
        layers it chose, all (row, slot) pairs grouped by layer (one call per layer), weighted, summed."""
        pairs = x if self.k == 1 else x.repeat(self.k, *([1] * (x.dim() - 1)))  # slot-major: row r of slot i at i * N + r
        y = _per_row(weights.t().flatten(), apply_by_group(pairs, chosen.t().flatten(), self.num_layers, self._layer_then_dropout))
        return y if self.k == 1 else y.view(self.k, x.shape[0], *y.shape[1:]).sum(dim=0)

    def _sparse_depth_runs(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        """x (G * n, C) in G equal runs of one task each, chosen and weights (G, k) per run ->
        (G * n, C): per slot one batched product over the runs, weighted per run (dropout after the
        weighting: both scale elementwise, so the order does not matter), summed."""
        out = None
        for i in range(self.k):
            y = self._drop(self._through_runs(x, chosen[:, i], scale=weights[:, i]))
            out = y if out is None else out + y
        return out

    def _layer_then_dropout(self, j: int, rows: Tensor) -> Tensor:
        return self._drop(self._apply_checked(j, rows))


def harden(core: SoftOrdering, k: int = 1) -> HardOrdering | TopKSoftOrdering:
    """A core that applies only each task's ``k`` highest-weighted layers per depth of a trained
    soft ordering, sharing its layers (not copies). k = 1: a :class:`HardOrdering` with order
    ``argmax_j S[t, j, k]``, at parallel ordering's cost; k > 1: a :class:`TopKSoftOrdering` with
    the same S that picks its k largest (no sampling). With one-hot weights the outputs equal the
    soft core's. For inference or further training."""
    if not isinstance(core, SoftOrdering) or core.gate != "softmax" or core.identity_layer:
        raise ValueError("harden needs a SoftOrdering with softmax gates and no identity layer")
    if k == 1:
        order = core.logits.detach().argmax(dim=1)  # (num_tasks, depth)
        return HardOrdering(list(core.layers), core.num_tasks, order, core.dropout)
    hard = TopKSoftOrdering(list(core.layers), core.num_tasks, k=k, depth=core.depth, dropout=core.dropout,
                            temperature=core.temperature, sample=False)
    with torch.no_grad():
        hard.logits.copy_(core.logits)
    return hard


def temperature_schedule(core: SoftOrdering, start: float, end: float, iterations: int) -> Callable[[dict[str, Any]], None]:
    """An ``on_eval`` callback for :func:`softorder.fit` that moves the core's temperature
    geometrically from ``start`` to ``end`` over ``iterations`` (it takes effect at each evaluation)."""
    if start <= 0 or end <= 0 or iterations < 1:
        raise ValueError("temperatures must be positive and iterations at least 1")
    core.temperature = start

    def update(record: dict[str, Any]) -> None:
        done = min(1.0, record["iteration"] / iterations)
        core.temperature = start * (end / start) ** done
        record["temperature"] = core.temperature

    return update
