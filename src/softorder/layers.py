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
from torch.autograd.function import once_differentiable

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
    """A shared dense layer ``phi(W h + b)``: (N, width) -> (N, width)."""

    def __init__(self, width: int, activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        self.width, self.activation = int(width), activation
        self._phi = activation_fn(activation)
        self.linear = nn.Linear(width, width, bias=bias)

    def forward(self, h: Tensor) -> Tensor:
        return self._phi(self.linear(h))

    def extra_repr(self) -> str:
        return f"width={self.width}, activation={self.activation!r}"


class ConvPool(nn.Module):
    """A shared conv layer: ``k x k`` convolution (same padding), activation, ``pool x pool`` max-pooling.

    (N, C, H, W) -> (N, C, H // pool, W // pool). The paper's Omniglot core (Sec. 4.3, A.3) is four
    of these with C = 53, k = 3, pool = 2 and ReLU.
    """

    def __init__(self, channels: int, kernel_size: int = 3, pool: int = 2, activation: str = "relu") -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvPool needs an odd kernel_size for same padding, got {kernel_size}")
        self.channels, self.kernel_size, self.pool, self.activation = int(channels), kernel_size, pool, activation
        self._phi = activation_fn(activation)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, h: Tensor) -> Tensor:
        y = self._phi(self.conv(h))
        return F.max_pool2d(y, self.pool) if self.pool > 1 else y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, pool={self.pool}"


