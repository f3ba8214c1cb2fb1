"""results.csv (one row per trial, method, task and split) and --tensorboard event files.

Tiny runs of the presets on synthetic data (the fake UCI, Omniglot and CelebA files of
softorder.data.fake), each a few seconds on one CPU thread.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from softorder.data.fake import write_fake_celeba, write_fake_omniglot, write_fake_uci
from softorder.experiments import get_experiment
from softorder.experiments.runner import TIDY_COLUMNS, Experiment, Trial, results_table, run_experiment


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def check_table(out: Path, params: list[str], rows: int) -> list[dict[str, str]]:
    """results.csv has the trial's key and parameters (but ``method``, a tidy column), then the tidy columns, and ``rows`` rows whose
    errors are numbers and whose trials all have a result.json."""
    columns, table = read_csv(out / "results.csv")
    assert columns == ["trial_key", *params, *TIDY_COLUMNS]
    assert len(table) == rows
    keys = {json.loads(p.read_text())["key"] for p in (out / "trials").rglob("result.json")}
    assert {r["trial_key"] for r in table} == keys
    assert all(0.0 <= float(r["error"]) for r in table)
    assert len({(r["trial_key"], r["method"], r["task"], r["split"]) for r in table}) == rows  # one row each
    return table


# --- results.csv ---------------------------------------------------------------------------------


def test_random_tasks_rows_are_training_errors(tmp_path):
    overrides = {"settings": ["linear"], "linear_m": 4, "linear_ns": [8], "trials": 1, "linear_iterations": 4, "eval_every": 2}
    out = tmp_path / "run"
    run_experiment(get_experiment("random-tasks"), out, quick=True, overrides=overrides)
    # parallel at n = 4 and 8, permuted at 8; two tasks each
    table = check_table(out, ["setting", "ordering", "n", "trial"], rows=3 * 2)
    assert {r["split"] for r in table} == {"train"} and {r["loss"] for r in table} == {""}
    assert {r["method"] for r in table} == {"parallel", "permuted"}
    result = json.loads((out / "trials" / "linear_permuted_n=8_trial=0" / "result.json").read_text())["result"]
    permuted = {r["task"]: float(r["error"]) for r in table if r["trial_key"] == "linear/permuted/n=8/trial=0"}
    assert permuted == pytest.approx({t: 1 - a for t, a in result["task_accuracy"].items()})


def test_uci_rows_are_each_tasks_validation_error(tmp_path):
    data = tmp_path / "data"
    write_fake_uci(data, rows=30)
    out = tmp_path / "run"
    overrides = dict(tasks=["iris", "wine"], methods=["parallel", "soft"], dropouts=[0.8], trials=2, iterations=4, eval_every=2, width=8, verify_data=False)
    run_experiment(get_experiment("uci"), out, quick=True, overrides=overrides, data_dir=data)
    table = check_table(out, ["dropout", "trial"], rows=2 * 2 * 2)  # methods x trials x tasks
    assert {r["split"] for r in table} == {"val"} and {r["task"] for r in table} == {"iris", "wine"}
    row = next(r for r in table if r["trial_key"] == "dropout=0.8/soft/trial=1" and r["task"] == "wine")
    assert (row["dropout"], row["method"], row["trial"]) == ("0.8", "soft", "1")
    result = json.loads((out / "trials" / "dropout=0.8_soft_trial=1" / "result.json").read_text())["result"]
    assert float(row["error"]) == result["final_val_error"]["wine"]


def test_omniglot_rows_and_the_table_is_rewritten_as_trials_finish(tmp_path):
    data = tmp_path / "data"
    write_fake_omniglot(data)
    out = tmp_path / "run"
    overrides = dict(num_tasks=[2], methods=["parallel", "soft"], iterations=2, eval_every=2, width=4, downsample=5, verify_data=False)
    experiment = get_experiment("omniglot")
    run_experiment(experiment, out, quick=True, overrides=overrides, data_dir=data, trial_keys=["tasks=2/test=0.1/soft/trial=0"])
    check_table(out, ["num_tasks", "test_fraction", "trial"], rows=2)  # the one finished trial, two alphabets
    run_experiment(experiment, out, quick=True, overrides=overrides, data_dir=data)
    table = check_table(out, ["num_tasks", "test_fraction", "trial"], rows=2 * 2)
    assert [r["method"] for r in table] == ["parallel", "parallel", "soft", "soft"]  # the grid's order
    assert {r["task"] for r in table} == {"Gujarati", "Sylheti"} and {r["split"] for r in table} == {"test"}


def test_celeba_rows_have_each_tasks_test_error_and_loss(tmp_path):
    data = tmp_path / "data"
    write_fake_celeba(data, n=12, landmarks=True)
    out = tmp_path / "run"
    overrides = dict(methods=["soft+landmarks"], available_only=False, image_size=32, batch_size=4, iterations=2, eval_every=2, width=8, verify_data=False)
    run_experiment(get_experiment("celeba"), out, quick=True, overrides=overrides, data_dir=data)
    table = check_table(out, ["trial"], rows=40 + 1)  # 40 attributes and the landmarks
    assert {r["split"] for r in table} == {"test"} and "landmarks" in {r["task"] for r in table}
    assert all(float(r["loss"]) >= 0 for r in table)


def test_building_blocks_rows_are_the_conditions_on_the_held_out_task(tmp_path, monkeypatch):
    from softorder.data import uci

    data = tmp_path / "data"
    write_fake_uci(data, rows=30)
    monkeypatch.setattr(uci, "uci_tasks", functools.partial(uci.uci_tasks, verify=False))  # the fake files' checksums differ
    out = tmp_path / "run"
    overrides = dict(heldout_tasks=["iris"], trials=1, width=4, pretrain_iterations=2, heldout_iterations=2)
    run_experiment(get_experiment("building-blocks"), out, quick=True, overrides=overrides, data_dir=data)
    table = check_table(out, ["heldout", "trial"], rows=3)
    assert [r["method"] for r in table] == ["learned-blocks", "random-blocks", "single-task"]
    assert {r["task"] for r in table} == {"iris"} and {r["split"] for r in table} == {"val"}


class _Toy(Experiment):
    """An experiment of one's own: the default tidy_rows reads ``final_<split>_error`` dicts."""

    name = "toy"

    def default_config(self, quick):
        return {"sizes": [2, 3]}

    def trials(self, config):
        return [Trial(f"size={s}", {"size": s, "widths": [s, s]}) for s in config["sizes"]]

    def run_trial(self, config, trial, trial_dir, data_dir):
        return {}

    def summarize(self, config, results, out_dir):
        return {}


