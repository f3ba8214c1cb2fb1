"""Soft ordering over shared LSTM layers (Sec. 6) equals the plain loop of Eq. 7."""

import pytest
import torch

from softorder import PermutedOrdering, SoftOrdering
from softorder.recurrent import RecurrentLayer
from softorder.reference import hard_ordering_loop, soft_ordering_loop


def test_soft_ordering_of_lstm_layers_equals_loop():
    torch.manual_seed(0)
    layers = [RecurrentLayer(6, residual=r) for r in (False, True, False)]
    core = SoftOrdering(layers, 3, identity_layer=True)
    with torch.no_grad():
        core.logits.normal_()
    h, task = torch.randn(7, 5, 6), torch.tensor([2, 0, 1, 1, 0, 2, 2])
    out = core(h, task)
    assert out.shape == (7, 5, 6)
    torch.testing.assert_close(out, soft_ordering_loop(layers, core.mixing(), h, task, identity_layer=True), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert core.logits.grad is not None and layers[0].lstm.weight_hh_l0.grad is not None
    perm = PermutedOrdering(layers, 3, seed=1)
    torch.testing.assert_close(perm(h, task), hard_ordering_loop(layers, perm.order, h, task), atol=1e-5, rtol=1e-5)


def test_recurrent_layer_checks_shape():
    with pytest.raises(ValueError, match=r"expects \(N, T, 4\)"):
        RecurrentLayer(4)(torch.randn(2, 4))
