"""Beyond the paper: are soft-ordered layers reusable building blocks for an unseen task? (Sec. 6)

For each of the ten UCI tasks in turn: train soft ordering on the other nine, then learn the held-out
task with the shared layers frozen, training only its soft order, encoder and decoder
(:func:`softorder.transfer.assemble_for_new_tasks`). Two references on the same held-out split:
the same frozen-layer model with *random* layers (is it the learned layers that help, or just the
trainable order, encoder and decoder?), and a single-task model trained whole from scratch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from softorder.experiments.runner import Experiment, Trial, mean_ci
from softorder.experiments.tensorboard_log import eval_logger
from softorder.model import build_model
from softorder.train import TrainConfig, fit
from softorder.transfer import assemble_for_new_tasks

CONDITIONS = ("learned-blocks", "random-blocks", "single-task")


class BuildingBlocks(Experiment):
    name = "building-blocks"
    description = "reuse soft-ordered UCI layers, frozen, for a held-out UCI task"

    def default_config(self, quick: bool) -> dict[str, Any]:
        from softorder.data.uci import TASK_NAMES

        return {
            "heldout_tasks": list(TASK_NAMES[:5] if quick else TASK_NAMES),
            "trials": 2 if quick else 5,
            "width": 32,
            "depth": 4,
            "dropout": 0.2,
            "pretrain_iterations": 1500 if quick else 3000,
            "heldout_iterations": 1000 if quick else 2000,
            "batch_size": 32,
            "lr": 1e-3,
            "split_seed": 0,
        }

    def trials(self, config: Mapping[str, Any]) -> list[Trial]:
        return [
            Trial(f"{task}/trial={t}", {"heldout": task, "trial": t})
            for task in config["heldout_tasks"]
            for t in range(config["trials"])
        ]

    def run_trial(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        from softorder.data.uci import TASK_NAMES, uci_tasks

        heldout, seed = trial.params["heldout"], int(trial.params["trial"])
        data = uci_tasks(data_dir, split_seed=config["split_seed"])
        others = data.subset([n for n in TASK_NAMES if n != heldout])
        target = data.subset([heldout])
        arch = dict(width=config["width"], depth=config["depth"], dropout=config["dropout"])

        def train(model, tasks, iterations: int, name: str) -> float:
            cfg = TrainConfig(
                iterations=iterations,
                batch_size=config["batch_size"],
                lr=config["lr"],
                eval_every=iterations,
                eval_splits=("val",),
                seed=seed,
                progress=False,
            )
            history = fit(model, tasks, cfg, run_dir=trial_dir / name, on_eval=eval_logger(f"{trial.key}/{name}", model, iterations))
            return float(history.last.get(f"val_error/{heldout}", history.last.get("val_error", np.nan)))

        pretrained = build_model(others.specs, ordering="soft", seed=seed, **arch)
        train(pretrained, others, config["pretrain_iterations"], "pretrain")
        random_layers = build_model(others.specs, ordering="soft", seed=seed + 10_000, **arch)
        models = {
            "learned-blocks": assemble_for_new_tasks(pretrained, target.specs, dropout=config["dropout"], seed=seed),
            "random-blocks": assemble_for_new_tasks(random_layers, target.specs, dropout=config["dropout"], seed=seed),
            "single-task": build_model(target.specs, ordering="single", seed=seed, **arch),
        }
        return {cond: train(models[cond], target, config["heldout_iterations"], cond) for cond in CONDITIONS}

    def tidy_rows(self, config: Mapping[str, Any], trial: Trial, result: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The held-out task's validation error under each condition (the method column)."""
        return [{"method": c, "task": trial.params["heldout"], "split": "val", "error": result[c]} for c in CONDITIONS if c in result]

    def summarize(self, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        per_task: dict[str, dict[str, dict[str, float]]] = {}
        for task in config["heldout_tasks"]:
            runs = [r for k, r in results.items() if k.startswith(f"{task}/")]
            per_task[task] = {c: mean_ci([r[c] for r in runs]) for c in CONDITIONS}
        # each trial's mean over held-out tasks, so the interval is over trials
        by_trial = {c: [] for c in CONDITIONS}
        for t in range(config["trials"]):
            runs = [results.get(f"{task}/trial={t}") for task in config["heldout_tasks"]]
            if all(r is not None for r in runs):
                for c in CONDITIONS:
                    by_trial[c].append(float(np.mean([r[c] for r in runs])))
        overall = {c: mean_ci(v) for c, v in by_trial.items()}
        if results:
            _plot(per_task, overall, out_dir / "building_blocks.png")
        return {"mean_error": overall, "per_task": per_task}


def _plot(per_task: dict[str, dict[str, dict[str, float]]], overall: dict[str, dict[str, float]], path: Path) -> None:
    from softorder.analysis import save_figure, subplots

    tasks = list(per_task) + ["mean"]
    colors = {"learned-blocks": "tab:blue", "random-blocks": "tab:gray", "single-task": "tab:orange"}
    fig, ax = subplots(figsize=(1.1 * len(tasks) + 2, 3.4))
    x = np.arange(len(tasks))
    for i, cond in enumerate(CONDITIONS):
        stats = [per_task[t][cond] for t in per_task] + [overall[cond]]
        means = [100 * s["mean"] for s in stats]
        errs = [100 * s["ci95"] if np.isfinite(s["ci95"]) else 0.0 for s in stats]
        ax.bar(x + (i - 1) * 0.27, means, 0.27, yerr=errs, capsize=2, label=cond, color=colors[cond])
    ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 100)  # with few trials the t-interval can reach past the possible range
    ax.set_ylabel("held-out validation error (%), 95% CI")
    ax.set_title("A new task from frozen shared layers: learned vs random blocks", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


EXPERIMENT = BuildingBlocks()
