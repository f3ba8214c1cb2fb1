"""``softorder data``: the dataset check table and its exit status."""

from __future__ import annotations

import io

import pytest

from softorder.data.check import check_dataset, run_check
from softorder.data.fake import write_fake_celeba, write_fake_mnist, write_fake_omniglot, write_fake_uci


def _run(path, **kw) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(path, out=out, **kw)
    return code, out.getvalue()


def _line(text: str, dataset: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(dataset + " "))


def test_empty_directory_is_all_missing_and_not_an_error(tmp_path):
    code, text = _run(tmp_path / "nothing")
    assert code == 0
    assert "does not exist" in text
    for dataset in ("mnist", "uci", "omniglot", "celeba"):
        assert "missing" in _line(text, dataset)


@pytest.fixture
def fake_all(tmp_path):
    write_fake_mnist(tmp_path, n_train=60, n_test=20)
    write_fake_uci(tmp_path, rows=20)
    write_fake_omniglot(tmp_path)
    write_fake_celeba(tmp_path, n=10, images=4)
    return tmp_path


def test_structure_check_on_small_files(fake_all):
    code, text = _run(fake_all, verify=False)
    assert code == 0, text
    assert "ok" in _line(text, "mnist") and "60" in _line(text, "mnist")
    assert "ok" in _line(text, "uci")
    omni = _line(text, "omniglot")
    assert "ok" in omni and "11 characters x 20 drawings" in omni and "not found" in omni
    celeb = _line(text, "celeba")
    assert "ok" in celeb and "only 4 of 10 images" in celeb


def test_official_checksums_flag_the_small_files_as_corrupt(fake_all):
    code, text = _run(fake_all)
    assert code == 1
    assert "corrupt" in _line(text, "mnist") and "corrupt" in _line(text, "uci")
    assert "corrupt:" in text.splitlines()[-1]


def test_corrupt_file_gives_status_1_and_names_it(fake_all):
    path = fake_all / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    code, text = _run(fake_all, verify=False)
    assert code == 1
    line = _line(text, "mnist")
    assert "corrupt" in line and "t10k-labels-idx1-ubyte.gz" in line
    assert "ok" in _line(text, "uci")


def test_partial_dataset_is_missing_with_names(fake_all):
    (fake_all / "uci" / "yeast.data").unlink()
    result = check_dataset("uci", fake_all, verify=False)
    assert result.status == "missing" and "yeast.data" in result.reason and result.tasks == "9 of 10"


def test_real_data_check(data_dir):
    code, text = _run(data_dir)
    assert code == 0, text
    assert "60,000" in _line(text, "mnist") and "10,000" in _line(text, "mnist")
    assert "ok" in _line(text, "uci")
    omni = _line(text, "omniglot")
    assert " 50 " in omni and "1,623 characters x 20 drawings" in omni
    celeb = _line(text, "celeba")
    assert "162,770" in celeb and "19,867" in celeb and "19,962" in celeb


def test_an_unreadable_file_is_reported_not_raised(tmp_path, monkeypatch):
    import io

    from softorder.data import check

    def refuse(root, verify):
        raise PermissionError(13, "Permission denied", str(root / "mnist" / "train-images-idx3-ubyte.gz"))

    monkeypatch.setitem(check.CHECKS, "mnist", refuse)
    out = io.StringIO()
    assert check.run_check(tmp_path, out) == 1
    text = out.getvalue()
    assert "unreadable: cannot read" in text and "train-images-idx3-ubyte.gz: Permission denied" in text
    assert "unreadable: mnist (check the permissions" in text
