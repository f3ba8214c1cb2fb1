"""Sparse and hardened soft orders against soft ordering and the plain loop of Eq. 7."""

import io

import pytest
import torch

from softorder import ConvPool, Dense, SoftOrdering
from softorder.reference import soft_ordering_loop
from softorder.sparse import TopKSoftOrdering, harden, temperature_schedule

TOL = dict(atol=1e-5, rtol=1e-5)


def rows(n, num_tasks, shape):
    task = torch.cat([torch.arange(num_tasks), torch.randint(0, num_tasks, (n - num_tasks,))])
    return torch.randn(n, *shape), task[torch.randperm(n)]


def topk_mixing(logits, k):
    """The top-k weights, renormalised, zero elsewhere: what Eq. 7 then mixes."""
    chosen = logits.topk(k, dim=1).indices
    weights = torch.zeros_like(logits).scatter(1, chosen, torch.softmax(logits.gather(1, chosen), dim=1))
    return weights


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_equals_eq7_with_the_top_k_weights(kind, k):
    torch.manual_seed(0)
    layers = [Dense(6) for _ in range(4)] if kind == "dense" else [ConvPool(3) for _ in range(4)]
    core = TopKSoftOrdering(layers, 3, k=k).eval()
    with torch.no_grad():
        core.logits.normal_(0, 2)
    h, task = rows(8, 3, (6,) if kind == "dense" else (1, 16, 16))
    expected = soft_ordering_loop(layers, topk_mixing(core.logits, k), h, task, width=None if kind == "dense" else 3)
    torch.testing.assert_close(core(h, task), expected, **TOL)


def test_top_l_is_soft_ordering():
    torch.manual_seed(1)
    layers = [Dense(5) for _ in range(3)]
    soft, top = SoftOrdering(layers, 2).eval(), TopKSoftOrdering(layers, 2, k=3).eval()
    with torch.no_grad():
        soft.logits.normal_()
        top.logits.copy_(soft.logits)
    h, task = rows(7, 2, (5,))
    torch.testing.assert_close(top(h, task), soft(h, task), **TOL)


def test_top_1_trains_every_logit_and_samples_every_layer():
    torch.manual_seed(2)
    core = TopKSoftOrdering([Dense(4) for _ in range(3)], 2, k=1)
    h, task = rows(16, 2, (4,))
    core(h, task).pow(2).sum().backward()
    assert core.logits.grad is not None and bool((core.logits.grad != 0).all())  # straight-through: all of S
    seen = {int(j) for _ in range(60) for j in core.selection()[0].flatten()}
    assert seen == {0, 1, 2}  # Gumbel top-k keeps every layer reachable


def test_noisy_gating_without_noise_is_top_k_of_s_and_trains_s_and_the_noise():
    torch.manual_seed(5)
    layers = [Dense(5) for _ in range(3)]
    noisy, soft = TopKSoftOrdering(layers, 2, k=3, gating="noisy", balance=0.0), SoftOrdering(layers, 2)
    with torch.no_grad():
        soft.logits.normal_()
        noisy.logits.copy_(soft.logits)
        noisy.noise_logits.fill_(-40.0)  # softplus: about 4e-18, no noise
    h, task = rows(9, 2, (5,))
    torch.testing.assert_close(noisy(h, task), soft(h, task), **TOL)  # k = L, training mode: Eq. 7
    top2 = TopKSoftOrdering(layers, 2, k=2, gating="noisy")
    top2(h, task).pow(2).sum().backward()
    assert bool((top2.noise_logits.grad != 0).any()) and bool((top2.logits.grad != 0).any())
    with torch.no_grad():
        top2.logits.normal_(0, 2)
    top2.eval()
    torch.testing.assert_close(top2(h, task), soft_ordering_loop(layers, topk_mixing(top2.logits, 2), h, task, width=None), **TOL)
    with pytest.raises(ValueError, match="noisy top-k gating needs k >= 2"):
        TopKSoftOrdering(layers, 2, k=1, gating="noisy")


def test_the_balancing_term_is_the_squared_cv_of_each_layers_total_weight():
    torch.manual_seed(6)
    core = TopKSoftOrdering([Dense(4) for _ in range(3)], 4, k=2, gating="noisy", balance=0.5)
    h, task = rows(8, 4, (4,))
    core(h, task)
    chosen, weights = core.selection()  # a fresh draw: the term now belongs to it
    gates = torch.zeros(4, 3, 3).scatter(1, chosen, weights)
    importance = gates.sum(dim=0)  # (layers, depth)
    expected = 0.5 * sum(importance[:, d].var(unbiased=False) / importance[:, d].mean() ** 2 for d in range(3))
    torch.testing.assert_close(core.auxiliary_loss(), expected)
    assert core.auxiliary_loss() is None  # read once
    core.eval()(h, task)
    assert core.auxiliary_loss() is None  # evaluation adds no term
    assert TopKSoftOrdering([Dense(4) for _ in range(3)], 4, k=1).balance == 0.0  # Gumbel: none by default
    with pytest.raises(ValueError, match="unknown gating 'hash'"):
        TopKSoftOrdering([Dense(4)], 1, k=1, gating="hash")


