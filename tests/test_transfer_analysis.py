"""Reusing trained layers for new tasks (Sec. 6), and the analysis functions."""

import numpy as np
import pytest
import torch

from softorder import TaskArrays, TaskSpec, TensorTasks, TrainConfig, build_model, fit
from softorder.analysis import (
    hardness,
    plot_layer_usage,
    plot_task_similarity,
    plot_usage_distribution,
    strongest_path,
    task_distance_by_depth,
    task_similarity,
)
from softorder.transfer import assemble_for_new_tasks, trainable_parameter_count


def tiny_tasks(names, d=5, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for name in names:
        x = torch.rand(n, d, generator=g)
        y = (x.sum(dim=1) > d / 2).long()
        tasks.append(TaskArrays(TaskSpec(name, (d,), "binary"), {"train": (x, y)}))
    return TensorTasks(tasks)


def test_new_task_learns_only_the_assembly():
    old = tiny_tasks(["a", "b", "c"])
    trained = build_model(old.specs, ordering="soft", width=8, depth=3)
    fit(trained, old, TrainConfig(iterations=20, batch_size=8, progress=False, eval_splits=()))
    before = {k: v.clone() for k, v in trained.state_dict().items()}

    new = tiny_tasks(["z"], d=7, seed=1)
    model = assemble_for_new_tasks(trained, new.specs)
    frozen = [p.clone() for p in model.core.layers.parameters()]
    for a, b in zip(frozen, trained.core.layers.parameters(), strict=True):
        assert torch.equal(a, b)  # the trained layers, copied
    assert all(not p.requires_grad for p in model.core.layers.parameters())
    assert model.core.logits.requires_grad and model.core.logits.shape == (1, 3, 3)
    assert torch.count_nonzero(model.core.logits) == 0  # the uniform start
    # trainable: exactly the soft order, the new encoder and the new decoder
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "core.logits" in trainable and not any(n.startswith("core.layers.") for n in trainable)
    assert trainable == {n for n, _ in model.named_parameters() if not n.startswith("core.layers.")}
    fit(model, new, TrainConfig(iterations=30, batch_size=8, progress=False, eval_splits=()))

    for a, b in zip(frozen, model.core.layers.parameters()):
        assert torch.equal(a, b)  # the building blocks never change
    assert not torch.equal(model.core.logits, torch.zeros_like(model.core.logits))  # the order is learned
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k]), k  # the trained model is untouched
    assert trainable_parameter_count(model) == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("core.layers."))
    assert trainable_parameter_count(model) == sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in trained.core.layers.parameters())


def test_assemble_rejects_user_layers():
    from torch import nn

    from softorder import SoftOrdering

    core = SoftOrdering([nn.Linear(4, 4)], 1)
    with pytest.raises(TypeError, match="Dense or ConvPool"):
        assemble_for_new_tasks(core, [TaskSpec("x", (4,), "binary")])


def test_analysis_reads_orders():
    m = np.zeros((2, 3, 3))
    m[0, [0, 1, 2], [0, 1, 2]] = 1  # task 0: layers 1, 2, 3
    m[1, [2, 1, 0], [0, 1, 2]] = 1  # task 1: layers 3, 2, 1
    assert strongest_path(m).tolist() == [[0, 1, 2], [2, 1, 0]]
    np.testing.assert_allclose(task_distance_by_depth(m), [np.sqrt(2), 0, np.sqrt(2)])
    np.testing.assert_allclose(hardness(m), np.ones((2, 3)))
    np.testing.assert_allclose(task_similarity(m), [[1, 1 / 3], [1 / 3, 1]])
    with pytest.raises(ValueError, match="tasks, layers, depth"):
        strongest_path(np.zeros((3, 3)))


def test_plots_are_written(tmp_path):
    m = torch.softmax(torch.randn(5, 4, 4), dim=1)
    names = [f"task{i}" for i in range(5)]
    for path in (
        plot_layer_usage(m, names, tmp_path / "usage.png"),
        plot_usage_distribution(m, tmp_path / "dist.png"),
        plot_task_similarity(m, names, tmp_path / "sim.png"),
    ):
        assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
