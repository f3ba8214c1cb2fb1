"""Reading what an ordered core learned: layer usage, strongest paths, task distances; and plots.

Every ordering exposes ``mixing()`` of shape (num_tasks, L, depth), so these work for all of them
(parallel and permuted give one-hot usage). Plot functions write a PNG and return its path.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from softorder._io import atomic_write_bytes


def _as_array(mixing: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(mixing, Tensor):
        mixing = mixing.detach().cpu().numpy()
    mixing = np.asarray(mixing, dtype=float)
    if mixing.ndim != 3:
        raise ValueError(f"mixing must have shape (tasks, layers, depth), got {mixing.shape}")
    return mixing


def strongest_path(mixing: Tensor | np.ndarray) -> np.ndarray:
    """The most used layer at each depth for each task: (tasks, depth) layer indices."""
    return _as_array(mixing).argmax(axis=1)


def task_distance_by_depth(mixing: Tensor | np.ndarray, a: int = 0, b: int = 1) -> np.ndarray:
    """Euclidean distance between tasks a and b's layer weights at each depth: (depth,) (Fig. 4b)."""
    m = _as_array(mixing)
    return np.linalg.norm(m[a] - m[b], axis=0)


def hardness(mixing: Tensor | np.ndarray) -> np.ndarray:
    """The largest weight at each (task, depth): (tasks, depth); 1 means a hard ordering (Fig. 4c)."""
    return _as_array(mixing).max(axis=1)


_FIGURE_KEYWORDS = ("figsize", "dpi", "layout", "constrained_layout", "tight_layout")


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A new figure and its axes, as ``matplotlib.pyplot.subplots`` gives them, but without pyplot:
    no backend is chosen or changed and matplotlib keeps no reference to the figure (a plot made
    here does not touch a user's interactive session). Figure keywords (``figsize``, ``dpi``,
    ``layout``...) go to the figure, the rest to ``Figure.subplots``."""
    from matplotlib.figure import Figure

    fig = Figure(**{k: kwargs.pop(k) for k in _FIGURE_KEYWORDS if k in kwargs})
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _layer_labels(num_rows: int, identity_layer: bool) -> list[str]:
    labels = [f"L{j + 1}" for j in range(num_rows - int(identity_layer))]
    return labels + (["I"] if identity_layer else [])


def plot_layer_usage(
    mixing: Tensor | np.ndarray,
    task_names: Sequence[str],
    path: str | Path,
    *,
    identity_layer: bool = False,
    max_tasks: int = 16,
    title: str | None = None,
) -> Path:
    """One panel per task: shading = weight of layer j (rows) at depth k (columns), strongest path drawn.

    The figure of learned layer usage by depth (as the paper's Fig. 4d).
    """
    m = _as_array(mixing)[:max_tasks]
    tasks, layers, depth = m.shape
    cols = min(tasks, 4)
    rows = (tasks + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(2.6 * cols + 0.8, 2.3 * rows + 0.6), squeeze=False)
    labels = _layer_labels(layers, identity_layer)
    image = None
    for t in range(rows * cols):
        ax = axes[t // cols][t % cols]
        if t >= tasks:
            ax.axis("off")
            continue
        image = ax.imshow(m[t], cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
        path_rows = m[t].argmax(axis=0)
        ax.plot(range(depth), path_rows, color="crimson", marker="o", lw=2, ms=5)
        ax.set_title(str(task_names[t])[:24], fontsize=9)
        ax.set_xticks(range(depth), [str(k + 1) for k in range(depth)], fontsize=8)
        ax.set_yticks(range(layers), labels, fontsize=8)
        if t % cols == 0:
            ax.set_ylabel("layer")
        if t // cols == rows - 1:
            ax.set_xlabel("depth")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight of layer at depth")
    fig.suptitle(title or "Learned layer usage by depth (red: strongest path)", fontsize=11, y=1.0 + 0.07 / rows)
    return save_figure(fig, path)


def plot_usage_distribution(
    mixing: Tensor | np.ndarray,
    path: str | Path,
    *,
    identity_layer: bool = False,
    title: str | None = None,
) -> Path:
    """For each layer, the distribution over tasks of its weight at each depth (Fig. 6b, 7a-b)."""
    m = _as_array(mixing)
    tasks, layers, depth = m.shape
    labels = _layer_labels(layers, identity_layer)
    fig, axes = subplots(1, layers, figsize=(2.4 * layers + 0.5, 2.8), sharey=True, squeeze=False, layout="constrained")
    for j in range(layers):
        ax = axes[0][j]
        ax.boxplot([m[:, j, k] for k in range(depth)], tick_labels=[str(k + 1) for k in range(depth)], widths=0.6)
        ax.plot(range(1, depth + 1), m[:, j, :].mean(axis=0), color="crimson", marker="o", lw=1.5, label="mean")
        ax.set_title(f"layer {labels[j]}", fontsize=10)
        ax.set_xlabel("depth")
        if j == 0:
            ax.set_ylabel(f"usage over {tasks} tasks")
    fig.suptitle(title or "Distribution of layer usage by depth", fontsize=11)
    return save_figure(fig, path)


def mixing_of(model: torch.nn.Module) -> np.ndarray:
    """The mixing weights of a model's core (or of a core itself) as a NumPy array."""
    core = getattr(model, "core", model)
    with torch.no_grad():
        return core.mixing().detach().cpu().numpy()


def task_similarity(mixing: Tensor | np.ndarray) -> np.ndarray:
    """How alike two tasks' learned orders are: cosine similarity of their flattened weights, (T, T).

    The paper's Sec. 6 suggests reading task relatedness off the way tasks use the shared layers;
    this is the simplest such reading (1: the same soft order; 0: disjoint layer usage).
    """
    m = _as_array(mixing).reshape(_as_array(mixing).shape[0], -1)
    unit = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def plot_task_similarity(mixing: Tensor | np.ndarray, task_names: Sequence[str], path: str | Path, *, title: str | None = None) -> Path:
    """Heat map of :func:`task_similarity`, tasks ordered so that similar ones sit together."""
    sim = task_similarity(mixing)
    order = np.arange(len(sim))
    if len(sim) > 2:
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform

        dist = np.clip(1.0 - sim, 0.0, None)
        np.fill_diagonal(dist, 0.0)
        order = leaves_list(linkage(squareform(dist, checks=False), method="average"))
    size = 0.35 * len(sim) + 2.5
    fig, ax = subplots(figsize=(size + 1.0, size))
    image = ax.imshow(sim[np.ix_(order, order)], cmap="viridis", vmin=0.0, vmax=1.0)
    names = [str(task_names[i])[:20] for i in order]
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity of soft orders")
    ax.set_title(title or "Task relatedness read from learned soft orders", fontsize=10)
    return save_figure(fig, path)