def test_fit_adds_the_balancing_term_to_the_loss():
    from softorder.model import build_model
    from softorder.tasks import TaskArrays, TaskSpec, TensorTasks
    from softorder.train import TrainConfig, fit

    specs = [TaskSpec(f"t{i}", (5,), "multiclass", 2) for i in range(3)]
    data = TensorTasks([TaskArrays(s, {"train": (torch.randn(20, 5), torch.randint(0, 2, (20,)))}) for s in specs])
    after = {}
    for balance in (0.0, 100.0):
        model = build_model(specs, ordering="soft", width=6, top_k=2, gating="noisy", seed=3)
        model.core.balance = balance
        fit(model, data, TrainConfig(iterations=2, batch_size=4, eval_every=2, progress=False))
        after[balance] = model.core.logits.detach().clone()
    assert not torch.equal(after[0.0], after[100.0])


def test_harden_with_one_hot_weights_equals_the_soft_core():
    torch.manual_seed(3)
    layers = [Dense(6) for _ in range(3)]
    soft = SoftOrdering(layers, 4).eval()
    order = torch.stack([torch.randperm(3) for _ in range(4)])  # (tasks, depth)
    with torch.no_grad():
        soft.logits.copy_(torch.nn.functional.one_hot(order, 3).transpose(1, 2).float() * 1e4)
    h, task = rows(10, 4, (6,))
    hard = harden(soft, 1).eval()
    assert torch.equal(hard.order, order) and hard.layers[0] is layers[0]  # the same layers, not copies
    torch.testing.assert_close(hard(h, task), soft(h, task), **TOL)
    torch.testing.assert_close(harden(soft, 2).eval()(h, task), soft(h, task), **TOL)
    with pytest.raises(ValueError, match="no identity layer"):
        harden(SoftOrdering(layers, 2, identity_layer=True))


def test_temperature_sharpens_the_softmax_and_can_be_annealed():
    core = SoftOrdering([Dense(3) for _ in range(3)], 1)
    with torch.no_grad():
        core.logits.copy_(torch.tensor([[[1.0], [0.0], [0.0]]]).expand(1, 3, 3))
    cool = core.mixing()[0, 0, 0].item()
    core.temperature = 0.1
    assert core.mixing()[0, 0, 0].item() > cool > 1 / 3
    update = temperature_schedule(core, 1.0, 0.01, 100)
    record = {"iteration": 50}
    update(record)
    assert core.temperature == pytest.approx(0.1) and record["temperature"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="positive"):
        core.temperature = 0.0


def test_top_k_forward_shared_equals_repeated_rows():
    torch.manual_seed(4)
    core = TopKSoftOrdering([Dense(5) for _ in range(4)], 3, k=2, dropout=0.5)
    with torch.no_grad():
        core.logits.normal_(0, 2)
    z, tasks = torch.randn(6, 5), torch.tensor([2, 0, 1])
    core.eval()
    torch.testing.assert_close(core.forward_shared(z, tasks), core(z.repeat(3, 1), tasks.repeat_interleave(6)), **TOL)
    core.train()
    out = core.forward_shared(z, tasks)
    assert out.shape == (18, 5) and torch.isfinite(out).all()


def test_the_temperature_is_kept_in_checkpoints_and_old_ones_read_as_1():
    core = SoftOrdering([Dense(3) for _ in range(3)], 2, temperature=0.25)
    state = core.state_dict()
    fresh = SoftOrdering([Dense(3) for _ in range(3)], 2)
    fresh.load_state_dict(state)
    assert fresh.temperature == 0.25  # an annealed run resumes at the temperature it had reached
    del state["softmax_temperature"]  # written before the temperature was kept
    core.load_state_dict(state)
    assert core.temperature == 1.0


def test_build_model_top_k():
    from softorder.model import build_model
    from softorder.tasks import TaskSpec

    specs = [TaskSpec(f"t{i}", (5,), "multiclass", 2) for i in range(3)]
    model = build_model(specs, ordering="soft", width=6, top_k=2, seed=1)
    assert isinstance(model.core, TopKSoftOrdering) and model.core.k == 2
    same = build_model(specs, ordering="soft", width=6, seed=1)  # the same layers from the same seed
    assert torch.equal(model.core.layers[0].weight, same.core.layers[0].weight)
    with pytest.raises(ValueError, match="top_k applies to soft ordering"):
        build_model(specs, ordering="parallel", width=6, top_k=1)


