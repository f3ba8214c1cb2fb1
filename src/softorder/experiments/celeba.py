"""CelebA: 40 facial attributes as tasks on a shared ResNet-50 trunk (paper Sec. 4.4, A.4, Fig. 7).

Model: an image trunk shared by all tasks (ResNet-50 truncated at the final average pooling, see
:mod:`softorder.trunks`), a linear projection to 256, four shared dense ReLU layers of 256 with
dropout 0.5 at the output of each, and a sigmoid decoder per attribute; optionally the facial
landmark regression task (mean squared error; the target metric stays the attribute error) and the
soft-ordering identity layer. Training: batches of 32 images, Adam until the summed validation loss
has not improved for ``patience`` evaluations, then RMSProp with learning rate 1e-5
(``TrainConfig.second_optimizer``), ``iterations`` in all; test error of the final model.

Methods are an ordering with optional ``+landmarks`` / ``+identity``: the paper's are
``parallel``, ``soft``, ``soft+landmarks`` and ``soft+identity``.

Figures: ``celeba_usage.png`` (layer usage by depth without and with the identity layer, Fig. 7a-b)
and ``celeba_table.png`` (our mean test error next to the paper's, Fig. 7c).

On a CPU without torchvision (``--quick``): ``trunk="small-cnn"`` (a four-layer CNN, not the
paper's model), 64x64 images, and ``available_only`` so that a partial download (here the 32
images of ``img_align_celeba``) can be used: the loader then re-splits the present images
80/10/10. That is a smoke run of the whole pipeline, not a reproduction.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softorder.experiments.runner import Experiment, Trial, mean_ci, progress_reporter
from softorder.orderings import ORDERINGS

PAPER_METHODS = ("parallel", "soft", "soft+landmarks", "soft+identity")
LABELS = {
    "parallel": "parallel ordering",
    "soft": "soft ordering",
    "soft+landmarks": "soft ordering + landmarks",
    "soft+identity": "soft ordering + identity layer",
}
# Fig. 7c: mean test error % over the 40 attributes.
PAPER_TABLE: dict[str, float] = {
    "single task, He et al. (2017)": 10.37,
    "parallel MTL, He et al. (2017)": 9.58,
    "parallel": 10.21,
    "soft": 8.79,
    "soft+landmarks": 8.75,
    "soft+identity": 8.64,
}


def _landmarks_missing(config: Mapping[str, Any], spec: Mapping[str, Any], data_dir: Path | None) -> str | None:
    """Why a landmark trial is skipped on a partial download (None when it can run)."""
    from softorder.data import celeba
    from softorder.data.paths import resolve_data_dir

    if spec["landmarks"] and config["available_only"] and not celeba.LANDMARKS_FILE.path(resolve_data_dir(data_dir)).is_file():
        return (f"{celeba.LANDMARKS_FILE.name} is missing from {resolve_data_dir(data_dir) / 'celeba'}; "
                "put it there, delete this trial's folder and rerun to include the landmark task")
    return None


def _data_and_trunk(config: Mapping[str, Any], spec: Mapping[str, Any], data_dir: Path | None, seed: int) -> tuple[Any, Any, int, list[str]]:
    """The attribute tasks, the trunk and its feature count, and the loaders' warnings (each once)."""
    from softorder.data import celeba
    from softorder.trunks import build_trunk

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = celeba.celeba_tasks(data_dir, image_size=int(config["image_size"]), include_landmarks=spec["landmarks"],
                                   available_only=bool(config["available_only"]), split_seed=int(config["split_seed"]),
                                   threads=int(config["loader_threads"]), verify=bool(config["verify_data"]))
        torch.manual_seed(seed)
        trunk, features = build_trunk(config["trunk"], config["weights"])
    notes = sorted({str(w.message) for w in caught})
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return data, trunk, features, notes


def _train_config(config: Mapping[str, Any], seed: int) -> Any:
    from softorder.train import TrainConfig

    device = config["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TrainConfig(iterations=config["iterations"], batch_size=config["batch_size"], lr=config["lr"], eval_every=config["eval_every"],
                       eval_splits=("val",), eval_batch_size=config["eval_batch_size"], second_optimizer=config["second_optimizer"],
                       second_lr=config["second_lr"], patience=config["patience"], num_workers=config["num_workers"],
                       device=device, seed=seed, progress=False)


