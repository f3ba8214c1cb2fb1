"""Fitting two tasks of random patterns with parallel or permuted ordering (paper Sec. 3.2, Fig. 2).

Each task has ``n`` samples, inputs uniform in ``[0, 1]^m`` and labels uniform in ``{0, 1}``. Two
shared affine layers ``W_1, W_2: R^m -> R^m`` (with activation ``phi``) are followed by one final
classification layer ``O: R^m -> R`` that is *shared by both tasks* (Eq. 4); the encoders are the
identity. Parallel ordering applies ``W_1`` then ``W_2`` for both tasks; permuted ordering applies
them in opposite orders for the two tasks. A trial trains one model on the full training set of
both tasks (full-batch Adam) until it has converged and records its *training* accuracy: the
experiment measures how much the shared layers can fit, so there is no test set.

Setting (a) is linear (``phi`` = identity, ``m = 128``), setting (b) ReLU (``m = 16``). Because the
parallel model computes one function for both tasks, fitting it with ``n`` samples per task is the
same as fitting a single task with ``2n``; the figure therefore also draws parallel ordering's
accuracy measured at ``n/2`` samples per task against ``x = n`` (dotted), i.e. the single-task
reference with ``n`` samples. The paper's claim: permuted ordering with ``n`` samples per task fits
about as well as that reference, i.e. sharing the layers in two orders costs (almost) no capacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from softorder.experiments.runner import Experiment, Trial, mean_ci
from softorder.experiments.tensorboard_log import eval_logger
from softorder.layers import Dense
from softorder.model import MultitaskModel
from softorder.orderings import ParallelOrdering, PermutedOrdering
from softorder.tasks import TensorTasks
from softorder.train import TrainConfig, fit

SETTINGS = ("linear", "relu")
ORDERINGS = ("parallel", "permuted")
ACTIVATION = {"linear": "identity", "relu": "relu"}
PANEL = {"linear": "(a) linear", "relu": "(b) ReLU"}


def doubling_grid(low: int, high: int) -> list[int]:
    """``2^k`` and ``3 * 2^(k-1)`` between ``low`` and ``high``: a log-spaced grid closed under halving."""
    out = []
    k = 0
    while 2**k <= high:
        for v in (2**k, 3 * 2**k // 2):
            if low <= v <= high and v == int(v):
                out.append(int(v))
        k += 1
    return sorted(set(out))


def build_random_task_model(data: TensorTasks, ordering: str, m: int, activation: str, seed: int) -> MultitaskModel:
    """Eq. 4: two shared ``Dense(m, phi)`` layers in parallel or permuted order, one shared ``O``."""
    if len(data.specs) != 2:
        raise ValueError("the random-task models are defined for two tasks")
    torch.manual_seed(seed)
    layers = [Dense(m, activation), Dense(m, activation)]
    if ordering == "parallel":
        core = ParallelOrdering(layers, 2)
    elif ordering == "permuted":
        core = PermutedOrdering(layers, 2, permutations=[[0, 1], [1, 0]])
    else:
        raise ValueError(f"ordering must be 'parallel' or 'permuted', got {ordering!r}")
    head = nn.Linear(m, 1)  # O, the same module for both tasks
    return MultitaskModel(
        data.specs,
        core,
        encoders={s.name: nn.Identity() for s in data.specs},
        decoders={s.name: head for s in data.specs},
    )


class RandomTasks(Experiment):
    name = "random-tasks"
    description = "Fig. 2: fitting two random tasks with parallel vs permuted ordering (linear m=128, ReLU m=16)"

    def default_config(self, quick: bool) -> dict[str, Any]:
        if quick:
            return {
                "settings": list(SETTINGS),
                "orderings": list(ORDERINGS),
                "linear_m": 128,
                "relu_m": 16,
                "linear_ns": [64, 128, 256, 512],
                "relu_ns": [128, 256, 512, 1024],
                "trials": 2,
                "linear_iterations": 1500,
                "relu_iterations": 4000,
                "lr": 1e-3,
                "eval_every": 500,
                "threads": 1,
            }
        return {
            "settings": list(SETTINGS),
            "orderings": list(ORDERINGS),
            "linear_m": 128,
            "relu_m": 16,
            "linear_ns": doubling_grid(32, 1024),
            "relu_ns": doubling_grid(64, 2048),
            "trials": 5,
            "linear_iterations": 3000,
            "relu_iterations": 20000,
            "lr": 1e-3,
            "eval_every": 1000,
            "threads": 1,
        }

    def trials(self, config: Mapping[str, Any]) -> list[Trial]:
        out = []
        for setting in config["settings"]:
            if setting not in SETTINGS:
                raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
            grid = [int(n) for n in config[f"{setting}_ns"]]
            for ordering in config["orderings"]:
                if ordering not in ORDERINGS:
                    raise ValueError(f"unknown ordering {ordering!r}; expected one of {ORDERINGS}")
                ns = set(grid)
                if ordering == "parallel":  # the dotted reference: parallel at n/2 samples per task
                    ns |= {n // 2 for n in grid if n // 2 >= 1}
                for n in sorted(ns):
                    for t in range(int(config["trials"])):
                        out.append(Trial(f"{setting}/{ordering}/n={n}/trial={t}", {"setting": setting, "ordering": ordering, "n": n, "trial": t}))
        return out

    def run_trial(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        p = trial.params
        setting, ordering, n, t = p["setting"], p["ordering"], int(p["n"]), int(p["trial"])
        m = int(config[f"{setting}_m"])
        iterations = int(config[f"{setting}_iterations"])
        # the data depends on (trial, n, m) only: both orderings fit the same samples
        data = _random_data(n, m, seed=t)
        model = build_random_task_model(data, ordering, m, ACTIVATION[setting], seed=t)
        train = TrainConfig(
            iterations=iterations,
            batch_size=n,  # full batch: every sample of both tasks in every update
            lr=float(config["lr"]),
            eval_every=int(config["eval_every"]),
            eval_splits=("train",),
            seed=t,
            progress=False,
        )
        history = fit(model, data, train, run_dir=trial_dir, on_eval=eval_logger(trial.key, model, iterations))
        last = history.last
        acc_by_iter = [(r["iteration"], 1.0 - r["train_error"]) for r in history.records]
        return {
            "setting": setting,
            "ordering": ordering,
            "n": n,
            "m": m,
            "iterations": iterations,
            "accuracy": 1.0 - last["train_error"],
            "task_accuracy": {name: 1.0 - last[f"train_error/{name}"] for name in data.task_names},
            "train_loss_last_interval": last["train_loss"],
            "accuracy_by_iteration": acc_by_iter,
            "seconds": last.get("elapsed_s"),
        }

    def tidy_rows(self, config: Mapping[str, Any], trial: Trial, result: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each task's training (fitting) error, ``1 - accuracy``, after the last iteration."""
        return [{"method": result["ordering"], "task": task, "split": "train", "error": 1.0 - accuracy}
                for task, accuracy in result["task_accuracy"].items()]

    def summarize(self, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        curves: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
        converged: dict[str, Any] = {}
        for setting in config["settings"]:
            curves[setting] = {}
            for ordering in config["orderings"]:
                by_n: dict[int, list[float]] = {}
                late: list[float] = []
                for r in results.values():
                    if r["setting"] == setting and r["ordering"] == ordering:
                        by_n.setdefault(int(r["n"]), []).append(r["accuracy"])
                        hist = r.get("accuracy_by_iteration") or []
                        if len(hist) >= 2:  # change of accuracy over the last evaluation interval
                            late.append(abs(hist[-1][1] - hist[-2][1]))
                curves[setting][ordering] = {n: mean_ci(v) for n, v in sorted(by_n.items())}
                converged[f"{setting}/{ordering}"] = {
                    "mean_abs_change_last_interval": float(np.mean(late)) if late else float("nan"),
                    "max_abs_change_last_interval": float(np.max(late)) if late else float("nan"),
                }
        # paired comparison: permuted at n against parallel at n/2 (same trial index)
        comparison: dict[str, Any] = {}
        for setting in config["settings"]:
            rows = {}
            for n in config[f"{setting}_ns"]:
                n = int(n)
                diffs, gaps = [], []
                for t in range(int(config["trials"])):
                    perm = results.get(f"{setting}/permuted/n={n}/trial={t}")
                    half = results.get(f"{setting}/parallel/n={n // 2}/trial={t}")
                    par = results.get(f"{setting}/parallel/n={n}/trial={t}")
                    if perm and half:
                        diffs.append(perm["accuracy"] - half["accuracy"])
                    if perm and par:
                        gaps.append(perm["accuracy"] - par["accuracy"])
                rows[str(n)] = {
                    "permuted_minus_parallel_at_n": mean_ci(gaps),
                    "permuted_minus_parallel_at_half_n": mean_ci(diffs),
                }
            comparison[setting] = rows
        figure = plot_random_tasks(config, curves, out_dir / "random_tasks.png")
        json_curves = {
            s: {o: {str(n): v for n, v in c.items()} for o, c in oc.items()} for s, oc in curves.items()
        }
        return {
            "metric": "training (fitting) accuracy, mean over the two tasks, after the last iteration",
            "accuracy": json_curves,
            "comparison": comparison,
            "convergence": converged,
            "figures": [figure.name] if figure else [],
        }


def _random_data(n: int, m: int, seed: int) -> TensorTasks:
    from softorder.data.random_tasks import random_tasks

    return random_tasks(2, n, m, seed)


def _band(ax, xs, stats, **kw) -> None:
    mean = np.array([s["mean"] for s in stats])
    ci = np.array([0.0 if not np.isfinite(s["ci95"]) else s["ci95"] for s in stats])
    (line,) = ax.plot(xs, mean, **kw)
    ax.fill_between(xs, mean - ci, mean + ci, color=line.get_color(), alpha=0.18, linewidth=0)


def plot_random_tasks(config: Mapping[str, Any], curves: Mapping[str, Any], path: Path) -> Path | None:
    """Fig. 2: accuracy by n per setting; parallel solid, permuted solid, parallel at n/2 dotted."""
    from softorder.analysis import save_figure, subplots

    settings = [s for s in config["settings"] if curves.get(s)]
    if not settings:
        return None
    fig, axes = subplots(1, len(settings), figsize=(5.0 * len(settings), 3.9), squeeze=False)
    colors = {"parallel": "tab:blue", "permuted": "tab:red"}
    for ax, setting in zip(axes[0], settings):
        grid = [int(n) for n in config[f"{setting}_ns"]]
        for ordering in config["orderings"]:
            c = curves[setting].get(ordering) or {}
            xs = [n for n in grid if n in c]
            if xs:
                _band(ax, xs, [c[n] for n in xs], color=colors[ordering], marker="o", ms=4, lw=1.8, label=f"{ordering} ordering, n")
            if ordering == "parallel":
                xs_half = [n for n in grid if n // 2 in c]
                if xs_half:
                    _band(ax, xs_half, [c[n // 2] for n in xs_half], color=colors[ordering], ls=":", marker=".", lw=1.8, label="parallel ordering, n/2 (= single task, n)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(grid, [str(n) for n in grid], fontsize=7, rotation=45)
        ax.minorticks_off()
        ax.set_xlabel("n (samples per task)")
        ax.set_ylabel("training accuracy")
        ax.set_ylim(0.45, 1.02)
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        m = config[f"{setting}_m"]
        ax.set_title(f"{PANEL[setting]}, m = {m}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower left")
    trials = int(config["trials"])
    fig.suptitle(f"Fitting two random tasks (mean and 95% CI over {trials} trials)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


EXPERIMENT = RandomTasks()
