"""Training curves and soft orders in TensorBoard: ``--tensorboard DIR``.

Inside a :func:`tensorboard_logging` block, each training run that reports through :func:`eval_logger`
writes event files to ``DIR/<run>``: the presets do so for every trial (``<run>`` is the trial's key,
e.g. ``tasks=2/soft/trial=0``; through :func:`~softorder.experiments.runner.progress_reporter`), and
``softorder fit`` for every ordering (``<run>`` is the ordering). At each evaluation (step: the
training iteration) a run logs

* ``loss/train``: the training loss (summed over tasks) since the previous evaluation;
* ``error/<split>`` and ``loss/<split>``: each evaluated split's mean error over the tasks and its
  loss summed over the tasks;
* ``<split>_error/<task>``: each task's error;
* for soft ordering, the scalars ``mixing/<task>/depth<d>/layer<l>`` (the weight of layer ``l`` at
  depth ``d`` for the task; ``identity`` for the identity layer) and, with two or more tasks, the
  histograms ``layer_usage/depth<d>/layer<l>`` of that weight over the tasks (Fig. 6b as training goes).

In a data-parallel run only the first process writes. TensorBoard is optional:
``pip install "softorder[tensorboard]"``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

INSTALL_HINT = 'pip install "softorder[tensorboard]"'
_RECORD_KEY = re.compile(r"^(train|val|test)_(error|loss)(/.+)?$")


class _Logs:
    """The folder of an active :func:`tensorboard_logging` block and the writers still open in it."""

    def __init__(self, root: Path) -> None:
        self.root, self.open = root, set()


_ACTIVE: ContextVar[_Logs | None] = ContextVar("softorder_tensorboard", default=None)


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or an error naming the extra that provides it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch.utils.tensorboard needs the tensorboard package
        raise ModuleNotFoundError(f"TensorBoard logging needs the tensorboard package: {INSTALL_HINT}", name="tensorboard") from exc
    return SummaryWriter


@contextmanager
def tensorboard_logging(root: str | Path | None) -> Iterator[Path | None]:
    """Within the block, :func:`eval_logger` logs training runs to ``root/<run>`` (``None``: no logging).

    Fails at once, before any training, when the tensorboard package is missing. Writers still open
    when the block ends are closed.
    """
    if root is None:
        yield None
        return
    summary_writer_class()
    logs = _Logs(Path(root))
    token = _ACTIVE.set(logs)
    try:
        yield logs.root
    finally:
        _ACTIVE.reset(token)
        for writer in list(logs.open):
            writer.close()


def eval_logger(run: str, model: Any = None, iterations: int | None = None) -> Callable[[dict[str, Any]], None] | None:
    """An ``on_eval`` callback for :func:`softorder.train.fit` that logs each record to ``DIR/<run>``
    (with ``model``'s soft order when it is given), or ``None`` outside a :func:`tensorboard_logging`
    block and in the other processes of a data-parallel run.

    The event file is opened at the first record, flushed at each and closed after ``iterations``.
    """
    logs = _ACTIVE.get()
    if logs is None or not _is_main_process():
        return None
    folder = logs.root / run_folder(run)
    writer = None

    def log(record: dict[str, Any]) -> None:
        nonlocal writer
        if writer is None:
            writer = summary_writer_class()(log_dir=str(folder))
            logs.open.add(writer)
        log_record(writer, record, model)
        writer.flush()
        if iterations is not None and int(record.get("iteration", 0)) >= iterations:
            writer.close()
            logs.open.discard(writer)
            writer = None

    return log


def run_folder(run: str) -> str:
    """``run`` as a relative folder: its ``/``-separated parts kept (TensorBoard shows them as the run's
    name), odd characters replaced by ``_``."""
    parts = [re.sub(r"[^A-Za-z0-9._=+-]+", "_", p) for p in str(run).split("/")]
    return "/".join(p for p in parts if p.strip(".")) or "run"


def log_record(writer: Any, record: dict[str, Any], model: Any = None) -> None:
    """One evaluation record of :func:`softorder.train.fit` as scalars, and ``model``'s soft order."""
    step = int(record.get("iteration", 0))
    for key, value in record.items():
        tag = _tag(key)
        if tag is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            writer.add_scalar(tag, float(value), step)
    if model is not None:
        log_mixing(writer, model, step)


def _tag(key: str) -> str | None:
    """``train_loss`` -> ``loss/train``; ``val_error`` -> ``error/val``; ``val_error/<task>`` as it is."""
    match = _RECORD_KEY.match(key)
    if match is None:
        return None
    split, quantity, task = match.groups()
    return key if task else f"{quantity}/{split}"


def log_mixing(writer: Any, model: Any, step: int) -> None:
    """A soft-ordered model's mixing weights: a scalar per task, depth and layer, and per depth and
    layer a histogram over the tasks. Other orderings (fixed weights) log nothing."""
    from softorder.analysis import mixing_of
    from softorder.orderings import SoftOrdering

    core = getattr(model, "core", model)
    if not isinstance(core, SoftOrdering):
        return
    weights = mixing_of(core)  # (tasks, layers [+ identity], depth)
    layers = [f"layer{j + 1}" for j in range(core.num_layers)] + (["identity"] if core.identity_layer else [])
    tasks = list(getattr(model, "task_names", [f"task{t + 1}" for t in range(weights.shape[0])]))
    for d in range(weights.shape[2]):
        for j, layer in enumerate(layers):
            for t, task in enumerate(tasks):
                writer.add_scalar(f"mixing/{task}/depth{d + 1}/{layer}", float(weights[t, j, d]), step)
            if len(tasks) > 1:
                writer.add_histogram(f"layer_usage/depth{d + 1}/{layer}", weights[:, j, d], step)


def _is_main_process() -> bool:
    """False in the processes other than the first of a data-parallel (torchrun) run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"
