"""Reusing trained shared layers as building blocks for new tasks (the paper's Sec. 6, future work).

The paper suggests that layers trained in many contexts learn general "functional primitives", so a
new task could be solved by learning only *how to assemble* them: a soft order over the frozen
layers, plus the task's own encoder and decoder. :func:`assemble_for_new_tasks` builds that model
from a trained one; the trained model is left untouched (its layers are copied, then frozen).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from softorder.layers import ConvPool, Dense
from softorder.model import EncoderKind, MultitaskModel, build_model
from softorder.orderings import OrderedCore, SoftOrdering
from softorder.tasks import TaskSpec


def _layer_kind(layers: Sequence[nn.Module]) -> tuple[str, int, str]:
    first = layers[0]
    if all(type(l) is Dense for l in layers):
        return "dense", first.width, first.activation  # type: ignore[union-attr]
    if all(type(l) is ConvPool for l in layers):
        return "conv", first.channels, first.activation  # type: ignore[union-attr]
    raise TypeError("assemble_for_new_tasks needs a core of the library's Dense or ConvPool layers")


def assemble_for_new_tasks(
    trained: MultitaskModel | OrderedCore,
    specs: Sequence[TaskSpec],
    *,
    encoder: EncoderKind = "learned",
    freeze_layers: bool = True,
    depth: int | None = None,
    identity_layer: bool = False,
    gate: str = "softmax",
    dropout: float = 0.0,
    seed: int = 0,
) -> MultitaskModel:
    """A soft-ordering model for ``specs`` whose shared layers are copies of ``trained``'s.

    With ``freeze_layers`` (the default) only the soft order S (num_tasks x L x depth), the
    encoders and the decoders are trained; the copied layers never change. ``depth`` defaults to
    the trained core's depth.
    """
    core = trained.core if isinstance(trained, MultitaskModel) else trained
    layers = [copy.deepcopy(l) for l in core.layers]
    kind, width, activation = _layer_kind(layers)
    depth = core.depth if depth is None else depth
    model = build_model(
        specs,
        ordering="soft",
        layer=kind,  # type: ignore[arg-type]
        width=width,
        depth=depth,
        encoder=encoder,
        dropout=dropout,
        identity_layer=identity_layer,
        gate=gate,
        activation=activation,
        seed=seed,
    )
    if freeze_layers:
        for layer in layers:
            layer.requires_grad_(False)
    model.core = SoftOrdering(layers, len(specs), depth=depth, identity_layer=identity_layer, gate=gate, dropout=dropout)  # type: ignore[arg-type]
    return model


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters that training will update."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
