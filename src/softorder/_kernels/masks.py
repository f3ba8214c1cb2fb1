"""Dropout's keep masks from random bits, and dropout in any memory layout.

CPU ``bernoulli_(p)`` draws one double per entry; for the paper's p = 0.5 (and any p whose keep
probability is a multiple of 2**-b, b = 1, 2, 4, 8) each entry here reads only its own b random
bits, exactly the same Bernoulli distribution (docs/performance.md, "Dropout masks").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor


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
