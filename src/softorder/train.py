"""The paper's training procedure (Appendix A), with checkpoints, history and exact resumption.

Each iteration draws a batch of every task, sums the tasks' losses and makes one update (Adam with
default parameters unless configured). Optionally, once the summed validation loss stops improving,
training continues with a second optimizer (the paper's CelebA runs: RMSProp, learning rate 1e-5).

A run directory holds the checkpoint and the history (:mod:`softorder.checkpoints`). Training batch
``i`` is a pure function of the seed and ``i``, and the random state (dropout) is checkpointed, so a
run stopped part-way and resumed ends with exactly the parameters of an uninterrupted run on the CPU.

Data-parallel training: started in several processes (``torchrun``; see docs/distributed.md), fit()
gives each process its share of every task's rows of each batch and sums the gradients over the
processes (:mod:`softorder.distributed.data_parallel`), which equals one process training on the
whole batch (up to float rounding; exactly so with dropout 0). Rank 0 alone reads and writes the
checkpoint and the history; evaluation is split over the processes and summed. A run in one process
goes through the same steps with a strategy that does nothing more (``SingleProcess``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from softorder._hints import did_you_mean
from softorder._io import differing_keys
from softorder.checkpoints import CHECKPOINT_NAME, History, RunFiles, load_checkpoint
from softorder.distributed.data_parallel import Strategy, setup_data_parallel
from softorder.model import MultitaskModel
from softorder.tasks import Batch, MultitaskData, mean_or_nan

__all__ = ["CHECKPOINT_NAME", "History", "TrainConfig", "TrainingDiverged", "evaluate", "fit", "load_checkpoint"]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
}


class TrainingDiverged(RuntimeError):
    """A task's loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Settings of one training run. Build from a dict with :meth:`from_dict` to get key checking."""

    iterations: int = 1000
    batch_size: int = 64  # rows per task per iteration (or shared rows, for a shared encoder)
    optimizer: str = "adam"
    lr: float = 1e-3
    eval_every: int = 100  # iterations between evaluations (and checkpoints); 0: only at the end
    eval_splits: tuple[str, ...] = ("val", "test")
    eval_batch_size: int = 1024  # input rows per evaluation batch, all tasks together
    seed: int = 0  # batches and dropout
    second_optimizer: str | None = None  # e.g. "rmsprop": switch once validation loss stalls
    second_lr: float = 1e-5
    patience: int = 5  # evaluations without validation-loss improvement before the switch
    num_workers: int = 0  # DataLoader workers producing training batches
    device: str = "cpu"
    progress: bool = True
    history_format: str = "json"  # or "csv"

    def __post_init__(self) -> None:
        self.eval_splits = tuple(self.eval_splits)
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in (self.optimizer, self.second_optimizer):
            if name is not None and name not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
        if self.history_format not in ("json", "csv"):
            raise ValueError(f"history_format must be 'json' or 'csv', got {self.history_format!r}")
        bad = [s for s in self.eval_splits if s not in ("train", "val", "test")]
        if bad:
            raise ValueError(f"unknown eval split(s) {bad}; expected 'train', 'val' or 'test'")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown keys with a suggestion for likely typos."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise ValueError(f"unknown training option {key!r}{did_you_mean(key, names)} (options: {', '.join(names)})")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eval_splits"] = list(self.eval_splits)
        return d


# --- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: MultitaskModel,
    data: MultitaskData,
    split: str,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    parallel: Strategy | None = None,
) -> dict[str, dict[str, float]]:
    """Per-task mean error and mean loss on one split: ``{task: {"error": e, "loss": l}}``.

    Error is the misclassification rate for classification tasks and the mean squared error for
    regression tasks. Tasks without rows in the split are left out. With ``parallel`` (every process
    of a data-parallel run calls this), each process evaluates every ``world_size``-th batch and the
    sums are shared, so every process returns the same numbers.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    try:
        for i, batch in enumerate(data.eval_batches(split, batch_size)):
            if parallel is not None and i % parallel.world_size != parallel.rank:
                continue
            batch = batch.to(device)
            outputs = model(batch.inputs, list(batch.targets))
            for name, target in batch.targets.items():
                spec = data.spec(name)
                logits = outputs[name]
                acc = sums.setdefault(name, [0.0, 0.0, 0])
                acc[0] += spec.error_sum(logits, target)
                acc[1] += float(spec.loss(logits, target)) * target.shape[0]
                acc[2] += target.shape[0]
    finally:
        model.train(was_training)
    if parallel is not None:
        sums = parallel.sum_eval_counts(sums, data.task_names)
    return {n: {"error": e / c, "loss": l / c} for n, (e, l, c) in sums.items() if c > 0}


# --- training -----------------------------------------------------------------------------------


class _IterationBatches(Dataset):
    """Map-style view of a task set's training batches: item i is batch i (for DataLoader workers)."""

    def __init__(self, data: MultitaskData, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def __len__(self) -> int:  # not used: the sampler bounds the iterations
        return 2**62

    def __getitem__(self, iteration: int) -> Batch:
        return self.data.train_batch(iteration, self.batch_size, self.seed)


def _keep_batch(batch: Batch) -> Batch:
    return batch


def _train_batches(data: MultitaskData, config: TrainConfig, start: int) -> Iterable[Batch]:
    if config.num_workers <= 0:
        return (data.train_batch(i, config.batch_size, config.seed) for i in range(start, config.iterations))
    return DataLoader(
        _IterationBatches(data, config.batch_size, config.seed),
        sampler=range(start, config.iterations),
        batch_size=None,
        collate_fn=_keep_batch,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global (dropout) RNG untouched
    )


def check_compatible(model: MultitaskModel, data: MultitaskData) -> None:
    """Raise a clear error if the model and the data disagree on tasks, shapes or kinds."""
    model_specs = {s.name: s for s in model.specs}
    unknown = [s.name for s in data.specs if s.name not in model_specs]
    if unknown:
        raise ValueError(f"data has tasks {unknown} that the model does not have (model tasks: {model.task_names})")
    for s in data.specs:
        m = model_specs[s.name]
        if (m.kind, m.num_outputs) != (s.kind, s.num_outputs):
            raise ValueError(f"task {s.name!r}: model predicts {m.kind}/{m.num_outputs}, data has {s.kind}/{s.num_outputs}")
    if data.shared_input != (model.shared_encoder is not None):
        want = "a shared encoder" if data.shared_input else "per-task encoders"
        raise ValueError(f"the data gives one batch of rows to every task, so the model needs {want}")


def _make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](params, lr=lr)


