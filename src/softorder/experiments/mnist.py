"""MNIST digit-vs-digit tasks: single task, parallel, permuted and soft ordering (paper Sec. 4.1, A.1, Fig. 4).

Every task separates two digits. Each task's encoder is a random dense ReLU layer of 64 units that is
never trained (so the tasks start out with disparate input representations); four shared dense ReLU
layers of 64 units form the core; each task has its own sigmoid output; dropout 0.5 follows every
shared layer; each iteration takes 64 training samples of every task; 20,000 iterations of Adam.

A trial is one method on one task set. The task set (digit pairs, drawn as in A.1) and the frozen
encoders depend only on (number of tasks, trial), so the four methods of a trial see the same tasks
through the same encoders; the shared layers also start from the same weights for the three
multitask orderings. The metric is the mean over tasks of the test error after the last iteration.

Relative performance (Fig. 4a) is defined per trial as ``(err_parallel - err_method) / err_parallel``:
the fraction of parallel ordering's test error that the method removes (positive: better than
parallel ordering). It is averaged over trials with a 95% confidence interval.

For the soft-ordering runs on ``trace_tasks`` tasks (two, by default), the mixing weights are recorded
at every evaluation (every ``trace_every`` iterations): the distance between the two tasks' weights
at each depth (Fig. 4b), the largest weight per task and depth (Fig. 4c, 1 = a hard ordering) and the
final weights with their strongest path (Fig. 4d).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softorder.analysis import mixing_of
from softorder.experiments.runner import Experiment, Trial, mean_ci, progress_reporter
from softorder.layers import TaskDense
from softorder.model import build_model
from softorder.train import TrainConfig, fit
from softorder.orderings import ORDERINGS

METHODS = tuple(ORDERINGS)
LABELS = {"single": "single task", "parallel": "parallel ordering", "permuted": "permuted ordering", "soft": "soft ordering"}
COLORS = {"single": "tab:gray", "parallel": "tab:blue", "permuted": "tab:red", "soft": "tab:green"}
IMAGE_PIXELS = 784

# Checked against the official checksums when loading; tests with a small fake MNIST switch it off.
VERIFY_DATA = True


def task_set_seed(num_tasks: int, trial: int) -> int:
    """The seed of a trial's task set and frozen encoders: the same for every method."""
    return 10_000 * int(num_tasks) + int(trial)


def load_task_set(data_dir: Path | None, num_tasks: int, trial: int):
    """The trial's digit-pair tasks (A.1: distinct digits within a task, with replacement across tasks)."""
    from softorder.data.mnist import draw_digit_pairs, mnist_pairs

    pairs = draw_digit_pairs(num_tasks, task_set_seed(num_tasks, trial))
    return mnist_pairs(data_dir, pairs=pairs, verify=VERIFY_DATA), pairs


def frozen_encoders(num_tasks: int, width: int, seed: int) -> TaskDense:
    """Random dense ReLU encoders 784 -> width, one per task, never trained (Sec. 4.1)."""
    gen = torch.Generator().manual_seed(int(seed))
    return TaskDense(num_tasks, IMAGE_PIXELS, width, "relu", trainable=False, generator=gen)


def make_model(specs, method: str, config: Mapping[str, Any], num_tasks: int, trial: int, *, top_k: int | None = None, gating: str = "gumbel"):
    """A.1's model with the trial's frozen encoders (the same for every method of the trial)."""
    model = build_model(
        specs,
        ordering=method,
        layer="dense",
        width=int(config["width"]),
        depth=int(config["depth"]),
        encoder="frozen",
        dropout=float(config["dropout"]),
        seed=int(trial),
        top_k=top_k,
        gating=gating,
    )
    enc = frozen_encoders(num_tasks, int(config["width"]), task_set_seed(num_tasks, trial))
    with torch.no_grad():  # the same frozen encoders for every method of the trial
        model.encoders.weight.copy_(enc.weight)
        model.encoders.bias.copy_(enc.bias)
    return model


