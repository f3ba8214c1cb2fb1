"""Task sets by name: ``load_taskset("uci", data_dir, split_seed=0)``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from softorder.tasks import MultitaskData


def _random(data_dir: str | os.PathLike[str] | None = None, **options: Any) -> MultitaskData:
    from softorder.data.random_tasks import random_tasks

    return random_tasks(**options)


def _builders() -> dict[str, Callable[..., MultitaskData]]:
    from softorder.data.celeba import celeba_tasks
    from softorder.data.mnist import mnist_pairs
    from softorder.data.omniglot import omniglot_tasks
    from softorder.data.uci import uci_tasks

    return {
        "random": _random,
        "mnist-pairs": mnist_pairs,
        "uci": uci_tasks,
        "omniglot": omniglot_tasks,
        "celeba": celeba_tasks,
    }


TASKSETS: tuple[str, ...] = ("random", "mnist-pairs", "uci", "omniglot", "celeba")


def taskset_options(name: str) -> list[str]:
    """The keyword options that :func:`load_taskset` accepts for ``name``."""
    builders = _builders()
    if name not in builders:
        raise ValueError(f"unknown task set {name!r}; expected one of {list(TASKSETS)}")
    if name == "random":
        from softorder.data.random_tasks import random_tasks

        fn: Callable[..., Any] = random_tasks
    else:
        fn = builders[name]
    return [p for p in inspect.signature(fn).parameters if p != "data_dir"]


def load_taskset(name: str, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> MultitaskData:
    """Build the task set ``name`` ("random", "mnist-pairs", "uci", "omniglot" or "celeba").

    ``options`` are the keyword arguments of the builder (:func:`random_tasks`,
    :func:`mnist_pairs`, :func:`uci_tasks`, :func:`omniglot_tasks`, :func:`celeba_tasks`);
    an unknown option is a ``ValueError`` listing the accepted ones. ``data_dir`` is ignored by
    "random".
    """
    accepted = taskset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task set {name!r}; accepted options: {accepted}")
    return _builders()[name](data_dir, **options)
