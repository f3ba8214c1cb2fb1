"""Visualizing what a soft-ordered layer does (paper Sec. 5, A.5, Table 1).

Ten tasks, each one MNIST image of a "4" (by default the first ten 4s of the training set). A task
maps a pixel coordinate ``(x, y)`` in ``[0, 1]^2`` to the pixel's brightness in ``[0, 1]``; its 784
pixels are all training data (regression, mean squared error, no dropout). The model: one linear
encoder ``2 -> 100`` shared by all tasks, four shared dense ReLU layers of 100 units in soft order,
and a global-average-pooling decoder, so the tasks differ *only* in their soft-order scales ``s_t``.
As in A.5 the softmax over layers is replaced by an independent sigmoid per scale, so one scale
``s_(t,l,d)`` can be swept over ``[0, 1]`` with every other scale kept at its learned value.

The figure (Table 1): for tasks 1 and 2 and layer 1, the predicted image at depths 1-3 as that
layer's scale sweeps from 0 (layer inactive) to 1 (layer active). The summary also measures the
paper's two readings: the *effect* of the layer (image at s = 1 minus image at s = 0) is similar
across the six (depth, task) contexts (mean pairwise correlation of the effect images), and its
magnitude decreases with depth (mean absolute effect per depth).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softorder.experiments.runner import Experiment, Trial, mean_ci, progress_reporter
from softorder.model import MultitaskModel, build_model
from softorder.tasks import TaskArrays, TaskSpec, TensorTasks
from softorder.train import TrainConfig, fit

SIDE = 28
SWEEP_NAME = "sweep.npz"


def pixel_coordinates(side: int = SIDE) -> torch.Tensor:
    """``(side*side, 2)`` coordinates ``(x, y)`` in [0, 1], row-major (x = column, y = row)."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float()
    return coords / float(side - 1)


