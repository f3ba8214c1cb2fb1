"""The ordered cores against the plain loop-per-task-per-depth-per-layer reference (Eq. 2, 3, 7)."""

import pytest
import torch
from torch import nn

from softorder import ConvPool, Dense, ParallelOrdering, PermutedOrdering, SingleTaskCores, SoftOrdering
from softorder.reference import hard_ordering_loop, soft_ordering_loop

TOL = dict(atol=1e-5, rtol=1e-5)


class UserLayer(nn.Module):
    """A module the library does not know: exercises the generic (unfused) path."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, h):
        return torch.tanh(self.lin(h))


def random_logits(core: SoftOrdering) -> SoftOrdering:
    with torch.no_grad():
        core.logits.normal_(0, 2)
    return core


def mixed_rows(n: int, num_tasks: int, shape: tuple[int, ...]):
    """Unsorted rows of all tasks, every task present."""
    task = torch.cat([torch.arange(num_tasks), torch.randint(0, num_tasks, (n - num_tasks,))])
    task = task[torch.randperm(n)]
    return torch.randn(n, *shape), task


@pytest.mark.parametrize("identity_layer", [False, True])
@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("kind", ["dense", "user"])
def test_soft_dense_equals_loop(kind, gate, identity_layer):
    torch.manual_seed(0)
    layers = [Dense(12) if kind == "dense" else UserLayer(12) for _ in range(4)]
    core = random_logits(SoftOrdering(layers, 5, identity_layer=identity_layer, gate=gate))
    assert (core._bank is not None) == (kind == "dense")
    h, task = mixed_rows(23, 5, (12,))
    expected = soft_ordering_loop(layers, core.mixing(), h, task, identity_layer=identity_layer)
    torch.testing.assert_close(core(h, task), expected, **TOL)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_soft_conv_equals_loop(gate):
    torch.manual_seed(1)
    layers = [ConvPool(6) for _ in range(3)]
    core = random_logits(SoftOrdering(layers, 4, gate=gate))
    h, task = mixed_rows(9, 4, (6, 17, 17))
    out = core(h, task)
    assert out.shape == (9, 6, 2, 2)
    torch.testing.assert_close(out, soft_ordering_loop(layers, core.mixing(), h, task), **TOL)


def test_identity_layer_with_unpooled_conv():
    torch.manual_seed(2)
    layers = [ConvPool(4, pool=1) for _ in range(3)]
    core = random_logits(SoftOrdering(layers, 3, identity_layer=True))
    h, task = mixed_rows(7, 3, (4, 8, 8))
    expected = soft_ordering_loop(layers, core.mixing(), h, task, identity_layer=True)
    torch.testing.assert_close(core(h, task), expected, **TOL)


def test_identity_layer_rejects_shape_changing_layers():
    core = SoftOrdering([ConvPool(4) for _ in range(2)], 2, identity_layer=True)
    with pytest.raises(ValueError, match="identity layer"):
        core(torch.randn(2, 4, 8, 8), torch.tensor([0, 1]))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_narrow_input_is_zero_padded(kind):
    """Sec. 4.3: a 1-channel input reads as zero-padded to the layers' width, without the padding."""
    torch.manual_seed(3)
    if kind == "conv":
        layers, shape, padded = [ConvPool(8) for _ in range(4)], (1, 20, 20), (8, 20, 20)
    else:
        layers, shape, padded = [Dense(8) for _ in range(4)], (3,), (8,)
    core = random_logits(SoftOrdering(layers, 3))
    h, task = mixed_rows(6, 3, shape)
    full = torch.zeros(6, *padded)
    full[:, : shape[0]] = h
    torch.testing.assert_close(core(h, task), core(full, task), **TOL)
    torch.testing.assert_close(core(h, task), soft_ordering_loop(layers, core.mixing(), full, task), **TOL)


def test_one_hot_soft_equals_parallel_and_permuted():
    torch.manual_seed(4)
    layers = [Dense(10) for _ in range(4)]
    perm = PermutedOrdering(layers, 3, seed=7)
    par = ParallelOrdering(layers, 3)
    h, task = mixed_rows(15, 3, (10,))
    for hard in (perm, par):
        soft = SoftOrdering(layers, 3)
        with torch.no_grad():
            soft.logits.copy_(hard.mixing() * 1e4)  # softmax of a huge one-hot is one-hot
        torch.testing.assert_close(soft(h, task), hard(h, task), **TOL)
        torch.testing.assert_close(hard(h, task), hard_ordering_loop(layers, hard.order, h, task), **TOL)


