"""Convolution + max-pooling for inputs with few channels, computed block by block in cache.

Omniglot's 1-channel images, read as zero-padded to the layers' 53 channels (paper Sec. 4.3), make
the first convolution a product with a contraction of only k * k = 9, which convolution kernels run
far below their usual speed, and its full-resolution output (then pooled 2x2) is the largest
tensor of the model. :func:`narrow_conv_max_pool` computes ``max_pool2d(conv2d(h, w, b), pool)``
instead as, for each of the pool * pool offsets of a pooling window, one matrix product of the
input's k x k patches at that offset with the weights, reduced with a running maximum. The rows are
cut into blocks that fit in the processor's cache, so the full-resolution output never exists and
the pooled output is written once, channels-last: (N, H', W', O) in memory, which is the layout the
following convolutions run fastest in on the CPU (docs/performance.md).

Rows may come in G equal groups with a weight each (``row_groups``): task t's rows through task t's
copy of a layer (the single-task baseline), still one batched product per block.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

NARROW_CONTRACTION = 32  # input channels x kernel area up to which the patch products replace conv2d
BLOCK_ELEMENTS = 1 << 16  # output entries per block (1 MiB of float32): the working set stays in cache


def narrow_conv_max_pool(h: Tensor, weight: Tensor, bias: Tensor | None, pool: int, row_groups: int = 1) -> Tensor:
    """``max_pool2d(conv2d(h, weight, bias, padding=k // 2), pool)``, channels-last.

    h (N, c, H, W); weight (O, c, k, k), or (G, O, c, k, k) with ``row_groups`` G > 1: rows
    [g * N / G, (g + 1) * N / G) use weight[g]; bias (O,), (G, O) or None.
    Returns (N, O, H // pool, W // pool) in channels-last memory. Ties in a pooling window route the
    gradient to the first maximum in row-major order, as ``max_pool2d`` does.
    """
    n, c, height, width = h.shape
    if n % row_groups:
        raise ValueError(f"{n} rows do not split into {row_groups} equal groups")
    out_channels, k = weight.shape[-4], weight.shape[-1]
    contraction = c * k * k
    w_t = weight.reshape(row_groups, out_channels, contraction).transpose(1, 2)  # (G, K, O)
    parts = _window_patches(h, k, pool)  # each (N * H' * W', K)
    if bias is not None:  # the bias as one more row of weights, read by a column of ones
        w_t = torch.cat([w_t, bias.reshape(-1, 1, out_channels).expand(row_groups, 1, out_channels)], dim=1)
        ones = torch.ones(parts[0].shape[0], 1, dtype=h.dtype, device=h.device)
        parts = [torch.cat([p, ones], dim=1) for p in parts]
    parts = [p.view(row_groups, -1, p.shape[1]) for p in parts]  # (G, M, K [+1])
    out = _PatchMaxProduct.apply(w_t, *parts)  # (G, M, O), M = N / G * H' * W'
    return out.view(n, height // pool, width // pool, out_channels).permute(0, 3, 1, 2)


def _window_patches(h: Tensor, k: int, pool: int) -> list[Tensor]:
    """For each offset (dy, dx) of a pooling window, in row-major order, the k x k patches of the
    zero-padded input centred on the pixels at that offset: pool * pool tensors (N * H' * W', c * k * k).
    Differentiable in h (the gradient of the input, where needed, is autograd's)."""
    n, c, height, width = h.shape
    hp, wp = height // pool, width // pool
    windows = F.pad(h, [k // 2] * 4).unfold(2, k, 1).unfold(3, k, 1)  # (N, c, H, W, k, k)
    parts = []
    for dy in range(pool):
        for dx in range(pool):
            at = windows[:, :, dy : dy + pool * hp : pool, dx : dx + pool * wp : pool]  # (N, c, H', W', k, k)
            parts.append(at.permute(0, 2, 3, 1, 4, 5).reshape(n * hp * wp, c * k * k))
    return parts


def _blocks(groups: int, rows: int, cols: int) -> Iterator[tuple[slice, slice]]:
    """(group slice, row slice) blocks of a (groups, rows, cols) tensor, about BLOCK_ELEMENTS each."""
    if rows * cols == 0:
        return
    if rows * cols >= BLOCK_ELEMENTS:
        step = max(1, BLOCK_ELEMENTS // cols)
        for g in range(groups):
            for m in range(0, rows, step):
                yield slice(g, g + 1), slice(m, m + step)
    else:
        step = max(1, BLOCK_ELEMENTS // (rows * cols))
        for g in range(0, groups, step):
            yield slice(g, g + step), slice(0, rows)


class _Scratch:
    """Block-sized buffers, reallocated only when a block's shape changes (the last one)."""

    def __init__(self, count: int) -> None:
        self.count, self.buffers = count, []

    def like(self, block: Tensor) -> list[Tensor]:
        if not self.buffers or self.buffers[0].shape != block.shape:
            self.buffers = [torch.empty_like(block) for _ in range(self.count)]
        return self.buffers


class _PatchMaxProduct(torch.autograd.Function):
    """``max_i(parts[i] @ w_t)``: parts (G, M, K) each, w_t (G, K, O) -> (G, M, O).

    The backward recomputes each block's products (cheap: the contraction is tiny, and they are
    computed by the same calls on buffers of the same shapes, so they are bitwise the forward's) and
    routes the gradient of each entry to the first offset that reached the maximum.
    """

    @staticmethod
    def forward(ctx, w_t: Tensor, *parts: Tensor) -> Tensor:  # type: ignore[override]
        groups, rows, _ = parts[0].shape
        out = torch.empty(groups, rows, w_t.shape[2], dtype=parts[0].dtype, device=parts[0].device)
        scratch = _Scratch(2)
        for gs, ms in _blocks(*out.shape):
            best = out[gs, ms]
            first, product = scratch.like(best)
            torch.bmm(parts[0][gs, ms], w_t[gs], out=first)
            for part in parts[1:]:
                torch.bmm(part[gs, ms], w_t[gs], out=product)
                torch.maximum(first, product, out=best)
                first = best
        ctx.save_for_backward(w_t, out, *parts)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        w_t, out, *parts = ctx.saved_tensors
        need_w, need_parts = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:])
        grad_w = torch.zeros_like(w_t) if need_w else None
        grad_parts = [torch.empty_like(p) for p in parts] if need_parts else [None] * len(parts)
        scratch = _Scratch(3)
        last = len(parts) - 1
        for gs, ms in _blocks(*out.shape):
            best = out[gs, ms]
            product, rest, routed = scratch.like(best)
            remaining = grad[gs, ms]  # the gradient not yet given to an earlier offset (any strides)
            for i, part in enumerate(parts):
                if i < last:
                    torch.bmm(part[gs, ms], w_t[gs], out=product)
                    torch.eq(product, best, out=product)
                    torch.mul(remaining, product, out=routed)
                    remaining = torch.sub(remaining, routed, out=rest)
                    given = routed
                else:
                    given = remaining
                if need_w:
                    grad_w[gs].baddbmm_(part[gs, ms].transpose(1, 2), given)
                if need_parts:
                    torch.bmm(given, w_t[gs].transpose(1, 2), out=grad_parts[i][gs, ms])
        return (grad_w, *grad_parts)
