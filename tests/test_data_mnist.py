"""MNIST digit-pair tasks (Sec. 4.1, A.1) on tiny IDX files, and on the real files when given."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch

from softorder.data import mnist
from softorder.data.errors import DataCorruptError, DataMissingError
from softorder.data.fake import write_fake_mnist
from softorder.data.mnist import all_digit_pairs, draw_digit_pairs, load_mnist, mnist_pairs


@pytest.fixture
def fake_dir(tmp_path):
    write_fake_mnist(tmp_path, n_train=200, n_test=50)
    return tmp_path


def test_pairs_restrict_to_two_digits_with_label_one_for_the_second(fake_dir):
    data = mnist_pairs(fake_dir, pairs=[(7, 2), (0, 1)], verify=False)
    assert data.task_names == ["t00_7v2", "t01_0v1"]
    raw = load_mnist(fake_dir, verify=False)
    sizes = data.split_sizes()
    assert sizes["t00_7v2"] == {"train": 40, "val": 0, "test": 10}
    x, y = data.split_arrays("t00_7v2", "train")
    assert x.shape == (40, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    keep = np.flatnonzero((raw.train_labels == 7) | (raw.train_labels == 2))
    np.testing.assert_allclose(x.numpy(), raw.train_images[keep].reshape(-1, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), (raw.train_labels[keep] == 2).astype(np.int64))
    spec = data.spec("t00_7v2")
    assert spec.kind == "binary" and spec.input_shape == (784,)


def test_batches_are_float_in_unit_interval(fake_dir):
    data = mnist_pairs(fake_dir, num_tasks=3, seed=1, verify=False)
    batch = data.train_batch(5, 16, seed=0)
    for name in data.task_names:
        x = batch.inputs[name]
        assert x.shape == (16, 784) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    again = data.train_batch(5, 16, seed=0)
    assert all(torch.equal(batch.inputs[n], again.inputs[n]) for n in data.task_names)
    rows = sum(b.rows(data.task_names[0]) for b in data.eval_batches("test", 7) if data.task_names[0] in b.targets)
    assert rows == data.split_sizes()[data.task_names[0]]["test"]
    assert all(b.inputs[n].dtype == torch.float32 for b in data.eval_batches("train", 64) for n in b.inputs)


def test_subset_keeps_the_compact_storage(fake_dir):
    data = mnist_pairs(fake_dir, num_tasks=3, seed=2, verify=False)
    sub = data.subset(data.task_names[:1])
    assert sub.task_names == data.task_names[:1]
    assert sub.train_batch(0, 4, 0).inputs[sub.task_names[0]].dtype == torch.float32


def test_drawn_pairs_are_unordered_distinct_digits_with_replacement():
    assert len(all_digit_pairs()) == 45
    pairs = draw_digit_pairs(400, seed=0)
    assert all(0 <= a < b <= 9 for a, b in pairs)
    assert len(set(pairs)) == 45  # every task can be drawn
    assert draw_digit_pairs(5, seed=3) == draw_digit_pairs(5, seed=3)
    assert draw_digit_pairs(5, seed=3) != draw_digit_pairs(5, seed=4)
    assert draw_digit_pairs(3, seed=7) == draw_digit_pairs(8, seed=7)[:3]


def test_repeated_pairs_get_unique_names(fake_dir):
    data = mnist_pairs(fake_dir, pairs=[(3, 5), (3, 5)], verify=False)
    assert data.task_names == ["t00_3v5", "t01_3v5"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pairs=[(3, 3)]), "distinct"),
        (dict(pairs=[(3, 10)]), "0..9"),
        (dict(pairs=[(1, 2, 3)]), "two digits"),
        (dict(pairs=[]), "empty"),
        (dict(pairs=[(1, 2)], num_tasks=2), "num_tasks=2"),
        (dict(num_tasks=0), "num_tasks"),
        (dict(num_tasks=2, seed=-1), "seed"),
    ],
)
def test_bad_arguments(fake_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mnist_pairs(fake_dir, verify=False, **kwargs)


def test_uncompressed_idx_files_are_read(tmp_path):
    write_fake_mnist(tmp_path, n_train=30, n_test=10, gzipped=False)
    assert load_mnist(tmp_path, verify=False).train_images.shape == (30, 28, 28)


def test_truncated_gzip_names_the_file(fake_dir):
    path = fake_dir / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataCorruptError, match="train-images-idx3-ubyte.gz"):
        load_mnist(fake_dir, verify=False)


def test_truncated_idx_content_names_the_file(fake_dir):
    path = fake_dir / "mnist" / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-784]))
    with pytest.raises(DataCorruptError, match=r"t10k-images-idx3-ubyte.gz is truncated"):
        load_mnist(fake_dir, verify=False)


def test_bad_magic_and_count_mismatch(fake_dir):
    labels = fake_dir / "mnist" / "train-labels-idx1-ubyte.gz"
    good = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(b"\x01" + good[1:]))
    with pytest.raises(DataCorruptError, match="train-labels-idx1-ubyte.gz is not an IDX file"):
        load_mnist(fake_dir, verify=False)
    n = 150
    fewer = good[:4] + n.to_bytes(4, "big") + good[8 : 8 + n]
    labels.write_bytes(gzip.compress(fewer))
    with pytest.raises(DataCorruptError, match="200 images but .* 150 labels"):
        load_mnist(fake_dir, verify=False)


def test_checksum_verification_rejects_unofficial_files(fake_dir):
    with pytest.raises(DataCorruptError, match="official"):
        load_mnist(fake_dir, verify=True)


def test_missing_files_offline_say_where_to_get_them(tmp_path, offline_mirror):
    with pytest.raises(DataMissingError) as info:
        mnist_pairs(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "mnist") in message
    assert offline_mirror in message
    assert not (tmp_path / "mnist").exists() or list((tmp_path / "mnist").iterdir()) == []


def test_fake_download_of_all_four_files(tmp_path, monkeypatch):
    served = tmp_path / "mirror"
    write_fake_mnist(served, n_train=40, n_test=20)
    for key, spec in mnist.FILES.items():
        content = gzip.decompress((served / "mnist" / spec.name).read_bytes())
        fake = dataclasses.replace(spec, md5=None, content_sha256=hashlib.sha256(content).hexdigest())
        monkeypatch.setitem(mnist.FILES, key, fake)
    monkeypatch.setenv("SOFTORDER_MIRROR", served.as_uri())
    data = mnist_pairs(tmp_path / "data", pairs=[(0, 1)])  # downloads, then verifies content
    assert data.split_sizes()["t00_0v1"] == {"train": 8, "val": 0, "test": 4}
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(
        s.name for s in mnist.FILES.values()
    )


def test_recompressed_copy_is_verified_by_content(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, n_train=20, n_test=10)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    spec = dataclasses.replace(
        mnist.FILES["train_labels"], md5="0" * 32, content_sha256=hashlib.sha256(content).hexdigest()
    )
    path.write_bytes(gzip.compress(content, compresslevel=1, mtime=123))  # other bytes, same content
    from softorder.data.download import verify_file

    verify_file(spec, path)
    changed = bytearray(content)
    changed[-1] ^= 1  # one label changed: the same length, other content
    other = tmp_path / "other" / path.name  # a new path: verify_file remembers files that passed
    other.parent.mkdir()
    other.write_bytes(gzip.compress(bytes(changed), compresslevel=1, mtime=123))
    with pytest.raises(DataCorruptError, match="train-labels-idx1-ubyte.gz"):
        verify_file(spec, other)


# ----------------------------------------------------------------------------- real data


def test_real_mnist(data_dir):
    m = load_mnist(data_dir, download=False)
    assert m.train_images.shape == (60_000, 28, 28) and m.test_images.shape == (10_000, 28, 28)
    assert len(m.test_labels) == 10_000
    assert np.bincount(m.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(m.train_images.mean() / 255.0 - 0.1307) < 1e-3
    data = mnist_pairs(data_dir, pairs=[(4, 9)], download=False)
    assert data.split_sizes()["t00_4v9"]["train"] == 5842 + 5949


def test_real_mnist_gz_copies_are_accepted_by_content(data_dir, tmp_path):
    (tmp_path / "mnist").mkdir()
    src = data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    copy = tmp_path / "mnist" / src.name
    shutil.copy(src, copy)
    from softorder.data.download import verify_file

    verify_file(mnist.FILES["test_labels"], copy)  # the same bytes
    recompressed = gzip.compress(gzip.decompress(src.read_bytes()), compresslevel=1, mtime=123)
    assert recompressed != src.read_bytes()
    other = tmp_path / "other" / src.name
    other.parent.mkdir()
    other.write_bytes(recompressed)  # other bytes (the md5 fails), the official content
    verify_file(mnist.FILES["test_labels"], other)
