"""The user's own tasks from CSV files, and `softorder train`'s engine."""

import io

import numpy as np
import pytest

from softorder.data.csv_tasks import csv_task, csv_tasks
from softorder.experiments.user_tasks import train_user_tasks


def write_csv(path, rows, header=None, sep=","):
    lines = ([sep.join(header)] if header else []) + [sep.join(str(c) for c in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_rows(n, classes, seed, missing=False):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        x = rng.random(3) * [1, 10, 100]
        label = ["no", "yes", "maybe"][int(x[0] * classes) % classes]
        cells = [f"{v:.3f}" for v in x]
        if missing and i % 7 == 0:
            cells[1] = "?"
        rows.append(cells + [label])
    return rows


def test_csv_task_with_header_and_missing_cells(tmp_path):
    path = write_csv(tmp_path / "loans.csv", make_rows(60, 2, 0, missing=True), header=["a", "b", "c", "outcome"])
    task = csv_task(path, label="outcome")
    assert task.spec.name == "loans" and task.spec.kind == "binary" and task.spec.input_shape == (3,)
    x, y = task.splits["train"]
    assert x.shape == (48, 3) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(y.tolist()) == {0, 1}
    assert task.splits["val"][0].shape == (12, 3)


def test_csv_without_header_semicolons_and_regression(tmp_path):
    rows = [[i / 10, (i * 7) % 5, i * 0.5] for i in range(30)]
    path = write_csv(tmp_path / "reg.txt", rows, sep=";")
    task = csv_task(path, kind="regression")
    assert task.spec.kind == "regression" and task.splits["train"][1].shape == (24, 1)


@pytest.mark.parametrize(
    "content, kwargs, error, match",
    [
        ("a,b\n1,2\n3\n", {}, ValueError, "row 3 has 1 cells"),
        ("a,b,y\n1,x,0\n2,3,1\n", {"label": "y"}, ValueError, "non-numeric feature 'x'.*row 1, column 'b'"),
        ("a,b\n1,0\n2,1\n", {"label": "target"}, KeyError, "no column named 'target'"),
        ("a,b\n1,0\n2,0\n", {}, ValueError, "only one label value"),
        ("", {}, ValueError, "is empty"),
    ],
)
def test_bad_csv_files_are_named(tmp_path, content, kwargs, error, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(error, match=match):
        csv_task(path, **kwargs)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        csv_task(tmp_path / "nope.csv")


def test_train_user_tasks_end_to_end(tmp_path):
    paths = [
        write_csv(tmp_path / "one.csv", make_rows(50, 2, 1)),
        write_csv(tmp_path / "two.csv", make_rows(40, 3, 2)),
    ]
    out = io.StringIO()
    results = train_user_tasks(paths, tmp_path / "run", orderings=("parallel", "soft"), iterations=30, width=8, progress=False, out=out)
    assert set(results) == {"parallel", "soft"} and set(results["soft"]) == {"one", "two"}
    assert "validation error" in out.getvalue()
    for name in ("results.json", "layer_usage.png", "task_similarity.png", "soft/checkpoint.pt"):
        assert (tmp_path / "run" / name).exists(), name
    with pytest.raises(ValueError, match="unknown ordering"):
        train_user_tasks(paths, tmp_path / "run2", orderings=("diagonal",))
    tasks = csv_tasks(paths)
    assert tasks.task_names == ["one", "two"]
    assert (tasks.spec("one").kind, tasks.spec("two").kind) == ("binary", "multiclass")
    assert tasks.spec("two").num_outputs == 3  # labels no / yes / maybe


def test_softorder_fit_command(tmp_path, capsys):
    from softorder.cli import main

    a = write_csv(tmp_path / "a.csv", make_rows(30, 2, 3), header=["x", "y", "z", "label"])
    b = write_csv(tmp_path / "b.csv", make_rows(30, 3, 4), header=["x", "y", "z", "label"])
    code = main(["fit", str(a), str(b), "--label", "label", "--ordering", "soft", "--iterations", "10", "--width", "8", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0 and "validation error" in capsys.readouterr().out
    assert main(["fit", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r2")]) == 2
    assert "does not exist" in capsys.readouterr().err
