"""Omniglot alphabets as tasks (Sec. 4.3, A.3) on tiny .npz / zip files, and on the real files."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from softorder.data import omniglot
from softorder.data.errors import DataCorruptError, DataMissingError
from softorder.data.fake import DEFAULT_FAKE_ALPHABETS, write_fake_omniglot, write_fake_omniglot_zip
from softorder.data.omniglot import PAPER_ORDER, ink_counts, map_paper_order, normalize_name, omniglot_tasks


@pytest.fixture
def fake_dir(tmp_path):
    write_fake_omniglot(tmp_path)  # Gujarati 3, Arcadian 2 (background); Sylheti 2, Tibetan 4 (evaluation)
    return tmp_path


def _images(root, part):
    with np.load(root / "omniglot" / f"images_{part}.npz") as z:
        return z["images"]


def test_first_tasks_follow_the_paper_order(fake_dir):
    data = omniglot_tasks(fake_dir, num_tasks=4, verify=False)
    assert data.task_names == ["Gujarati", "Sylheti", "Arcadian", "Tibetan"]
    assert [s.num_outputs for s in data.specs] == [3, 2, 2, 4]
    assert all(s.kind == "multiclass" and s.input_shape == (1, 105, 105) for s in data.specs)
    sizes = data.split_sizes()
    assert sizes["Tibetan"] == {"train": 4 * 18, "val": 0, "test": 4 * 2}
    assert omniglot_tasks(fake_dir, num_tasks=2, verify=False).task_names == ["Gujarati", "Sylheti"]


def test_ink_is_one_on_a_zero_background_and_labels_are_characters(fake_dir):
    data = omniglot_tasks(fake_dir, num_tasks=4, verify=False)
    images = _images(fake_dir, "evaluation")[2:6]  # Tibetan: characters 2..5 of the evaluation part
    x, y = data.split_arrays("Tibetan", "train")
    xt, yt = data.split_arrays("Tibetan", "test")
    assert x.dtype == torch.float32 and set(torch.unique(x).tolist()) == {0.0, 1.0}
    assert y.tolist() == sorted(y.tolist()) and set(y.tolist()) == {0, 1, 2, 3}
    assert np.bincount(yt.numpy()).tolist() == [2, 2, 2, 2]
    ink = (~images).astype(np.float32)  # (4, 20, 105, 105)
    for c in range(4):  # every train + test row is one of that character's drawings, none twice
        rows = torch.cat([x[y == c], xt[yt == c]]).numpy()[:, 0]
        assert rows.shape == (20, 105, 105)
        matched = sorted(int(np.flatnonzero((ink[c] == r).all(axis=(1, 2)))[0]) for r in rows)
        assert matched == list(range(20))


def test_split_is_seeded_per_alphabet_and_fixed_across_task_counts(fake_dir):
    small = omniglot_tasks(fake_dir, num_tasks=1, verify=False)
    large = omniglot_tasks(fake_dir, num_tasks=4, verify=False)
    other = omniglot_tasks(fake_dir, num_tasks=1, split_seed=1, verify=False)
    a, b, c = (d.split_arrays("Gujarati", "test")[0] for d in (small, large, other))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_twenty_percent_test_and_a_validation_split(fake_dir):
    data = omniglot_tasks(fake_dir, num_tasks=1, test_fraction=0.2, val_fraction=0.1, verify=False)
    assert data.split_sizes()["Gujarati"] == {"train": 3 * 14, "val": 3 * 2, "test": 3 * 4}


@pytest.mark.parametrize("factor, side", [(3, 35), (5, 21), (7, 15)])
def test_downsample_averages_ink(fake_dir, factor, side):
    data = omniglot_tasks(fake_dir, num_tasks=1, downsample=factor, verify=False)
    assert data.specs[0].input_shape == (1, side, side)
    full = omniglot_tasks(fake_dir, num_tasks=1, verify=False)
    x_full = full.split_arrays("Gujarati", "train")[0]
    x_small = data.split_arrays("Gujarati", "train")[0]
    expected = torch.nn.functional.avg_pool2d(x_full, factor)
    assert torch.allclose(x_small, expected, atol=1e-6)
    batch = data.train_batch(0, 5, seed=0).inputs["Gujarati"]
    assert batch.shape == (5, 1, side, side) and batch.dtype == torch.float32


def test_ink_counts_matches_reshape_sum():
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 105, 105)) > 0.3
    for f in (1, 3, 5, 7, 15):
        ref = (~images).reshape(2, 3, 105 // f, f, 105 // f, f).sum(axis=(3, 5))
        np.testing.assert_array_equal(ink_counts(images, f), ref)


def test_orders(fake_dir):
    file_order = omniglot_tasks(fake_dir, num_tasks=None, order="file", verify=False)
    assert file_order.task_names == ["Gujarati", "Arcadian", "Sylheti", "Tibetan"]
    custom = omniglot_tasks(fake_dir, num_tasks=None, order=["tibetan", "Arcadian"], verify=False)
    assert custom.task_names == ["Tibetan", "Arcadian"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(downsample=4), ValueError, "factor of 105"),
        (dict(downsample=0), ValueError, "factor of 105"),
        (dict(test_fraction=0.0), ValueError, "test_fraction"),
        (dict(num_tasks=1, test_fraction=0.5, val_fraction=0.5), ValueError, "at least 1"),
        (dict(num_tasks=0), ValueError, "num_tasks"),
        (dict(num_tasks=51), ValueError, "50 alphabets"),
        (dict(order="random"), ValueError, "order must be"),
        (dict(order=["Klingon"], num_tasks=None), ValueError, "unknown alphabets"),
        (dict(num_tasks=5), DataCorruptError, "Old Church Slavonic"),
    ],
)
def test_bad_arguments(fake_dir, kwargs, error, match):
    with pytest.raises(error, match=match):
        omniglot_tasks(fake_dir, verify=False, **kwargs)


def test_paper_order_mapping():
    assert len(PAPER_ORDER) == 50 and len(set(PAPER_ORDER)) == 50
    assert normalize_name("N'Ko") == normalize_name("N_Ko")
    assert normalize_name("Malay (Jawi-Arabic)") == normalize_name("Malay_(Jawi_-_Arabic)")
    official = [e["alphabet"] for part in DEFAULT_FAKE_ALPHABETS.values() for e in
                [{"alphabet": n} for n, _ in part]]
    assert map_paper_order(official, 4) == ["Gujarati", "Sylheti", "Arcadian", "Tibetan"]
    with pytest.raises(KeyError, match="Old Church Slavonic"):
        map_paper_order(official, 5)


def test_truncated_npz_names_the_file(fake_dir):
    path = fake_dir / "omniglot" / "images_evaluation.npz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataCorruptError, match="images_evaluation.npz"):
        omniglot_tasks(fake_dir, num_tasks=2, verify=False)


def test_bad_catalog_names_the_file(fake_dir):
    path = fake_dir / "omniglot" / "alphabets.json"
    catalog = json.loads(path.read_text())
    catalog["background"][1]["start"] = 7
    path.write_text(json.dumps(catalog))
    with pytest.raises(DataCorruptError, match="alphabets.json.*consecutive"):
        omniglot_tasks(fake_dir, num_tasks=1, verify=False)
    path.write_text("{not json")
    with pytest.raises(DataCorruptError, match="alphabets.json is not valid JSON"):
        omniglot_tasks(fake_dir, num_tasks=1, verify=False)


def test_catalog_larger_than_the_images_is_an_error(fake_dir):
    path = fake_dir / "omniglot" / "alphabets.json"
    catalog = json.loads(path.read_text())
    catalog["evaluation"][1]["count"] = 9
    path.write_text(json.dumps(catalog))
    with pytest.raises(DataCorruptError, match="Tibetan"):
        omniglot_tasks(fake_dir, num_tasks=4, verify=False)


def test_checksums_reject_unofficial_files(fake_dir):
    with pytest.raises(DataCorruptError, match="official"):
        omniglot_tasks(fake_dir, num_tasks=1)


def test_missing_files_offline_point_to_the_official_zip(tmp_path, offline_mirror):
    with pytest.raises(DataMissingError) as info:
        omniglot_tasks(tmp_path, num_tasks=1)
    message = str(info.value)
    assert "images_background.zip" in message and str(tmp_path / "omniglot") in message
    assert offline_mirror in message


# ----------------------------------------------------------------------------- official zips


def _write_zips(folder):
    bg = write_fake_omniglot_zip(folder / "images_background.zip", "background", DEFAULT_FAKE_ALPHABETS["background"])
    ev = write_fake_omniglot_zip(
        folder / "images_evaluation.zip", "evaluation", DEFAULT_FAKE_ALPHABETS["evaluation"], first_id=6, seed=1
    )
    return bg, ev


def _trust_zips(monkeypatch, folder):
    for part in omniglot.PARTS:
        md5 = hashlib.md5((folder / f"images_{part}.zip").read_bytes()).hexdigest()
        monkeypatch.setitem(omniglot.ZIP_FILES, part, dataclasses.replace(omniglot.ZIP_FILES[part], md5=md5))


def test_official_zips_are_converted_to_the_npz_format(tmp_path):
    bg, ev = _write_zips(tmp_path / "omniglot")
    data = omniglot_tasks(tmp_path, num_tasks=4, verify=False)
    assert data.task_names == ["Gujarati", "Sylheti", "Arcadian", "Tibetan"]
    np.testing.assert_array_equal(_images(tmp_path, "background"), bg)
    np.testing.assert_array_equal(_images(tmp_path, "evaluation"), ev)
    catalog = json.loads((tmp_path / "omniglot" / "alphabets.json").read_text())
    assert catalog == {
        part: [{"alphabet": n, "start": s, "count": c} for (n, c), s in zip(entries, np.cumsum([0] + [c for _, c in entries]))]
        for part, entries in DEFAULT_FAKE_ALPHABETS.items()
    }
    leftovers = sorted(p.name for p in (tmp_path / "omniglot").iterdir())
    assert not [n for n in leftovers if n.endswith(".part")]


def test_converted_files_verify_through_their_record(tmp_path, monkeypatch):
    _write_zips(tmp_path / "omniglot")
    _trust_zips(monkeypatch, tmp_path / "omniglot")  # as if the fake zips were the official ones
    data = omniglot_tasks(tmp_path, num_tasks=4)  # converts, then verifies
    assert len(data.specs) == 4
    omniglot._CACHE.clear()
    assert omniglot_tasks(tmp_path, num_tasks=4).task_names == data.task_names
    npz = tmp_path / "omniglot" / "images_evaluation.npz"
    with np.load(npz) as z:
        images, labels = z["images"].copy(), z["labels"]
    images[0, 0, 50, 50] = ~images[0, 0, 50, 50]  # a valid file with one pixel changed
    with open(npz, "wb") as fh:
        np.savez_compressed(fh, images=images, labels=labels)
    with pytest.raises(DataCorruptError, match="images_evaluation.npz does not hold the official"):
        omniglot_tasks(tmp_path, num_tasks=4)
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a damaged byte: the zip CRC fails
    npz.write_bytes(bytes(raw))
    with pytest.raises(DataCorruptError, match="images_evaluation.npz"):
        omniglot_tasks(tmp_path, num_tasks=4, verify=False)


def test_fake_download_of_the_zips(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _write_zips(mirror / "omniglot")
    _trust_zips(monkeypatch, mirror / "omniglot")
    monkeypatch.setenv("SOFTORDER_MIRROR", mirror.as_uri())
    data = omniglot_tasks(tmp_path / "data", num_tasks=3)
    assert data.task_names == ["Gujarati", "Sylheti", "Arcadian"]
    assert (tmp_path / "data" / "omniglot" / "images_background.npz").is_file()


def test_corrupt_zip_download_leaves_nothing(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _write_zips(mirror / "omniglot")
    monkeypatch.setenv("SOFTORDER_MIRROR", mirror.as_uri())  # md5s are the official ones: mismatch
    with pytest.raises(DataCorruptError, match="images_background.zip failed its checksum"):
        omniglot_tasks(tmp_path / "data", num_tasks=1)
    assert list((tmp_path / "data" / "omniglot").iterdir()) == []


def test_truncated_zip_names_the_file(tmp_path):
    _write_zips(tmp_path / "omniglot")
    path = tmp_path / "omniglot" / "images_background.zip"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataCorruptError, match="images_background.zip"):
        omniglot_tasks(tmp_path, num_tasks=1, verify=False)
    assert not (tmp_path / "omniglot" / "images_background.npz").exists()


# ----------------------------------------------------------------------------- real data


def test_real_omniglot(data_dir):
    summary = omniglot.omniglot_summary(data_dir)
    assert summary["alphabets"] == 50 and summary["characters"] == 1623 and summary["drawings"] == [20]
    mapped = map_paper_order(summary["names"])
    assert len(set(mapped)) == 50 and mapped[12] == "Japanese_(katakana)" and mapped[25] == "N_Ko"
    data = omniglot_tasks(data_dir, num_tasks=3, downsample=5, download=False)
    assert data.task_names == ["Gujarati", "Sylheti", "Arcadian"]
    assert data.split_sizes()["Gujarati"] == {"train": 48 * 18, "val": 0, "test": 48 * 2}
    x, _ = data.split_arrays("Gujarati", "train")
    assert x.shape[1:] == (1, 21, 21) and 0.02 < float(x.mean()) < 0.2  # ink is the minority
