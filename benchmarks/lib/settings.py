"""The paper's settings as benchmark workloads: models, one batch, and a training step for each.

A training step is what :func:`softorder.fit` does per iteration: forward of every task's rows, the
per-task losses summed, ``zero_grad``, backward, and an Adam step (default parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import softorder
from softorder import TaskSpec
from softorder.model import MultitaskModel

from . import typical


def _build(impl: str):
    """build_model of the current library ("current"), of the code before the performance work
    ("baseline"), or before the convolution work ("before-conv"); see baseline.py."""
    if impl == "current":
        return softorder.build_model
    from . import baseline

    if impl == "baseline":
        return baseline.build_model()
    if impl == "before-conv":
        return baseline.build_model(baseline.CONV_COMMIT)
    raise ValueError(impl)


@dataclass
class Workload:
    """A model with its optimizer and one fixed batch; ``step()`` is one training iteration."""

    name: str
    model: nn.Module
    inputs: dict[str, Tensor] | Tensor
    targets: dict[str, Tensor]
    specs: dict[str, TaskSpec]
    forward: Callable[[], dict[str, Tensor]] | None = None
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.model.train()
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad])

    def loss(self) -> Tensor:
        out = self.forward() if self.forward is not None else self.model(self.inputs)
        return torch.stack([self.specs[n].loss(out[n], t) for n, t in self.targets.items()]).sum()

    def step(self) -> None:
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


# --- MNIST (Sec. 4.1, A.1) ----------------------------------------------------------------------


def mnist_specs(num_tasks: int = 45) -> list[TaskSpec]:
    return [TaskSpec(f"pair{t}", (784,), "binary") for t in range(num_tasks)]


def mnist_batch(specs: list[TaskSpec], rows: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = {s.name: torch.rand(rows, 784, generator=g) for s in specs}
    targets = {s.name: torch.randint(0, 2, (rows,), generator=g) for s in specs}
    return inputs, targets


def mnist_model(ordering: str, num_tasks: int = 45, depth: int = 4, width: int = 64, dropout: float = 0.5, impl: str = "current") -> MultitaskModel:
    """45 digit-pair tasks, frozen random encoders 784 -> 64 (ReLU), ``depth`` shared Dense(64),
    one-logit sigmoid decoder per task, dropout 0.5."""
    return _build(impl)(mnist_specs(num_tasks), ordering=ordering, layer="dense", width=width, depth=depth, encoder="frozen", dropout=dropout, seed=0)


# --- CelebA core (Sec. 4.4, A.4) ----------------------------------------------------------------


def celeba_specs(num_tasks: int = 40) -> list[TaskSpec]:
    return [TaskSpec(f"attr{t}", (256,), "binary") for t in range(num_tasks)]


def celeba_batch(specs: list[TaskSpec], rows: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, 256, generator=g)  # stands in for ResNet-50 features
    targets = {s.name: torch.randint(0, 2, (rows,), generator=g) for s in specs}
    return inputs, targets


def celeba_model(ordering: str, num_tasks: int = 40, dropout: float = 0.5, impl: str = "current") -> MultitaskModel:
    """40 attributes, a shared linear 256 -> 256 encoder (standing in for ResNet-50 + projection),
    4 shared Dense(256), one-logit decoder per attribute, dropout 0.5 (the library's CelebA preset)."""
    torch.manual_seed(0)
    trunk = nn.Linear(256, 256)
    return _build(impl)(celeba_specs(num_tasks), ordering=ordering, layer="dense", width=256, depth=4, encoder=trunk, dropout=dropout, seed=0)


# --- Omniglot (Sec. 4.3, A.3) -------------------------------------------------------------------


def omniglot_specs(num_tasks: int = 50) -> list[TaskSpec]:
    # alphabets have about 20 to 55 characters; a fixed spread over that range
    return [TaskSpec(f"alphabet{t}", (1, 105, 105), "multiclass", 20 + (t * 13) % 36) for t in range(num_tasks)]


def omniglot_batch(specs: list[TaskSpec], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = {s.name: torch.rand(1, 1, 105, 105, generator=g) for s in specs}  # one image per task
    targets = {s.name: torch.randint(0, s.num_outputs, (1,), generator=g) for s in specs}
    return inputs, targets


def omniglot_model(num_tasks: int = 50, dropout: float = 0.5, impl: str = "current", ordering: str = "soft") -> MultitaskModel:
    """4 ConvPool(53) layers (3x3, ReLU, 2x2 max-pool), identity encoders, dense softmax decoders."""
    return _build(impl)(omniglot_specs(num_tasks), ordering=ordering, layer="conv", width=53, depth=4, encoder="identity", dropout=dropout, seed=0)


class PlainOmniglotNet(nn.Module):
    """Parallel ordering's network for Omniglot as plain, fast PyTorch: one trunk of four
    conv-ReLU-pool layers whose first convolution reads the 1-channel image (the zero channels of
    the paper's padding skipped), channels-last throughout, no dropout, one dense decoder per task.
    ``forward`` takes every task's images stacked, (T * n, 1, 105, 105), task-major."""

    def __init__(self, specs: list[TaskSpec], width: int = 53, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(depth):
            layers += [nn.Conv2d(1 if k == 0 else width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.trunk = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        side = 105 // 2**depth
        self.names = [s.name for s in specs]
        self.decoders = nn.ModuleList(nn.Linear(width * side * side, s.num_outputs) for s in specs)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        h = self.trunk(images.contiguous(memory_format=torch.channels_last)).flatten(1)
        rows = h.view(len(self.names), -1, h.shape[1])
        return {n: dec(r) for n, dec, r in zip(self.names, self.decoders, rows)}


def plain_omniglot_workload(num_tasks: int = 50) -> Workload:
    specs = omniglot_specs(num_tasks)
    inputs, targets = omniglot_batch(specs)
    torch.manual_seed(0)
    model = PlainOmniglotNet(specs)
    return Workload("omniglot/plain", model, torch.cat([inputs[s.name] for s in specs]), targets, {s.name: s for s in specs})


def omniglot_ordering_workload(ordering: str, num_tasks: int = 50, impl: str = "current") -> Workload:
    """One Omniglot training step of an ordering: one 105x105 image per task, dropout 0.5."""
    specs = omniglot_specs(num_tasks)
    inputs, targets = omniglot_batch(specs)
    model = omniglot_model(num_tasks, impl=impl, ordering=ordering)
    suffix = "" if impl == "current" else f"/{impl}"
    return Workload(f"omniglot/{ordering}{suffix}", model, inputs, targets, {s.name: s for s in specs})


def omniglot_forward(model: MultitaskModel, inputs: dict[str, Tensor], padded: bool) -> Callable[[], dict[str, Tensor]]:
    """The model's forward, with the core given either the 1-channel images (read as zero-padded,
    the shortcut) or the images explicitly zero-padded to 53 channels."""

    def forward() -> dict[str, Tensor]:
        h, task, names, counts = model.encode(inputs)  # (N, 1, 105, 105): the encoders skip the padding
        if padded:
            h = F.pad(h, [0, 0, 0, 0, 0, model.core.width - h.shape[1]])  # (N, 53, 105, 105)
        y = model.core(h, task)
        return dict(zip(names, model._per_task(model.decoders, names, list(y.split(counts)))))

    return forward


# --- workloads ----------------------------------------------------------------------------------


def workload(setting: str, ordering: str, **kw) -> Workload:
    """``setting`` in mnist / celeba; ``ordering`` soft / parallel / loop (the typical implementation);
    keywords: num_tasks, depth (mnist), rows, dropout, impl ("current" or "baseline")."""
    if setting == "mnist":
        specs = mnist_specs(kw.get("num_tasks", 45))
        inputs, targets = mnist_batch(specs, kw.get("rows", 64))
        make = lambda o: mnist_model(o, **{k: v for k, v in kw.items() if k != "rows"})  # noqa: E731
    elif setting == "celeba":
        specs = celeba_specs(kw.get("num_tasks", 40))
        inputs, targets = celeba_batch(specs, kw.get("rows", 32))
        make = lambda o: celeba_model(o, **{k: v for k, v in kw.items() if k != "rows"})  # noqa: E731
    else:
        raise ValueError(setting)
    by_name = {s.name: s for s in specs}
    if ordering == "loop" and kw.get("impl", "current") != "current":
        raise ValueError("the typical implementation is built from the current library's model")
    if ordering == "loop":
        lib = make("soft")  # the loop copies the parameters of a library model
        model = typical.from_library(lib)
        typical.check_same_function(lib, model, inputs)
    else:
        model = make(ordering)
    suffix = "" if kw.get("impl", "current") == "current" else f"/{kw['impl']}"
    return Workload(f"{setting}/{ordering}{suffix}", model, inputs, targets, by_name)


def omniglot_workload(padded: bool, num_tasks: int = 50, impl: str = "current") -> Workload:
    model = omniglot_model(num_tasks, impl=impl)
    specs = omniglot_specs(num_tasks)
    inputs, targets = omniglot_batch(specs)
    name = ("omniglot/padded" if padded else "omniglot/shortcut") + ("" if impl == "current" else f"/{impl}")
    return Workload(name, model, inputs, targets, {s.name: s for s in specs}, forward=omniglot_forward(model, inputs, padded))
