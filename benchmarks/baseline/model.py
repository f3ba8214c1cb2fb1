"""[softorder at commit fe89b97, for benchmarks/ only] MultitaskModel: per-task (or shared) encoders -> ordered core -> per-task decoders.

Inputs and outputs are dicts keyed by task name. Rows of all tasks travel through the core together
as one batch with a task index per row, so the core runs once per forward whatever the number of
tasks. :func:`build_model` assembles the paper's configurations by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from baseline.layers import (
    ConvPool,
    Dense,
    GlobalAveragePool,
    TaskDense,
    ZeroPadChannels,
    dense_decoder,
)
from baseline.orderings import (
    ORDERINGS,
    OrderedCore,
    ParallelOrdering,
    PermutedOrdering,
    SingleTaskCores,
    SoftOrdering,
)
from softorder.tasks import TaskSpec

Encoders = Mapping[str, nn.Module] | TaskDense
Decoders = Mapping[str, nn.Module] | TaskDense


class MultitaskModel(nn.Module):
    """Encoders, an ordered core shared by all tasks, and decoders.

    Args:
        specs: the tasks, in the order of the core's task indices.
        core: an :class:`~softorder.orderings.OrderedCore` with ``num_tasks == len(specs)``.
        encoders: per-task modules ``(n, *input_shape) -> (n, *core_shape)``, or one
            :class:`~softorder.layers.TaskDense` for all tasks. Leave out with ``shared_encoder``.
        shared_encoder: one module run once on a batch whose rows are then given to every task.
        decoders: per-task modules ``(n, *core_out_shape) -> (n, num_outputs)`` producing logits,
            or one :class:`~softorder.layers.TaskDense` for tasks with equal output sizes.

    ``forward(inputs)`` takes ``{task: (n_t, *input_shape)}`` (any subset of tasks), or a single
    tensor ``(n, *input_shape)`` for a shared encoder, and returns ``{task: (n_t, num_outputs)}``
    logits; the task's kind supplies the final activation (:meth:`TaskSpec.predict`).
    """

    def __init__(
        self,
        specs: Sequence[TaskSpec],
        core: OrderedCore,
        *,
        decoders: Decoders,
        encoders: Encoders | None = None,
        shared_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.specs = tuple(specs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names in {names}")
        if core.num_tasks != len(self.specs):
            raise ValueError(f"the core is built for {core.num_tasks} tasks but {len(self.specs)} specs were given")
        if (encoders is None) == (shared_encoder is None):
            raise ValueError("give exactly one of encoders (per task) or shared_encoder")
        self.task_index = {name: i for i, name in enumerate(names)}
        self.core = core
        self.shared_encoder = shared_encoder
        self.encoders = self._check_per_task("encoders", encoders) if encoders is not None else None
        self.decoders = self._check_per_task("decoders", decoders)

    def _check_per_task(self, what: str, modules: Encoders | Decoders) -> nn.Module:
        if isinstance(modules, TaskDense):
            if modules.num_tasks != len(self.specs):
                raise ValueError(f"{what}: TaskDense has {modules.num_tasks} tasks, the model {len(self.specs)}")
            return modules
        missing = [s.name for s in self.specs if s.name not in modules]
        extra = [k for k in modules if k not in self.task_index]
        if missing or extra:
            raise ValueError(f"{what} must have one module per task; missing {missing}, unknown {extra}")
        return nn.ModuleDict({s.name: modules[s.name] for s in self.specs})

    @property
    def task_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def _per_task(self, modules: nn.Module, names: list[str], xs: list[Tensor]) -> list[Tensor]:
        if isinstance(modules, TaskDense):
            return modules(xs, [self.task_index[n] for n in names])
        return [modules[n](x) for n, x in zip(names, xs)]

    def _check_names(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self.task_index]
        if unknown:
            raise KeyError(f"tasks {unknown} are not in the model; its tasks are {self.task_names}")

    def encode(self, inputs: Mapping[str, Tensor] | Tensor, tasks: Sequence[str] | None = None) -> tuple[Tensor, Tensor, list[str], list[int]]:
        """Core input rows h (N, ...), task index (N,), and the task names and row counts in h."""
        if isinstance(inputs, Tensor):
            if self.shared_encoder is None:
                raise TypeError("this model has per-task encoders: pass a dict {task: inputs}")
            names = list(tasks) if tasks is not None else self.task_names
            self._check_names(names)
            z = self.shared_encoder(inputs)  # (B, ...)
            h = z.repeat(len(names), *([1] * (z.dim() - 1)))  # (T * B, ...), task-major
            counts = [z.shape[0]] * len(names)
        else:
            if self.encoders is None:
                raise TypeError("this model has a shared encoder: pass one tensor of inputs")
            names = list(inputs)
            self._check_names(names)
            for n in names:
                want = self.specs[self.task_index[n]].input_shape
                if tuple(inputs[n].shape[1:]) != want:
                    raise ValueError(f"task {n!r}: inputs have row shape {tuple(inputs[n].shape[1:])}, expected {want}")
            if isinstance(self.encoders, nn.ModuleDict) and all(
                isinstance(self.encoders[n], ZeroPadChannels) for n in names
            ):
                encoded = [inputs[n] for n in names]  # every core reads missing channels as zeros
            else:
                encoded = self._per_task(self.encoders, names, [inputs[n] for n in names])
            counts = [e.shape[0] for e in encoded]
            h = torch.cat(encoded)
        index = torch.tensor([self.task_index[n] for n in names], device=h.device)
        task = torch.repeat_interleave(index, torch.tensor(counts, device=h.device))
        return h, task, names, counts

    def forward(self, inputs: Mapping[str, Tensor] | Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        h, task, names, counts = self.encode(inputs, tasks)
        y = self.core(h, task)  # (N, ...)
        outputs = self._per_task(self.decoders, names, list(y.split(counts)))
        return dict(zip(names, outputs))


# --- assembling the paper's configurations ------------------------------------------------------

LayerKind = Literal["dense", "conv"]
EncoderKind = Literal["learned", "frozen", "identity", "linear-shared"]
DecoderKind = Literal["dense", "gap"]


def make_layers(kind: LayerKind, width: int, count: int, activation: str = "relu") -> list[nn.Module]:
    """``count`` fresh shared layers of one kind: Dense(width) or ConvPool(width) (3x3, 2x2 pool)."""
    if kind == "dense":
        return [Dense(width, activation) for _ in range(count)]
    if kind == "conv":
        return [ConvPool(width, 3, 2, activation) for _ in range(count)]
    raise ValueError(f"unknown layer kind {kind!r}; expected 'dense' or 'conv'")


def make_core(
    ordering: str,
    make: Callable[[], list[nn.Module]],
    num_tasks: int,
    *,
    dropout: float = 0.0,
    identity_layer: bool = False,
    gate: str = "softmax",
    permutation_seed: int = 0,
) -> OrderedCore:
    """An ordered core by name: 'single', 'parallel', 'permuted' or 'soft'."""
    if ordering == "soft":
        return SoftOrdering(make(), num_tasks, identity_layer=identity_layer, gate=gate, dropout=dropout)  # type: ignore[arg-type]
    if identity_layer:
        raise ValueError(f"the identity layer is part of soft ordering, not of {ordering!r} ordering")
    if ordering == "parallel":
        return ParallelOrdering(make(), num_tasks, dropout=dropout)
    if ordering == "permuted":
        return PermutedOrdering(make(), num_tasks, seed=permutation_seed, dropout=dropout)
    if ordering == "single":
        return SingleTaskCores(make, num_tasks, dropout=dropout)
    raise ValueError(f"unknown ordering {ordering!r}; expected one of {ORDERINGS}")


def core_output_features(kind: LayerKind, width: int, depth: int, spatial: tuple[int, ...]) -> int:
    """Features per row after ``depth`` shared layers: width, or width * H' * W' for conv layers."""
    if kind == "dense":
        return width
    size = 1
    for s in spatial:
        for _ in range(depth):
            s //= 2
        size *= s
    return width * size


def build_model(
    specs: Sequence[TaskSpec],
    *,
    ordering: str = "soft",
    layer: LayerKind = "dense",
    width: int = 64,
    depth: int = 4,
    encoder: EncoderKind | nn.Module = "learned",
    decoder: DecoderKind = "dense",
    dropout: float = 0.0,
    identity_layer: bool = False,
    gate: str = "softmax",
    activation: str = "relu",
    seed: int = 0,
    encoder_features: int | None = None,
) -> MultitaskModel:
    """The paper's model for a set of tasks, by name.

    ``encoder`` is 'learned' (dense ReLU to ``width``, per task), 'frozen' (the same, random and
    never trained, Sec. 4.1), 'identity' (channels zero-padded to ``width``, Sec. 4.3),
    'linear-shared' (one linear map shared by all tasks, Sec. 5), or a module shared by all tasks
    (e.g. a CNN trunk, Sec. 4.4) whose output has ``encoder_features`` (default ``width``) features.
    Parameters are initialised from ``seed``.
    """
    torch.manual_seed(seed)
    num_tasks = len(specs)
    if num_tasks == 0:
        raise ValueError("build_model needs at least one task")
    core = make_core(
        ordering,
        lambda: make_layers(layer, width, depth, activation),
        num_tasks,
        dropout=dropout,
        identity_layer=identity_layer,
        gate=gate,
        permutation_seed=seed,
    )
    shapes = {s.input_shape for s in specs}
    spatial = next(iter(shapes))[1:] if layer == "conv" else ()
    out_features = core_output_features(layer, width, depth, tuple(spatial))

    encoders: Encoders | None = None
    shared: nn.Module | None = None
    if isinstance(encoder, nn.Module):
        shared = encoder if encoder_features in (None, width) else nn.Sequential(encoder, nn.Linear(encoder_features, width))
    elif encoder in ("learned", "frozen"):
        flat = {math.prod(s.input_shape) for s in specs}
        if len(flat) == 1:
            encoders = TaskDense(num_tasks, flat.pop(), width, "relu", trainable=encoder == "learned")
        else:
            encoders = {
                s.name: TaskDense(1, math.prod(s.input_shape), width, "relu", trainable=encoder == "learned")
                for s in specs
            }
            encoders = {n: _SingleTask(m) for n, m in encoders.items()}
    elif encoder == "identity":
        encoders = {s.name: ZeroPadChannels(width) for s in specs}
    elif encoder == "linear-shared":
        in_features = {math.prod(s.input_shape) for s in specs}
        if len(in_features) != 1:
            raise ValueError("a shared encoder needs every task to have the same input shape")
        linear = nn.Sequential(nn.Flatten(), nn.Linear(in_features.pop(), width))
        encoders = {s.name: linear for s in specs}
    else:
        raise ValueError(f"unknown encoder {encoder!r}")

    decoders: Decoders
    if decoder == "gap":
        decoders = {s.name: GlobalAveragePool() for s in specs}
    elif decoder == "dense":
        outs = {s.num_outputs for s in specs}
        if len(outs) == 1:
            decoders = TaskDense(num_tasks, out_features, outs.pop())
        else:
            decoders = {s.name: dense_decoder(out_features, s.num_outputs) for s in specs}
    else:
        raise ValueError(f"unknown decoder {decoder!r}; expected 'dense' or 'gap'")
    return MultitaskModel(specs, core, encoders=encoders, shared_encoder=shared, decoders=decoders)


class _SingleTask(nn.Module):
    """Adapts a one-task :class:`TaskDense` to a plain per-task module: (n, ...) -> (n, out)."""

    def __init__(self, dense: TaskDense) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, x: Tensor) -> Tensor:
        return self.dense([x])[0]
