"""MultitaskModel and build_model: dict in, dict out, every encoder and decoder kind."""

import pytest
import torch
from torch import nn

from softorder import MultitaskModel, SoftOrdering, TaskArrays, TaskDense, TaskSpec, TensorTasks, TrainConfig, build_model, fit
from softorder.layers import Dense, ZeroPadChannels
from softorder.orderings import ORDERINGS


def specs_mixed():
    return [
        TaskSpec("a", (5,), "binary"),
        TaskSpec("b", (7,), "multiclass", 3),
        TaskSpec("c", (5,), "regression", 2),
    ]


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_every_ordering_runs_mixed_tasks(ordering):
    model = build_model(specs_mixed(), ordering=ordering, width=8, depth=3, dropout=0.1)
    out = model({"a": torch.rand(4, 5), "b": torch.rand(2, 7), "c": torch.rand(3, 5)})
    assert {k: tuple(v.shape) for k, v in out.items()} == {"a": (4, 1), "b": (2, 3), "c": (3, 2)}
    out = model({"b": torch.rand(6, 7)})  # any subset of tasks
    assert list(out) == ["b"]


def test_task_dense_batched_equals_per_task():
    torch.manual_seed(0)
    enc = TaskDense(4, 6, 3, "relu")
    xs = [torch.randn(5, 6) for _ in range(4)]
    batched = enc(xs)
    looped = [torch.relu(x @ enc.weight[t] + enc.bias[t, 0]) for t, x in enumerate(xs)]
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a, b)
    uneven = enc([xs[0][:2], xs[1]], [2, 1])
    torch.testing.assert_close(uneven[0], torch.relu(xs[0][:2] @ enc.weight[2] + enc.bias[2, 0]))


def test_frozen_encoders_are_not_trained():
    specs = [TaskSpec(f"t{i}", (10,), "binary") for i in range(3)]
    model = build_model(specs, encoder="frozen", width=8)
    assert not any(p is model.encoders.weight for p in model.parameters())
    assert "encoders.weight" in model.state_dict()  # still saved with the model
    g = torch.Generator().manual_seed(0)
    data = TensorTasks([
        TaskArrays(s, {"train": (x, (x[:, 0] > 0.5).long())})
        for s, x in ((s, torch.rand(20, 10, generator=g)) for s in specs)
    ])
    encoder, core = model.encoders.weight.clone(), [p.clone() for p in model.core.parameters()]
    fit(model, data, TrainConfig(iterations=5, batch_size=4, lr=0.01, progress=False, eval_splits=()))
    assert torch.equal(model.encoders.weight, encoder)  # not trained
    assert any(not torch.equal(a, b) for a, b in zip(core, model.core.parameters()))  # while the core is


def test_shared_encoder_gives_rows_to_every_task():
    specs = [TaskSpec(f"attr{i}", (3, 8, 8), "binary") for i in range(4)]
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(192, 16))
    model = build_model(specs, encoder=trunk, encoder_features=16, width=8, ordering="soft")
    x = torch.rand(5, 3, 8, 8)
    out = model(x)
    assert set(out) == {s.name for s in specs} and all(v.shape == (5, 1) for v in out.values())
    # each task's rows equal a one-task pass through the same core
    h = model.shared_encoder(x)
    for t, s in enumerate(specs):
        y = model.core(h, torch.full((5,), t))
        expected = y @ model.decoders.weight[t] + model.decoders.bias[t, 0]
        torch.testing.assert_close(out[s.name], expected)
    with pytest.raises(TypeError, match="shared encoder"):
        model({"attr0": x})


def test_identity_encoder_zero_pads_lazily():
    torch.manual_seed(1)
    specs = [TaskSpec(f"alpha{i}", (1, 16, 16), "multiclass", 5) for i in range(3)]
    model = build_model(specs, layer="conv", width=6, depth=2, encoder="identity")
    model.eval()
    x = {s.name: torch.rand(2, 1, 16, 16) for s in specs}
    padded = {k: ZeroPadChannels(6)(v) for k, v in x.items()}
    h, task, names, counts = model.encode(x)
    assert h.shape[1] == 1  # not materialised
    y_lazy = model.core(h, task)
    y_full = model.core(torch.cat(list(padded.values())), task)
    torch.testing.assert_close(y_lazy, y_full, atol=1e-5, rtol=1e-5)


def test_gap_decoder_and_shared_linear_encoder():
    specs = [TaskSpec(f"img{i}", (2,), "regression", 1) for i in range(3)]
    model = build_model(specs, encoder="linear-shared", decoder="gap", gate="sigmoid", width=10)
    assert model.encoders["img0"] is model.encoders["img2"]
    assert model.core.gate == "sigmoid"
    model.eval()
    x = torch.rand(7, 2)
    out = model({"img1": x})
    assert out["img1"].shape == (7, 1)
    shared = model.encoders["img1"](x)  # the one linear encoder
    core_out = model.core(shared, torch.full((7,), 1))
    torch.testing.assert_close(out["img1"], core_out.mean(dim=1, keepdim=True))  # the decoder: the mean of the features