# may change when a run is continued (iterations may grow: the run then trains longer)
_RUNTIME_OPTIONS = ("iterations", "progress", "num_workers", "device", "eval_batch_size", "history_format")


def fit(
    model: MultitaskModel,
    data: MultitaskData,
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = True,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    distributed: bool | None = None,
) -> History:
    """Train ``model`` on ``data``; returns the evaluation history.

    With ``run_dir``, a checkpoint and the history are written there at every evaluation, and an
    existing checkpoint is continued from when ``resume`` is true. ``on_eval`` is called with each
    history record (e.g. to record extra quantities such as the mixing weights).

    ``distributed``: ``None`` (default) trains data-parallel when this process is one of several
    (started by torchrun, or in an initialised ``torch.distributed`` group), ``True`` requires that,
    ``False`` trains this process alone. Every process must call fit with the same arguments; all of
    them return the same history (but for the timings).
    """
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config or {})
    check_compatible(model, data)
    strategy = setup_data_parallel(distributed, config.device)
    run = _Run(model, data, config, strategy, RunFiles(run_dir, config.history_format), on_eval)
    start = run.start(resume)
    bar = tqdm(total=config.iterations, initial=start, disable=not (config.progress and strategy.is_main), desc="train", dynamic_ncols=True)
    losses: list[float] = []
    model.train()
    tick = time.perf_counter()
    try:
        for iteration, batch in enumerate(_train_batches(data, config, start), start=start):
            losses.append(run.train_step(batch, iteration))
            bar.update(1)
            done = iteration + 1
            if done % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            if done == config.iterations or (config.eval_every > 0 and done % config.eval_every == 0):
                run.state["elapsed"] += time.perf_counter() - tick
                run.end_period(done, sum(losses) / max(len(losses), 1))
                losses = []
                tick = time.perf_counter()
    finally:
        bar.close()
    if not run.history.records:  # zero iterations: still report where the model stands
        run.evaluate(start, float("nan"))
    strategy.barrier()  # the last checkpoint is written before any process goes on
    return run.history


