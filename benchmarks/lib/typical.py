"""The "typical implementation" of soft ordering that the library is measured against.

What one writes straight from the paper's Eq. 7: one task at a time, its batch through its own
encoder, then at every depth a Python loop over the shared layers, each output dropped out and
weighted by that task's softmax weight, then the task's own decoder. Every module is a plain
``nn.Linear``; :func:`from_library` copies the parameters of a library model into one, so both compute
the same function (checked by :func:`check_same_function`) and the optimizer updates tensors of the
same sizes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softorder import MultitaskModel, TaskDense


class TypicalSoftOrdering(nn.Module):
    """Per-task encoders (or one shared), L shared ``nn.Linear`` + ReLU layers, S, per-task decoders."""

    def __init__(
        self,
        names: list[str],
        encoders: nn.ModuleList | None,
        shared_encoder: nn.Module | None,
        layers: nn.ModuleList,
        logits: Tensor,
        decoders: nn.ModuleList,
        dropout: float,
    ) -> None:
        super().__init__()
        self.names = names
        self.encoders, self.shared_encoder = encoders, shared_encoder
        self.layers = layers
        self.logits = nn.Parameter(logits.detach().clone())  # (T, L, depth): the paper's S
        self.decoders = decoders
        self.dropout = dropout

    def forward(self, inputs: Mapping[str, Tensor] | Tensor) -> dict[str, Tensor]:
        s = torch.softmax(self.logits, dim=1)  # (T, L, depth)
        shared = self.shared_encoder(inputs) if self.shared_encoder is not None else None
        out = {}
        for t, name in enumerate(self.names):
            y = shared if shared is not None else self.encoders[t](inputs[name])
            for k in range(s.shape[2]):
                total = 0
                for j, layer in enumerate(self.layers):
                    total = total + s[t, j, k] * F.dropout(torch.relu(layer(y)), self.dropout, self.training)
                y = total
            out[name] = self.decoders[t](y)
        return out


def _linear_from(weight: Tensor, bias: Tensor, trainable: bool) -> nn.Linear:
    """nn.Linear with weight (out, in) and bias (out,) copied in."""
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    lin.requires_grad_(trainable)
    return lin


def from_library(model: MultitaskModel) -> TypicalSoftOrdering:
    """A typical implementation with copies of ``model``'s parameters (a soft-ordered Dense core)."""
    core = model.core
    names = model.task_names
    layers = nn.ModuleList(_linear_from(l.linear.weight, l.linear.bias, True) for l in core.layers)
    encoders = shared = None
    if model.shared_encoder is not None:
        shared = _copy_module(model.shared_encoder)
    else:
        enc = model.encoders
        if not isinstance(enc, TaskDense):
            raise TypeError("the typical implementation is built for TaskDense encoders or a shared encoder")
        trainable = isinstance(enc.weight, nn.Parameter)
        encoders = nn.ModuleList(
            nn.Sequential(nn.Flatten(), _linear_from(enc.weight[t].T, enc.bias[t, 0], trainable), nn.ReLU())
            for t in range(len(names))
        )
    dec = model.decoders
    if not isinstance(dec, TaskDense):
        raise TypeError("the typical implementation is built for TaskDense decoders")
    decoders = nn.ModuleList(_linear_from(dec.weight[t].T, dec.bias[t, 0], True) for t in range(len(names)))
    return TypicalSoftOrdering(names, encoders, shared, layers, core.logits, decoders, core.dropout)


def _copy_module(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


@torch.no_grad()
def check_same_function(library: MultitaskModel, typical: TypicalSoftOrdering, inputs, atol: float = 1e-5) -> float:
    """Largest absolute difference of the two models' outputs in eval mode (raises above ``atol``)."""
    library.eval()
    typical.eval()
    try:
        a, b = library(inputs), typical(inputs)
        diff = max(float((a[n] - b[n]).abs().max()) for n in a)
    finally:
        library.train()
        typical.train()
    if diff > atol:
        raise AssertionError(f"the typical implementation differs from the library by {diff:.3g}")
    return diff
