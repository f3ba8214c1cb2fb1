"""MultitaskModel: per-task (or shared) encoders -> ordered core -> per-task decoders.

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

from softorder.layers import (
    ConvPool,
    Dense,
    GlobalAveragePool,
    TaskDense,
    ZeroPadChannels,
    dense_decoder,
)
from softorder.orderings import OrderedCore, ordering_class
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
    logits (:meth:`TaskSpec.predict` turns them into probabilities or values).
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

    def _decode(self, y: Tensor, names: list[str], counts: list[int]) -> list[Tensor]:
        """Decoder outputs per task from the core's task-major rows y (N, ...)."""
        if isinstance(self.decoders, TaskDense) and len(names) > 1 and len(set(counts)) == 1 and counts[0] > 0:
            stacked = y.reshape(len(names), counts[0], -1)  # a view: no split and re-stack
            return list(self.decoders.forward_stacked(stacked, [self.task_index[n] for n in names]).unbind(0))
        return self._per_task(self.decoders, names, list(y.split(counts)))

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
            if not inputs:
                raise ValueError(f"no inputs: pass {{task: rows}} for some of the tasks {self.task_names}")
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
                counts = [e.shape[0] for e in encoded]
                h = torch.cat(encoded)
            elif isinstance(self.encoders, TaskDense) and len(names) > 1 and len({inputs[n].shape[0] for n in names}) == 1:
                xs = torch.stack([inputs[n].reshape(inputs[n].shape[0], -1) for n in names])  # (T, n, in)
                counts = [xs.shape[1]] * len(names)
                h = self.encoders.forward_stacked(xs, [self.task_index[n] for n in names]).flatten(0, 1)  # (T * n, out)
            else:
                encoded = self._per_task(self.encoders, names, [inputs[n] for n in names])
                counts = [e.shape[0] for e in encoded]
                h = torch.cat(encoded)
        index = torch.tensor([self.task_index[n] for n in names], device=h.device)
        task = torch.repeat_interleave(index, torch.tensor(counts, device=h.device))
        return h, task, names, counts

    def forward(self, inputs: Mapping[str, Tensor] | Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        if isinstance(inputs, Tensor) and self.shared_encoder is not None and hasattr(self.core, "forward_shared"):
            # rows given to every task: the core sees them once (forward_shared), not T copies
            names = list(tasks) if tasks is not None else self.task_names
            self._check_names(names)
            z = self.shared_encoder(inputs)  # (B, ...)
            index = torch.tensor([self.task_index[n] for n in names], device=z.device)
            y = self.core.forward_shared(z, index)  # (T * B, ...), task-major
            counts = [z.shape[0]] * len(names)
        else:
            h, task, names, counts = self.encode(inputs, tasks)
            y = self.core(h, task)  # (N, ...)
        return dict(zip(names, self._decode(y, names, counts)))

    def auxiliary_loss(self) -> Tensor | None:
        """The extra training terms of the latest forward, summed (e.g. a sparse core's balancing
        term, :meth:`~softorder.sparse.TopKSoftOrdering.auxiliary_loss`), or None when there are none."""
        terms = [t for m in self.modules() if m is not self and callable(getattr(m, "auxiliary_loss", None))
                 and (t := m.auxiliary_loss()) is not None]
        return torch.stack(terms).sum() if terms else None


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
    top_k: int | None = None,
    gating: str = "gumbel",
) -> OrderedCore:
    """An ordered core by its name in :data:`~softorder.orderings.ORDERINGS`: 'single', 'parallel',
    'permuted' or 'soft'; with ``top_k``, soft ordering over each task's k highest-weighted layers
    per depth (:class:`~softorder.sparse.TopKSoftOrdering`), drawn in training by ``gating``."""
    if top_k is not None:
        if ordering != "soft" or identity_layer or gate != "softmax":
            raise ValueError("top_k applies to soft ordering with softmax gates and no identity layer")
        from softorder.sparse import TopKSoftOrdering

        return TopKSoftOrdering(make(), num_tasks, k=top_k, dropout=dropout, gating=gating)
    return ordering_class(ordering).from_options(
        make, num_tasks, dropout=dropout, identity_layer=identity_layer, gate=gate, seed=permutation_seed  # type: ignore[arg-type]
    )


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
    top_k: int | None = None,
    gating: str = "gumbel",
) -> MultitaskModel:
    """The paper's model for a set of tasks, by name.

    ``encoder`` is 'learned' (dense ReLU to ``width``, per task), 'frozen' (the same, random and
    never trained, Sec. 4.1), 'identity' (channels zero-padded to ``width``, Sec. 4.3),
    'linear-shared' (one linear map shared by all tasks, Sec. 5), or a module shared by all tasks
    (e.g. a CNN trunk, Sec. 4.4) whose output has ``encoder_features`` (default ``width``) features.
    ``top_k`` (soft ordering only) evaluates each task's k highest-weighted layers per depth,
    drawn in training by ``gating`` ('gumbel' or 'noisy'; beyond the paper: :mod:`softorder.sparse`).
    Parameters are initialised from ``seed``; the global random state is left as it was.
    """
    if not specs:
        raise ValueError("build_model needs at least one task")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        core = make_core(
            ordering,
            lambda: make_layers(layer, width, depth, activation),
            len(specs),
            dropout=dropout,
            identity_layer=identity_layer,
            gate=gate,
            permutation_seed=seed,
            top_k=top_k,
            gating=gating,
        )
        spatial = tuple(specs[0].input_shape[1:]) if layer == "conv" else ()
        encoders, shared = _encoders(specs, encoder, width, encoder_features)
        decoders = _decoders(specs, decoder, core_output_features(layer, width, depth, spatial))
    return MultitaskModel(specs, core, encoders=encoders, shared_encoder=shared, decoders=decoders)


