"""Plain reference implementations, written for clarity rather than speed.

Used by the tests to prove the fast paths equal, and by the benchmarks as the "typical
implementation" baseline: one task's rows at a time, one layer at a time (paper Eq. 2, 3, 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from softorder.layers import pad_channels


def soft_ordering_loop(
    layers: Sequence[nn.Module],
    mixing: Tensor,
    h: Tensor,
    task: Tensor,
    *,
    identity_layer: bool = False,
    width: int | None = None,
    dropout_masks: dict[tuple[int, int, int], Tensor] | None = None,
) -> Tensor:
    """Eq. 7 one task, one depth, one layer at a time: h (N, ...) and task (N,) -> (N, ...).

    ``mixing`` is (num_tasks, L [+1], depth). ``dropout_masks[(t, k, j)]``, if given, multiplies
    layer j's output for task t at depth k (already scaled by 1 / (1 - p)).
    """
    out = [None] * h.shape[0]
    num_layers, depth = len(layers), mixing.shape[2]
    for t in task.unique().tolist():
        rows = (task == t).nonzero().flatten()
        y = pad_channels(h[rows], width)
        for k in range(depth):
            total = 0
            for j in range(num_layers):
                layer_out = layers[j](y)
                if dropout_masks is not None:
                    layer_out = layer_out * dropout_masks[(t, k, j)]
                total = total + mixing[t, j, k] * layer_out
            if identity_layer:
                total = total + mixing[t, num_layers, k] * y
            y = total
        for i, r in enumerate(rows.tolist()):
            out[r] = y[i]
    return torch.stack(out)


def hard_ordering_loop(layers: Sequence[nn.Module], order: Tensor, h: Tensor, task: Tensor, width: int | None = None) -> Tensor:
    """Eq. 2 / Eq. 3 one task at a time: task t applies ``layers[order[t, k]]`` at depth k."""
    out = [None] * h.shape[0]
    for t in task.unique().tolist():
        rows = (task == t).nonzero().flatten()
        y = pad_channels(h[rows], width)
        for k in range(order.shape[1]):
            y = layers[int(order[t, k])](y)
        for i, r in enumerate(rows.tolist()):
            out[r] = y[i]
    return torch.stack(out)