class FusedBank:
    """All L layers of a bank applied to the same rows at once, reading the layers' own parameters.

    ``__call__(h)`` gives (N, L, *out_shape). ``h`` may have fewer channels (dim 1) than the layers
    expect; the missing channels are then read as zeros without being materialised (the paper's
    zero-padding of Omniglot inputs to 53 channels, A.3). Not an ``nn.Module``: it holds no
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

    def __call__(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        first = self.layers[0]
        num_layers = len(self.layers)
        if h.shape[1] < weight.shape[1]:
            weight = weight[:, : h.shape[1]]
        if self.kind is Dense:
            y = first._phi(F.linear(h, weight, bias))  # (N, L*C)
            return y.view(h.shape[0], num_layers, -1)
        y = first._phi(F.conv2d(h, weight, bias, padding=first.kernel_size // 2))  # (N, L*C, H, W)
        if first.pool > 1:
            y = F.max_pool2d(y, first.pool)
        return y.view(h.shape[0], num_layers, first.channels, *y.shape[2:])


    def pre_activation(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, tuple[int, ...]]:
        """The layers' outputs before their activation: (N, L, F) and the shape of one layer's output.

        For :class:`ConvPool` the max-pooling comes first: it commutes with ReLU (and the identity),
        ``pool(relu(x)) == relu(pool(x))`` in value and in gradient, and pooling first runs the
        activation on a quarter of the elements. Only valid for those activations.
        """
        first = self.layers[0]
        num_layers = len(self.layers)
        if h.shape[1] < weight.shape[1]:
            weight = weight[:, : h.shape[1]]
        if self.kind is Dense:
            y = F.linear(h, weight, bias)  # (N, L*C)
            return y.view(h.shape[0], num_layers, -1), (y.shape[1] // num_layers,)
        if first.pool > 1 and h.shape[1] * first.kernel_size**2 <= _TINY_CONTRACTION:
            y = _TinyConvMaxPool.apply(h, weight, bias, first.pool)  # e.g. Omniglot's 1-channel images
        else:
            y = F.conv2d(h, weight, bias, padding=first.kernel_size // 2)  # (N, L*C, H, W)
            if first.pool > 1:
                y = F.max_pool2d(y, first.pool)
        return y.reshape(h.shape[0], num_layers, -1), (first.channels, *y.shape[2:])


_TINY_CONTRACTION = 32  # input channels x kernel area up to which _TinyConvMaxPool replaces conv + pool


def _tiny_parts(h: Tensor, k: int, pool: int, bias: bool) -> list[Tensor]:
    """The unfolded input at each offset of the pooling windows: pool * pool tensors (N, K [+1], H' * W'),
    K = channels * k * k, with a last row of ones standing for the bias when ``bias``."""
    n, c, height, width = h.shape
    hp, wp = height // pool, width // pool
    cols = F.unfold(h, k, padding=k // 2).view(n, c * k * k, height, width)
    parts = []
    for dy in range(pool):
        for dx in range(pool):
            part = torch.ones(n, c * k * k + int(bias), hp, wp, dtype=h.dtype, device=h.device)
            part[:, : c * k * k] = cols[:, :, dy : dy + pool * hp : pool, dx : dx + pool * wp : pool]
            parts.append(part.view(n, -1, hp * wp))
    return parts


class _TinyConvMaxPool(torch.autograd.Function):
    """``max_pool2d(conv2d(h, weight, bias, padding=k // 2), pool)`` for inputs with few channels.

    With a 1-channel image (Omniglot, read as zero-padded to the layers' width) the convolution is
    a product with a contraction of only k * k, which the convolution kernels run far below their
    usual speed, and its full-resolution output (then pooled) is the largest tensor of the model.
    Here the convolution is computed separately at each of the pool * pool offsets of the pooling
    windows, as one batched product of the weights (bias as an extra column) with the unfolded
    input, and reduced with a running maximum, so the full-resolution output never exists. The
    backward recomputes each offset's product (cheap: the contraction is tiny) and routes each
    window's gradient to its first maximum in row-major order, as ``max_pool2d`` does.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, pool: int) -> Tensor:  # type: ignore[override]
        n, _, height, width = h.shape
        o, k = weight.shape[0], weight.shape[-1]
        parts = _tiny_parts(h, k, pool, bias is not None)
        wm = weight.reshape(o, -1) if bias is None else torch.cat([weight.reshape(o, -1), bias.view(o, 1)], dim=1)
        wb = wm.expand(n, *wm.shape)  # (N, O, K [+1])
        best = torch.bmm(wb, parts[0])  # (N, O, P)
        buf = torch.empty_like(best)
        for part in parts[1:]:
            torch.maximum(best, torch.bmm(wb, part, out=buf), out=best)
        ctx.save_for_backward(wm, best, *parts)
        ctx.geometry = (tuple(h.shape), tuple(weight.shape), pool, bias is not None)
        return best.view(n, o, height // pool, width // pool)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:  # type: ignore[override]
        wm, best, *parts = ctx.saved_tensors
        (n, c, height, width), wshape, pool, has_bias = ctx.geometry
        k = wshape[-1]
        hp, wp = height // pool, width // pool
        g = grad.reshape(best.shape)
        wb = wm.expand(n, *wm.shape)
        need_h = ctx.needs_input_grad[0]
        need_wb = ctx.needs_input_grad[1] or (has_bias and ctx.needs_input_grad[2])
        grad_wm = torch.zeros_like(wm) if need_wb else None
        dcols = torch.zeros(n, c * k * k, height, width, dtype=grad.dtype, device=grad.device) if need_h else None
        z, sel, rest = torch.empty_like(best), torch.empty_like(best), None  # rest: 1 where no earlier offset won
        offsets = [(dy, dx) for dy in range(pool) for dx in range(pool)]
        for i, ((dy, dx), part) in enumerate(zip(offsets, parts)):
            if i < len(parts) - 1:
                torch.eq(torch.bmm(wb, part, out=z), best, out=sel)
                if rest is None:
                    rest = torch.rsub(sel, 1.0)
                else:
                    sel.mul_(rest)
                    rest.sub_(sel)
                gq = sel.mul_(g)  # (N, O, P): the gradient reaching offset i
            else:
                gq = rest.mul_(g) if rest is not None else g
            if need_wb:
                grad_wm += torch.bmm(gq, part.transpose(1, 2)).sum(0)
            if need_h:
                dpart = torch.matmul(wm[:, : c * k * k].t(), gq)  # (N, K, P)
                dcols[:, :, dy : dy + pool * hp : pool, dx : dx + pool * wp : pool] = dpart.view(n, -1, hp, wp)
        grad_h = F.fold(dcols.view(n, -1, height * width), (height, width), k, padding=k // 2) if need_h else None
        grad_w = grad_wm[:, : c * k * k].reshape(wshape) if need_wb and ctx.needs_input_grad[1] else None
        grad_b = grad_wm[:, -1].clone() if need_wb and has_bias and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None


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
