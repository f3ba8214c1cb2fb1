"""Soft ordering's fused path: all L layers of a depth in one product, then ReLU, dropout and the
mixing of Eq. 7 in one autograd node (docs/performance.md, "What each optimization gave")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from softorder._kernels.masks import keep_mask


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


def _to_sites(h: Tensor) -> Tensor:
    """Rows (R, C, *spatial) as (R, S, C): S positions, channels last."""
    return h.permute(0, *range(2, h.dim()), 1).reshape(h.shape[0], -1, h.shape[1])


def _from_sites(x: Tensor, shape: Sequence[int]) -> Tensor:
    """The inverse of :func:`_to_sites`: x (M, S, C) -> rows (M, *shape), a view (channels-last
    memory for convolutions' outputs)."""
    spatial = len(shape) - 1
    return x.view(x.shape[0], *shape[1:], shape[0]).permute(0, spatial + 1, *range(1, spatial + 1))


def fused_soft_ordering(bank: Any, h: Tensor, weights: Tensor, *, dropout: float,
                        identity: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Eq. 7 with the layers of a :class:`~softorder._kernels.FusedBank`, for all rows at once.

    h (R, C, ...) and weights (G, R, L [+1], depth) -> (G * R, C', ...): G groups of rows share the
    R input rows (G = 1 except for rows given to every task), each with its own mixing weights.
    ``dropout``: the probability in training, 0 otherwise. ``identity``: with the identity layer,
    how a depth's input is zero-padded to the layers' width for its term; None without it.
    """
    fused = bank.weights()  # the layers' weights concatenated once per forward
    for k in range(weights.shape[3]):
        if k == 1:
            weights = weights.reshape(1, -1, *weights.shape[2:])  # (1, G * R, L [+1], depth)
        h = _fused_depth(bank, fused, h, weights[:, :, :, k], dropout, identity)
    return h


def _fused_depth(bank: Any, fused: tuple[Tensor, Tensor | None], h: Tensor, w: Tensor, p: float,
                 identity: Callable[[Tensor], Tensor] | None) -> Tensor:
    """One depth: h (R, C, ...), w (G, R, L [+1]) -> (G * R, C', ...). The layers' outputs are laid
    out (R, S, L, C), so convolutions stay channels-last from depth to depth."""
    num_layers, groups = len(bank.layers), w.shape[0]
    w_layers = w[:, :, :num_layers] / (1.0 - p) if p else w[:, :, :num_layers]  # dropout's scaling, on the weights
    if bank.activation == "relu":
        pre, out_shape = bank.pre_activation(h, *fused)  # (R, S, L, C)
        mask = keep_mask((groups, *pre.shape), p, device=pre.device, dtype=pre.dtype) if p else None
        mixed = _ReluDropoutMix.apply(pre, w_layers, mask)  # (G, R, S, C)
    else:
        outs, out_shape = bank(h, *fused)
        outs = outs.unsqueeze(0)  # (1, R, S, L, C)
        if p:
            outs = outs * keep_mask((groups, *outs.shape[1:]), p, device=outs.device, dtype=outs.dtype)
        mixed = mix(outs, w_layers.unsqueeze(2))  # (G, R, S, C)
    if identity is not None:
        hp = identity(h)
        check_identity_shape(hp.shape[1:], out_shape)
        mixed = mixed + w[:, :, num_layers, None, None] * _to_sites(hp)
    return _from_sites(mixed.flatten(0, 1), out_shape)


def check_identity_shape(row_shape: Sequence[int], out_shape: Sequence[int]) -> None:
    """The identity layer adds a depth's input to its layers' outputs: they must have one shape."""
    if tuple(row_shape) != tuple(out_shape):
        raise ValueError(f"the identity layer needs shared layers that keep the row shape; a depth maps {tuple(row_shape)} to {tuple(out_shape)}")