def test_bad_inputs_are_named():
    model = build_model(specs_mixed(), width=8)
    with pytest.raises(KeyError, match="'zz'"):
        model({"zz": torch.rand(2, 5)})
    with pytest.raises(ValueError, match="task 'b'.*row shape"):
        model({"b": torch.rand(2, 5)})
    with pytest.raises(ValueError, match="unknown ordering"):
        build_model(specs_mixed(), ordering="sideways")
    with pytest.raises(ValueError, match="identity layer"):
        build_model(specs_mixed(), ordering="parallel", identity_layer=True)


def test_model_checks_its_parts():
    specs = specs_mixed()
    core = SoftOrdering([Dense(4)], 2)
    with pytest.raises(ValueError, match="built for 2 tasks"):
        MultitaskModel(specs, core, encoders={}, decoders={})
    core = SoftOrdering([Dense(4)], 3)
    with pytest.raises(ValueError, match="missing"):
        MultitaskModel(specs, core, encoders={"a": nn.Identity()}, decoders={})
    with pytest.raises(ValueError, match="exactly one"):
        MultitaskModel(specs, core, decoders={})


def test_task_spec_validation():
    with pytest.raises(ValueError, match="unknown output kind"):
        TaskSpec("x", (1,), "ordinal")
    with pytest.raises(ValueError, match="at least 2 classes"):
        TaskSpec("x", (1,), "multiclass", 1)
    spec = TaskSpec("x", (1,), "multiclass", 3)
    with pytest.raises(ValueError, match=r"task 'x'.*\[0, 3\].*0..2"):
        spec.check_targets(torch.tensor([0, 3]), "train")


# --- fast paths of the model (docs/performance.md) ----------------------------------------------


@pytest.mark.parametrize("ordering", ["soft", "parallel", "permuted"])
def test_shared_encoder_forward_equals_repeated_rows(ordering):
    """forward() runs rows given to every task through core.forward_shared; it equals the encode()
    path (T copies of the rows), dropout masks and gradients included."""
    specs = [TaskSpec(f"attr{i}", (6,), "binary") for i in range(5)]
    model = build_model(specs, ordering=ordering, encoder=nn.Linear(6, 8), width=8, depth=3, dropout=0.5)
    x = torch.randn(4, 6)
    names = ["attr3", "attr0", "attr4"]
    params = [p for p in model.parameters()]

    def run(fast):
        torch.manual_seed(3)
        if fast:
            out = model(x, names)
        else:
            h, task, _, counts = model.encode(x, names)
            ys = model.core(h, task).split(counts)
            out = {n: y @ model.decoders.weight[model.task_index[n]] + model.decoders.bias[model.task_index[n], 0] for n, y in zip(names, ys)}
        for p in params:
            p.grad = None
        torch.stack([o.pow(2).sum() for o in out.values()]).sum().backward()
        return out, [p.grad.clone() for p in params]

    for training in (False, True):
        model.train(training)
        (a, ga), (b, gb) = run(True), run(False)
        assert list(a) == names
        for n in names:
            torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-5)
        for p, q in zip(ga, gb):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_task_dense_stacked_equals_per_task():
    torch.manual_seed(4)
    dense = TaskDense(5, 6, 3, "relu")
    x = torch.randn(3, 4, 6)
    for ids in ([0, 1, 2, 3, 4][:3], [4, 1, 2]):
        out = dense.forward_stacked(x, ids)
        for i, t in enumerate(ids):
            torch.testing.assert_close(out[i], torch.relu(x[i] @ dense.weight[t] + dense.bias[t, 0]))
    full = torch.randn(5, 2, 6)
    out = dense.forward_stacked(full, range(5))  # all tasks in order: no gathered copy
    for t in range(5):
        torch.testing.assert_close(out[t], torch.relu(full[t] @ dense.weight[t] + dense.bias[t, 0]))


def test_per_task_encoders_and_decoders_batched_equal_looped():
    """TaskDense encoders and decoders run as one product in forward(); the same as one task at a time."""
    torch.manual_seed(5)
    specs = [TaskSpec(f"t{i}", (7,), "multiclass", 3) for i in range(4)]
    model = build_model(specs, width=8, depth=2, encoder="learned")
    model.eval()
    x = {s.name: torch.randn(5, 7) for s in specs}
    out = model({k: x[k] for k in ["t2", "t0", "t3"]})
    for n in ["t2", "t0", "t3"]:
        single = model({n: x[n]})[n]  # one task: the per-task path
        torch.testing.assert_close(out[n], single, atol=1e-5, rtol=1e-5)