def _result(config: Mapping[str, Any], method: str, spec: Mapping[str, Any], model: Any, data: Any, history: Any,
            test: Mapping[str, Mapping[str, float]], notes: list[str], device: str) -> dict[str, Any]:
    """One trial's JSON-able result."""
    from softorder.analysis import mixing_of
    from softorder.data import celeba

    attributes = list(data.attribute_names)
    last = history.last
    return {
        "method": method,
        "attributes": attributes,
        "test_error": {a: test[a]["error"] for a in attributes if a in test},
        "test_loss": {n: r["loss"] for n, r in test.items()},  # every task's, the landmarks' too
        "mean_test_error": float(np.mean([test[a]["error"] for a in attributes if a in test])),
        "landmark_test_mse": test.get(celeba.LANDMARK_TASK, {}).get("error"),
        "mean_val_error": float(np.mean([last[f"val_error/{a}"] for a in attributes if f"val_error/{a}" in last])),
        "val_loss": [(r["iteration"], r.get("val_loss")) for r in history.records],
        "switched_to_second_optimizer_at": next((r["iteration"] for r in history.records if "switched_optimizer" in r), None),
        "mixing": mixing_of(model).tolist(),
        "task_names": list(data.task_names),
        "identity_layer": spec["identity_layer"],
        "split_sizes": {s: int(len(data.files[s])) for s in ("train", "val", "test")},
        "trunk": config["trunk"],
        "device": device,
        "warnings": notes,
        "train_seconds": last.get("elapsed_s"),
        "seconds_per_iteration": (last.get("elapsed_s") or float("nan")) / max(1, int(config["iterations"])),
    }


def parse_method(method: str) -> dict[str, Any]:
    """``"soft+identity+landmarks"`` -> ``{"ordering": "soft", "identity_layer": True, "landmarks": True}``."""
    parts = [p.strip() for p in str(method).split("+")]
    ordering, flags = parts[0], set(parts[1:])
    if ordering not in ORDERINGS:
        raise ValueError(f"celeba: method {method!r} must start with an ordering (parallel, soft, permuted, single)")
    unknown = flags - {"landmarks", "identity"}
    if unknown or len(flags) != len(parts) - 1:
        raise ValueError(f"celeba: method {method!r}: the options after '+' are 'landmarks' and 'identity'")
    if "identity" in flags and ordering != "soft":
        raise ValueError(f"celeba: method {method!r}: the identity layer belongs to soft ordering")
    return {"ordering": ordering, "identity_layer": "identity" in flags, "landmarks": "landmarks" in flags}


