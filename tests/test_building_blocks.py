"""The building-blocks preset (beyond the paper), end to end on synthetic UCI-like tasks."""

import json

import pytest
import torch

import softorder.data.uci as uci
from softorder import TaskArrays, TaskSpec, TensorTasks
from softorder.experiments import get_experiment
from softorder.experiments.runner import run_experiment

NAMES = ["alpha", "beta", "gamma"]


def fake_uci_tasks(data_dir=None, tasks=None, split_seed=0, **_):
    g = torch.Generator().manual_seed(split_seed)
    out = []
    for i, name in enumerate(tasks or NAMES):
        x = torch.rand(50, 3 + i, generator=g)
        y = (x[:, 0] > 0.5).long()
        out.append(TaskArrays(TaskSpec(name, (3 + i,), "multiclass", 2), {"train": (x[:40], y[:40]), "val": (x[40:], y[40:])}))
    return TensorTasks(out)


@pytest.fixture
def fake_uci(monkeypatch):
    monkeypatch.setattr(uci, "uci_tasks", fake_uci_tasks)
    monkeypatch.setattr(uci, "TASK_NAMES", tuple(NAMES))


def test_building_blocks_end_to_end_and_resume(tmp_path, fake_uci):
    exp = get_experiment("building-blocks")
    overrides = dict(heldout_tasks=["alpha"], trials=2, pretrain_iterations=8, heldout_iterations=4, width=4, depth=2)
    summary = run_experiment(exp, tmp_path, quick=True, overrides=overrides)
    assert summary["trials_finished"] == 2
    assert set(summary["mean_error"]) == {"learned-blocks", "random-blocks", "single-task"}
    assert summary["mean_error"]["learned-blocks"]["n"] == 2
    assert (tmp_path / "building_blocks.png").exists()
    result = json.loads((tmp_path / "trials" / "alpha_trial=1" / "result.json").read_text())
    assert 0.0 <= result["result"]["learned-blocks"] <= 1.0

    stamp = (tmp_path / "trials" / "alpha_trial=1" / "result.json").stat().st_mtime_ns
    again = run_experiment(exp, tmp_path, quick=True, overrides=overrides)  # resume: nothing to run
    assert again["mean_error"] == summary["mean_error"]
    assert (tmp_path / "trials" / "alpha_trial=1" / "result.json").stat().st_mtime_ns == stamp


def test_changed_settings_refuse_to_mix(tmp_path, fake_uci):
    exp = get_experiment("building-blocks")
    overrides = dict(heldout_tasks=["beta"], trials=1, pretrain_iterations=3, heldout_iterations=2, width=4, depth=2)
    run_experiment(exp, tmp_path, quick=True, overrides=overrides)
    with pytest.raises(ValueError, match="other settings \\(width\\)"):
        run_experiment(exp, tmp_path, quick=True, overrides={**overrides, "width": 6})
    with pytest.raises(ValueError, match="unknown option 'widht'; did you mean 'width'"):
        run_experiment(exp, tmp_path, quick=True, overrides={"widht": 6})
