"""CelebA attributes (+ landmarks) on shared image batches (Sec. 4.4, A.4): tiny generated folders,
and the real annotation files and 32 real images when given."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from softorder.data import celeba
from softorder.data.celeba import IMAGENET_MEAN, IMAGENET_STD, celeba_tasks, load_annotations
from softorder.data.errors import DataCorruptError, DataMissingError
from softorder.data.fake import ATTRIBUTE_NAMES, write_fake_celeba


@pytest.fixture
def fake_dir(tmp_path):
    write_fake_celeba(tmp_path, n=10)  # partition: 6 train, 2 val, 2 test; all images; landmarks
    return tmp_path


def test_shared_batches_with_40_attributes_and_landmarks(fake_dir):
    data = celeba_tasks(fake_dir, image_size=32, include_landmarks=True, verify=False, threads=2)
    assert data.shared_input
    assert data.task_names == [*ATTRIBUTE_NAMES, "landmarks"]
    assert data.spec("Male").kind == "binary" and data.spec("Male").input_shape == (3, 32, 32)
    assert data.spec("landmarks").kind == "regression" and data.spec("landmarks").num_outputs == 10
    assert data.split_sizes()["Smiling"] == {"train": 6, "val": 2, "test": 2}
    batch = data.train_batch(3, 4, seed=1)
    assert isinstance(batch.inputs, torch.Tensor) and batch.inputs.shape == (4, 3, 32, 32)
    assert batch.inputs.dtype == torch.float32
    assert set(batch.targets) == set(data.task_names)
    assert batch.targets["Male"].shape == (4,) and batch.targets["Male"].dtype == torch.int64
    assert set(batch.targets["Male"].tolist()) <= {0, 1}
    land = batch.targets["landmarks"]
    assert land.shape == (4, 10) and float(land.min()) >= 0 and float(land.max()) <= 1
    again = data.train_batch(3, 4, seed=1)
    assert torch.equal(batch.inputs, again.inputs)
    assert batch.rows("Male") == 4


def test_labels_and_landmarks_follow_the_files(fake_dir):
    data = celeba_tasks(fake_dir, image_size=16, include_landmarks=True, verify=False)
    ann = load_annotations(fake_dir, landmarks=True, download=False, verify=False)
    batches = list(data.eval_batches("val", 1))
    assert len(batches) == 2
    rows = np.flatnonzero(ann.partition == 1)
    for batch, row in zip(batches, rows):
        attrs = torch.stack([batch.targets[a] for a in ATTRIBUTE_NAMES], dim=1)[0]
        assert attrs.tolist() == ann.attributes[row].tolist()
        scale = np.tile([178.0, 218.0], 5)
        np.testing.assert_allclose(batch.targets["landmarks"][0].numpy(), ann.landmarks[row] / scale, rtol=1e-6)
    raw = (fake_dir / "celeba" / "list_attr_celeba.txt").read_text().splitlines()[2].split()
    assert [1 if v == "1" else 0 for v in raw[1:]] == ann.attributes[0].tolist()


def test_images_are_resized_and_imagenet_normalised(fake_dir):
    folder = fake_dir / "celeba" / "img_align_celeba"
    Image.new("RGB", (178, 218), (255, 128, 0)).save(folder / "000001.jpg", quality=100)
    data = celeba_tasks(fake_dir, image_size=(20, 24), verify=False)
    x = data.load_images(["000001.jpg"])
    assert x.shape == (1, 3, 20, 24)
    expected = [(v / 255.0 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    np.testing.assert_allclose(x[0].mean(dim=(1, 2)).numpy(), expected, atol=0.05)


def test_task_set_is_picklable_and_holds_no_open_files(fake_dir):
    data = celeba_tasks(fake_dir, image_size=16, verify=False)
    clone = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data)) < 100_000
    assert torch.equal(clone.train_batch(0, 3, 0).inputs, data.train_batch(0, 3, 0).inputs)


def test_attribute_subset(fake_dir):
    data = celeba_tasks(fake_dir, image_size=16, attributes=["Smiling", "Male"], verify=False)
    assert data.task_names == ["Smiling", "Male"]
    with pytest.raises(ValueError, match="unknown CelebA attributes \\['Happy'\\]"):
        celeba_tasks(fake_dir, attributes=["Happy"], verify=False)


def test_missing_images_are_an_error_naming_count_and_folder(tmp_path):
    write_fake_celeba(tmp_path, n=10, images=4)
    with pytest.raises(DataMissingError) as info:
        celeba_tasks(tmp_path, verify=False)
    message = str(info.value)
    assert "6 of 10 CelebA images" in message and "000005.jpg" in message
    assert str(tmp_path / "celeba" / "img_align_celeba") in message and "available_only=True" in message


def test_available_only_keeps_the_partition_when_every_split_has_images(tmp_path):
    write_fake_celeba(tmp_path, n=10, partition=[0, 1, 2, 0, 1, 2, 0, 0, 0, 0], images=6)
    with pytest.warns(UserWarning, match="only 6 of 10 images"):
        data = celeba_tasks(tmp_path, image_size=16, available_only=True, verify=False)
    assert data.split_sizes()["Male"] == {"train": 2, "val": 2, "test": 2}


def test_available_only_resplits_deterministically_when_a_split_is_empty(tmp_path):
    write_fake_celeba(tmp_path, n=40, partition=[0] * 30 + [1] * 5 + [2] * 5, images=20)
    with pytest.warns(UserWarning, match="re-split 80/10/10"):
        data = celeba_tasks(tmp_path, image_size=16, available_only=True, verify=False)
    assert data.split_sizes()["Male"] == {"train": 16, "val": 2, "test": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = celeba_tasks(tmp_path, image_size=16, available_only=True, verify=False)
        other = celeba_tasks(tmp_path, image_size=16, available_only=True, split_seed=1, verify=False)
    assert list(again.files["test"]) == list(data.files["test"])
    assert list(other.files["test"]) != list(data.files["test"])
    assert set(data.files["train"]) | set(data.files["val"]) | set(data.files["test"]) == {
        f"{i:06d}.jpg" for i in range(1, 21)
    }


def test_available_only_with_no_images(tmp_path):
    write_fake_celeba(tmp_path, n=5, images=0)
    with pytest.raises(DataMissingError, match="no CelebA images are present"):
        celeba_tasks(tmp_path, available_only=True, verify=False)


def test_landmarks_asked_for_but_absent(tmp_path, offline_mirror):
    write_fake_celeba(tmp_path, n=6, landmarks=False)
    with pytest.raises(DataMissingError, match="list_landmarks_align_celeba.txt is missing from"):
        celeba_tasks(tmp_path, include_landmarks=True, verify=False)
    assert len(celeba_tasks(tmp_path, image_size=8, verify=False).specs) == 40


def test_missing_annotations_say_where_to_download_by_hand(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTORDER_MIRROR")
    with pytest.raises(DataMissingError) as info:
        celeba_tasks(tmp_path)
    message = str(info.value)
    assert "list_attr_celeba.txt" in message and "Google Drive" in message
    assert str(tmp_path / "celeba") in message


@pytest.mark.parametrize(
    "name, edit, match",
    [
        ("list_attr_celeba.txt", lambda t: t.replace(" 1", " 0", 1), "expected -1 or 1"),
        ("list_attr_celeba.txt", lambda t: "\n".join(t.splitlines()[:-3]), "says 10 images but has 7"),
        ("list_attr_celeba.txt", lambda t: "ten\n" + t.split("\n", 1)[1], "number of images"),
        ("list_eval_partition.txt", lambda t: t.replace("000003.jpg", "000099.jpg"), "same images"),
        ("list_eval_partition.txt", lambda t: t.replace(" 2", " 7"), "0, 1 or 2"),
        ("list_landmarks_align_celeba.txt", lambda t: t.replace(" 1", " x", 1), "malformed row"),
    ],
)
def test_corrupt_annotation_files_are_named(fake_dir, name, edit, match):
    path = fake_dir / "celeba" / name
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataCorruptError, match=match) as info:
        celeba_tasks(fake_dir, include_landmarks=True, verify=False)
    assert name in str(info.value)


def test_unreadable_image_is_named_at_batch_time(fake_dir):
    path = fake_dir / "celeba" / "img_align_celeba" / "000007.jpg"
    path.write_bytes(path.read_bytes()[:300])
    data = celeba_tasks(fake_dir, image_size=16, verify=False)
    with pytest.raises(DataCorruptError, match="000007.jpg"):
        list(data.eval_batches("val", 10))


def test_checksums_reject_unofficial_annotations(fake_dir):
    with pytest.raises(DataCorruptError, match="list_attr_celeba.txt"):
        celeba_tasks(fake_dir)


def test_bad_arguments(fake_dir):
    with pytest.raises(ValueError, match="image_size"):
        celeba_tasks(fake_dir, image_size=(1, 2, 3), verify=False)
    with pytest.raises(ValueError, match="image_size"):
        celeba_tasks(fake_dir, image_size=0, verify=False)
    with pytest.raises(ValueError, match="split_seed"):
        celeba_tasks(fake_dir, split_seed=-1, verify=False)
    data = celeba_tasks(fake_dir, image_size=8, verify=False)
    with pytest.raises(ValueError, match="unknown split"):
        next(data.eval_batches("dev", 4))


# ----------------------------------------------------------------------------- real data


def test_real_annotations(data_dir):
    ann = load_annotations(data_dir, download=False)
    assert ann.attributes.shape == (202_599, 40) and len(ann.attribute_names) == 40
    assert np.bincount(ann.partition).tolist() == [162_770, 19_867, 19_962]
    assert ann.files[0] == "000001.jpg" and ann.files[-1] == "202599.jpg"


def test_real_smoke_loader_on_the_present_images(data_dir):
    present = celeba.present_images(data_dir)
    assert len(present) >= 32
    with pytest.warns(UserWarning, match="re-split"):
        data = celeba_tasks(data_dir, image_size=64, available_only=True, download=False)
    sizes = data.split_sizes()["Attractive"]
    assert sum(sizes.values()) == len(present) and min(sizes.values()) >= 1
    batch = data.train_batch(0, 8, seed=0)
    assert batch.inputs.shape == (8, 3, 64, 64) and torch.isfinite(batch.inputs).all()
    assert len(batch.targets) == 40
    with pytest.raises(DataMissingError, match="202,567 of 202,599"):
        celeba_tasks(data_dir, download=False)