class CelebAExperiment(Experiment):
    name = "celeba"
    description = "CelebA attributes on a shared ResNet-50: parallel vs soft ordering (+landmarks, +identity) (Sec. 4.4, Fig. 7)"

    def default_config(self, quick: bool) -> dict[str, Any]:
        return {
            "methods": list(PAPER_METHODS),
            "trials": 1,
            "trunk": "small-cnn" if quick else "resnet50",
            "weights": None,  # "imagenet" (torchvision's cache) or a path to a ResNet-50 state-dict file
            "image_size": 64 if quick else 224,
            "available_only": quick,  # use only the images present (smoke runs on a partial download)
            "width": 256,
            "depth": 4,
            "dropout": 0.5,
            "batch_size": 32,
            "lr": 1e-3,
            "second_optimizer": "rmsprop",
            "second_lr": 1e-5,
            "patience": 3,  # evaluations without improvement of the validation loss before RMSProp
            "iterations": 150 if quick else 60_000,
            "eval_every": 15 if quick else 2_000,
            "eval_batch_size": 64 if quick else 256,
            "device": "cpu" if quick else "auto",  # "auto": CUDA when available
            "num_workers": 0 if quick else 6,  # DataLoader processes decoding training images
            "loader_threads": 1 if quick else 4,  # threads decoding one batch (per process)
            "threads": 1 if quick else 0,  # torch CPU threads (0: leave torch's default)
            "split_seed": 0,
            "verify_data": True,
        }

    def trials(self, config: Mapping[str, Any]) -> list[Trial]:
        for m in config["methods"]:
            parse_method(m)
        from softorder.trunks import TRUNKS

        if config["trunk"] not in TRUNKS:
            raise ValueError(f"celeba: unknown trunk {config['trunk']!r}; expected one of {list(TRUNKS)}")
        return [Trial(f"{m}/trial={t}", {"method": m, "trial": t}) for m in config["methods"] for t in range(int(config["trials"]))]

    def run_trial(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        from softorder.model import build_model
        from softorder.train import evaluate, fit

        method, seed = trial.params["method"], int(trial.params["trial"])
        spec = parse_method(method)
        reason = _landmarks_missing(config, spec, data_dir)
        if reason:
            warnings.warn(f"celeba: skipping {method}: {reason}", stacklevel=2)
            return {"skipped": reason}
        data, trunk, features, notes = _data_and_trunk(config, spec, data_dir, seed)
        model = build_model(data.specs, ordering=spec["ordering"], layer="dense", width=config["width"], depth=config["depth"],
                            encoder=trunk, encoder_features=features, dropout=config["dropout"],
                            identity_layer=spec["identity_layer"], seed=seed)
        cfg = _train_config(config, seed)
        history = fit(model, data, cfg, run_dir=trial_dir, on_eval=progress_reporter(self.name, trial, cfg.iterations, model=model))
        test = evaluate(model, data, "test", batch_size=config["eval_batch_size"], device=cfg.device)
        return _result(config, method, spec, model, data, history, test, notes, cfg.device)

    def tidy_rows(self, config: Mapping[str, Any], trial: Trial, result: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each attribute's test error and loss, and the landmark task's (error: MSE); none for a skipped trial."""
        if "skipped" in result:
            return []
        from softorder.data.celeba import LANDMARK_TASK

        errors = dict(result["test_error"])
        if result.get("landmark_test_mse") is not None:
            errors[LANDMARK_TASK] = result["landmark_test_mse"]
        losses = result.get("test_loss") or {}
        return [{"method": result["method"], "task": task, "split": "test", "error": error, "loss": losses.get(task)} for task, error in errors.items()]

    def summarize(self, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        table: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        for m in config["methods"]:
            runs = [results[k] for k in sorted(results) if k.startswith(f"{m}/")]
            skipped.update({f"{m}/trial={i}": r["skipped"] for i, r in enumerate(runs) if "skipped" in r})
            runs = [r for r in runs if "skipped" not in r]
            if runs:
                table[m] = {
                    **mean_ci([r["mean_test_error"] for r in runs]),
                    "seconds_per_iteration": float(np.mean([r["seconds_per_iteration"] for r in runs])),
                }
        figures = []
        usage = {}
        for m, identity in (("soft", False), ("soft+identity", True)):
            run = results.get(f"{m}/trial=0")
            if run and "mixing" in run:
                usage[m] = (np.asarray(run["mixing"]), identity)
        if usage:
            _plot_usage(usage, out_dir / "celeba_usage.png")
            figures.append("celeba_usage.png")
        if table:
            _plot_table(table, config, out_dir / "celeba_table.png", skipped={k.split("/")[0] for k in skipped})
            figures.append("celeba_table.png")
        return {
            "mean_test_error": table,
            "skipped": skipped,
            "paper": PAPER_TABLE,
            "trunk": config["trunk"],
            "image_size": config["image_size"],
            "figures": figures,
        }


def _plot_usage(usage: Mapping[str, tuple[np.ndarray, bool]], path: Path) -> Path:
    """Mean weight of each layer at each depth over the tasks, one panel per model (Fig. 7a-b)."""
    from softorder.analysis import save_figure, subplots

    fig, axes = subplots(1, len(usage), figsize=(5.0 * len(usage), 3.6), squeeze=False)
    fig.subplots_adjust(wspace=0.38)
    for ax, (m, (mixing, identity)) in zip(axes[0], usage.items()):
        mean = mixing.mean(axis=0)  # (L[+1], depth)
        spread = mixing.std(axis=0)
        layers, depth = mean.shape
        for j in range(layers):
            label = "identity" if identity and j == layers - 1 else f"layer {j + 1}"
            ax.errorbar(np.arange(1, depth + 1) + 0.04 * (j - layers / 2), mean[j], yerr=spread[j], marker="o", ms=4, capsize=2, lw=1.4,
                        ls="--" if label == "identity" else "-", label=label)
        ax.axhline(1.0 / layers, color="k", lw=0.6, ls=":")
        ax.set_xticks(range(1, depth + 1))
        ax.set_xlabel("depth")
        ax.set_ylabel(f"mean usage over {mixing.shape[0]} tasks (± std)")
        ax.set_title(f"{LABELS.get(m, m)}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    fig.suptitle("CelebA: layer usage by depth without and with the identity layer (cf. Fig. 7a-b)", fontsize=10)
    return save_figure(fig, path)


def _plot_table(table: Mapping[str, Any], config: Mapping[str, Any], path: Path, skipped: set[str] = frozenset()) -> Path:
    from softorder.analysis import save_figure, subplots

    rows, cells = [], []
    for name, value in PAPER_TABLE.items():
        ours = table.get(name)
        if ours is None:
            text = "skipped (no landmark file)" if name in skipped else "-"
        else:
            text = f"{100 * ours['mean']:.2f}" + (f" ± {100 * ours['ci95']:.2f}" if ours["n"] > 1 else "")
        rows.append(LABELS.get(name, name))
        cells.append([text, f"{value:.2f}"])
    for name, ours in table.items():
        if name not in PAPER_TABLE:
            rows.append(name)
            cells.append([f"{100 * ours['mean']:.2f}", "-"])
    fig, ax = subplots(figsize=(7.4, 0.4 * len(rows) + 1.3))
    ax.axis("off")
    cols = [f"ours: {config['trunk']}, {config['image_size']}px", "paper: ResNet-50 (ImageNet), 224px"]
    tab = ax.table(cellText=cells, rowLabels=rows, colLabels=cols, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.scale(1.0, 1.4)
    smoke = " - smoke run on a partial download" if config["available_only"] else ""
    ax.set_title(f"CelebA: mean test error over the attributes (%) (cf. Fig. 7c){smoke}", fontsize=9)
    return save_figure(fig, path)


EXPERIMENT = CelebAExperiment()