def test_default_rows_parameters_as_columns_and_a_header_alone(tmp_path):
    toy = _Toy()
    trials = toy.trials(toy.default_config(True))
    results = {"size=3": {"method": "soft", "final_val_error": {"a": 0.25, "b": 0.5}, "final_val_loss": {"a": 0.7}, "task_test_error": {"a": 0.1}}}
    columns, rows = results_table(toy, {}, trials, results)
    assert columns == ["trial_key", "size", "widths", *TIDY_COLUMNS]
    assert [(r["task"], r["split"], r["error"], r["loss"]) for r in rows] == [("a", "val", 0.25, 0.7), ("b", "val", 0.5, None), ("a", "test", 0.1, None)]
    out = tmp_path / "run"
    run_experiment(toy, out)  # no rows: the trials return nothing the default reads
    assert read_csv(out / "results.csv") == (["trial_key", "size", "widths", *TIDY_COLUMNS], [])


# --- TensorBoard ---------------------------------------------------------------------------------


def events(folder: Path):
    """The scalar and histogram tags (and the scalars' steps) of the event files in one run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    return acc, set(tags["scalars"]), set(tags["histograms"])


def test_reproduce_with_tensorboard_logs_errors_losses_and_soft_orders(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install 'softorder[tensorboard]')")
    from softorder.cli import main

    data = tmp_path / "data"
    write_fake_uci(data, rows=30)
    tb = tmp_path / "tb"
    args = ["reproduce", "uci", "--quick", "--out", str(tmp_path / "run"), "--data-dir", str(data), "--trials", "1", "--tensorboard", str(tb)]
    for pair in ('tasks=["iris","wine"]', 'methods=["parallel","soft"]', "dropouts=[0.8]", "iterations=4", "eval_every=2", "width=8", "verify_data=false"):
        args += ["--set", pair]
    assert main(args) == 0
    assert sorted(str(p.relative_to(tb)) for p in tb.glob("*/*/*")) == ["dropout=0.8/parallel/trial=0", "dropout=0.8/soft/trial=0"]
    acc, scalars, histograms = events(tb / "dropout=0.8" / "soft" / "trial=0")
    assert {"loss/train", "error/val", "loss/val", "val_error/iris", "val_error/wine"} <= scalars
    mixing = {t for t in scalars if t.startswith("mixing/")}
    assert len(mixing) == 2 * 4 * 4 and "mixing/wine/depth4/layer1" in mixing  # tasks x depths x layers
    assert histograms == {f"layer_usage/depth{d}/layer{l}" for d in range(1, 5) for l in range(1, 5)}
    assert [e.step for e in acc.Scalars("error/val")] == [2, 4]
    at_end = [acc.Scalars(f"mixing/iris/depth2/layer{l}")[-1].value for l in range(1, 5)]
    assert sum(at_end) == pytest.approx(1.0, abs=1e-5)  # a softmax over the layers
    result = json.loads((tmp_path / "run" / "trials" / "dropout=0.8_soft_trial=0" / "result.json").read_text())["result"]
    assert acc.Scalars("val_error/wine")[-1].value == pytest.approx(result["final_val_error"]["wine"])
    _, scalars, histograms = events(tb / "dropout=0.8" / "parallel" / "trial=0")
    assert "error/val" in scalars and not [t for t in scalars if t.startswith("mixing/")] and not histograms


def test_fit_with_tensorboard_logs_one_run_per_ordering(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install 'softorder[tensorboard]')")
    from softorder.cli import main

    rng = np.random.default_rng(0)
    files = []
    for name in ("a", "b"):
        x = rng.random((40, 3))
        lines = ["x1,x2,x3,label"] + [f"{r[0]:.3f},{r[1]:.3f},{r[2]:.3f},{'yes' if r[0] > 0.5 else 'no'}" for r in x]
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
        files.append(str(tmp_path / f"{name}.csv"))
    tb = tmp_path / "tb"
    assert main(["fit", *files, "--iterations", "10", "--width", "4", "--out", str(tmp_path / "run"), "--no-progress", "--identity-layer", "--tensorboard", str(tb)]) == 0
    assert sorted(p.name for p in tb.iterdir()) == ["parallel", "soft"]
    acc, scalars, _ = events(tb / "soft")
    assert {"loss/train", "error/val", "val_error/a", "val_error/b", "mixing/b/depth1/layer1", "mixing/b/depth4/identity"} <= scalars
    assert [e.step for e in acc.Scalars("loss/train")] == list(range(1, 11))  # evaluated every iterations // 10


def test_tensorboard_missing_names_the_extra(tmp_path, monkeypatch, capsys):
    from softorder.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(SystemExit, match=r"softorder\[tensorboard\]"):
        main(["reproduce", "random-tasks", "--quick", "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")])
    assert not (tmp_path / "run").exists()  # refused before any training


def test_only_the_first_process_logs_and_nothing_outside_a_block(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install 'softorder[tensorboard]')")
    from softorder.experiments.tensorboard_log import eval_logger, run_folder, tensorboard_logging

    assert eval_logger("x") is None
    with tensorboard_logging(None):
        assert eval_logger("x") is None
    with tensorboard_logging(tmp_path):
        assert eval_logger("x") is not None
        monkeypatch.setenv("RANK", "1")
        assert eval_logger("x") is None
    assert run_folder("tasks=2/soft+identity/trial=0") == "tasks=2/soft+identity/trial=0"
    assert run_folder("../a b/./c") == "a_b/c"
