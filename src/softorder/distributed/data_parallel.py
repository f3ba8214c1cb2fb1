"""Data-parallel training: one model per process, every process a share of every batch.

:func:`softorder.train.fit` uses this when it runs in several processes (started by ``torchrun``,
or with an initialised ``torch.distributed`` process group): every process draws the same global
training batch (batch ``i`` is a pure function of the seed and ``i``), keeps its share of every
task's rows (:meth:`DataParallel.shard`), and the gradients are summed over the processes in one
all-reduce per iteration (:meth:`DataParallel.all_reduce_gradients`).

Why this equals one process with the whole batch: the single-process loss is the sum over tasks of
each task's *mean* loss over its ``N_t`` rows. Process ``r`` holding ``n_tr`` of them weights its
task mean by ``n_tr / N_t``, so its loss is ``sum_t (1 / N_t) * (sum of its rows' losses)`` and the
sum of these losses over processes (and so of their gradients) is the single-process loss (and
gradient), up to float rounding, whether or not the shares are equal, as long as every row's output
depends only on that row. Dropout then is the one thing that differs: each process draws its own
masks.

Batch normalisation breaks that condition (the CelebA trunks of :mod:`softorder.trunks` have it):
in training, each process normalises its own share of the batch with that share's mean and
variance, as :class:`torch.nn.parallel.DistributedDataParallel` does without ``SyncBatchNorm``,
and updates its running statistics from its own share. Left alone, the processes' running
statistics drift apart, so that evaluation (split over the processes) and rank 0's checkpoints use
different models. So after every optimizer step (:meth:`DataParallel.sync_buffers`) every process
takes rank 0's running statistics, bit for bit: DDP's default semantics (``broadcast_buffers=True``
broadcasts rank 0's buffers before every forward; here it happens after the step, so the buffers
also agree for the evaluation and the checkpoint that follow the last step). The statistics are then
those of one process that saw rank 0's shares: an estimate of the same population statistics from a
smaller sample, not the single-process numbers. The alternatives, weighed and not taken:

- averaging the running means and variances over the processes: still not the single-process
  statistics (the mean of the shares' variances misses the spread between the shares' means, and
  the unbiasing factor is a share's), another result than DDP's, and ``num_batches_tracked``
  (an integer) needs a rule of its own. Measured on a small model like the tests' (Linear,
  BatchNorm, ReLU as the shared encoder; 2 processes against 1, batch 8): after 12 steps averaging
  came closer to the single-process statistics (largest difference 0.02 against 0.05), after 200
  steps (batch 8 or 32) neither did (0.16 to 0.20 both), because the parameters themselves drift
  from the single-process ones through the per-share normalisation, which no rule for the buffers
  changes. No reason to leave DDP's semantics.
- ``SyncBatchNorm``: normalises with the whole batch's statistics (the single-process numbers), but
  runs only on GPUs (not with gloo on the CPU), costs a collective per BatchNorm layer in every
  forward and backward, replaces layers of the model the user built, and needs every process to
  run every forward (here a process holding no rows of a batch skips it).

The broadcast is one collective per step over one flat buffer of bytes (so every dtype, the integer
``num_batches_tracked`` included, arrives exactly), and none at all for a model without
normalisation layers that track statistics (:func:`running_stat_buffers`). In a step where rank 0
holds no rows that reach a BatchNorm layer (fewer rows of a task than processes, with a per-task
encoder), the layer's statistics stay as they were everywhere.

The gradients are all-reduced by hand rather than through ``DistributedDataParallel``: one flat
buffer carries the gradients, a has-gradient flag per parameter (a parameter without a gradient in
every process keeps ``None``, as in one process, so Adam leaves it alone) and the per-task losses
(so every process sees the same non-finite loss and stops at the same iteration). The model stays a
plain module, so checkpoints are the same in both modes and resume across them.

Collectives run on the training device: gloo for the CPU, NCCL for CUDA. The process group is
initialised from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
when it is not already.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from softorder.tasks import SEED_STRIDE, Batch

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when the environment names more than one process (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def default_backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors where CUDA is available."""
    import torch.distributed as dist

    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_process_group(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment if it is not yet.

    Returns True when this call initialised it (the caller may then destroy it), False when it was
    initialised already or the environment names a single process.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this build of torch has no torch.distributed")
    if dist.is_initialized():
        return False
    if not launched_by_torchrun():
        return False
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start the processes with torchrun "
            "or initialise torch.distributed yourself"
        )
    dist.init_process_group(backend or default_backend())
    atexit.register(_destroy_process_group)
    return True


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def running_stat_buffers(module: nn.Module) -> list[Tensor]:
    """The buffers that training changes: the running statistics (and ``num_batches_tracked``) of
    every normalisation layer of ``module`` (BatchNorm, SyncBatchNorm, InstanceNorm) that tracks
    them and is in training mode. Other buffers (a fixed ordering, a frozen encoder's weights) never
    change after the first broadcast, and a custom module's own changing buffers are not known here.
    """
    from torch.nn.modules.batchnorm import _NormBase

    found: list[Tensor] = []
    for m in module.modules():
        if isinstance(m, _NormBase) and m.track_running_stats and m.training:
            found.extend(m.buffers(recurse=False))
    return found


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run: its rank, the number of processes, its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 reads and writes checkpoints and history, and shows progress."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """The seed of this process's own random stream (dropout): ``seed`` itself on rank 0."""
        return (int(seed) + self.rank * SEED_STRIDE) % (2**63)

    # --- sharding -------------------------------------------------------------------------------

    def shard(self, batch: Batch) -> tuple[Batch | None, dict[str, float]]:
        """This process's rows of a global batch, and each kept task's share ``n_tr / N_t``.

        Per-task rows: row ``j`` of the ``t``-th task goes to rank ``(j + t) % world_size``, so the
        shares are equal when the batch size is a multiple of the world size, and a batch of one
        row per task (Omniglot) spreads its tasks over the processes. Shared rows (one batch for all
        tasks) go row ``j`` to rank ``j % world_size``. Tasks without rows here are left out; ``None``
        when this process has no rows at all.
        """
        weights: dict[str, float] = {}
        if isinstance(batch.inputs, Tensor):
            n = batch.inputs.shape[0]
            rows = torch.arange(self.rank, n, self.world_size)
            if rows.numel() == 0:
                return None, {}
            targets = {name: y[rows] for name, y in batch.targets.items()}
            weights = {name: rows.numel() / n for name in batch.targets}
            return Batch(batch.inputs[rows], targets), weights
        inputs, targets = {}, {}
        for t, (name, y) in enumerate(batch.targets.items()):
            n = y.shape[0]
            first = (self.rank - t) % self.world_size
            rows = torch.arange(first, n, self.world_size)
            if rows.numel() == 0:
                continue
            inputs[name], targets[name] = batch.inputs[name][rows], y[rows]
            weights[name] = rows.numel() / n
        if not targets:
            return None, {}
        return Batch(inputs, targets), weights

    # --- collectives ----------------------------------------------------------------------------

    def all_reduce_gradients(self, params: Sequence[nn.Parameter], task_losses: Tensor) -> Tensor:
        """Sum the gradients of ``params`` and ``task_losses`` over the processes, in place.

        Each process's gradients must come from its loss weighted by its shares (see :meth:`shard`),
        so the sum is the single-process gradient. A parameter with a gradient in no process keeps
        ``None``. Returns the summed ``task_losses``: every task's mean loss on the global batch.
        """
        import torch.distributed as dist

        dtype = params[0].dtype if params and all(p.dtype == params[0].dtype for p in params) else torch.float64
        chunks = [
            (p.grad.detach().reshape(-1).to(dtype) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=self.device))
            for p in params
        ]
        flags = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype, device=self.device)
        flat = torch.cat([*chunks, flags, task_losses.detach().to(device=self.device, dtype=dtype)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        sizes = [p.numel() for p in params]
        summed = flat[: sum(sizes)].split(sizes)
        flags = flat[sum(sizes) : sum(sizes) + len(params)]
        for p, g, flag in zip(params, summed, flags.tolist()):
            if flag == 0:
                p.grad = None
            elif p.grad is not None:
                p.grad.copy_(g.view_as(p))
            else:
                p.grad = g.view_as(p).to(p.dtype).clone()
        return flat[sum(sizes) + len(params) :].to(task_losses.dtype)

    def sum_and_share(self, values: Tensor) -> Tensor:
        """``values`` summed over the processes, identical bit for bit on every process."""
        import torch.distributed as dist

        values = values.to(self.device).clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        dist.broadcast(values, src=0)  # every process takes the same decisions from these numbers
        return values

    def sum_eval_counts(self, sums: Mapping[str, list[float]], names: Sequence[str]) -> dict[str, list[float]]:
        """Per-task ``[error sum, loss sum, rows]`` of this process's evaluation batches, summed."""
        local = torch.zeros(len(names), 3, dtype=torch.float64)
        for i, name in enumerate(names):
            if name in sums:
                local[i] = torch.tensor(sums[name], dtype=torch.float64)
        total = self.sum_and_share(local).cpu()
        return {name: total[i].tolist() for i, name in enumerate(names)}

    def from_main(self, make: Callable[[], T]) -> T:
        """``make()`` on rank 0, sent to every process (an exception on rank 0 is raised everywhere)."""
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", make())
            except Exception as exc:  # noqa: BLE001 - re-raised below on every rank
                box[0] = ("error", exc)
        dist.broadcast_object_list(box, src=0, device=self.device)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every process's module."""
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def sync_buffers(self, module: nn.Module) -> None:
        """Give every process rank 0's running statistics, after every optimizer step.

        The buffers of :func:`running_stat_buffers` (BatchNorm's ``running_mean``, ``running_var``
        and ``num_batches_tracked``) travel as bytes in one flat buffer and one broadcast, so every
        process holds rank 0's exactly. Nothing at all (no collective) when ``module`` has none.
        """
        buffers = running_stat_buffers(module)
        if not buffers:
            return
        import torch.distributed as dist

        with torch.no_grad():
            flat = torch.cat([b.detach().reshape(-1).view(torch.uint8) for b in buffers])
            dist.broadcast(flat, src=0)
            if self.is_main:
                return
            for b, chunk in zip(buffers, flat.split([b.numel() * b.element_size() for b in buffers])):
                b.copy_(chunk.clone().view(b.dtype).view_as(b))  # clone: a chunk may start misaligned for its dtype

    def gather_rng_states(self) -> list[Tensor] | None:
        """Every process's CPU random state, on rank 0 (``None`` elsewhere)."""
        import torch.distributed as dist

        state = torch.get_rng_state()
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(state, gathered, dst=0)
        return gathered

    def restore_rng(self, checkpoint: Mapping[str, Any], seed: int, iteration: int) -> None:
        """This process's random state from a checkpoint.

        A checkpoint written by as many processes holds every state; otherwise rank 0 takes the
        saved (rank 0 or single-process) state and the others a fresh stream from seed and iteration.
        """
        states = checkpoint.get("rng_ranks")
        if states is not None and len(states) == self.world_size:
            torch.set_rng_state(states[self.rank])
        elif self.is_main:
            torch.set_rng_state(checkpoint["rng"])
        else:
            torch.manual_seed((self.seed(seed) + int(iteration)) % (2**63))

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


@dataclass
class SingleProcess:
    """The strategy of a run in one process: every method of :class:`DataParallel`, doing nothing
    beyond what one process does anyway, so that :func:`softorder.train.fit` has one code path."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    is_main: bool = True

    def seed(self, seed: int) -> int:
        return int(seed)

    def shard(self, batch: Batch) -> tuple[Batch | None, dict[str, float]]:
        return batch, {name: 1.0 for name in batch.targets}

    def all_reduce_gradients(self, params: Sequence[nn.Parameter], task_losses: Tensor) -> Tensor:
        return task_losses

    def sum_eval_counts(self, sums: Mapping[str, list[float]], names: Sequence[str]) -> dict[str, list[float]]:
        return dict(sums)

    def from_main(self, make: Callable[[], T]) -> T:
        return make()

    def broadcast_module(self, module: nn.Module) -> None:
        pass

    def sync_buffers(self, module: nn.Module) -> None:
        pass

    def gather_rng_states(self) -> None:
        return None

    def restore_rng(self, checkpoint: Mapping[str, Any], seed: int, iteration: int) -> None:
        torch.set_rng_state(checkpoint["rng"])

    def barrier(self) -> None:
        pass


Strategy = DataParallel | SingleProcess


def setup_data_parallel(distributed: bool | None, device: str | torch.device) -> Strategy:
    """This process's :class:`DataParallel`, or a :class:`SingleProcess` to train alone.

    ``distributed``: ``None`` detects a run of several processes (an initialised process group, or
    torchrun's ``WORLD_SIZE`` > 1, which initialises the group); ``True`` requires one; ``False``
    never distributes. A group of one process trains as a single process. On CUDA, a device without
    an index becomes ``cuda:LOCAL_RANK``.
    """
    single = SingleProcess(torch.device(device))
    if distributed is False:
        return single
    import torch.distributed as dist

    available = dist.is_available()
    if available and not dist.is_initialized() and (distributed or launched_by_torchrun()):
        init_process_group()
    if not (available and dist.is_initialized()):
        if distributed:
            raise ValueError(
                "distributed training needs several processes: start them with torchrun "
                "(e.g. torchrun --nproc_per_node 2 -m softorder.distributed ...) or initialise torch.distributed"
            )
        return single
    world = dist.get_world_size()
    if world == 1:
        return single
    rank = dist.get_rank()
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return DataParallel(rank=rank, world_size=world, device=dev)