class _Run:
    """One call of :func:`fit`: the model and its optimizer, the strategy (one process or several),
    the evaluation state (phase, best validation loss, elapsed time) and the run's files."""

    def __init__(self, model: MultitaskModel, data: MultitaskData, config: TrainConfig, strategy: Strategy,
                 files: RunFiles, on_eval: Callable[[dict[str, Any]], None] | None) -> None:
        self.model, self.data, self.config, self.strategy, self.files, self.on_eval = model, data, config, strategy, files, on_eval
        model.to(strategy.device)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(config.optimizer, self.trainable, config.lr)
        self.history = History()
        self.state: dict[str, Any] = {"iteration": 0, "phase": 1, "best_val": math.inf, "stale": 0, "elapsed": 0.0}

    def start(self, resume: bool) -> int:
        """Continue from the checkpoint (model, optimizer, random state, history) or seed a fresh
        run; every process starts from rank 0's parameters. Returns the first iteration to run."""
        ckpt = self.files.load(self.strategy.from_main) if resume else None
        if ckpt is not None:
            self._check_same_run(ckpt)
            self.model.load_state_dict(ckpt["model"])
            self.state.update(ckpt["state"])
            if self.state["phase"] == 2:
                self.optimizer = _make_optimizer(self.config.second_optimizer or self.config.optimizer, self.trainable, self.config.second_lr)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.strategy.restore_rng(ckpt, self.config.seed, int(self.state["iteration"]))
            self.history = History(list(ckpt["history"]))
        else:
            torch.manual_seed(self.strategy.seed(self.config.seed))
        self.strategy.broadcast_module(self.model)
        return int(self.state["iteration"])

    def _check_same_run(self, ckpt: dict[str, Any]) -> None:
        """Refuse to continue a checkpoint made with other training settings or another model."""
        saved = ckpt.get("config", {})
        current = self.config.to_dict()
        differ = differing_keys(saved, current, ignore=_RUNTIME_OPTIONS, absent_is_same=True)
        done = int(ckpt["state"]["iteration"])
        if self.config.iterations < done:
            differ.append(f"iterations: it has trained {done}, {self.config.iterations} were asked")
        if ckpt.get("model_repr", repr(self.model)) != repr(self.model):
            differ.append("the model (its layers, sizes or dropout)")
        if differ:
            raise ValueError(f"{self.files.checkpoint} was made with other settings ({', '.join(differ)}); "
                             "use another run directory, the same settings, or resume=False")

    def train_step(self, batch: Batch, iteration: int) -> float:
        """One update on ``batch`` with the tasks' losses summed (Appendix A); returns that sum."""
        self.optimizer.zero_grad(set_to_none=True)
        losses = self._losses_and_gradients(batch)
        loss = torch.stack(list(losses.values())).sum()
        if not torch.isfinite(loss):
            name, value = next((n, v.item()) for n, v in losses.items() if not torch.isfinite(v))
            raise TrainingDiverged(f"loss of task {name!r} is {value} at iteration {iteration}; {self.files.where_kept()}")
        self.optimizer.step()
        self.strategy.sync_buffers(self.model)
        return loss.item()

    def _losses_and_gradients(self, batch: Batch) -> dict[str, Tensor]:
        """Forward and backward on this process's share of ``batch``, gradients summed over the
        processes. Returns every task's mean loss on the whole batch; the gradients are those of
        their sum, as in one process."""
        names = list(batch.targets)
        local, shares = self.strategy.shard(batch)
        terms: dict[str, Tensor] = {}
        if local is not None:  # a process may hold no rows (a batch smaller than the number of processes)
            local = local.to(self.strategy.device)
            outputs = self.model(local.inputs, list(local.targets))
            terms = {n: shares[n] * self.data.spec(n).loss(outputs[n], t) for n, t in local.targets.items()}
            total = torch.stack(list(terms.values())).sum()
            extra = self.model.auxiliary_loss()  # every process adds its share; the gradients are summed
            (total if extra is None else total + extra / self.strategy.world_size).backward()
        zero = torch.zeros((), device=self.strategy.device)
        weighted = torch.stack([terms[n].detach() if n in terms else zero for n in names])
        return dict(zip(names, self.strategy.all_reduce_gradients(self.trainable, weighted)))

    def end_period(self, done: int, train_loss: float) -> None:
        """Evaluate, switch to the second optimizer when validation stalled, write the checkpoint."""
        if self.evaluate(done, train_loss):
            self.optimizer = _make_optimizer(self.config.second_optimizer, self.trainable, self.config.second_lr)  # type: ignore[arg-type]
        self.state["iteration"] = done
        if self.files.checkpoint is None:
            return
        rng_ranks = self.strategy.gather_rng_states()  # every process's dropout stream, for an exact resume
        if self.strategy.is_main:
            extra = {"rng_ranks": rng_ranks} if rng_ranks is not None else {}
            self.files.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
                             "state": dict(self.state), "history": self.history.records, "config": self.config.to_dict(),
                             "model_repr": repr(self.model), **extra},
                            self.history)

    def evaluate(self, iteration: int, train_loss: float) -> bool:
        """Append a history record; True when validation loss stalled and phase 2 begins."""
        config, state = self.config, self.state
        record: dict[str, Any] = {"iteration": iteration, "phase": state["phase"], "train_loss": train_loss}
        for split in config.eval_splits:
            if not self.data.has_split(split):
                continue
            result = evaluate(self.model, self.data, split, batch_size=config.eval_batch_size, device=self.strategy.device, parallel=self.strategy)
            for name, r in result.items():
                record[f"{split}_error/{name}"] = r["error"]
            record[f"{split}_error"] = mean_or_nan({n: r["error"] for n, r in result.items()})
            record[f"{split}_loss"] = sum(r["loss"] for r in result.values())  # A: sum over tasks
        record["elapsed_s"] = state["elapsed"]
        self.history.records.append(record)
        if self.on_eval is not None:
            self.on_eval(record)
        val_loss = record.get("val_loss")
        if not (config.second_optimizer and state["phase"] == 1 and val_loss is not None):
            return False
        if val_loss < state["best_val"]:
            state["best_val"], state["stale"] = val_loss, 0
        else:
            state["stale"] += 1
        if state["stale"] < config.patience:
            return False
        state["phase"] = 2
        record["switched_optimizer"] = config.second_optimizer
        return True
