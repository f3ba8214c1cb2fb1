"""The random-tasks, mnist and visualize presets: configuration, a tiny end-to-end run, resumption.

Synthetic data only (random tasks; a small fake MNIST in the official IDX gz format written into
tmp_path). Each run uses tiny settings through overrides, so every test takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from softorder.data.fake import write_fake_mnist
from softorder.experiments import get_experiment
from softorder.experiments import mnist as mnist_mod
from softorder.experiments import random_tasks as rt_mod
from softorder.experiments import visualize as vis_mod
from softorder.experiments.runner import run_experiment

TINY = {
    "random-tasks": {
        "linear_m": 6,
        "relu_m": 4,
        "linear_ns": [8],
        "relu_ns": [8],
        "trials": 2,
        "linear_iterations": 12,
        "relu_iterations": 12,
        "eval_every": 6,
    },
    "mnist": {
        "task_counts": [1, 2],
        "trials": 2,
        "iterations": 6,
        "eval_every": 3,
        "trace_every": 2,
        "width": 8,
        "batch_size": 4,
    },
    "visualize": {
        "width": 8,
        "iterations": 6,
        "batch_size": 32,
        "eval_every": 3,
        "trials": 2,
        "sweep_values": [0.0, 0.5, 1.0],
    },
}
FIGURES = {
    "random-tasks": ["random_tasks.png"],
    "mnist": ["mnist_relative.png", "mnist_soft_trace.png", "mnist_layer_usage.png"],
    "visualize": ["visualize_sweep.png", "visualize_tasks.png"],
}


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small MNIST (200 train / 50 test images, every digit present) that skips the checksums."""
    root = tmp_path / "data"
    write_fake_mnist(root, n_train=200, n_test=50)
    monkeypatch.setattr(mnist_mod, "VERIFY_DATA", False)
    return root


@pytest.mark.parametrize("name", ["random-tasks", "mnist", "visualize"])
def test_config_resolves_and_rejects_unknown_keys(name: str) -> None:
    exp = get_experiment(name)
    full, quick = exp.resolve_config(False), exp.resolve_config(True)
    assert full["quick"] is False and quick["quick"] is True
    assert set(full) == set(quick)
    json.dumps(full)  # the configuration is written as JSON
    with pytest.raises(ValueError, match="unknown option"):
        exp.resolve_config(True, {"not_a_setting": 1})
    with pytest.raises(ValueError, match="did you mean 'trials'"):
        exp.resolve_config(True, {"trails": 3})
    assert exp.resolve_config(True, {"trials": 7})["trials"] == 7


def test_paper_settings_are_the_defaults() -> None:
    rt = get_experiment("random-tasks").resolve_config(False)
    assert (rt["linear_m"], rt["relu_m"]) == (128, 16)
    mn = get_experiment("mnist").resolve_config(False)
    assert (mn["iterations"], mn["batch_size"], mn["width"], mn["depth"], mn["dropout"]) == (20_000, 64, 64, 4, 0.5)
    assert max(mn["task_counts"]) >= 32 and mn["methods"] == ["single", "parallel", "permuted", "soft"]
    vis = get_experiment("visualize").resolve_config(False)
    assert (vis["num_tasks"], vis["width"], vis["depth"], vis["digit"]) == (10, 100, 4, 4)


def _run(name: str, out: Path, data_dir: Path | None) -> dict:
    return run_experiment(get_experiment(name), out, quick=True, overrides=TINY[name], data_dir=data_dir)


