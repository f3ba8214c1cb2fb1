"""The ordered cores against the plain loop-per-task-per-depth-per-layer reference (Eq. 2, 3, 7)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from softorder import ConvPool, Dense, ParallelOrdering, PermutedOrdering, SingleTaskCores, SoftOrdering
from softorder.orderings import HardOrdering
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


def test_dropout_masks_each_layer_output_independently(monkeypatch):
    """In training mode every layer's output at every depth gets its own mask (one (G, R, S, L, C)
    mask per depth on the fused path, one per layer and depth on the plain path); eval mode draws none."""
    from softorder._kernels import masks as masks_module
    from softorder._kernels import mixing as mixing_module

    torch.manual_seed(6)
    drawn = []
    original = masks_module.keep_mask

    def record(*args, **kwargs):
        drawn.append(original(*args, **kwargs).clone())
        return drawn[-1].clone()

    monkeypatch.setattr(mixing_module, "keep_mask", record)
    monkeypatch.setattr(masks_module, "keep_mask", record)
    for layers, expected in (([Dense(16) for _ in range(3)], 2), ([UserLayer(16) for _ in range(3)], 2 * 3)):
        drawn.clear()
        core = SoftOrdering(layers, 2, depth=2, dropout=0.5)
        h, task = mixed_rows(64, 2, (16,))
        core.eval()
        torch.testing.assert_close(core(h, task), core(h, task))
        assert drawn == []
        core.train()
        core(h, task)
        assert len(drawn) == expected
        per_layer = [m[..., j, :] for m in drawn for j in range(3)] if expected == 2 else drawn
        assert all(0.4 < float(m.mean()) < 0.6 for m in per_layer)
        assert all(not torch.equal(a, b) for i, a in enumerate(per_layer) for b in per_layer[i + 1 :])


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


# --- the fast paths (docs/performance.md) against the reference, in training mode ---------------

from softorder._kernels import masks as masks_mod  # noqa: E402
from softorder._kernels import keep_mask, narrow_conv_max_pool  # noqa: E402
from softorder._kernels.mixing import _ReluDropoutMix  # noqa: E402
from softorder._kernels import mixing as mixing_mod  # noqa: E402


def recording_masks(monkeypatch):
    """Record every dropout keep mask the cores draw (before the fused node writes into it)."""
    drawn = []
    original = masks_mod.keep_mask

    def record(*args, **kwargs):
        m = original(*args, **kwargs)
        drawn.append(m.clone())
        return m

    monkeypatch.setattr(masks_mod, "keep_mask", record)  # the plain path's dropout()
    monkeypatch.setattr(mixing_mod, "keep_mask", record)  # the fused path
    return drawn


def reference_masks(drawn, task, num_layers, p, out_shapes, fused):
    """The soft core's masks as the reference loop's per (t, k, j): for the fused path one per depth,
    (G, R, S, L, C), channels last at S = H' * W' positions for conv banks; for the plain path one
    per depth and layer, (N, *out_shape)."""
    if not fused:
        return {(t, k, j): drawn[k * num_layers + j][task == t] / (1 - p)
                for t in task.unique().tolist() for k in range(len(out_shapes)) for j in range(num_layers)}
    masks = {}
    for k, m in enumerate(drawn):
        m = m.reshape(-1, *m.shape[2:])  # (N, S, L, C), rows in h's order
        for t in task.unique().tolist():
            rows = (task == t).nonzero().flatten()
            for j in range(num_layers):
                layer = m[rows, :, j]  # (n, S, C)
                if len(out_shapes[k]) == 3:
                    c, height, width = out_shapes[k]
                    layer = layer.reshape(len(rows), height, width, c).permute(0, 3, 1, 2)
                masks[(t, k, j)] = layer.reshape(len(rows), *out_shapes[k]) / (1 - p)
    return masks


def grads_of(params, fn):
    for q in params:
        q.grad = None
    fn().backward()
    return [q.grad.clone() if q.grad is not None else torch.zeros_like(q) for q in params]


@pytest.mark.parametrize("p", [0.5, 0.3])
@pytest.mark.parametrize("identity_layer", [False, True])
@pytest.mark.parametrize("kind", ["dense", "conv", "narrow-conv", "user"])
def test_soft_training_step_equals_loop(monkeypatch, kind, identity_layer, p):
    """Forward and every gradient of the fused path (dropout on) equal the plain loop of Eq. 7."""
    torch.manual_seed(8)
    if kind == "dense":
        layers, shape, width, outs = [Dense(10) for _ in range(3)], (10,), None, [(10,)] * 3
    elif kind == "user":
        layers, shape, width, outs = [UserLayer(10) for _ in range(3)], (10,), None, [(10,)] * 3
    elif kind == "conv":
        layers, shape, width, outs = [ConvPool(4, pool=1) for _ in range(3)], (4, 6, 6), None, [(4, 6, 6)] * 3
    else:  # 1-channel images read as zero-padded: the narrow_conv_max_pool first depth
        layers, shape, width, outs = [ConvPool(5) for _ in range(3)], (1, 13, 12), 5, [(5, 6, 6), (5, 3, 3), (5, 1, 1)]
        identity_layer = False  # pooling layers change the row shape
    core = random_logits(SoftOrdering(layers, 4, identity_layer=identity_layer, dropout=p))
    h, task = mixed_rows(9, 4, shape)
    h.requires_grad_(True)
    drawn = recording_masks(monkeypatch)
    weight = torch.randn(9, *outs[-1])
    params = [h, core.logits] + [q for l in layers for q in l.parameters()]
    fast_grads = grads_of(params, lambda: (core(h, task) * weight).sum())
    fast = core(h, task)  # draws new masks: compare the forward with these
    fused = kind != "user"
    masks = reference_masks(drawn[len(drawn) // 2 :], task, len(layers), p, outs, fused)
    ref = soft_ordering_loop(layers, core.mixing(), h, task, identity_layer=identity_layer, width=width, dropout_masks=masks)
    torch.testing.assert_close(fast, ref, **TOL)
    first = reference_masks(drawn[: len(drawn) // 2], task, len(layers), p, outs, fused)
    ref_grads = grads_of(
        params,
        lambda: (soft_ordering_loop(layers, core.mixing(), h, task, identity_layer=identity_layer, width=width, dropout_masks=first) * weight).sum(),
    )
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("ordering", ["soft", "soft-identity", "soft-conv", "parallel", "permuted", "single"])
def test_forward_shared_equals_repeated_rows(ordering):
    """Rows given to every task: forward_shared equals forward on T copies, in training mode too
    (same random draws), and in its gradients."""
    torch.manual_seed(9)
    make = lambda: [Dense(6) for _ in range(3)]  # noqa: E731
    shape = (6,)
    if ordering == "soft":
        core = random_logits(SoftOrdering(make(), 4, dropout=0.5))
    elif ordering == "soft-identity":
        core = random_logits(SoftOrdering(make(), 4, dropout=0.25, identity_layer=True, gate="sigmoid"))
    elif ordering == "soft-conv":
        core, shape = random_logits(SoftOrdering([ConvPool(3) for _ in range(2)], 4, dropout=0.5)), (1, 8, 8)
    elif ordering == "parallel":
        core = ParallelOrdering(make(), 4, dropout=0.5)
    elif ordering == "permuted":
        core = PermutedOrdering(make(), 4, seed=1, dropout=0.5)
    else:
        core = SingleTaskCores(make, 4, dropout=0.5)
    z = torch.randn(5, *shape, requires_grad=True)
    tasks = torch.tensor([2, 0, 3])
    params = [z] + [q for q in core.parameters()]
    for training in (False, True):
        core.train(training)
        torch.manual_seed(10)
        shared = core.forward_shared(z, tasks)
        g_shared = grads_of(params, lambda: core.forward_shared(z, tasks).pow(2).sum()) if training else None
        torch.manual_seed(10)
        repeated = core(z.repeat(3, *([1] * len(shape))), tasks.repeat_interleave(5))
        g_rep = grads_of(params, lambda: core(z.repeat(3, *([1] * len(shape))), tasks.repeat_interleave(5)).pow(2).sum()) if training else None
        torch.testing.assert_close(shared, repeated, **TOL)
        if training:
            for a, b in zip(g_shared, g_rep):
                torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("p", [0.5, 0.25, 0.75, 0.3])
def test_keep_mask_is_dropout_distribution(p):
    torch.manual_seed(11)
    m = keep_mask((400, 500), p)
    assert m.dtype == torch.float32 and m.shape == (400, 500)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(m.mean()) - (1 - p)) < 0.005
    torch.manual_seed(11)
    assert torch.equal(keep_mask((400, 500), p), m)  # a function of the global generator's state
    assert keep_mask((0, 3), p).shape == (0, 3) and keep_mask((7,), p).shape == (7,)


@pytest.mark.parametrize("p, bits", [(0.5, 1), (0.25, 2), (0.75, 2), (0.3125, 4), (1 - 3 / 256, 8)])
def test_keep_mask_gives_every_entry_its_own_random_bits(p, bits):
    """Entry i is kept when bits [i * b, (i + 1) * b) of the random stream, read as an integer, are
    below 2**b (1 - p): checked against plain bit arithmetic on the same draws."""
    shape = (3, 37, 11)  # not a multiple of the entries per byte
    numel = 3 * 37 * 11
    torch.manual_seed(5)
    mask = keep_mask(shape, p)
    per_byte = 8 // bits
    num_bytes = -(-numel // per_byte)
    torch.manual_seed(5)
    words = torch.randint(-(2**31), 2**31, (-(-num_bytes // 4),), dtype=torch.int32)
    random_bytes = words.view(torch.uint8)[:num_bytes].long()
    groups = (random_bytes.unsqueeze(1) >> torch.arange(0, 8, bits)) & (2**bits - 1)  # (bytes, per_byte)
    expected = (groups.flatten()[:numel] < round((1 - p) * 2**bits)).float().view(shape)
    assert torch.equal(mask, expected)


def test_keep_mask_entries_are_independent():
    """Adjacent entries (which may share a random byte) are jointly distributed as independent draws."""
    torch.manual_seed(6)
    for p in (0.5, 0.25):
        m = keep_mask((200_000, 2), p)
        both = float((m[:, 0] * m[:, 1]).mean())
        assert abs(both - (1 - p) ** 2) < 0.005, (p, both)


def test_relu_dropout_mix_gradcheck():
    torch.manual_seed(12)
    pre = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)  # (R, S, L, C)
    w = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)  # (G, R, L)
    mask = (torch.rand(2, 3, 2, 4, 5) < 0.6).double()  # (G, R, S, L, C)
    ref = (w[:, :, None, :, None] * torch.relu(pre) * mask).sum(3)
    torch.testing.assert_close(_ReluDropoutMix.apply(pre, w, mask.clone()), ref)
    assert torch.autograd.gradcheck(lambda a, b: _ReluDropoutMix.apply(a, b, mask.clone()), (pre, w))
    assert torch.autograd.gradcheck(lambda a, b: _ReluDropoutMix.apply(a, b, None), (pre, w))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape, pool, groups", [((2, 1, 8, 9), 2, 1), ((2, 2, 6, 6), 2, 1), ((1, 1, 7, 7), 3, 1), ((6, 1, 9, 8), 2, 3)])
def test_narrow_conv_pool_equals_conv_then_pool(shape, pool, groups, bias):
    """Forward and every gradient equal conv2d then max_pool2d, per group of rows with its own weights."""
    torch.manual_seed(13)
    h = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(groups, 6, shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(groups, 6, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = (h, w, b) if bias else (h, w)
    n = shape[0] // groups
    ref = torch.cat([F.max_pool2d(F.conv2d(h[g * n : (g + 1) * n], w[g], b[g] if bias else None, padding=1), pool) for g in range(groups)])
    squeeze = (lambda x: x) if groups > 1 else (lambda x: None if x is None else x[0])  # noqa: E731
    fast = lambda h, w, b=None: narrow_conv_max_pool(h, squeeze(w), squeeze(b), pool, groups)  # noqa: E731
    out = fast(*inputs)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, c)
    assert torch.autograd.gradcheck(fast, inputs, fast_mode=True)


def test_narrow_conv_pool_blocks_cover_every_row(monkeypatch):
    """Blocks smaller than a group, and larger: the same result as one block."""
    import softorder._kernels.conv as kernels

    torch.manual_seed(15)
    h = torch.randn(4, 1, 10, 10, requires_grad=True)
    w, b = torch.randn(2, 5, 1, 3, 3, requires_grad=True), torch.randn(2, 5, requires_grad=True)
    ref = torch.cat([F.max_pool2d(F.conv2d(h[2 * g : 2 * g + 2], w[g], b[g], padding=1), 2) for g in range(2)])
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (h, w, b), g)
    for block in (7, 40, 10_000):
        monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", block)
        out = narrow_conv_max_pool(h, w, b, 2, 2)
        torch.testing.assert_close(out, ref, **TOL)
        for a, c in zip(torch.autograd.grad(out, (h, w, b), g), ref_grads):
            torch.testing.assert_close(a, c, **TOL)


def test_pooling_ties_route_like_max_pool2d():
    """Blank image regions give equal values in a window: the gradient goes to the first maximum."""
    torch.manual_seed(14)
    h = torch.zeros(2, 1, 12, 12)
    h[:, :, 3:7, 2:9] = torch.rand(2, 1, 4, 7)
    w, b = torch.randn(6, 1, 3, 3, requires_grad=True), torch.randn(6, requires_grad=True)
    ref = F.max_pool2d(F.conv2d(h, w, b, padding=1), 2)
    out = narrow_conv_max_pool(h, w, b, 2)
    g = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad(out, (w, b), g), torch.autograd.grad(ref, (w, b), g)):
        torch.testing.assert_close(a, c, **TOL)


# --- every ordering's convolution paths: narrow inputs, memory formats, grouped single task -----


def single_task_loop(core: SingleTaskCores, h, task, width):
    """The single-task baseline one task at a time, each through its own copy, zero-padded input."""
    out = [None] * h.shape[0]
    for t in task.unique().tolist():
        rows = (task == t).nonzero().flatten()
        y = F.pad(h[rows], [0, 0] * (h.dim() - 2) + [0, width - h.shape[1]])
        for layer in core.task_layers[t]:
            y = layer(y)
        for i, r in enumerate(rows.tolist()):
            out[r] = y[i]
    return torch.stack(out)


def hard_core(ordering, make, num_tasks):
    if ordering == "parallel":
        return ParallelOrdering(make(), num_tasks)
    if ordering == "permuted":
        return PermutedOrdering(make(), num_tasks, seed=2)
    return SingleTaskCores(make, num_tasks)


KINDS_AND_FORMATS = [("dense", "contiguous"), ("narrow-dense", "contiguous")] + [
    (kind, fmt) for kind in ("conv", "narrow-conv", "narrow-conv-tanh") for fmt in ("contiguous", "channels_last")
]


@pytest.mark.parametrize("kind, fmt", KINDS_AND_FORMATS)
@pytest.mark.parametrize("ordering", ["parallel", "permuted", "single"])
def test_hard_and_single_orderings_equal_loop(ordering, kind, fmt):
    """Forward and gradients equal the plain loop on the explicitly zero-padded input, for narrow
    inputs read without padding, inputs in either memory format, and tasks with unequal row counts
    (the single-task baseline's grouped path pads them)."""
    torch.manual_seed(16)
    width = 6
    activation = "tanh" if kind.endswith("tanh") else "relu"
    make = (lambda: [Dense(width) for _ in range(3)]) if kind.endswith("dense") else (lambda: [ConvPool(width, activation=activation) for _ in range(3)])  # noqa: E731
    shape = {"dense": (6,), "narrow-dense": (2,), "conv": (6, 16, 17)}.get(kind, (1, 16, 17))
    core = hard_core(ordering, make, 4)
    if ordering == "single":
        assert core._grouped
    h, task = mixed_rows(11, 4, shape)
    if fmt == "channels_last":
        h = h.contiguous(memory_format=torch.channels_last)
    h.requires_grad_(True)
    params = [h] + list(core.parameters())
    if ordering == "single":
        reference = lambda: single_task_loop(core, h, task, width)  # noqa: E731
    else:
        reference = lambda: hard_ordering_loop(list(core.layers), core.order, h, task, width=width)  # noqa: E731
    out, ref = core(h, task), reference()
    torch.testing.assert_close(out, ref, **TOL)
    weight = torch.randn_like(ref)
    for a, b in zip(grads_of(params, lambda: (core(h, task) * weight).sum()), grads_of(params, lambda: (reference() * weight).sum())):
        torch.testing.assert_close(a, b, **TOL)


def test_single_task_grouped_path_with_absent_tasks():
    """Only some tasks' rows in a batch: each still goes through its own copy."""
    torch.manual_seed(17)
    core = SingleTaskCores(lambda: [ConvPool(4) for _ in range(2)], 5)
    h = torch.randn(5, 1, 8, 8)
    task = torch.tensor([3, 1, 3, 3, 1])
    torch.testing.assert_close(core(h, task), single_task_loop(core, h, task, 4), **TOL)


def test_soft_conv_accepts_both_memory_formats():
    torch.manual_seed(18)
    core = random_logits(SoftOrdering([ConvPool(5) for _ in range(3)], 3, identity_layer=False))
    h, task = mixed_rows(7, 3, (5, 12, 12))
    out = core(h, task)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(core(h.contiguous(memory_format=torch.channels_last), task), out, **TOL)
    torch.testing.assert_close(out, soft_ordering_loop(list(core.layers), core.mixing(), h, task), **TOL)


def test_dropout_keeps_channels_last_and_its_distribution():
    from softorder.orderings import dropout

    torch.manual_seed(19)
    h = torch.rand(8, 5, 30, 30).add_(0.5).contiguous(memory_format=torch.channels_last)
    out = dropout(h, 0.5, True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    kept = out != 0
    torch.testing.assert_close(out[kept], 2 * h[kept])
    assert abs(float(kept.float().mean()) - 0.5) < 0.01


@pytest.mark.parametrize("channels_last", [False, True])
def test_permute_rows_equals_indexing_forward_and_backward(channels_last):
    from softorder.orderings import permute_rows

    torch.manual_seed(0)
    x = torch.randn(7, 3, 4, 5)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    perm = torch.randperm(7)
    inverse = torch.argsort(perm)
    mine, plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    weight = torch.randn(7, 3, 4, 5)
    out = permute_rows(mine, perm, inverse)
    assert torch.equal(out, plain[perm])
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    (out * weight).sum().backward()
    (plain[perm] * weight).sum().backward()
    assert torch.equal(mine.grad, plain.grad)


# --- hard orders of Dense layers on training batches: one batched product over the task runs -----


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_width", [6, 2])
def test_hard_ordering_by_task_runs_equals_loop(input_width, bias):
    """Rows in equal runs of one task each (a training batch, tasks in any order, one task in two
    runs) take the batched path; forward and gradients equal the plain loop, and a layer no task
    uses gets no gradient, as on the routed path."""
    torch.manual_seed(20)
    layers = [Dense(6, bias=bias) for _ in range(4)]
    order = torch.tensor([[0, 2, 1], [2, 2, 0], [1, 0, 2], [0, 1, 2]])  # layer 3 is never used
    core = HardOrdering(layers, 4, order, dropout=0.0)
    task = torch.tensor([2, 0, 3, 2]).repeat_interleave(7)  # runs of 7 rows, at least the width
    h = torch.randn(28, input_width, requires_grad=True)
    assert torch.equal(core._task_runs(task), torch.tensor([2, 0, 3, 2]))
    params = [h] + [p for l in layers[:3] for p in l.parameters()]
    reference = lambda: hard_ordering_loop(layers, order, h, task, width=6)  # noqa: E731
    torch.testing.assert_close(core(h, task), reference(), **TOL)
    weight = torch.randn(28, 6)
    for a, b in zip(grads_of(params, lambda: (core(h, task) * weight).sum()), grads_of(params, lambda: (reference() * weight).sum())):
        torch.testing.assert_close(a, b, **TOL)
    core(h, task).sum().backward()
    assert layers[3].weight.grad is None and layers[0].weight.grad is not None


def test_task_runs_are_taken_only_where_they_pay():
    """Runs shorter than the width, unequal runs, rows not in runs, other layers: routed by layer."""
    core = HardOrdering([Dense(4) for _ in range(2)], 3, torch.tensor([[0, 1], [1, 0], [0, 0]]), dropout=0.0)
    assert core._task_runs(torch.tensor([0, 1, 2]).repeat_interleave(4)) is not None
    assert core._task_runs(torch.tensor([0, 1, 2]).repeat_interleave(3)) is None  # 3 rows < width 4
    assert core._task_runs(torch.tensor([0] * 4 + [1] * 5)) is None
    assert core._task_runs(torch.tensor([0, 1] * 4)) is None
    user = HardOrdering([UserLayer(4) for _ in range(2)], 2, torch.tensor([[0, 1], [1, 0]]), dropout=0.0)
    assert user._task_runs(torch.tensor([0, 1]).repeat_interleave(8)) is None


def test_hard_ordering_by_task_runs_forward_shared_equals_repeated_rows():
    """The shared-rows path (runs from depth 1) equals forward on repeated rows, dropout masks
    and gradients included."""
    torch.manual_seed(21)
    core = PermutedOrdering([Dense(4) for _ in range(3)], 4, seed=3, dropout=0.5)
    z, tasks = torch.randn(5, 4, requires_grad=True), torch.tensor([2, 0, 3])
    assert core._task_runs(tasks.repeat_interleave(5)) is not None
    params = [z] + list(core.parameters())
    torch.manual_seed(10)
    shared = core.forward_shared(z, tasks)
    torch.manual_seed(10)
    torch.testing.assert_close(shared, core(z.repeat(3, 1), tasks.repeat_interleave(5)), **TOL)
    torch.manual_seed(10)
    g_shared = grads_of(params, lambda: core.forward_shared(z, tasks).pow(2).sum())
    torch.manual_seed(10)
    g_rep = grads_of(params, lambda: core(z.repeat(3, 1), tasks.repeat_interleave(5)).pow(2).sum())
    for a, b in zip(g_shared, g_rep):
        torch.testing.assert_close(a, b, **TOL)