def test_permuted_orders_are_permutations_and_fixed_by_seed():
    layers = [Dense(4) for _ in range(4)]
    a, b = PermutedOrdering(layers, 6, seed=3), PermutedOrdering(layers, 6, seed=3)
    assert torch.equal(a.order, b.order)
    assert all(sorted(row.tolist()) == [0, 1, 2, 3] for row in a.order)
    m = a.mixing()
    assert m.shape == (6, 4, 4) and torch.equal(m.sum(dim=1), torch.ones(6, 4))


def test_explicit_permutations_validated():
    layers = [Dense(4) for _ in range(3)]
    with pytest.raises(ValueError, match="not a permutation"):
        PermutedOrdering(layers, 2, permutations=[[0, 1, 2], [0, 0, 2]])
    with pytest.raises(ValueError, match="shape"):
        PermutedOrdering(layers, 2, permutations=[[0, 1, 2]])


def test_mixing_shapes_and_softmax():
    core = SoftOrdering([Dense(4) for _ in range(3)], 5, depth=6, identity_layer=True)
    m = core.mixing()
    assert core.logits.shape == (5, 4, 6) and m.shape == (5, 4, 6)
    torch.testing.assert_close(m, torch.full((5, 4, 6), 0.25))  # equal initial values
    sig = SoftOrdering([Dense(4) for _ in range(3)], 2, gate="sigmoid").mixing()
    torch.testing.assert_close(sig, torch.full((2, 3, 3), 0.5))


def test_gradients_reach_logits_and_shared_layers():
    torch.manual_seed(5)
    layers = [Dense(6) for _ in range(3)]
    core = SoftOrdering(layers, 2, identity_layer=True)
    h, task = mixed_rows(8, 2, (6,))
    core(h, task).pow(2).sum().backward()
    assert core.logits.grad is not None and core.logits.grad.abs().sum() > 0
    assert all(l.linear.weight.grad is not None for l in layers)  # fused path shares, not copies


def test_fused_path_shares_the_given_modules():
    layers = [Dense(5) for _ in range(3)]
    core = SoftOrdering(layers, 2)
    assert all(a is b for a, b in zip(core.layers, layers))
    assert sum(p.numel() for p in core.parameters()) == 3 * (25 + 5) + 2 * 3 * 3


def test_dropout_masks_each_layer_output_independently():
    """In training mode every layer output gets its own mask; eval mode is deterministic."""
    torch.manual_seed(6)
    core = SoftOrdering([Dense(16) for _ in range(3)], 2, dropout=0.5)
    h, task = mixed_rows(4, 2, (16,))
    core.eval()
    torch.testing.assert_close(core(h, task), core(h, task))
    core.train()
    assert not torch.allclose(core(h, task), core(h, task))


def test_single_task_cores_are_separate_models():
    torch.manual_seed(7)
    core = SingleTaskCores(lambda: [Dense(5) for _ in range(3)], 3)
    h, task = mixed_rows(10, 3, (5,))
    out = core(h, task)
    for t in range(3):
        rows = task == t
        expected = hard_ordering_loop(list(core.task_layers[t]), torch.arange(3).view(1, 3), h[rows], torch.zeros(int(rows.sum()), dtype=torch.long))
        torch.testing.assert_close(out[rows], expected, **TOL)
    assert core.task_layers[0][0] is not core.task_layers[1][0]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SoftOrdering([], 2), "at least one layer"),
        (lambda: SoftOrdering([Dense(3)], 0), "num_tasks"),
        (lambda: SoftOrdering([Dense(3)], 2, dropout=1.0), "dropout"),
        (lambda: SoftOrdering([Dense(3)], 2, gate="tanh"), "gate"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_forward_arguments():
    core = SoftOrdering([Dense(3) for _ in range(2)], 2)
    with pytest.raises(ValueError, match=r"task indices must be in \[0, 2\)"):
        core(torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        core(torch.randn(2, 3), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer"):
        core(torch.randn(2, 3), torch.tensor([0.0, 1.0]))


def test_layer_changing_channels_is_named():
    bad = [UserLayer(4), nn.Linear(4, 5)]
    with pytest.raises(ValueError, match=r"shared layer 1 \(Linear\)"):
        SoftOrdering(bad, 1)(torch.randn(2, 4), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"shared layer 1 \(Linear\)"):
        ParallelOrdering(bad, 1)(torch.randn(2, 4), torch.tensor([0, 0]))