@pytest.mark.parametrize("name", ["random-tasks", "mnist", "visualize"])
def test_tiny_run_writes_everything_and_resumes(name: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = request.getfixturevalue("fake_mnist") if name != "random-tasks" else None
    out = tmp_path / "run"
    summary = _run(name, out, data_dir)

    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["quick"] is True
    exp = get_experiment(name)
    trials = exp.trials(config)
    for trial in trials:
        tdir = out / "trials" / trial.dirname
        result = json.loads((tdir / "result.json").read_text())
        assert result["key"] == trial.key
        assert (tdir / "checkpoint.pt").exists()  # trained through fit(run_dir=...): resumable
    saved = json.loads((out / "summary.json").read_text())
    assert saved["trials_finished"] == saved["trials_total"] == len(trials)
    assert summary["trials_finished"] == len(trials)
    text = json.dumps(saved)
    assert '"mean"' in text and '"ci95"' in text
    for fig in FIGURES[name]:
        png = out / fig
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig

    # a second run finds every trial finished and runs none of them
    def refuse(*args, **kwargs):
        raise AssertionError("a finished trial was run again")

    monkeypatch.setattr(type(exp), "run_trial", refuse)
    again = _run(name, out, data_dir)
    assert again["trials_finished"] == len(trials)


def test_changed_settings_are_refused_in_the_same_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny = {**TINY["random-tasks"], "settings": ["linear"], "trials": 1}
    run_experiment(get_experiment("random-tasks"), out, quick=True, overrides=tiny)
    with pytest.raises(ValueError, match="other settings"):
        run_experiment(get_experiment("random-tasks"), out, quick=True, overrides={**tiny, "lr": 0.5})


def test_a_trial_running_in_another_process_is_skipped(tmp_path: Path) -> None:
    import io

    from softorder.experiments.runner import LOCK_NAME, trial_dir_of

    fcntl = pytest.importorskip("fcntl")  # POSIX only, as the lock itself

    exp = get_experiment("random-tasks")
    out = tmp_path / "run"
    tiny = {**TINY["random-tasks"], "settings": ["linear"], "trials": 1}
    busy = exp.trials(exp.resolve_config(True, tiny))[0]
    lock_path = trial_dir_of(out, busy) / LOCK_NAME
    lock_path.parent.mkdir(parents=True)
    log = io.StringIO()
    with open(lock_path, "a") as held:  # another process is training this trial
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        summary = run_experiment(exp, out, quick=True, overrides=tiny, out=log)
    assert f"{busy.key} is running in another process; skipped" in log.getvalue()
    assert summary["trials_finished"] == summary["trials_total"] - 1
    assert run_experiment(exp, out, quick=True, overrides=tiny)["trials_finished"] == summary["trials_total"]


def test_progress_reporter_prints_throttled_lines_and_always_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from softorder.experiments import runner

    clock = iter([0.0, 5.0, 40.0, 41.0])
    monkeypatch.setattr(runner.time, "monotonic", lambda: next(clock))
    seen: list[int] = []
    out = io.StringIO()
    report = runner.progress_reporter("mnist", runner.Trial("tasks=2/soft/trial=0", {}), 400, out=out, also=lambda r: seen.append(r["iteration"]))
    for it in (100, 200, 300, 400):
        report({"iteration": it, "train_loss": 0.5, "test_error": 0.125, "elapsed_s": it * 0.02})
    lines = out.getvalue().splitlines()
    assert seen == [100, 200, 300, 400]  # the wrapped callback sees every record
    assert len(lines) == 3  # 200 came 5 s after 100: skipped; the last is always printed
    assert lines[0] == "[mnist] tasks=2/soft/trial=0: iteration 100/400, train loss 0.5, test error 12.50%, 0.02 s/it"
    assert lines[-1].startswith("[mnist] tasks=2/soft/trial=0: iteration 400/400")
    monkeypatch.setattr(runner.time, "monotonic", lambda: 100.0)
    mse = io.StringIO()
    runner.progress_reporter("visualize", runner.Trial("trial=0", {}), 10, percent=False, out=mse)({"iteration": 10, "train_error": 0.01234})
    assert mse.getvalue() == "[visualize] trial=0: iteration 10/10, train error 0.01234\n"


# --- random tasks -------------------------------------------------------------------------------


def test_doubling_grid_is_closed_under_halving() -> None:
    grid = rt_mod.doubling_grid(32, 1024)
    assert grid[0] == 32 and grid[-1] == 1024 and 48 in grid and 768 in grid
    assert all(n // 2 in grid for n in grid if n >= 64)


def test_parallel_is_also_run_at_half_n() -> None:
    config = get_experiment("random-tasks").resolve_config(True, {"settings": ["linear"], "linear_ns": [8, 16], "trials": 1})
    keys = {t.key for t in get_experiment("random-tasks").trials(config)}
    assert keys == {
        "linear/parallel/n=4/trial=0",
        "linear/parallel/n=8/trial=0",
        "linear/parallel/n=16/trial=0",
        "linear/permuted/n=8/trial=0",
        "linear/permuted/n=16/trial=0",
    }


def test_random_task_model_shares_the_classifier_and_permutes_the_layers() -> None:
    from softorder.data.random_tasks import random_tasks

    data = random_tasks(2, 5, 3, seed=0)
    perm = rt_mod.build_random_task_model(data, "permuted", 3, "identity", seed=0)
    par = rt_mod.build_random_task_model(data, "parallel", 3, "identity", seed=0)
    assert perm.decoders["random0"] is perm.decoders["random1"]
    assert sum(p.numel() for p in perm.parameters()) == 2 * (3 * 3 + 3) + 3 + 1
    assert perm.core.order.tolist() == [[0, 1], [1, 0]] and par.core.order.tolist() == [[0, 1], [0, 1]]
    x = torch.rand(4, 3)
    # parallel: one function for both tasks; permuted: in the linear case y1 = O W2 W1 x, y2 = O W1 W2 x
    out = par({"random0": x, "random1": x})
    assert torch.allclose(out["random0"], out["random1"])
    out = perm({"random0": x, "random1": x})
    w1, w2 = (perm.core.layers[j].linear for j in (0, 1))
    head = perm.decoders["random0"]
    assert torch.allclose(out["random0"], head(w2(w1(x))), atol=1e-6)
    assert torch.allclose(out["random1"], head(w1(w2(x))), atol=1e-6)


def test_random_tasks_summary_pairs_permuted_n_with_parallel_half_n(tmp_path: Path) -> None:
    config = get_experiment("random-tasks").resolve_config(True, {"settings": ["linear"], "linear_ns": [8], "trials": 2})
    acc = {("parallel", 4): [0.9, 0.8], ("parallel", 8): [0.7, 0.6], ("permuted", 8): [0.85, 0.8]}
    results = {
        f"linear/{o}/n={n}/trial={t}": {"setting": "linear", "ordering": o, "n": n, "accuracy": a, "accuracy_by_iteration": [[1, a], [2, a]]}
        for (o, n), accs in acc.items()
        for t, a in enumerate(accs)
    }
    summary = get_experiment("random-tasks").summarize(config, results, tmp_path)
    row = summary["comparison"]["linear"]["8"]
    assert row["permuted_minus_parallel_at_half_n"]["mean"] == pytest.approx(((0.85 - 0.9) + (0.8 - 0.8)) / 2)
    assert row["permuted_minus_parallel_at_n"]["mean"] == pytest.approx(((0.85 - 0.7) + (0.8 - 0.6)) / 2)
    assert summary["accuracy"]["linear"]["parallel"]["4"]["mean"] == pytest.approx(0.85)
    assert (tmp_path / "random_tasks.png").exists()


# --- mnist --------------------------------------------------------------------------------------


def test_mnist_methods_of_a_trial_share_tasks_and_encoders(fake_mnist: Path) -> None:
    config = get_experiment("mnist").resolve_config(True, TINY["mnist"])
    data, pairs = mnist_mod.load_task_set(fake_mnist, 3, 1)
    again, pairs2 = mnist_mod.load_task_set(fake_mnist, 3, 1)
    assert pairs == pairs2 and data.task_names == again.task_names
    models = {m: mnist_mod.make_model(data.specs, m, config, 3, 1) for m in mnist_mod.METHODS}
    ref = models["parallel"].encoders
    for m, model in models.items():
        assert torch.equal(model.encoders.weight, ref.weight) and torch.equal(model.encoders.bias, ref.bias), m
        assert not any(p.requires_grad for p in model.encoders.parameters())  # frozen (a buffer)
    assert models["soft"].core.dropout == 0.5 and models["soft"].core.num_layers == 4


def test_mnist_relative_performance_definition(tmp_path: Path) -> None:
    exp = get_experiment("mnist")
    config = exp.resolve_config(True, {"task_counts": [2], "trials": 2, "methods": ["parallel", "soft"]})
    errs = {("parallel", 0): 0.10, ("parallel", 1): 0.20, ("soft", 0): 0.05, ("soft", 1): 0.25}
    results = {
        f"tasks=2/{m}/trial={t}": {"num_tasks": 2, "method": m, "trial": t, "test_error": e}
        for (m, t), e in errs.items()
    }
    summary = exp.summarize(config, results, tmp_path)
    rel = summary["relative_to_parallel"]["2"]["soft"]
    assert rel["mean"] == pytest.approx(((0.10 - 0.05) / 0.10 + (0.20 - 0.25) / 0.20) / 2)
    assert rel["n"] == 2 and np.isfinite(rel["ci95"])
    assert summary["test_error"]["2"]["parallel"]["mean"] == pytest.approx(0.15)


# --- visualize ----------------------------------------------------------------------------------


def test_pixel_tasks_and_scale_override(fake_mnist: Path) -> None:
    from softorder.data.mnist import load_mnist

    coords = vis_mod.pixel_coordinates()
    assert coords.shape == (784, 2) and float(coords.min()) == 0.0 and float(coords.max()) == 1.0
    assert coords[1].tolist() == pytest.approx([1 / 27, 0.0])  # row-major: x runs along a row
    mnist = load_mnist(fake_mnist, verify=False)
    images, idx = vis_mod.first_images_of_digit(mnist.train_images, mnist.train_labels, 4, 10)
    assert (mnist.train_labels[idx] == 4).all() and list(idx) == sorted(idx)
    data = vis_mod.image_tasks(images)
    assert len(data.specs) == 10 and data.specs[0].kind == "regression"
    config = get_experiment("visualize").resolve_config(True, {"width": 8})
    model = vis_mod.make_model(data.specs, config, seed=0)
    assert model.core.gate == "sigmoid" and model.core.dropout == 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        model.core.logits.normal_()
    learned = model.core.mixing().detach().clone()
    before = vis_mod.predict_image(model, "image1")
    model.eval()
    with torch.no_grad():
        raw = model({"image1": coords})["image1"]
        with vis_mod.override_scale(model, 0, 0, 1, 0.0):  # the prediction uses the overridden scale
            assert not torch.allclose(model({"image1": coords})["image1"], raw)
    with vis_mod.override_scale(model, 0, 0, 1, 1.0):
        m = model.core.mixing()
        assert m[0, 0, 1] == 1.0
        m_other = m.clone()
        m_other[0, 0, 1] = learned[0, 0, 1]
        assert torch.equal(m_other, learned)  # every other scale unchanged
    assert torch.equal(model.core.mixing(), learned)  # restored
    with vis_mod.override_scale(model, 0, 0, 1, float(learned[0, 0, 1])):
        assert np.allclose(vis_mod.predict_image(model, "image1"), before, atol=1e-6)
    # another task's image does not depend on task 1's scales
    other = vis_mod.predict_image(model, "image2")
    with vis_mod.override_scale(model, 0, 0, 1, 0.0):
        assert np.allclose(vis_mod.predict_image(model, "image2"), other)
    with pytest.raises(IndexError):
        with vis_mod.override_scale(model, 0, 9, 0, 0.5):
            pass


def test_effect_statistics_reads_similarity_and_magnitude() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((28, 28)).astype(np.float32)
    sweep = np.zeros((3, 2, 2, 28, 28), dtype=np.float32)
    for d in range(3):
        for t in range(2):
            sweep[d, t, 1] = base * (1.0 / (d + 1))  # the same effect, shrinking with depth
    stats = vis_mod.effect_statistics(sweep)
    assert stats["mean_pairwise_effect_correlation"] == pytest.approx(1.0)
    mags = stats["effect_magnitude_by_depth"]
    assert mags[0] > mags[1] > mags[2]


def test_cli_reproduce_runs_a_preset_with_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from softorder.cli import main

    out = tmp_path / "cli"
    args = ["reproduce", "random-tasks", "--quick", "--out", str(out), "--trials", "1"]
    for pair in ('settings=["linear"]', "linear_ns=[8]", "linear_m=4", "linear_iterations=4", "eval_every=2"):
        args += ["--set", pair]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials_finished"] == summary["trials_total"] == 3
    assert json.loads((out / "config.json").read_text())["linear_ns"] == [8]
    assert main(["reproduce", "random-tasks", "--quick", "--out", str(tmp_path / "x"), "--set", "linear_n=[8]"]) == 2
    assert "unknown option 'linear_n'" in capsys.readouterr().err
