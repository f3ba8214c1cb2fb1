"""Banks of the library's layers run as one operation: all L layers of a depth on the same rows
(soft ordering), and each task's own copy of a layer on its rows (the single-task baseline).

Layers are read through their public face: ``kind`` ('dense' or 'conv'), ``weight``, ``bias``,
``phi`` (the activation), ``activation``, and for conv layers ``channels``, ``kernel_size``, ``pool``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from softorder._kernels.conv import NARROW_CONTRACTION, narrow_conv_max_pool

POOL_COMMUTES = ("relu", "identity")  # max_pool(phi(x)) == phi(max_pool(x)), in value and gradient
SCALE_COMMUTES = ("relu", "identity")  # phi(s * x) == s * phi(x) for every s >= 0


def activate(y: Tensor, layer: Any) -> Tensor:
    """A conv layer's activation on its (pooled, where pooling commutes with it) convolution
    output, then the pooling where it had to wait for the activation."""
    y = layer.phi(y)
    return y if layer.activation in POOL_COMMUTES or layer.pool == 1 else F.max_pool2d(y, layer.pool)


def conv_pool(h: Tensor, weight: Tensor, bias: Tensor | None, pool: int, *, pool_first: bool, row_groups: int = 1) -> Tensor:
    """``conv2d`` (same padding) then ``max_pool2d``, before the activation when ``pool_first``.

    h (N, c, H, W); weight (O, c, k, k), or (G, O, c, k, k) for ``row_groups`` G equal groups of
    rows, each with its own weights (one grouped convolution). Returns (N, O, H', W') channels-last;
    when ``pool_first`` is False the pooling is left to the caller (H' = H). Inputs with few channels
    (Omniglot's images) take :func:`~softorder._kernels.conv.narrow_conv_max_pool`.
    """
    c, k = h.shape[1], weight.shape[-1]
    if takes_narrow_kernel(c, k, pool, pool_first):
        return narrow_conv_max_pool(h, weight, bias, pool, row_groups)
    h = h.contiguous(memory_format=torch.channels_last)
    if row_groups > 1:  # rows of group g through weight[g]: groups side by side as channels
        n = h.shape[0] // row_groups
        stacked = h.view(row_groups, n, *h.shape[1:]).transpose(0, 1).reshape(n, row_groups * c, *h.shape[2:])
        y = F.conv2d(stacked.contiguous(memory_format=torch.channels_last), weight.flatten(0, 1),
                     None if bias is None else bias.flatten(), padding=k // 2, groups=row_groups)
        y = y.view(n, row_groups, -1, *y.shape[2:]).transpose(0, 1).flatten(0, 1)
        y = y.contiguous(memory_format=torch.channels_last)
    else:
        y = F.conv2d(h, weight, bias, padding=k // 2)
    return F.max_pool2d(y, pool) if pool_first and pool > 1 else y


def takes_narrow_kernel(channels: int, kernel_size: int, pool: int, pool_first: bool) -> bool:
    """Whether a convolution reading ``channels`` channels, pooled before its activation, runs as
    :func:`~softorder._kernels.conv.narrow_conv_max_pool` (measured faster for few channels)."""
    return pool_first and pool > 1 and channels * kernel_size**2 <= NARROW_CONTRACTION


class FusedBank:
    """All L layers of a bank applied to the same rows at once, reading the layers' own parameters.

    Outputs are laid out (N, S, L, C): S positions (1 for dense layers, H' * W' for conv layers, whose
    outputs are channels-last), L layers, C channels. ``h`` may have fewer channels (dim 1) than
    the layers expect; the missing channels are then read as zeros without being materialised (the
    paper's zero-padding of Omniglot inputs to 53 channels, A.3). Not an ``nn.Module``: it holds no
    parameters of its own, only references to the modules it was built from.
    """

    def __init__(self, layers: Sequence[Any]) -> None:
        self.layers = list(layers)
        self.kind: str = self.layers[0].kind  # 'dense' or 'conv'
        self.activation: str = self.layers[0].activation  # type: ignore[assignment]

    def weights(self) -> tuple[Tensor, Tensor | None]:
        """Concatenated weights (L * C, C, ...) and biases (L * C,), differentiable w.r.t. the layers."""
        weight = torch.cat([l.weight for l in self.layers], dim=0)
        bias = torch.cat([l.bias for l in self.layers], dim=0) if self.layers[0].bias is not None else None
        return weight, bias

    def __call__(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, tuple[int, ...]]:
        """Every layer's output: (N, S, L, C), and the shape of one layer's output per row."""
        first = self.layers[0]
        y, shape = self._linear_part(h, weight, bias, pool_first=first.activation in POOL_COMMUTES)
        if self.kind == "conv":
            y = activate(y, first)
            shape = (first.channels, *y.shape[2:])
        else:
            y = first.phi(y)
        return self._positions_layers_channels(y), shape

    def pre_activation(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, tuple[int, ...]]:
        """The layers' outputs before their activation: (N, S, L, C), and one layer's output shape.

        For conv layers the max-pooling comes first: it commutes with ReLU (and the identity),
        ``pool(relu(x)) == relu(pool(x))`` in value and in gradient, and pooling first runs the
        activation on a quarter of the elements. Only valid for those activations.
        """
        y, shape = self._linear_part(h, weight, bias, pool_first=True)
        return self._positions_layers_channels(y), shape

    def _linear_part(self, h: Tensor, weight: Tensor, bias: Tensor | None, pool_first: bool) -> tuple[Tensor, tuple[int, ...]]:
        weight = weight[:, : h.shape[1]]
        if self.kind == "dense":
            return F.linear(h, weight, bias), (weight.shape[0] // len(self.layers),)  # (N, L*C)
        first = self.layers[0]
        y = conv_pool(h, weight, bias, first.pool, pool_first=pool_first)  # (N, L*C, H', W') channels-last
        return y, (first.channels, *y.shape[2:])

    def _positions_layers_channels(self, y: Tensor) -> Tensor:
        """(N, L*C) or channels-last (N, L*C, H', W') -> (N, S, L, C), a view where the layout allows."""
        num_layers = len(self.layers)
        if y.dim() == 2:
            return y.view(y.shape[0], 1, num_layers, -1)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, num_layers, y.shape[1] // num_layers)


def grouped_forward(copies: Sequence[Any], x: Tensor) -> Tensor:
    """Copies of one library layer (one configuration, e.g. each task's own), copy g on group g's
    rows, all at once: one batched product (Dense) or one grouped convolution (ConvPool).

    ``x`` is in the grouped layout of :func:`rows_to_grouped` and so is the result. Narrow inputs
    read as zero-padded, as the layers themselves do."""
    first, groups = copies[0], len(copies)
    if first.kind == "dense":  # x (G * n, c) -> (G * n, C)
        weight = torch.stack([l.weight[:, : x.shape[1]] for l in copies]).transpose(1, 2)  # (G, c, C)
        rows = x.view(groups, -1, x.shape[1])
        bias = None if first.bias is None else torch.stack([l.bias for l in copies]).unsqueeze(1)
        y = torch.bmm(rows, weight) if bias is None else torch.baddbmm(bias, rows, weight)
        return first.phi(y).view(x.shape[0], -1)
    c = x.shape[1] // groups
    weight = torch.stack([l.weight[:, :c] for l in copies])  # (G, C, c, k, k)
    bias = torch.stack([l.bias for l in copies])  # (G, C)
    pool_first = first.activation in POOL_COMMUTES
    if takes_narrow_kernel(c, first.kernel_size, first.pool, pool_first):
        y = rows_to_grouped(narrow_conv_max_pool(grouped_to_rows(x, groups), weight, bias, first.pool, groups), groups)
    else:
        y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight.flatten(0, 1), bias.flatten(),
                     padding=first.kernel_size // 2, groups=groups)
        y = F.max_pool2d(y, first.pool) if pool_first and first.pool > 1 else y
    return activate(y, first)


def dense_by_runs(layers: Sequence[Any], layer_of_run: Tensor, x: Tensor, scale: Tensor | None = None) -> Tensor:
    """Library Dense layers on rows in G equal runs, run g through ``layers[layer_of_run[g]]``,
    its output times ``scale[g]`` (G,) when given: x (G * n, c) -> (G * n, C), one batched product
    and no rows moved. Narrow inputs read as zero-padded. A scale of at least 0 (top-k's mixing
    weights) is folded into the run's weights and bias where the activation allows it
    (``relu(s z) == s relu(z)``), so it costs nothing per row.

    Each run's weights are picked by a product with a one-hot (G, L') matrix over the L' layers the
    runs use, whose backward sums the runs' weight gradients per layer in one product (indexing's
    backward would be a scatter-add); layers no run uses get no gradient, as when routed. The
    weights are stacked transposed, (c, C) per run, so the batched product reads plain row-major
    matrices. Pays where a run has at least as many rows as the layer has outputs (one depth,
    measured: docs/extensions.md, "Step time").
    """
    used, local = torch.unique(layer_of_run, return_inverse=True)
    chosen = [layers[j] for j in used.tolist()]
    first, runs, c = chosen[0], layer_of_run.shape[0], x.shape[1]
    pick = F.one_hot(local, len(chosen)).to(x.dtype)  # (G, L')
    folded = scale is not None and first.activation in SCALE_COMMUTES
    if folded:
        pick = pick * scale.unsqueeze(1)
    weight = torch.stack([l.weight[:, :c].t() for l in chosen])  # (L', c, C)
    per_run = (pick @ weight.flatten(1)).view(runs, c, -1)  # (G, c, C)
    rows = x.view(runs, -1, c)
    if first.bias is None:
        y = torch.bmm(rows, per_run)
    else:
        y = torch.baddbmm((pick @ torch.stack([l.bias for l in chosen])).unsqueeze(1), rows, per_run)
    y = first.phi(y).view(x.shape[0], -1)
    return scale_runs(y, scale) if scale is not None and not folded else y


def scale_runs(y: Tensor, scale: Tensor) -> Tensor:
    """Rows y (G * n, C) in G equal runs, run g times ``scale[g]`` (G,)."""
    return (scale.view(-1, 1, 1) * y.view(scale.shape[0], -1, y.shape[1])).view_as(y)


def rows_to_grouped(h: Tensor, groups: int) -> Tensor:
    """Rows of G equal groups, (G * n, C, H, W), as one image of G * C channels per position in a
    group, (n, G * C, H, W) channels-last: what a grouped convolution reads and writes. Rows of
    dense layers, (G * n, C), stay as they are."""
    if h.dim() == 2:
        return h
    _, c, height, width = h.shape
    n = h.shape[0] // groups
    sites = h.permute(0, 2, 3, 1).reshape(groups, n, height, width, c)  # a view for channels-last rows
    return sites.permute(1, 2, 3, 0, 4).reshape(n, height, width, groups * c).permute(0, 3, 1, 2)


def grouped_to_rows(x: Tensor, groups: int) -> Tensor:
    """The inverse of :func:`rows_to_grouped`: (n, G * C, H, W) -> (G * n, C, H, W) channels-last."""
    if x.dim() == 2:
        return x
    n, gc, height, width = x.shape
    c = gc // groups
    sites = x.permute(0, 2, 3, 1).reshape(n, height, width, groups, c)
    return sites.permute(3, 0, 1, 2, 4).reshape(groups * n, height, width, c).permute(0, 3, 1, 2)
