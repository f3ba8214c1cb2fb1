"""Task sets by name, random tasks (Sec. 3.2), and the compact uint8 task storage."""

from __future__ import annotations

import pytest
import torch

import softorder.data as data_pkg
from softorder.data import CompactTensorTasks, load_taskset, random_tasks, taskset_options
from softorder.data.fake import write_fake_mnist, write_fake_omniglot, write_fake_uci
from softorder.tasks import TaskArrays, TaskSpec, TensorTasks


def test_random_tasks_follow_section_3_2():
    data = random_tasks(num_tasks=3, n=50, m=8, seed=4)
    assert isinstance(data, TensorTasks) and data.task_names == ["random0", "random1", "random2"]
    for spec in data.specs:
        assert spec.kind == "binary" and spec.input_shape == (8,)
        x, y = data.tasks[spec.name].splits["train"]
        assert x.shape == (50, 8) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) < 1.0
        assert set(y.tolist()) == {0, 1}
    assert data.split_sizes()["random0"] == {"train": 50, "val": 0, "test": 0}
    assert not data.has_split("test")
    fewer = random_tasks(num_tasks=1, n=50, m=8, seed=4)
    assert torch.equal(fewer.tasks["random0"].splits["train"][0], data.tasks["random0"].splits["train"][0])
    other = random_tasks(num_tasks=1, n=50, m=8, seed=5)
    assert not torch.equal(other.tasks["random0"].splits["train"][0], fewer.tasks["random0"].splits["train"][0])


@pytest.mark.parametrize("kwargs", [dict(num_tasks=0), dict(n=0), dict(m=-1), dict(n=2.5), dict(seed=-1)])
def test_random_tasks_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        random_tasks(**kwargs)


def test_load_taskset_by_name(tmp_path):
    write_fake_mnist(tmp_path, n_train=40, n_test=20)
    write_fake_uci(tmp_path, rows=20)
    write_fake_omniglot(tmp_path)
    assert load_taskset("random", num_tasks=2, n=5, m=3).task_names == ["random0", "random1"]
    assert len(load_taskset("mnist-pairs", tmp_path, num_tasks=3, verify=False).specs) == 3
    assert load_taskset("uci", tmp_path, tasks=["iris"], verify=False).task_names == ["iris"]
    assert load_taskset("omniglot", tmp_path, num_tasks=2, downsample=7, verify=False).task_names == [
        "Gujarati", "Sylheti",
    ]


def test_load_taskset_errors():
    with pytest.raises(ValueError, match=r"unknown task set 'cifar'.*'mnist-pairs'"):
        load_taskset("cifar")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\] for task set 'celeba'.*image_size"):
        load_taskset("celeba", colour=True)
    assert "test_fraction" in taskset_options("omniglot")
    assert "data_dir" not in taskset_options("uci")


def test_public_names_are_exported():
    for name in data_pkg.__all__:
        assert hasattr(data_pkg, name), name


def test_compact_tasks_convert_per_batch():
    spec = TaskSpec("t", (2,), "binary")
    x = torch.tensor([[0, 255], [51, 102]], dtype=torch.uint8)
    data = CompactTensorTasks([TaskArrays(spec, {"train": (x, torch.tensor([0, 1]))})], scale=1 / 255)
    batch = data.train_batch(0, 2, seed=0)
    assert batch.inputs["t"].dtype == torch.float32
    assert sorted(batch.inputs["t"].flatten().tolist()) == pytest.approx([0.0, 0.2, 0.4, 1.0])
    with pytest.raises(TypeError, match="uint8"):
        CompactTensorTasks([TaskArrays(spec, {"train": (x.float(), torch.tensor([0, 1]))})], scale=1.0)