def test_sparse_orders_preset_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    """Every domain and method at tiny settings on fake data: the soft trials carry their hardened
    errors, the step-time trials every method's time, and a rerun trains nothing."""
    from softorder.data.fake import write_fake_mnist, write_fake_omniglot, write_fake_uci
    from softorder.experiments import get_experiment, mnist
    from softorder.experiments.runner import run_experiment

    data = tmp_path / "data"
    write_fake_uci(data), write_fake_mnist(data), write_fake_omniglot(data)
    monkeypatch.setattr(mnist, "VERIFY_DATA", False)
    tiny = dict(verify_data=False, uci_iterations=4, mnist_iterations=4, omniglot_iterations=2, eval_every=2, omniglot_tasks=2,
                mnist_tasks=2, timing_rounds=1, timing_steps=1)
    summary = run_experiment(get_experiment("sparse-orders"), tmp_path / "out", quick=True, overrides=tiny, data_dir=data)
    assert summary["trials_finished"] == summary["trials_total"] == 3 * (6 + 1)
    for domain, rows in summary["tables"].items():
        assert set(rows) >= {"soft", "soft-annealed", "top-2", "top-1", "top-2-noisy", "parallel",
                             "soft, hardened k=1", "soft-annealed, hardened k=2"}
        assert all(0 <= row["error"]["mean"] <= 1 and row["error"]["n"] == 1 for row in rows.values())
        assert rows["soft"]["vs_dense"]["mean"] == 0 and rows["top-1"]["vs_dense"]["n"] == 1
        assert rows["top-1"]["vs_dense"]["mean"] == pytest.approx(rows["top-1"]["error"]["mean"] - rows["soft"]["error"]["mean"])
        assert rows["top-1"]["step_ms"] > 0 and rows["top-2-noisy"]["step_ms"] > 0 and rows["soft, hardened k=1"]["step_ms"] > 0
    assert "| dense soft, hardened (k = 1) |" in (tmp_path / "out" / "sparse_orders.md").read_text()
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    assert "step_ms" in header
    table = (tmp_path / "out" / "sparse_orders.md").read_text()
    log = io.StringIO()
    run_experiment(get_experiment("sparse-orders"), tmp_path / "out", quick=True, overrides=tiny, data_dir=data, out=log)
    assert "21 already finished, 0 to run" in log.getvalue()
    assert (tmp_path / "out" / "sparse_orders.md").read_text() == table
    records = tmp_path / "records"  # records: a fresh run directory reuses them, other settings are refused
    run_experiment(get_experiment("sparse-orders"), tmp_path / "b", quick=True, overrides={**tiny, "records": str(records), "domains": ["uci"]}, data_dir=data)
    assert len(list(records.glob("*.json"))) == 7
    capsys.readouterr()
    run_experiment(get_experiment("sparse-orders"), tmp_path / "c", quick=True, overrides={**tiny, "records": str(records), "domains": ["uci"]}, data_dir=data)
    assert capsys.readouterr().out.count("not run again") == 7
    assert (tmp_path / "c" / "sparse_orders.md").read_text() == (tmp_path / "b" / "sparse_orders.md").read_text()
    with pytest.raises(ValueError, match="other settings.*uci_iterations"):
        run_experiment(get_experiment("sparse-orders"), tmp_path / "d", quick=True, overrides={**tiny, "records": str(records), "domains": ["uci"], "uci_iterations": 6}, data_dir=data)
    with pytest.raises(ValueError, match="unknown domain"):
        get_experiment("sparse-orders").trials(get_experiment("sparse-orders").resolve_config(True, {"domains": ["cifar"]}))


@pytest.mark.parametrize("case", ["relu", "tanh", "one layer"])
@pytest.mark.parametrize("k", [1, 2])
def test_top_k_by_task_runs_equals_routed_rows(k, case):
    """A training batch (equal runs of one task each, at least the width) takes one batched product
    per slot over the runs, the mixing weights folded into the runs' weights for ReLU, applied after
    for tanh; the same rows shuffled are routed by layer. Outputs and every gradient
    (straight-through weights included) agree, also where every task chose the same layer."""
    torch.manual_seed(5)
    core = TopKSoftOrdering([Dense(4, activation="tanh" if case == "tanh" else "relu") for _ in range(3)], 5, k=k, sample=False)
    with torch.no_grad():
        core.logits.normal_(0, 2)
        if case == "one layer":
            core.logits[:, 1] += 10.0  # layer 1 first everywhere
    task = torch.tensor([3, 1, 4, 0]).repeat_interleave(5)
    h = torch.randn(20, 3, requires_grad=True)  # narrow: read as zero-padded to 4
    shuffle = torch.randperm(20)
    assert core._task_runs(task) is not None and core._task_runs(task[shuffle]) is None
    params = [h, *core.parameters()]
    weight = torch.randn(20, 4)
    by_runs = core(h, task)
    grads = torch.autograd.grad((by_runs * weight).sum(), params, allow_unused=True)
    routed = core(h[shuffle], task[shuffle])[torch.argsort(shuffle)]
    routed_grads = torch.autograd.grad((routed * weight).sum(), params, allow_unused=True)
    torch.testing.assert_close(by_runs, routed, **TOL)
    for a, b in zip(grads, routed_grads):
        assert (a is None) == (b is None)  # with k = 1 and one layer chosen, the others get none
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)