class Mnist(Experiment):
    name = "mnist"
    description = "Fig. 4: MNIST digit-pair tasks, single / parallel / permuted / soft ordering by number of tasks"

    def default_config(self, quick: bool) -> dict[str, Any]:
        config = {
            "task_counts": [1, 2, 4, 8, 16, 32],
            "methods": list(METHODS),
            "trials": 5,
            "iterations": 20_000,
            "batch_size": 64,
            "width": 64,
            "depth": 4,
            "dropout": 0.5,
            "lr": 1e-3,
            "eval_every": 1000,
            "trace_tasks": 2,
            "trace_every": 200,
            "threads": 1,
        }
        if quick:
            config.update({"task_counts": [1, 2, 4, 8], "trials": 2, "iterations": 1500, "eval_every": 500, "trace_every": 50})
        return config

    def trials(self, config: Mapping[str, Any]) -> list[Trial]:
        bad = [m for m in config["methods"] if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; expected some of {METHODS}")
        return [
            Trial(f"tasks={T}/{method}/trial={t}", {"num_tasks": int(T), "method": method, "trial": t})
            for T in config["task_counts"]
            for t in range(int(config["trials"]))
            for method in config["methods"]
        ]

    def run_trial(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        num_tasks, method, t = int(trial.params["num_tasks"]), trial.params["method"], int(trial.params["trial"])
        data, pairs = load_task_set(data_dir, num_tasks, t)
        model = make_model(data.specs, method, config, num_tasks, t)
        trace = method == "soft" and num_tasks == int(config["trace_tasks"])
        train = TrainConfig(
            iterations=int(config["iterations"]),
            batch_size=int(config["batch_size"]),
            lr=float(config["lr"]),
            eval_every=int(config["trace_every"] if trace else config["eval_every"]),
            eval_splits=("test",),
            seed=t,
            progress=False,
        )

        def record_mixing(record: dict[str, Any]) -> None:
            if method == "soft":  # stored in the history record itself, so it survives a resume
                record["mixing"] = mixing_of(model).tolist()

        history = fit(model, data, train, run_dir=trial_dir, on_eval=progress_reporter(self.name, trial, train.iterations, also=record_mixing, model=model))
        last = history.last
        result: dict[str, Any] = {
            "num_tasks": num_tasks,
            "method": method,
            "trial": t,
            "pairs": [list(p) for p in pairs],
            "test_error": last["test_error"],
            "task_test_error": {n: last[f"test_error/{n}"] for n in data.task_names},
            "test_error_by_iteration": [[r["iteration"], r["test_error"]] for r in history.records],
            "train_seconds": last.get("elapsed_s"),
            "task_names": data.task_names,
        }
        if method == "soft":
            result["final_mixing"] = mixing_of(model).tolist()
            if trace:
                result["mixing_trace"] = [[r["iteration"], r["mixing"]] for r in history.records if "mixing" in r]
        return result

    def summarize(self, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        counts = [int(T) for T in config["task_counts"]]
        methods = list(config["methods"])
        error: dict[str, dict[str, Any]] = {}
        relative: dict[str, dict[str, Any]] = {}
        for T in counts:
            error[str(T)], relative[str(T)] = {}, {}
            for method in methods:
                errs, rels = [], []
                for t in range(int(config["trials"])):
                    r = results.get(f"tasks={T}/{method}/trial={t}")
                    p = results.get(f"tasks={T}/parallel/trial={t}")
                    if r is None:
                        continue
                    errs.append(r["test_error"])
                    if p is not None and p["test_error"] > 0:
                        rels.append((p["test_error"] - r["test_error"]) / p["test_error"])
                error[str(T)][method] = mean_ci(errs)
                if method != "parallel":
                    relative[str(T)][method] = mean_ci(rels)
        figures = []
        fig = plot_relative(config, error, relative, out_dir / "mnist_relative.png")
        if fig:
            figures.append(fig.name)
        trace_stats: dict[str, Any] = {}
        traced = sorted(
            (r for r in results.values() if r.get("mixing_trace")),
            key=lambda r: r["trial"],
        )
        if traced:
            rep = traced[0]  # the representative run: trial 0 (or the first finished)
            iters = np.array([it for it, _ in rep["mixing_trace"]])
            mix = np.array([m for _, m in rep["mixing_trace"]])  # (evals, tasks, L, depth)
            figures += [p.name for p in plot_trace(iters, mix, rep, out_dir)]
            from softorder.analysis import plot_layer_usage, strongest_path

            names = [f"task {i + 1}: {a} vs {b}" for i, (a, b) in enumerate(rep["pairs"])]
            usage = plot_layer_usage(
                np.array(rep["final_mixing"]),
                names,
                out_dir / "mnist_layer_usage.png",
                title=f"(d) Learned soft order, trial {rep['trial']} (red: strongest path)",
            )
            figures.append(usage.name)
            final_dist = [np.linalg.norm(np.array(r["final_mixing"])[0] - np.array(r["final_mixing"])[1], axis=0).tolist() for r in traced]
            final_hard = [np.array(r["final_mixing"]).max(axis=1).mean() for r in traced]
            trace_stats = {
                "representative_trial": rep["trial"],
                "pairs": rep["pairs"],
                "final_mixing": rep["final_mixing"],
                "strongest_path": strongest_path(np.array(rep["final_mixing"])).tolist(),
                "distance_by_depth_final": {f"trial={r['trial']}": d for r, d in zip(traced, final_dist)},
                "mean_distance_final": mean_ci([float(np.mean(d)) for d in final_dist]),
                "mean_max_weight_final": mean_ci([float(h) for h in final_hard]),
                "uniform_weight": 1.0 / mix.shape[2],
            }
        return {
            "metric": "test error after the last iteration, mean over the tasks of a trial",
            "relative_performance_definition": "(err_parallel - err_method) / err_parallel, per trial (same task set); positive = better than parallel",
            "test_error": error,
            "relative_to_parallel": relative,
            "soft_two_task_trace": trace_stats,
            "figures": figures,
        }


def _band(ax, xs, stats, **kw):
    mean = np.array([s["mean"] for s in stats])
    ci = np.array([0.0 if not np.isfinite(s["ci95"]) else s["ci95"] for s in stats])
    (line,) = ax.plot(xs, mean, **kw)
    ax.fill_between(xs, mean - ci, mean + ci, color=line.get_color(), alpha=0.18, linewidth=0)
    return line


def plot_relative(config, error, relative, path: Path) -> Path | None:
    """(a) relative performance to parallel ordering by number of tasks; and the test errors."""
    from softorder.analysis import save_figure, subplots

    counts = [int(T) for T in config["task_counts"]]
    if not any(error[str(T)].get(m, {}).get("n") for T in counts for m in config["methods"]):
        return None
    fig, (ax, bx) = subplots(1, 2, figsize=(10.5, 3.9))
    for method in config["methods"]:
        if method == "parallel":
            continue
        xs = [T for T in counts if relative[str(T)].get(method, {}).get("n")]
        if xs:
            style = dict(ls="--", lw=1.2) if method == "single" else dict(lw=1.8)
            _band(ax, xs, [relative[str(T)][method] for T in xs], color=COLORS[method], marker="o", ms=4, label=LABELS[method], **style)
    ax.axhline(0.0, color=COLORS["parallel"], lw=1.2, label="parallel ordering (reference)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(T) for T in counts])
    ax.minorticks_off()
    ax.set_xlabel("number of tasks trained jointly")
    ax.set_ylabel("relative performance\n(err_parallel - err) / err_parallel")
    ax.set_title("(a) Relative performance vs. parallel ordering", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for method in config["methods"]:
        xs = [T for T in counts if error[str(T)].get(method, {}).get("n")]
        if xs:
            _band(bx, xs, [error[str(T)][method] for T in xs], color=COLORS[method], marker="o", ms=4, label=LABELS[method])
    means = [error[str(T)][m]["mean"] for T in counts for m in config["methods"] if error[str(T)].get(m, {}).get("n")]
    if means:  # few trials give wide t-intervals: keep the means readable (bands are clipped)
        bx.set_ylim(0.0, 2.0 * max(means) + 1e-3)
    bx.set_xscale("log", base=2)
    bx.set_xticks(counts, [str(T) for T in counts])
    bx.minorticks_off()
    bx.set_xlabel("number of tasks trained jointly")
    bx.set_ylabel("mean test error over tasks")
    bx.set_title("Test error", fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    fig.suptitle(
        f"MNIST digit-pair tasks: {config['iterations']} iterations, mean and 95% CI over {config['trials']} trials",
        fontsize=11,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def plot_trace(iters: np.ndarray, mix: np.ndarray, rep: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """(b) layer-wise distance between the two tasks' weights, (c) the largest weight, by iteration."""
    import matplotlib

    from softorder.analysis import save_figure, subplots

    _, tasks, layers, depth = mix.shape
    dist = np.linalg.norm(mix[:, 0] - mix[:, 1], axis=1) if tasks > 1 else np.zeros((len(iters), depth))  # (evals, depth)
    hard = mix.max(axis=2)  # (evals, tasks, depth)
    cmap = matplotlib.colormaps["viridis"]
    fig, (ax, bx) = subplots(1, 2, figsize=(10.5, 3.8))
    for k in range(depth):
        ax.plot(iters, dist[:, k], color=cmap(k / max(depth - 1, 1)), lw=1.6, label=f"depth {k + 1}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("distance between the tasks' layer weights")
    ax.set_title("(b) Layer-wise distance between the two tasks' scalings", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    styles = ["-", "--", ":", "-."]
    for t in range(tasks):
        for k in range(depth):
            bx.plot(iters, hard[:, t, k], color=cmap(k / max(depth - 1, 1)), ls=styles[t % 4], lw=1.4, label=f"task {t + 1}, depth {k + 1}")
    bx.axhline(1.0 / layers, color="0.5", lw=0.8, ls=":")
    bx.text(iters[-1], 1.0 / layers, " uniform", va="bottom", ha="right", fontsize=7, color="0.4")
    bx.set_ylim(0, 1.02)
    bx.set_xlabel("iteration")
    bx.set_ylabel("largest layer weight at the depth")
    bx.set_title("(c) Scalings move towards a hard ordering (1 = hard)", fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=6.5, ncol=2)
    pairs = ", ".join(f"{a} vs {b}" for a, b in rep["pairs"])
    fig.suptitle(f"Soft ordering on two MNIST tasks ({pairs}; trial {rep['trial']})", fontsize=11)
    fig.tight_layout()
    return [save_figure(fig, out_dir / "mnist_soft_trace.png")]


EXPERIMENT = Mnist()
