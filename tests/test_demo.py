"""The README's main job, `softorder demo`, at a few iterations."""

import io
import json

import numpy as np
import pytest

from softorder.cli import main
from softorder.experiments.demo import ORDERINGS, SEEDS, run_demo

TASKS = ("iris", "wine", "breast-cancer", "digits")


def test_demo_prints_table_over_seeds_and_writes_figure(tmp_path, capsys):
    assert main(["demo", "--iterations", "5", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ORDERINGS == ("single", "parallel", "soft") and SEEDS == 3
    # says what the numbers are: test error, mean ± spread, over how many seeds
    assert "test error (%)" in out and "mean ± standard deviation over 3 seeds" in out
    table = out[out.index("test error (%)"):]
    header = next(line for line in table.splitlines() if line.startswith("task"))
    for label in ("single task", "parallel", "soft"):
        assert label in header
    for task in (*TASKS, "mean over tasks"):
        row = next(line for line in table.splitlines() if line.startswith(task))
        assert row.count("±") == 3, row
    assert (tmp_path / "layer_usage.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["iterations"] == 5 and results["seeds"] == [0, 1, 2]
    assert set(results["test_error"]) == {"single", "parallel", "soft"}
    for ordering, per_task in results["test_error"].items():
        assert set(per_task) == {*TASKS, "mean"}
        assert all(len(v) == 3 for v in per_task.values())
        summary = results["summary"][ordering]["mean"]
        assert summary["mean"] == pytest.approx(np.mean(per_task["mean"]))
        assert summary["std"] == pytest.approx(np.std(per_task["mean"], ddof=1))


def test_demo_seeds_and_orderings_are_arguments(tmp_path):
    buf = io.StringIO()
    results = run_demo(tmp_path, iterations=10, orderings=("parallel", "soft"), seeds=2, seed=5, progress=False, out=buf)
    assert set(results) == {"parallel", "soft"}
    for per_task in results.values():
        assert all(len(v) == 2 for v in per_task.values())
        # "mean" is each seed's mean over the tasks
        assert per_task["mean"] == pytest.approx(np.mean([per_task[t] for t in TASKS], axis=0))
    assert "over 2 seeds" in buf.getvalue()
    assert json.loads((tmp_path / "results.json").read_text())["seeds"] == [5, 6]


def test_demo_with_one_seed_and_no_soft_ordering(tmp_path):
    buf = io.StringIO()
    results = run_demo(tmp_path / "new", iterations=5, orderings=("single",), seeds=1, progress=False, out=buf)
    assert list(results) == ["single"] and len(results["single"]["mean"]) == 1
    assert "1 seed" in buf.getvalue() and "± 0.00" in buf.getvalue()
    assert (tmp_path / "new" / "results.json").is_file()
    assert not (tmp_path / "new" / "layer_usage.png").exists()
    with pytest.raises(ValueError, match="seeds"):
        run_demo(tmp_path, iterations=5, seeds=0, progress=False, out=io.StringIO())