def first_images_of_digit(images: np.ndarray, labels: np.ndarray, digit: int, count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images of ``digit`` (after skipping ``offset``), with their indices."""
    idx = np.flatnonzero(labels == digit)[offset : offset + count]
    if len(idx) < count:
        raise ValueError(f"only {len(idx)} images of digit {digit} available, {count} requested")
    return images[idx], idx


def image_tasks(images: np.ndarray) -> TensorTasks:
    """One regression task per image: (x, y) -> brightness in [0, 1]; every pixel a training row."""
    coords = pixel_coordinates(images.shape[-1])
    tasks = []
    for i, image in enumerate(images):
        target = torch.from_numpy(image.reshape(-1, 1).astype(np.float32) / 255.0)
        spec = TaskSpec(f"image{i + 1}", (2,), "regression", 1)
        tasks.append(TaskArrays(spec, {"train": (coords.clone(), target)}))
    return TensorTasks(tasks)


def make_model(specs, config: Mapping[str, Any], seed: int) -> MultitaskModel:
    return build_model(
        specs,
        ordering="soft",
        layer="dense",
        width=int(config["width"]),
        depth=int(config["depth"]),
        encoder="linear-shared",
        decoder="gap",
        gate="sigmoid",
        dropout=0.0,
        seed=seed,
    )


@contextlib.contextmanager
def override_scale(model: MultitaskModel, task: int, layer: int, depth: int, value: float) -> Iterator[None]:
    """Within the block, ``s_(task, layer, depth)`` is ``value``; every other scale keeps its learned value.

    The core's ``mixing()`` (the sigmoid of its logits) is replaced by a copy with that one entry set,
    so ``value`` may be exactly 0 or 1.
    """
    core = model.core
    if not 0 <= task < core.num_tasks or not 0 <= layer < core.num_layers or not 0 <= depth < core.depth:
        raise IndexError(f"no scale ({task}, {layer}, {depth}) in a core of shape {tuple(core.mixing().shape)}")
    learned = core.mixing().detach().clone()
    learned[task, layer, depth] = float(value)
    core.mixing = lambda: learned  # instance attribute shadows the method
    try:
        yield
    finally:
        del core.mixing


@torch.no_grad()
def predict_image(model: MultitaskModel, task_name: str, side: int = SIDE) -> np.ndarray:
    """The task's predicted image, ``(side, side)``, clipped to [0, 1]."""
    was = model.training
    model.eval()
    try:
        out = model({task_name: pixel_coordinates(side)})[task_name]
    finally:
        model.train(was)
    return out.reshape(side, side).clamp(0.0, 1.0).numpy()


def sweep_images(model: MultitaskModel, tasks: list[int], layer: int, depths: list[int], values: list[float]) -> np.ndarray:
    """Predicted images ``(len(depths), len(tasks), len(values), 28, 28)`` while sweeping one scale."""
    names = model.task_names
    out = np.zeros((len(depths), len(tasks), len(values), SIDE, SIDE), dtype=np.float32)
    for a, d in enumerate(depths):
        for b, t in enumerate(tasks):
            for c, v in enumerate(values):
                with override_scale(model, t, layer, d, v):
                    out[a, b, c] = predict_image(model, names[t])
    return out


def effect_statistics(sweep: np.ndarray) -> dict[str, Any]:
    """The layer's effect (s=1 image minus s=0 image) per context: its size and how alike the contexts are."""
    effect = sweep[:, :, -1] - sweep[:, :, 0]  # (depths, tasks, 28, 28)
    flat = effect.reshape(-1, effect.shape[-2] * effect.shape[-1])
    magnitude = np.abs(effect).mean(axis=(-2, -1))  # (depths, tasks)
    corr = np.corrcoef(flat) if flat.shape[0] > 1 and np.all(flat.std(axis=1) > 0) else np.full((len(flat), len(flat)), np.nan)
    off = corr[~np.eye(len(corr), dtype=bool)]
    return {
        "effect_magnitude_by_depth_task": magnitude.tolist(),
        "effect_magnitude_by_depth": magnitude.mean(axis=1).tolist(),
        "effect_correlation": corr.tolist(),
        "mean_pairwise_effect_correlation": float(np.nanmean(off)) if off.size else float("nan"),
    }


class Visualize(Experiment):
    name = "visualize"
    description = "Sec. 5 / Table 1: sweep one soft-order scale of a generative model of ten MNIST 4s"

    def default_config(self, quick: bool) -> dict[str, Any]:
        config = {
            "digit": 4,
            "num_tasks": 10,
            "image_offset": 0,  # the first ten 4s of the MNIST training set
            "width": 100,
            "depth": 4,
            "iterations": 10_000,  # not given in the paper
            "batch_size": 784,  # every pixel of every image in every update (not given in the paper)
            "lr": 1e-3,
            "eval_every": 1000,
            "trials": 3,
            "sweep_tasks": [1, 2],  # 1-based, as in the paper
            "sweep_layer": 1,
            "sweep_depths": [1, 2, 3],
            "sweep_values": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            "threads": 1,
        }
        if quick:
            config.update({"iterations": 3000, "batch_size": 196, "eval_every": 500, "trials": 2})
        return config

    def trials(self, config: Mapping[str, Any]) -> list[Trial]:
        return [Trial(f"trial={t}", {"trial": t}) for t in range(int(config["trials"]))]

    def run_trial(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        from softorder.data.mnist import load_mnist
        from softorder.experiments.mnist import VERIFY_DATA

        t = int(trial.params["trial"])
        mnist = load_mnist(data_dir, verify=VERIFY_DATA)
        images, indices = first_images_of_digit(mnist.train_images, mnist.train_labels, int(config["digit"]), int(config["num_tasks"]), int(config["image_offset"]))
        data = image_tasks(images)
        model = make_model(data.specs, config, seed=t)
        train = TrainConfig(
            iterations=int(config["iterations"]),
            batch_size=int(config["batch_size"]),
            lr=float(config["lr"]),
            eval_every=int(config["eval_every"]),
            eval_splits=("train",),
            eval_batch_size=SIDE * SIDE,
            seed=t,
            progress=False,
        )
        history = fit(model, data, train, run_dir=trial_dir, on_eval=progress_reporter(self.name, trial, train.iterations, percent=False, model=model))
        tasks = [int(i) - 1 for i in config["sweep_tasks"]]
        depths = [int(d) - 1 for d in config["sweep_depths"]]
        layer = int(config["sweep_layer"]) - 1
        values = [float(v) for v in config["sweep_values"]]
        sweep = sweep_images(model, tasks, layer, depths, values)
        predictions = np.stack([predict_image(model, n) for n in data.task_names])
        targets = images.astype(np.float32) / 255.0
        np.savez_compressed(trial_dir / SWEEP_NAME, sweep=sweep, predictions=predictions, targets=targets)
        mixing = model.core.mixing().detach().numpy()
        last = history.last
        return {
            "trial": t,
            "image_indices": indices.tolist(),
            "train_mse": last["train_error"],
            "task_train_mse": {n: last[f"train_error/{n}"] for n in data.task_names},
            "train_mse_by_iteration": [[r["iteration"], r["train_error"]] for r in history.records],
            "learned_scales": mixing.tolist(),
            "swept_scales_learned": {
                f"task={t + 1},depth={d + 1}": float(mixing[t, layer, d]) for t in tasks for d in depths
            },
            **effect_statistics(sweep),
            "train_seconds": last.get("elapsed_s"),
        }

    def tidy_rows(self, config: Mapping[str, Any], trial: Trial, result: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each image task's training MSE (its loss too) after the last iteration; the model is soft-ordered."""
        return [{"method": "soft", "task": task, "split": "train", "error": mse, "loss": mse} for task, mse in result["task_train_mse"].items()]

    def summarize(self, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        if not results:
            return {"figures": []}
        ordered = sorted(results.values(), key=lambda r: r["trial"])
        rep = ordered[0]
        figures = []
        sweep_path = out_dir / "trials" / Trial(f"trial={rep['trial']}", {}).dirname / SWEEP_NAME
        if sweep_path.exists():
            arrays = np.load(sweep_path)
            figures.append(plot_sweep(config, arrays["sweep"], rep, out_dir / "visualize_sweep.png").name)
            figures.append(plot_reconstructions(arrays["targets"], arrays["predictions"], rep, out_dir / "visualize_tasks.png").name)
        depth_mag = np.array([r["effect_magnitude_by_depth"] for r in ordered])  # (trials, depths)
        return {
            "metric": "training MSE per pixel (brightness in [0, 1]), mean over the ten tasks",
            "train_mse": mean_ci([r["train_mse"] for r in ordered]),
            "mean_pairwise_effect_correlation": mean_ci([r["mean_pairwise_effect_correlation"] for r in ordered]),
            "effect_magnitude_by_depth": {
                str(d): mean_ci(depth_mag[:, i].tolist()) for i, d in enumerate(config["sweep_depths"])
            },
            "representative_trial": rep["trial"],
            "swept_scales_learned": rep["swept_scales_learned"],
            "effect_correlation": rep["effect_correlation"],
            "figures": figures,
        }


def plot_sweep(config: Mapping[str, Any], sweep: np.ndarray, rep: Mapping[str, Any], path: Path) -> Path:
    """Table 1: rows (depth, task), columns the swept scale of one layer, inactive -> active."""
    from softorder.analysis import save_figure, subplots

    depths, tasks, values = config["sweep_depths"], config["sweep_tasks"], config["sweep_values"]
    nd, nt, nv = sweep.shape[:3]
    rows = nd * nt
    fig, axes = subplots(rows, nv, figsize=(1.15 * nv + 1.4, 1.15 * rows + 1.0), squeeze=False)
    for a in range(nd):
        for b in range(nt):
            r = b * nd + a  # grouped by task, as the paper's two half-tables
            learned = rep["swept_scales_learned"].get(f"task={tasks[b]},depth={depths[a]}")
            for c in range(nv):
                ax = axes[r][c]
                ax.imshow(sweep[a, b, c], cmap="gray", vmin=0.0, vmax=1.0)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"s = {values[c]:.1f}", fontsize=8)
            label = f"d={depths[a]}, t={tasks[b]}"
            if learned is not None:
                label += f"\n(learned s={learned:.2f})"
            axes[r][0].set_ylabel(label, fontsize=8)
    layer = config["sweep_layer"]
    fig.suptitle(f"Layer {layer}'s scale swept from inactive (s = 0) to active (s = 1)\nat depths {', '.join(map(str, depths))} for tasks {', '.join(map(str, tasks))}", fontsize=9.5)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reconstructions(targets: np.ndarray, predictions: np.ndarray, rep: Mapping[str, Any], path: Path) -> Path:
    """The ten training images (top) and the model's images for them (bottom)."""
    from softorder.analysis import save_figure, subplots

    n = len(targets)
    fig, axes = subplots(2, n, figsize=(1.05 * n + 1.2, 2.7), squeeze=False)
    mse = list(rep["task_train_mse"].values())
    for i in range(n):
        for r, (img, label) in enumerate(((targets[i], "target"), (predictions[i], "model"))):
            ax = axes[r][i]
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=9)
        axes[0][i].set_title(f"task {i + 1}", fontsize=8)
        axes[1][i].set_xlabel(f"MSE {mse[i]:.3f}", fontsize=7)
    fig.suptitle("Ten MNIST 4s, each a task (x, y) -> brightness, told apart only by their soft orders", fontsize=9.5)
    fig.tight_layout()
    return save_figure(fig, path)


EXPERIMENT = Visualize()
