"""Training: the paper's procedure, checkpoints, exact resumption, clear errors."""

import json

import pytest
import torch

from softorder import TaskArrays, TaskSpec, TensorTasks, TrainConfig, TrainingDiverged, build_model, fit
from softorder.train import CHECKPOINT_NAME, evaluate, load_checkpoint


def toy_tasks(seed: int = 0, n: int = 80) -> TensorTasks:
    """Three linearly separable-ish tasks of different kinds and widths."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for i, (kind, k, d) in enumerate([("binary", 1, 4), ("multiclass", 3, 6), ("regression", 2, 4)]):
        x = torch.rand(n, d, generator=g)
        if kind == "binary":
            y = (x[:, 0] > x[:, 1]).long()
        elif kind == "multiclass":
            y = (x[:, :3]).argmax(dim=1)
        else:
            y = torch.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 3]], dim=1)
        spec = TaskSpec(f"task{i}", (d,), kind, k)
        tasks.append(TaskArrays(spec, {"train": (x[:60], y[:60]), "val": (x[60:70], y[60:70]), "test": (x[70:], y[70:])}))
    return TensorTasks(tasks)


def small_model(data, **kw):
    return build_model(data.specs, width=16, depth=3, dropout=0.1, seed=0, **kw)


def test_fit_learns_and_records_history(tmp_path):
    data = toy_tasks()
    model = small_model(data)
    before = evaluate(model, data, "val")
    history = fit(model, data, TrainConfig(iterations=300, batch_size=16, eval_every=100, progress=False), run_dir=tmp_path)
    assert [r["iteration"] for r in history.records] == [100, 200, 300]
    after = history.last
    assert after["val_error/task1"] < before["task1"]["error"]
    assert after["val_error/task2"] < before["task2"]["error"]  # MSE for the regression task
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved == json.loads(json.dumps(history.records))
    assert (tmp_path / CHECKPOINT_NAME).exists()


def test_eval_batches_bound_the_rows_of_all_tasks_together():
    data = toy_tasks()  # 10 test rows in each of 3 tasks
    batches = list(data.eval_batches("test", 7))
    assert [sum(b.rows(n) for n in b.targets) for b in batches] == [7, 7, 7, 7, 2]
    for name in data.task_names:  # every row once, in order
        rows = torch.cat([b.inputs[name] for b in batches if name in b.targets])
        assert torch.equal(rows, data.tasks[name].splits["test"][0])
    model = small_model(data)
    small, whole = evaluate(model, data, "test", batch_size=7), evaluate(model, data, "test", batch_size=1000)
    for name in data.task_names:
        assert small[name] == pytest.approx(whole[name], rel=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        next(data.eval_batches("test", 0))


def test_history_as_csv(tmp_path):
    data = toy_tasks()
    fit(small_model(data), data, TrainConfig(iterations=20, eval_every=10, progress=False, history_format="csv"), run_dir=tmp_path)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("iteration,phase,train_loss") and len(lines) == 3


@pytest.mark.parametrize("ordering", ["soft", "permuted", "single"])
def test_resume_equals_uninterrupted_run(tmp_path, ordering):
    data = toy_tasks()
    config = dict(iterations=60, batch_size=8, eval_every=20, progress=False, seed=3)
    straight = small_model(data, ordering=ordering)
    fit(straight, data, config)

    interrupted = small_model(data, ordering=ordering)
    fit(interrupted, data, {**config, "iterations": 40}, run_dir=tmp_path)  # "killed" after iteration 40
    torch.manual_seed(12345)  # the resumed process starts with another random state
    resumed = small_model(data, ordering=ordering)
    history = fit(resumed, data, config, run_dir=tmp_path)
    assert [r["iteration"] for r in history.records] == [20, 40, 60]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_second_phase_switches_optimizer(tmp_path):
    data = toy_tasks()
    config = TrainConfig(iterations=60, eval_every=10, second_optimizer="rmsprop", second_lr=1e-5, patience=1, lr=0.5, progress=False)
    history = fit(small_model(data), data, config, run_dir=tmp_path)
    phases = history.series("phase")
    assert 2 in phases and phases == sorted(phases)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["state"]["phase"] == 2
    assert "alpha" in ckpt["optimizer"]["param_groups"][0]  # RMSprop's state
    resumed = fit(small_model(data), data, {**config.to_dict(), "iterations": 70}, run_dir=tmp_path)  # resumes in phase 2
    assert [r["iteration"] for r in resumed.records] == list(range(10, 71, 10))
    assert resumed.records[-1]["phase"] == 2
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["state"]["iteration"] == 70 and ckpt["state"]["phase"] == 2
    assert "alpha" in ckpt["optimizer"]["param_groups"][0]  # still RMSprop


def test_non_finite_loss_stops_with_task_and_iteration(tmp_path):
    data = toy_tasks()
    model = small_model(data)
    fit(model, data, TrainConfig(iterations=10, eval_every=10, progress=False), run_dir=tmp_path)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    with torch.no_grad():
        model.decoders["task2"][1].weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"task 'task2' is nan at iteration 0.*last good checkpoint"):
        fit(model, data, TrainConfig(iterations=20, eval_every=10, progress=False), run_dir=tmp_path, resume=False)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good


def test_unknown_config_key_suggests_the_right_one():
    with pytest.raises(ValueError, match="unknown training option 'iteratons'; did you mean 'iterations'"):
        TrainConfig.from_dict({"iteratons": 5})
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="adagrad2")


def test_data_errors_before_training():
    spec = TaskSpec("t", (2,), "multiclass", 3)
    x = torch.rand(4, 2)
    with pytest.raises(ValueError, match=r"task 't'.*labels in train range over \[0, 5\]"):
        TensorTasks([TaskArrays(spec, {"train": (x, torch.tensor([0, 1, 2, 5]))})])
    x[1, 1] = float("nan")
    with pytest.raises(ValueError, match="task 't', train: 1 non-finite"):
        TensorTasks([TaskArrays(spec, {"train": (x, torch.tensor([0, 1, 2, 0]))})])
    with pytest.raises(ValueError, match="row shape"):
        TensorTasks([TaskArrays(spec, {"train": (torch.rand(4, 3), torch.zeros(4, dtype=torch.long))})])


def test_model_and_data_must_agree():
    data = toy_tasks()
    other = TensorTasks([TaskArrays(TaskSpec("stranger", (4,), "binary"), {"train": (torch.rand(3, 4), torch.zeros(3))})])
    with pytest.raises(ValueError, match="tasks \\['stranger'\\] that the model does not have"):
        fit(small_model(data), other, TrainConfig(iterations=1, progress=False))


def test_corrupt_checkpoint_is_named(tmp_path):
    data = toy_tasks()
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint .* could not be read"):
        fit(small_model(data), data, TrainConfig(iterations=2, progress=False), run_dir=tmp_path)


def test_batches_depend_only_on_seed_and_iteration():
    data = toy_tasks()
    a, b = data.train_batch(7, 5, seed=1), data.train_batch(7, 5, seed=1)
    assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
    c = data.train_batch(8, 5, seed=1)
    assert not torch.equal(a.inputs["task0"], c.inputs["task0"])
    d = data.train_batch(7, 5, seed=2)
    assert not torch.equal(a.inputs["task0"], d.inputs["task0"])
    torch.manual_seed(12345)  # the global random state plays no part
    e = data.train_batch(7, 5, seed=1)
    assert all(torch.equal(a.inputs[k], e.inputs[k]) and torch.equal(a.targets[k], e.targets[k]) for k in a.inputs)


def test_worker_batches_equal_in_process_batches():
    data = toy_tasks()
    config = dict(iterations=12, batch_size=4, eval_every=12, progress=False)
    m1, m2 = small_model(data), small_model(data)
    fit(m1, data, config)
    fit(m2, data, {**config, "num_workers": 2})
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
