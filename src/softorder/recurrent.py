"""Shared recurrent layers for soft ordering (the paper's Sec. 6: "layers with internal recurrence").

A :class:`RecurrentLayer` maps a sequence (N, T, C) to a sequence of the same shape, so any ordering
can apply a bank of them in any order, exactly like dense layers; soft ordering then learns, per
task, how to stack the shared LSTMs.
"""

from __future__ import annotations

from torch import Tensor, nn


class RecurrentLayer(nn.Module):
    """A shared LSTM layer: (N, T, width) -> (N, T, width), hidden size ``width``.

    ``residual`` adds the input to the output, which keeps deep stacks of recurrent layers trainable.
    """

    def __init__(self, width: int, *, residual: bool = False) -> None:
        super().__init__()
        self.width, self.residual = int(width), residual
        self.lstm = nn.LSTM(width, width, batch_first=True)

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() != 3 or h.shape[2] != self.width:
            raise ValueError(f"RecurrentLayer expects (N, T, {self.width}) sequences, got {tuple(h.shape)}")
        y, _ = self.lstm(h)
        return y + h if self.residual else y

    def extra_repr(self) -> str:
        return f"width={self.width}, residual={self.residual}"
