"""Shared layers, and the per-task encoders and decoders around the ordered core.

The shared layers of the paper are square: as many channels out as in, so any layer can follow any
other. :class:`Dense` and :class:`ConvPool` are the library's own kinds; when every layer of a core
is one of them with the same configuration, the orderings run all layers of a depth as one matrix
product or one convolution (see :func:`fused_bank`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softorder._conv_kernels import NARROW_CONTRACTION, narrow_conv_max_pool

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "identity": lambda x: x,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


class Dense(nn.Module):
    """A shared dense layer ``phi(W h + b)``: (N, width) -> (N, width).

    An input with fewer than ``width`` features reads as zero-padded (only the first columns of W
    are used)."""

    def __init__(self, width: int, activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        self.width, self.activation = int(width), activation
        self._phi = activation_fn(activation)
        self.linear = nn.Linear(width, width, bias=bias)

    def forward(self, h: Tensor) -> Tensor:
        return self._phi(F.linear(h, self.linear.weight[:, : h.shape[1]], self.linear.bias))

    def extra_repr(self) -> str:
        return f"width={self.width}, activation={self.activation!r}"


class ConvPool(nn.Module):
    """A shared conv layer: ``k x k`` convolution (same padding), activation, ``pool x pool`` max-pooling.

    (N, C, H, W) -> (N, C, H // pool, W // pool), in channels-last memory (the CPU's fastest
    convolutions; any input layout is accepted). An input with fewer than C channels reads as
    zero-padded without the padding being made (Sec. 4.3's 1-channel images). The paper's Omniglot
    core (Sec. 4.3, A.3) is four of these with C = 53, k = 3, pool = 2 and ReLU.
    """

    def __init__(self, channels: int, kernel_size: int = 3, pool: int = 2, activation: str = "relu") -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvPool needs an odd kernel_size for same padding, got {kernel_size}")
        self.channels, self.kernel_size, self.pool, self.activation = int(channels), kernel_size, pool, activation
        self._phi = activation_fn(activation)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, h: Tensor) -> Tensor:
        pool_first = self.activation in _POOL_COMMUTES
        y = self._phi(conv_pool(h, self.conv.weight[:, : h.shape[1]], self.conv.bias, self.pool, pool_first=pool_first))
        return y if pool_first or self.pool == 1 else F.max_pool2d(y, self.pool)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, pool={self.pool}"


_POOL_COMMUTES = ("relu", "identity")  # max_pool(phi(x)) == phi(max_pool(x)), in value and gradient


def conv_pool(h: Tensor, weight: Tensor, bias: Tensor | None, pool: int, *, pool_first: bool, row_groups: int = 1) -> Tensor:
    """``conv2d`` (same padding) then ``max_pool2d``, before the activation when ``pool_first``.

    h (N, c, H, W); weight (O, c, k, k), or (G, O, c, k, k) for ``row_groups`` G equal groups of
    rows, each with its own weights (one grouped convolution). Returns (N, O, H', W') channels-last;
    when ``pool_first`` is False the pooling is left to the caller (H' = H). Inputs with few channels
    (Omniglot's images) take :func:`softorder._conv_kernels.narrow_conv_max_pool`.
    """
    c, k = h.shape[1], weight.shape[-1]
    if pool_first and pool > 1 and c * k * k <= NARROW_CONTRACTION:
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


class FusedBank:
    """All L layers of a bank applied to the same rows at once, reading the layers' own parameters.

    Outputs are laid out (N, S, L, C): S positions (1 for Dense, H' * W' for ConvPool, whose
    outputs are channels-last), L layers, C channels. ``h`` may have fewer channels (dim 1) than
    the layers expect; the missing channels are then read as zeros without being materialised (the
    paper's zero-padding of Omniglot inputs to 53 channels, A.3). Not an ``nn.Module``: it holds no
    parameters of its own, only references to the modules it was built from.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.layers = list(layers)
        self.kind = type(self.layers[0])
        self.activation: str = self.layers[0].activation  # type: ignore[assignment]

    def weights(self) -> tuple[Tensor, Tensor | None]:
        """Concatenated weights (L * C, C, ...) and biases (L * C,), differentiable w.r.t. the layers."""
        mods = [l.linear if self.kind is Dense else l.conv for l in self.layers]  # type: ignore[union-attr]
        weight = torch.cat([m.weight for m in mods], dim=0)
        bias = torch.cat([m.bias for m in mods], dim=0) if mods[0].bias is not None else None
        return weight, bias

    def __call__(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, tuple[int, ...]]:
        """Every layer's output: (N, S, L, C), and the shape of one layer's output per row."""
        first = self.layers[0]
        y, shape = self._linear_part(h, weight, bias, pool_first=first.activation in _POOL_COMMUTES)
        y = first._phi(y)
        if self.kind is ConvPool and first.activation not in _POOL_COMMUTES and first.pool > 1:
            y = F.max_pool2d(y, first.pool)
            shape = (first.channels, *y.shape[2:])
        return self._positions_layers_channels(y), shape

    def pre_activation(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, tuple[int, ...]]:
        """The layers' outputs before their activation: (N, S, L, C), and one layer's output shape.

        For :class:`ConvPool` the max-pooling comes first: it commutes with ReLU (and the identity),
        ``pool(relu(x)) == relu(pool(x))`` in value and in gradient, and pooling first runs the
        activation on a quarter of the elements. Only valid for those activations.
        """
        y, shape = self._linear_part(h, weight, bias, pool_first=True)
        return self._positions_layers_channels(y), shape

    def _linear_part(self, h: Tensor, weight: Tensor, bias: Tensor | None, pool_first: bool) -> tuple[Tensor, tuple[int, ...]]:
        weight = weight[:, : h.shape[1]]
        if self.kind is Dense:
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


def grouped_forward(copies: Sequence[nn.Module], x: Tensor) -> Tensor:
    """Copies of one library layer (one configuration, e.g. each task's own), copy g on group g's
    rows, all at once: one batched product (Dense) or one grouped convolution (ConvPool).

    ``x`` is in the grouped layout of :func:`rows_to_grouped` and so is the result. Narrow inputs
    read as zero-padded, as the layers themselves do."""
    first, groups = copies[0], len(copies)
    if isinstance(first, Dense):  # x (G * n, c) -> (G * n, C)
        weight = torch.stack([l.linear.weight[:, : x.shape[1]] for l in copies]).transpose(1, 2)  # (G, c, C)
        rows = x.view(groups, -1, x.shape[1])
        bias = None if first.linear.bias is None else torch.stack([l.linear.bias for l in copies]).unsqueeze(1)
        y = torch.bmm(rows, weight) if bias is None else torch.baddbmm(bias, rows, weight)
        return first._phi(y).view(x.shape[0], -1)
    assert isinstance(first, ConvPool)
    c = x.shape[1] // groups
    weight = torch.stack([l.conv.weight[:, :c] for l in copies])  # (G, C, c, k, k)
    bias = torch.stack([l.conv.bias for l in copies])  # (G, C)
    pool_first = first.activation in _POOL_COMMUTES
    if pool_first and first.pool > 1 and c * first.kernel_size**2 <= NARROW_CONTRACTION:
        y = rows_to_grouped(narrow_conv_max_pool(grouped_to_rows(x, groups), weight, bias, first.pool, groups), groups)
    else:
        y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight.flatten(0, 1), bias.flatten(),
                     padding=first.kernel_size // 2, groups=groups)
        y = F.max_pool2d(y, first.pool) if pool_first and first.pool > 1 else y
    y = first._phi(y)
    return y if pool_first or first.pool == 1 else F.max_pool2d(y, first.pool)


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


def fused_bank(layers: Sequence[nn.Module]) -> FusedBank | None:
    """A :class:`FusedBank` if every layer is a library Dense / ConvPool of one configuration, else None."""
    first = layers[0]
    if type(first) is Dense:
        key = lambda l: (type(l), l.width, l.activation, l.linear.bias is None)  # noqa: E731
    elif type(first) is ConvPool:
        key = lambda l: (type(l), l.channels, l.kernel_size, l.pool, l.activation)  # noqa: E731
    else:
        return None
    if all(type(l) is type(first) and key(l) == key(first) for l in layers):
        return FusedBank(layers)
    return None


def layer_width(layer: nn.Module) -> int | None:
    """The channel count (dim 1) a library layer expects, or None for a user module."""
    if isinstance(layer, Dense):
        return layer.width
    if isinstance(layer, ConvPool):
        return layer.channels
    return None


# --- encoders and decoders ----------------------------------------------------------------------


class TaskDense(nn.Module):
    """One dense layer per task, stored as one (T, in, out) tensor.

    ``forward(xs)`` takes a list of T tensors (n_t, in) and returns a list of (n_t, out). When every
    task has the same number of rows (every training batch) all tasks run as one batched product.
    ``trainable=False`` gives the paper's frozen random encoders (Sec. 4.1): the weights are a buffer,
    never updated.
    """

    def __init__(
        self,
        num_tasks: int,
        in_features: int,
        out_features: int,
        activation: str = "identity",
        trainable: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_tasks, self.in_features, self.out_features = num_tasks, in_features, out_features
        self.activation, self._phi = activation, activation_fn(activation)
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation
        weight = (torch.rand(num_tasks, in_features, out_features, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(num_tasks, 1, out_features, generator=generator) * 2 - 1) * bound
        if trainable:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def forward(self, xs: Sequence[Tensor], task_ids: Sequence[int] | None = None) -> list[Tensor]:
        task_ids = list(range(len(xs))) if task_ids is None else list(task_ids)
        xs = [x.reshape(x.shape[0], -1) for x in xs]
        if len({x.shape[0] for x in xs}) == 1 and len(xs) > 1:
            return list(self.forward_stacked(torch.stack(xs), task_ids).unbind(0))
        return [self._phi(torch.addmm(self.bias[t, 0], x, self.weight[t])) for t, x in zip(task_ids, xs)]

    def forward_stacked(self, x: Tensor, task_ids: Sequence[int]) -> Tensor:
        """Rows already stacked by task: x (T, n, in) for tasks ``task_ids`` -> (T, n, out)."""
        task_ids = list(task_ids)
        if task_ids == list(range(self.num_tasks)):  # every task in order: no gathered copy of the weights
            weight, bias = self.weight, self.bias
        else:
            idx = torch.as_tensor(task_ids, device=self.weight.device)
            weight, bias = self.weight[idx], self.bias[idx]
        return self._phi(torch.baddbmm(bias, x.reshape(x.shape[0], x.shape[1], -1), weight))  # (T, n, out)

    def extra_repr(self) -> str:
        trainable = isinstance(self.weight, nn.Parameter)
        return f"tasks={self.num_tasks}, in={self.in_features}, out={self.out_features}, trainable={trainable}"


class ZeroPadChannels(nn.Module):
    """Identity encoder that zero-pads dim 1 to ``width`` channels: (N, c, ...) -> (N, width, ...).

    The model skips the padding when the core can read narrow inputs directly (same result, less work).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = int(width)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.width:
            raise ValueError(f"input has {x.shape[1]} channels, more than the core's {self.width}")
        pad = [0, 0] * (x.dim() - 2) + [0, self.width - x.shape[1]]
        return F.pad(x, pad)


class GlobalAveragePool(nn.Module):
    """Global average pooling decoder (paper Sec. 5): the mean over all features, (N, ...) -> (N, 1)."""

    def forward(self, h: Tensor) -> Tensor:
        return h.reshape(h.shape[0], -1).mean(dim=1, keepdim=True)


def dense_encoder(in_features: int, width: int, *, frozen: bool = False) -> nn.Module:
    """A dense ReLU encoder (N, *in_shape) -> (N, width); ``frozen`` fixes its random weights."""
    enc = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU())
    if frozen:
        enc.requires_grad_(False)
    return enc


def dense_decoder(in_features: int, num_outputs: int) -> nn.Module:
    """A dense decoder (N, ...) -> (N, num_outputs) logits; the task's kind supplies the activation."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_outputs))