def _encoders(specs: Sequence[TaskSpec], encoder: EncoderKind | nn.Module, width: int,
              encoder_features: int | None) -> tuple[Encoders | None, nn.Module | None]:
    """build_model's per-task encoders, or its shared encoder: (encoders, None) or (None, shared)."""
    if isinstance(encoder, nn.Module):
        return None, encoder if encoder_features in (None, width) else nn.Sequential(encoder, nn.Linear(encoder_features, width))
    if encoder in ("learned", "frozen"):
        trainable = encoder == "learned"
        flat = {math.prod(s.input_shape) for s in specs}
        if len(flat) == 1:
            return TaskDense(len(specs), flat.pop(), width, "relu", trainable=trainable), None
        return {s.name: _SingleTask(TaskDense(1, math.prod(s.input_shape), width, "relu", trainable=trainable)) for s in specs}, None
    if encoder == "identity":
        return {s.name: ZeroPadChannels(width) for s in specs}, None
    if encoder == "linear-shared":
        in_features = {math.prod(s.input_shape) for s in specs}
        if len(in_features) != 1:
            raise ValueError("a shared encoder needs every task to have the same input shape")
        linear = nn.Sequential(nn.Flatten(), nn.Linear(in_features.pop(), width))
        return {s.name: linear for s in specs}, None
    raise ValueError(f"unknown encoder {encoder!r}")


def _decoders(specs: Sequence[TaskSpec], decoder: DecoderKind, in_features: int) -> Decoders:
    """build_model's decoders: one dense layer per task (one TaskDense when the output sizes match),
    or global average pooling (one output)."""
    if decoder == "gap":
        wide = [s.name for s in specs if s.num_outputs != 1]
        if wide:
            raise ValueError(f"decoder 'gap' gives one output per task, but tasks {wide} need more; use decoder 'dense'")
        return {s.name: GlobalAveragePool() for s in specs}
    if decoder == "dense":
        outs = {s.num_outputs for s in specs}
        if len(outs) == 1:
            return TaskDense(len(specs), in_features, outs.pop())
        return {s.name: dense_decoder(in_features, s.num_outputs) for s in specs}
    raise ValueError(f"unknown decoder {decoder!r}; expected 'dense' or 'gap'")


class _SingleTask(nn.Module):
    """Adapts a one-task :class:`TaskDense` to a plain per-task module: (n, ...) -> (n, out)."""

    def __init__(self, dense: TaskDense) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, x: Tensor) -> Tensor:
        return self.dense([x])[0]
