"""The ten UCI tasks (Sec. 4.2, Fig. 5a, A.2) on tiny files in the UCI formats, and on the real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softorder.data import uci
from softorder.data.errors import DataCorruptError, DataMissingError
from softorder.data.fake import write_fake_uci
from softorder.data.uci import encode_labels, scale_features, split_indices, uci_tasks

FIG_5A = {  # features, classes, samples
    "australian": (14, 2, 690), "breast_cancer": (30, 2, 569), "ecoli": (7, 8, 336),
    "german": (24, 2, 1000), "heart_disease": (13, 5, 303), "hepatitis": (19, 2, 155),
    "iris": (4, 3, 150), "pima": (8, 2, 768), "wine": (13, 3, 178), "yeast": (8, 10, 1484),
}


@pytest.fixture
def fake_dir(tmp_path):
    write_fake_uci(tmp_path, rows=30)
    return tmp_path


def test_table_matches_the_paper():
    assert {s.name: (s.features, s.classes, s.samples) for s in uci.SOURCES} == FIG_5A


def test_ten_tasks_scaled_split_and_labelled(fake_dir):
    data = uci_tasks(fake_dir, verify=False)
    assert data.task_names == list(FIG_5A)
    for spec in data.specs:
        features = FIG_5A[spec.name][0]
        assert spec.input_shape == (features,) and spec.kind == "multiclass"
        x, y = data.tasks[spec.name].splits["train"]
        xv, yv = data.tasks[spec.name].splits["val"]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        n = x.shape[0] + xv.shape[0]
        assert xv.shape[0] == int(np.ceil(0.2 * n))
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float(xv.min()) >= 0.0 and float(xv.max()) <= 1.0
        varying = x.max(dim=0).values > x.min(dim=0).values
        assert torch.allclose(x.min(dim=0).values[varying], torch.zeros(1))
        assert torch.allclose(x.max(dim=0).values[varying], torch.ones(1))
        labels = torch.cat([y, yv])
        assert sorted(labels.unique().tolist()) == list(range(spec.num_outputs))
    assert data.spec("heart_disease").num_outputs == 5  # the fake file has all five classes
    assert "test" not in data.tasks["iris"].splits


def test_split_is_fixed_by_split_seed_alone(fake_dir):
    a = uci_tasks(fake_dir, tasks=["ecoli", "iris"], verify=False)
    b = uci_tasks(fake_dir, tasks=["ecoli", "iris"], verify=False)
    c = uci_tasks(fake_dir, tasks=["ecoli", "iris"], split_seed=1, verify=False)
    for name in ("ecoli", "iris"):
        assert torch.equal(a.tasks[name].splits["val"][0], b.tasks[name].splits["val"][0])
    assert not torch.equal(a.tasks["iris"].splits["val"][0], c.tasks["iris"].splits["val"][0])


def test_split_is_stratified_where_possible():
    y = np.array([0] * 50 + [1] * 40 + [2] * 10)
    train, val = split_indices(y, 0.2, split_seed=0)
    assert len(val) == 20 and len(np.intersect1d(train, val)) == 0
    assert np.bincount(y[val]).tolist() == [10, 8, 2]
    lonely = np.array([0] * 10 + [1])  # a class with one row: no stratification, still a split
    train, val = split_indices(lonely, 0.2, split_seed=0)
    assert len(train) + len(val) == 11


def test_missing_values_take_the_training_median_then_min_max():
    x_train = np.array([[1.0, 5.0], [np.nan, 7.0], [3.0, 5.0], [5.0, np.nan]])
    x_val = np.array([[np.nan, 9.0], [7.0, 3.0]])
    tr, va = scale_features(x_train, x_val)
    # column 0: median of (1, 3, 5) = 3 -> 0.5; column 1: median of (5, 7, 5) = 5
    np.testing.assert_allclose(tr, [[0.0, 0.0], [0.5, 1.0], [0.5, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(va, [[0.5, 1.0], [1.0, 0.0]])  # clipped to [0, 1]
    const, = scale_features(np.array([[2.0], [2.0]]))
    np.testing.assert_allclose(const, [[0.0], [0.0]])


def test_labels_map_in_sorted_order():
    y, classes = encode_labels(np.array(["10", "2", "2", "1"]))
    assert classes == ["1", "2", "10"] and y.tolist() == [2, 1, 1, 0]
    y, classes = encode_labels(np.array(["pp", "cp", "imL", "im"]))
    assert classes == ["cp", "im", "imL", "pp"] and y.tolist() == [3, 0, 2, 1]


def test_holdout_can_be_named_test(fake_dir):
    data = uci_tasks(fake_dir, tasks=["pima"], holdout_split="test", verify=False)
    assert data.split_sizes()["pima"] == {"train": 24, "val": 0, "test": 6}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tasks=["mushroom"]), "unknown UCI task"),
        (dict(tasks=[]), "empty"),
        (dict(holdout_split="train"), "holdout_split"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(split_seed=-2), "split_seed"),
    ],
)
def test_bad_arguments(fake_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        uci_tasks(fake_dir, verify=False, **kwargs)


def test_malformed_rows_name_file_and_row(fake_dir):
    path = fake_dir / "uci" / "ecoli.data"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(maxsplit=1)[0]  # drop the label
    path.write_text("\n".join(lines))
    with pytest.raises(DataCorruptError, match=r"ecoli\.data, data row 5: 8 columns, expected 9"):
        uci_tasks(fake_dir, tasks=["ecoli"], verify=False)
    path = fake_dir / "uci" / "processed.cleveland.data"
    lines = path.read_text().splitlines()
    lines[2] = "abc," + lines[2].split(",", 1)[1]
    path.write_text("\n".join(lines))
    with pytest.raises(DataCorruptError, match=r"processed\.cleveland\.data, data row 3: 'abc'"):
        uci_tasks(fake_dir, tasks=["heart_disease"], verify=False)


def test_binary_garbage_is_reported(fake_dir):
    (fake_dir / "uci" / "yeast.data").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataCorruptError, match="yeast.data"):
        uci_tasks(fake_dir, tasks=["yeast"], verify=False)


def test_checksums_reject_unofficial_files(fake_dir):
    with pytest.raises(DataCorruptError, match="australian.dat"):
        uci_tasks(fake_dir, tasks=["australian"])


def test_missing_file_offline(tmp_path, offline_mirror):
    data = uci_tasks(tmp_path, tasks=["iris", "wine", "breast_cancer"])  # bundled: no files needed
    assert len(data.specs) == 3
    with pytest.raises(DataMissingError, match=r"hepatitis\.data is missing from .*uci"):
        uci_tasks(tmp_path, tasks=["hepatitis"])


# ----------------------------------------------------------------------------- real data


def test_real_uci_matches_fig_5a(data_dir):
    data = uci_tasks(data_dir, download=False)
    sizes = data.split_sizes()
    for spec in data.specs:
        features, classes, samples = FIG_5A[spec.name]
        assert spec.input_shape == (features,), spec.name
        assert spec.num_outputs == classes, spec.name
        assert sizes[spec.name]["train"] + sizes[spec.name]["val"] == samples, spec.name
        assert sizes[spec.name]["val"] == int(np.ceil(0.2 * samples))
        for split in ("train", "val"):
            x, _ = data.tasks[spec.name].splits[split]
            assert torch.isfinite(x).all() and float(x.min()) >= 0 and float(x.max()) <= 1
    x, _, _ = uci.load_raw("hepatitis", data_dir, download=False)
    assert int(np.isnan(x).sum()) == 167
    x, _, _ = uci.load_raw("heart_disease", data_dir, download=False)
    assert int(np.isnan(x).sum()) == 6


def test_real_file_with_other_line_endings_is_accepted_by_content(data_dir, tmp_path):
    (tmp_path / "uci").mkdir()
    text = (data_dir / "uci" / "pima-indians-diabetes.data").read_text()
    (tmp_path / "uci" / "pima-indians-diabetes.data").write_text(text.replace("\n", "\r\n"))
    data = uci_tasks(tmp_path, tasks=["pima"])
    assert sum(data.split_sizes()["pima"].values()) == 768
