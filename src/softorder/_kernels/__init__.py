"""The fast paths, in one private package; the rest of the library sees only what is named here.

- :mod:`.masks`: dropout keep masks from random bits (:func:`keep_mask`, :func:`dropout`).
- :mod:`.mixing`: soft ordering's fused depth, ReLU, dropout and mixing in one autograd node.
- :mod:`.conv`: convolution + max-pooling of few-channel inputs, block by block in cache.
- :mod:`.bank`: the library's layers run as one operation per depth (:class:`FusedBank`,
  :func:`grouped_forward`, :func:`dense_by_runs`).

Every fast path is tested equal to the plain code it replaces (tests/test_orderings.py).
"""

from softorder._kernels.bank import (
    POOL_COMMUTES,
    FusedBank,
    conv_pool,
    dense_by_runs,
    grouped_forward,
    grouped_to_rows,
    rows_to_grouped,
    scale_runs,
)
from softorder._kernels.conv import NARROW_CONTRACTION, narrow_conv_max_pool
from softorder._kernels.masks import dropout, keep_mask
from softorder._kernels.mixing import fused_soft_ordering, mix

__all__ = [
    "NARROW_CONTRACTION",
    "POOL_COMMUTES",
    "FusedBank",
    "conv_pool",
    "dense_by_runs",
    "dropout",
    "fused_soft_ordering",
    "grouped_forward",
    "grouped_to_rows",
    "keep_mask",
    "mix",
    "narrow_conv_max_pool",
    "rows_to_grouped",
    "scale_runs",
]
