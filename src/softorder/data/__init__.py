"""The paper's task sets and the files they are built from.

``load_taskset(name, data_dir, **options)`` builds a :class:`~softorder.tasks.MultitaskData` by
name; the builders are also available directly. See ``docs/data.md`` for sources, checksums and
every preprocessing decision.
"""

from softorder.data.celeba import CelebATasks, celeba_tasks
from softorder.data.check import run_check
from softorder.data.compact import CompactTensorTasks
from softorder.data.download import DataFile, ensure_file
from softorder.data.errors import DataCorruptError, DataError, DataMissingError
from softorder.data.mnist import all_digit_pairs, draw_digit_pairs, load_mnist, mnist_pairs
from softorder.data.omniglot import PAPER_ORDER as OMNIGLOT_PAPER_ORDER
from softorder.data.omniglot import map_paper_order, omniglot_tasks
from softorder.data.paths import dataset_dir, default_data_dir, resolve_data_dir
from softorder.data.random_tasks import random_tasks
from softorder.data.registry import TASKSETS, load_taskset, taskset_options
from softorder.data.uci import uci_tasks


def clear_caches() -> None:
    """Drop the parsed arrays kept in-process (MNIST, Omniglot, CelebA annotations)."""
    from softorder.data import celeba, download, mnist, omniglot

    mnist._CACHE.clear()
    omniglot._CACHE.clear()
    celeba._CACHE.clear()
    download._VERIFIED.clear()


__all__ = [
    "OMNIGLOT_PAPER_ORDER",
    "TASKSETS",
    "CelebATasks",
    "CompactTensorTasks",
    "DataCorruptError",
    "DataError",
    "DataFile",
    "DataMissingError",
    "all_digit_pairs",
    "celeba_tasks",
    "clear_caches",
    "dataset_dir",
    "default_data_dir",
    "draw_digit_pairs",
    "ensure_file",
    "load_mnist",
    "load_taskset",
    "map_paper_order",
    "mnist_pairs",
    "omniglot_tasks",
    "random_tasks",
    "resolve_data_dir",
    "run_check",
    "taskset_options",
    "uci_tasks",
]
