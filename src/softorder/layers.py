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

from softorder._kernels import POOL_COMMUTES, FusedBank, conv_pool
from softorder._kernels.bank import activate

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


def pad_channels(h: Tensor, width: int | None) -> Tensor:
    """Zero-pad dim 1 of ``h`` up to ``width`` channels (None, or no fewer channels: ``h`` itself)."""
    if width is None or h.shape[1] >= width:
        return h
    return F.pad(h, [0, 0] * (h.dim() - 2) + [0, width - h.shape[1]])


class Dense(nn.Module):
    """A shared dense layer ``phi(W h + b)``: (N, width) -> (N, width).

    An input with fewer than ``width`` features reads as zero-padded (only the first columns of W
    are used). ``kind``, ``weight``, ``bias`` and ``phi`` are what the fused banks read."""

    kind = "dense"

    def __init__(self, width: int, activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        if int(width) < 1:
            raise ValueError(f"Dense needs a width of at least 1, got {width}")
        self.width, self.activation = int(width), activation
        self.phi = activation_fn(activation)
        self.linear = nn.Linear(width, width, bias=bias)

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def forward(self, h: Tensor) -> Tensor:
        return self.phi(F.linear(h, self.weight[:, : h.shape[1]], self.bias))

    def extra_repr(self) -> str:
        return f"width={self.width}, activation={self.activation!r}"


class ConvPool(nn.Module):
    """A shared conv layer: ``k x k`` convolution (same padding), activation, ``pool x pool`` max-pooling.

    (N, C, H, W) -> (N, C, H // pool, W // pool), in channels-last memory (the CPU's fastest
    convolutions; any input layout is accepted). An input with fewer than C channels reads as
    zero-padded without the padding being made (Sec. 4.3's 1-channel images). The paper's Omniglot
    core (Sec. 4.3, A.3) is four of these with C = 53, k = 3, pool = 2 and ReLU.
    """

    kind = "conv"

    def __init__(self, channels: int, kernel_size: int = 3, pool: int = 2, activation: str = "relu") -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvPool needs an odd kernel_size for same padding, got {kernel_size}")
        if int(channels) < 1 or int(pool) < 1:
            raise ValueError(f"ConvPool needs at least 1 channel and a pool of at least 1, got channels={channels}, pool={pool}")
        self.channels, self.kernel_size, self.pool, self.activation = int(channels), kernel_size, pool, activation
        self.phi = activation_fn(activation)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    @property
    def weight(self) -> Tensor:
        return self.conv.weight

    @property
    def bias(self) -> Tensor | None:
        return self.conv.bias

    def forward(self, h: Tensor) -> Tensor:
        y = conv_pool(h, self.weight[:, : h.shape[1]], self.bias, self.pool, pool_first=self.activation in POOL_COMMUTES)
        return activate(y, self)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, pool={self.pool}"


def fused_bank(layers: Sequence[nn.Module]) -> FusedBank | None:
    """A :class:`~softorder._kernels.FusedBank` if every layer is a library Dense / ConvPool of one
    configuration, else None: the one way into the fast paths."""
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
        return pad_channels(x, self.width)


class GlobalAveragePool(nn.Module):
    """Global average pooling decoder (paper Sec. 5): the mean over all features, (N, ...) -> (N, 1)."""

    def forward(self, h: Tensor) -> Tensor:
        return h.reshape(h.shape[0], -1).mean(dim=1, keepdim=True)


def dense_decoder(in_features: int, num_outputs: int) -> nn.Module:
    """A dense decoder (N, ...) -> (N, num_outputs) logits; the task's kind supplies the activation."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_outputs))
