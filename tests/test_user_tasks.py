"""The user's own tasks from CSV files, and `softorder fit` / `softorder predict`."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

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
    task, prep = csv_task(path, label="outcome")
    assert prep.columns == ["a", "b", "c"] and prep.label == "outcome" and prep.classes == ["no", "yes"]
    assert task.spec.name == "loans" and task.spec.kind == "binary" and task.spec.input_shape == (3,)
    x, y = task.splits["train"]
    assert x.shape == (48, 3) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(y.tolist()) == {0, 1}
    assert task.splits["val"][0].shape == (12, 3)


def test_csv_without_header_semicolons_and_regression(tmp_path):
    rows = [[i / 10, (i * 7) % 5, i * 0.5] for i in range(30)]
    path = write_csv(tmp_path / "reg.txt", rows, sep=";")
    task, _ = csv_task(path, kind="regression")
    assert task.spec.kind == "regression" and task.splits["train"][1].shape == (24, 1)


@pytest.mark.parametrize(
    "content, kwargs, error, match",
    [
        ("a,b\n1,2\n3\n", {}, ValueError, "row 3 has 1 cells"),
        ("a,b,y\n1,x,0\n2,3,1\n", {"label": "y"}, ValueError, "row 2, column 'b': 'x' is not a finite number"),
        ("a,b\n1,0\n2,1\n", {"label": "target"}, ValueError, r"no column named 'target'; choose one of \['a', 'b'\]"),
        ("a,b\n1,0\n2,0\n", {}, ValueError, "has only one value"),
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


# --- a user's own tasks end to end: fit, keep, predict, reuse; every bad input answered -----------


def fit_cli(*args):
    from softorder.cli import main

    return main(["fit", *map(str, args), "--iterations", "12", "--width", "8", "--no-progress"])


def test_fit_predict_and_reuse_from_the_command_line(tmp_path, capsys):
    """The README's walk-through: two tasks, predictions on new rows of one, a third task --from the run."""
    import softorder
    from softorder.cli import main

    header = ["x", "y", "z", "label"]
    a = write_csv(tmp_path / "loans.csv", make_rows(60, 2, 3), header=header)
    b = write_csv(tmp_path / "risk.csv", make_rows(60, 3, 4), header=header)
    assert fit_cli(a, b, "--out", tmp_path / "run") == 0
    for ordering in ("parallel", "soft"):
        assert (tmp_path / "run" / ordering / "model" / "model.json").is_file()
    new = write_csv(tmp_path / "new.csv", [r[:3] for r in make_rows(7, 2, 9)], header=header[:3])  # no label column
    assert main(["predict", str(tmp_path / "run"), str(new), "--task", "loans", "--out", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "predicted,p(no),p(yes)" and len(lines) == 1 + 7
    assert all(line.split(",")[0] in ("no", "yes") for line in lines[1:])
    model = softorder.load(tmp_path / "run", "soft")
    assert model.model.task_names == ["loans", "risk"] and model.preprocessing["loans"].classes == ["no", "yes"]
    c = write_csv(tmp_path / "third.csv", make_rows(60, 2, 5), header=header)
    assert fit_cli(c, "--out", tmp_path / "reuse", "--from", tmp_path / "run") == 0
    assert "reusing the shared layers" in capsys.readouterr().out
    assert fit_cli(c, "--out", tmp_path / "other", "--from", tmp_path / "run", "--ordering", "parallel") == 2
    assert "trains a soft order over them" in capsys.readouterr().err and not (tmp_path / "other").exists()
    reused = softorder.load(tmp_path / "reuse")
    trained = softorder.load(tmp_path / "run", "soft")
    for p, q in zip(reused.model.core.layers.parameters(), trained.model.core.layers.parameters()):
        assert torch.equal(p, q)  # frozen: the reused layers did not change


def test_saved_model_predicts_as_the_trained_one(tmp_path):
    from softorder.saved import SavedModel

    path = write_csv(tmp_path / "t.csv", make_rows(40, 3, 6), header=["a", "b", "c", "y"])
    train_user_tasks([path], tmp_path / "run", orderings=("soft",), iterations=5, width=8, progress=False, out=io.StringIO())
    saved = SavedModel.read(tmp_path / "run" / "soft" / "model")
    x = torch.rand(4, 3)
    again = SavedModel(saved.model, saved.build, saved.preprocessing).save(tmp_path / "copy")
    torch.testing.assert_close(SavedModel.read(again).predict("t", x), saved.predict("t", x))
    assert torch.allclose(saved.predict("t", x).sum(1), torch.ones(4))


@pytest.mark.parametrize(
    "content, args, message",
    [
        ("\ufeffa,b,y\n1,2,0\n3,4,1\n", ["--label", "y"], None),  # a byte-order mark is not part of the header
        ("a,b,y\n", [], "has a header but no rows"),
        ("a,b,y\n1,2,0\n3,4,1\n", ["--label", "target"], "no column named 'target'; choose one of"),
        ("a,y\n1,inf\n2,1\n", [], "row 2, column 'y': label 'inf' is not a finite number"),
        ("a,y\n" + "".join(f"{i},{i * 0.37:.3f}\n" for i in range(60)), [], "60 distinct numbers; give --kind regression"),
    ],
)
def test_bad_task_files_get_a_message_not_a_traceback(tmp_path, capsys, content, args, message):
    path = tmp_path / "task.csv"
    path.write_text(content, encoding="utf-8")
    code = fit_cli(path, "--out", tmp_path / "run", *args)
    if message is None:
        assert code == 0
    else:
        assert code == 2 and re.search(message, capsys.readouterr().err)


def test_labels_compare_as_numbers():
    from softorder.data.csv_tasks import _encode

    y, kind, classes = _encode(Path("t.csv"), ["1", "1.0", "2", "2.00"], None, "y", 2)
    assert kind == "binary" and classes == ["1", "2"] and y.tolist() == [0, 0, 1, 1]


def test_continuous_target_with_kind_regression(tmp_path):
    path = write_csv(tmp_path / "r.csv", [[i, i * 0.37] for i in range(60)], header=["a", "y"])
    data = csv_tasks([path], kinds=["regression"])
    assert data.spec("r").kind == "regression"


@pytest.mark.parametrize("what", ["directory", "latin-1", "out-is-a-file"])
def test_unusable_paths_are_named(tmp_path, capsys, what):
    good = write_csv(tmp_path / "good.csv", make_rows(20, 2, 1), header=["a", "b", "c", "y"])
    out = tmp_path / "run"
    if what == "directory":
        (tmp_path / "folder.csv").mkdir()
        code, needle = fit_cli(tmp_path / "folder.csv", "--out", out), "is a directory"
    elif what == "latin-1":
        bad = tmp_path / "latin.csv"
        bad.write_bytes("a,b\n1,caf\xe9\n".encode("latin-1"))
        code, needle = fit_cli(bad, "--out", out), "latin.csv is not UTF-8 text"
    else:
        out.write_text("not a folder")
        code, needle = fit_cli(good, "--out", out), "is a file; --out needs a folder"
    assert code == 2 and needle in capsys.readouterr().err


def test_a_folder_holding_another_run_is_refused(tmp_path, capsys):
    a = write_csv(tmp_path / "a.csv", make_rows(30, 2, 1), header=["x", "y", "z", "label"])
    b = write_csv(tmp_path / "b.csv", make_rows(30, 2, 2), header=["x", "y", "z", "label"])
    assert fit_cli(a, "--out", tmp_path / "run", "--ordering", "soft") == 0
    capsys.readouterr()
    assert fit_cli(a, "--out", tmp_path / "run", "--ordering", "soft", "--lr", "0.01") == 2
    assert "holds a run with other settings or data (lr)" in capsys.readouterr().err
    b.rename(tmp_path / "a2.csv")
    (tmp_path / "a2.csv").rename(b)  # same name, other content: the data differ
    a.write_text(b.read_text())
    assert fit_cli(a, "--out", tmp_path / "run", "--ordering", "soft") == 2
    assert "(files)" in capsys.readouterr().err
    assert fit_cli(b, "--out", tmp_path / "run2", "--ordering", "soft") == 0  # a new folder is fine


def test_written_files_respect_the_umask(tmp_path):
    import os

    from softorder._io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_headerless_file_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("\ufeff" + "".join(f"{i},{i % 2}\n" for i in range(10)), encoding="utf-8")
    task, prep = csv_task(path)
    assert not prep.header and sum(len(task.splits[s][0]) for s in ("train", "val")) == 10


def test_divergence_is_a_message_naming_what_was_kept(tmp_path, capsys, monkeypatch):
    from softorder import TrainingDiverged, fit
    from softorder.cli import main
    from softorder.experiments import user_tasks

    path = write_csv(tmp_path / "t.csv", make_rows(20, 2, 1), header=["a", "b", "c", "y"])
    data = csv_tasks([path])
    model = user_tasks.build_model(data.specs, width=4, depth=2)
    with torch.no_grad():
        next(model.core.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):  # none is written before the first evaluation
        fit(model, data, dict(iterations=5, eval_every=5, progress=False), run_dir=tmp_path / "run")

    def diverge(*args, **kwargs):
        raise TrainingDiverged("loss of task 't' is nan at iteration 0; no checkpoint was written")

    monkeypatch.setattr(user_tasks, "train_user_tasks", diverge)
    assert main(["fit", str(path), "--out", str(tmp_path / "run2")]) == 1
    assert "training diverged: loss of task 't' is nan" in capsys.readouterr().err
