"""Omniglot: one character-recognition task per alphabet (paper Sec. 4.3, Appendix A.3, Fig. 6).

The core is four shared 3x3 convolutional layers of 53 filters, each followed by ReLU and 2x2
max-pooling (``layer="conv"``, ``width=53``); the 1-channel image is read as zero-padded to 53
channels (``encoder="identity"``: the padding is never materialised, the first convolution simply
uses the first input channel of its weights); a dense softmax decoder per alphabet; dropout 0.5
at the output of every shared layer; Adam; 5,000 iterations whose batch holds one random training
drawing of every task. Methods: single task, parallel, permuted and soft ordering.

Grid: the first ``k`` alphabets of the paper's fixed order for every ``k`` in ``num_tasks``, with
the first of ``test_fractions`` held out for test (Fig. 6a), and the largest ``k`` also with each
other test fraction (Fig. 6c: all 50 alphabets at 10% and 20% test). Figures:
``omniglot_by_tasks.png`` (6a), ``omniglot_usage_distribution.png`` (6b) and
``omniglot_table.png`` (6c, with the paper's numbers beside ours).

The paper does not say how its layers start. By default (``init="he"``) the convolutions' weights
are He-normal (variance 2 / fan_in, which keeps the activations' scale through ReLU layers) with zero
biases. ``init="keras"`` starts them as Keras' defaults would (Glorot-uniform, zero biases; the paper
ran on Keras) and ``init="torch"`` keeps PyTorch's. With one image per task per iteration, the Keras
start left soft ordering at chance for 1,500 iterations at full resolution while parallel ordering
learned; the He start lets both learn (docs/results/omniglot.md).

Full resolution (105x105) is heavy on a CPU; ``downsample`` (3 -> 35x35, 5 -> 21x21, average
pooling of the ink) makes CPU runs cheap, but it is not the paper's problem: after four 2x2 poolings
a 21x21 input leaves one position per filter, and with dropout 0.5 after every layer the models sat
at chance for thousands of iterations in our runs (docs/results/omniglot.md). Every result records
the resolution it used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softorder.experiments.records import machine_name, record_path, recorded
from softorder.experiments.runner import Experiment, Trial, mean_ci, progress_reporter
from softorder.orderings import ORDERINGS

METHODS = tuple(ORDERINGS)
INITS = ("keras", "he", "torch")
LABELS = {"single": "single task", "parallel": "parallel ordering", "permuted": "permuted ordering", "soft": "soft ordering"}
COLORS = {"single": "tab:gray", "parallel": "tab:blue", "permuted": "tab:green", "soft": "tab:red"}
# Fig. 6c / README: all 50 alphabets, test error % (mean ± std over trials), by test fraction.
PAPER_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "single": {"0.1": (38.49, 0.87), "0.2": (38.10, 0.88)},
    "parallel": {"0.1": (27.17, 0.57), "0.2": (28.24, 0.67)},
    "permuted": {"0.1": (32.64, 0.64), "0.2": (33.18, 0.74)},
    "soft": {"0.1": (23.19, 0.34), "0.2": (24.11, 0.48)},
    "DMTRL-TT (Yang & Hospedales 2017)": {"0.1": (28.78, 0.61), "0.2": (30.61, 0.65)},
}


def _frac(value: float) -> str:
    return f"{float(value):g}"


def trial_key(num_tasks: int, test_fraction: float, method: str, trial: int) -> str:
    return f"tasks={int(num_tasks)}/test={_frac(test_fraction)}/{method}/trial={int(trial)}"


class OmniglotExperiment(Experiment):
    name = "omniglot"
    description = "Omniglot alphabets as tasks, conv layers: single, parallel, permuted, soft (Sec. 4.3, Fig. 6)"

    def default_config(self, quick: bool) -> dict[str, Any]:
        return {
            # quick: the paper's model and resolution on the first 3 alphabets, 800 iterations; a
            # downsampled input is cheaper still but did not learn at all with dropout 0.5 (module doc)
            "num_tasks": [3] if quick else [1, 2, 5, 10, 20, 50],
            "test_fractions": [0.1] if quick else [0.1, 0.2],
            "methods": list(METHODS),
            "trials": 1 if quick else 5,
            "iterations": 800 if quick else 5000,
            "batch_size": 1,  # rows per task per iteration (A.3: one random sample from each task)
            "eval_every": 200 if quick else 1000,
            "downsample": 1,  # 1: the paper's 105x105; 3: 35x35; 5: 21x21
            "width": 53,
            "depth": 4,
            "dropout": 0.5,
            "lr": 1e-3,
            "init": "he",  # "he": He-normal convolutions, zero biases; "keras": Glorot-uniform (Keras' default); "torch"
            "split_seed": 0,
            "threads": 1,  # torch CPU threads (0: leave torch's default)
            "device": "cpu" if quick else "auto",  # "auto": CUDA when available
            "verify_data": True,  # check the data files' checksums (False: e.g. re-packed copies)
            "records": "",  # a directory of trial records (e.g. results/omniglot): finished trials there are skipped
        }

    def _grid(self, config: Mapping[str, Any]) -> list[tuple[int, float]]:
        ks = [int(k) for k in config["num_tasks"]]
        fractions = [float(f) for f in config["test_fractions"]]
        if not ks or not fractions:
            raise ValueError("omniglot: num_tasks and test_fractions must not be empty")
        if any(k < 1 or k > 50 for k in ks):
            raise ValueError(f"omniglot: num_tasks must be between 1 and 50, got {ks}")
        unknown = [m for m in config["methods"] if m not in METHODS]
        if unknown:
            raise ValueError(f"omniglot: unknown method(s) {unknown}; expected some of {list(METHODS)}")
        if config["init"] not in INITS:
            raise ValueError(f"omniglot: init must be one of {INITS}, got {config['init']!r}")
        grid = [(k, fractions[0]) for k in ks]
        grid += [(max(ks), f) for f in fractions[1:]]
        return grid

    def trials(self, config: Mapping[str, Any]) -> list[Trial]:
        return [
            Trial(trial_key(k, f, m, t), {"num_tasks": k, "test_fraction": f, "method": m, "trial": t})
            for k, f in self._grid(config)
            for m in config["methods"]
            for t in range(int(config["trials"]))
        ]

    def run_trial(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        if not config.get("records"):
            return self._train(config, trial, trial_dir, data_dir)
        fields = record_fields(config, trial.params)
        return recorded(record_path(Path(config["records"]), fields, RECORD_NAME_KEYS), fields, record_settings(config),
                        lambda: self._train(config, trial, trial_dir, data_dir),
                        lambda r: {"test_error": r["final_mean_test_error"], "test_error_by_task": r["final_test_error"], "train_seconds": r["train_seconds"],
                                    "threads": torch.get_num_threads(), "machine": machine_name()})

    def _train(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        from softorder.analysis import mixing_of
        from softorder.train import TrainConfig, fit

        p = trial.params
        seed = int(p["trial"])
        data = load_tasks(config, int(p["num_tasks"]), float(p["test_fraction"]), data_dir)
        model = make_model(data.specs, p["method"], config, seed)
        device = config["device"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg = TrainConfig(
            iterations=config["iterations"],
            batch_size=config["batch_size"],
            lr=config["lr"],
            eval_every=config["eval_every"],
            eval_splits=("test",),
            eval_batch_size=256,
            device=device,
            seed=seed,
            progress=False,
        )
        history = fit(model, data, cfg, run_dir=trial_dir, on_eval=progress_reporter(self.name, trial, cfg.iterations, model=model))
        last = history.last
        names = data.task_names
        side = data.specs[0].input_shape[-1]
        chance = float(np.mean([1.0 - 1.0 / s.num_outputs for s in data.specs]))
        return {
            "dead_channel_share": dead_channel_share(model, data, device),
            "chance_error": chance,
            "collapsed": bool(last["test_error"] > COLLAPSE_FRACTION * chance),
            "tasks": names,
            "image_side": int(side),
            "downsample": int(config["downsample"]),
            "iterations": [r["iteration"] for r in history.records],
            "mean_test_error": [r["test_error"] for r in history.records],
            "final_test_error": {n: last[f"test_error/{n}"] for n in names},
            "final_mean_test_error": last["test_error"],
            "mixing": mixing_of(model).tolist(),
            "device": device,
            "parameters": int(sum(q.numel() for q in model.parameters() if q.requires_grad)),
            "train_seconds": last.get("elapsed_s"),
            "seconds_per_iteration": (last.get("elapsed_s") or float("nan")) / max(1, int(config["iterations"])),
        }

    def summarize(self, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        grid = self._grid(config)
        cells: dict[str, dict[str, dict[str, Any]]] = {}
        for k, f in grid:
            cell = cells.setdefault(f"tasks={k}/test={_frac(f)}", {})
            for m in config["methods"]:
                runs = _finished_runs(results, config, k, f, m)
                if runs:
                    cell[m] = {
                        **mean_ci([r["final_mean_test_error"] for r in runs]),
                        "seconds_per_iteration": float(np.mean([r["seconds_per_iteration"] for r in runs])),
                    }
        side = 105 // int(config["downsample"])
        figures = []
        first_fraction = float(config["test_fractions"][0])
        by_tasks = {
            m: [(k, cells[f"tasks={k}/test={_frac(first_fraction)}"].get(m)) for k in sorted({k for k, _ in grid})]
            for m in config["methods"]
        }
        if any(s for series in by_tasks.values() for _, s in series):
            _plot_by_tasks(by_tasks, first_fraction, side, out_dir / "omniglot_by_tasks.png")
            figures.append("omniglot_by_tasks.png")
        kmax = max(k for k, _ in grid)
        soft = [results[key] for key in sorted(results) if key.startswith(f"tasks={kmax}/") and "/soft/" in key]
        if soft:
            from softorder.analysis import plot_usage_distribution

            mixing = np.asarray(soft[0]["mixing"])
            plot_usage_distribution(
                mixing,
                out_dir / "omniglot_usage_distribution.png",
                title=f"Omniglot: usage of each layer by depth over {mixing.shape[0]} tasks ({side}x{side} input; cf. Fig. 6b)",
            )
            figures.append("omniglot_usage_distribution.png")
        curves = {m: _finished_runs(results, config, kmax, first_fraction, m) for m in config["methods"]}
        if any(curves.values()):
            _plot_curves(curves, kmax, first_fraction, side, out_dir / "omniglot_curves.png")
            figures.append("omniglot_curves.png")
        table = {
            _frac(f): {m: cells[f"tasks={kmax}/test={_frac(f)}"].get(m) for m in config["methods"]}
            for k, f in grid
            if k == kmax
        }
        if any(v for row in table.values() for v in row.values()):
            _plot_table(table, kmax, side, out_dir / "omniglot_table.png")
            figures.append("omniglot_table.png")
        (out_dir / "results_table.md").write_text(_markdown(cells, table, kmax, side, config))
        return {
            "image_side": side,
            "downsample": int(config["downsample"]),
            "error_by_cell": cells,
            "all_tasks_table": table,
            "paper_table": {m: {f: {"mean": v[0], "std": v[1]} for f, v in row.items()} for m, row in PAPER_TABLE.items()},
            "figures": figures,
        }


def _finished_runs(results: Mapping[str, dict[str, Any]], config: Mapping[str, Any], k: int, fraction: float, method: str) -> list[dict[str, Any]]:
    """The finished trials' results of one (number of tasks, test fraction, method) cell, by trial."""
    keys = (trial_key(k, fraction, method, t) for t in range(int(config["trials"])))
    return [results[key] for key in keys if key in results]


RECORD_NAME_KEYS = ("num_tasks", "test_fraction", "method", "init", "iterations", "seed")
COLLAPSE_FRACTION = 0.9  # a trial whose mean test error ends above 0.9 x chance's is reported as collapsed


def record_fields(config: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """What tells one Omniglot trial record from another (issue: the paper's protocol, Fig. 6c)."""
    return {
        "method": params["method"],
        "num_tasks": int(params["num_tasks"]),
        "test_fraction": float(params["test_fraction"]),
        "iterations": int(config["iterations"]),
        "seed": int(params["trial"]),
        "init": config["init"],
        "padding": "same",  # the shared convolutions keep the image size (Keras' default is 'valid')
    }


def record_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The other settings a record must share with a run that reuses it."""
    keys = ("batch_size", "eval_every", "downsample", "width", "depth", "dropout", "lr", "split_seed")
    return {k: config[k] for k in keys}


def dead_channel_share(model: torch.nn.Module, data: Any, device: str, per_task: int = 5) -> float:
    """Share of (task, channel) pairs whose last shared depth outputs zero for every one of up to
    ``per_task`` test images of the task (ReLU units that died during training)."""
    inputs: dict[str, torch.Tensor] = {}
    for batch in data.eval_batches("test", 256):
        for name, x in batch.inputs.items():
            have = inputs.get(name, x[:0])
            inputs[name] = torch.cat([have, x[: per_task - have.shape[0]]])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        h, task, _, _ = model.encode({n: x.to(device) for n, x in inputs.items()})
        y = model.core(h, task)  # (N, C, H, W)
    model.train(was_training)
    peak = torch.stack([y[task == t].amax(dim=(0, 2, 3)) for t in task.unique()])  # (tasks, C)
    return float((peak <= 0).float().mean())


def load_tasks(config: Mapping[str, Any], num_tasks: int, test_fraction: float, data_dir: Path | None) -> Any:
    """The first ``num_tasks`` alphabets of the paper's order, ``test_fraction`` of each held out."""
    from softorder.data import omniglot

    return omniglot.omniglot_tasks(data_dir, num_tasks=num_tasks, test_fraction=test_fraction, split_seed=int(config["split_seed"]),
                                   downsample=int(config["downsample"]), verify=bool(config["verify_data"]))


def make_model(specs: Sequence[Any], method: str, config: Mapping[str, Any], seed: int, *, top_k: int | None = None, gating: str = "gumbel") -> Any:
    """A.3's model (conv layers, the image read as zero-padded channels) with the configured start."""
    from softorder.model import build_model

    model = build_model(specs, ordering=method, layer="conv", width=config["width"], depth=config["depth"],
                        encoder="identity", dropout=config["dropout"], seed=seed, top_k=top_k, gating=gating)
    if config["init"] != "torch":
        reinit_layers(model, he_conv=config["init"] == "he", generator=torch.Generator().manual_seed(seed))
    return model


def reinit_layers(model: torch.nn.Module, he_conv: bool = False, generator: torch.Generator | None = None) -> None:
    """Re-initialise the shared convolutions (and any ``nn.Linear``) as Keras does by default:
    Glorot-uniform weights and zero biases; with ``he_conv`` the convolutions' weights are He-normal
    (``N(0, 2 / fan_in)``) instead. The per-task decoders keep their start (uniform in
    +-1/sqrt(fan_in)) and the soft-ordering scales their equal start.

    The paper ran on Keras, whose layers start this way; PyTorch's start uniformly in
    +-1/sqrt(fan_in) with random biases.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            if he_conv and isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            else:
                torch.nn.init.xavier_uniform_(module.weight, generator=generator)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def _plot_by_tasks(by_tasks: Mapping[str, Sequence[tuple[int, Any]]], fraction: float, side: int, path: Path) -> Path:
    from softorder.analysis import save_figure, subplots

    fig, ax = subplots(figsize=(5.6, 3.8))
    for m, series in by_tasks.items():
        pts = [(k, s) for k, s in series if s]
        if not pts:
            continue
        ks = np.array([k for k, _ in pts])
        y = 100 * np.array([s["mean"] for _, s in pts])
        ci = 100 * np.nan_to_num(np.array([s["ci95"] for _, s in pts], dtype=float))
        ax.errorbar(ks, y, yerr=ci, color=COLORS[m], marker="o", ms=4, capsize=3, lw=1.5, label=LABELS[m])
    ax.set_xscale("log")
    ks_all = sorted({k for series in by_tasks.values() for k, _ in series})
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    _label_error_axes(ax, "number of tasks trained jointly (first k of the paper's order)", fraction, f"Omniglot, {side}x{side} input: error by number of tasks (cf. Fig. 6a)")
    return save_figure(fig, path)


def _label_error_axes(ax: Any, xlabel: str, fraction: float, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"mean test error (%), {int(round(100 * fraction))}% test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)


def _plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], kmax: int, fraction: float, side: int, path: Path) -> Path:
    """Mean test error by iteration for each method (``curves[method]``: its trials' results), with
    the 95% CI over trials as a band where there are two or more."""
    from softorder.analysis import save_figure, subplots

    fig, ax = subplots(figsize=(5.6, 3.8))
    for m, runs in curves.items():
        if not runs:
            continue
        length = min(len(r["iterations"]) for r in runs)
        its = np.asarray(runs[0]["iterations"][:length])
        stats = [mean_ci([r["mean_test_error"][i] for r in runs]) for i in range(length)]
        y = 100 * np.array([st["mean"] for st in stats])
        ax.plot(its, y, color=COLORS[m], marker="o", ms=3, lw=1.5, label=f"{LABELS[m]} (n={len(runs)})")
        if len(runs) > 1:
            ci = 100 * np.nan_to_num(np.array([st["ci95"] for st in stats]))
            ax.fill_between(its, y - ci, y + ci, color=COLORS[m], alpha=0.2, lw=0)
    _label_error_axes(ax, "iteration (one drawing of every task each)", fraction, f"Omniglot, first {kmax} alphabets, {side}x{side} input: test error by iteration")
    return save_figure(fig, path)


def _cell(s: Mapping[str, Any] | None, std: bool = True) -> str:
    if not s or s.get("n", 0) == 0:
        return "-"
    spread = s["std"] if std else s["ci95"]
    if s["n"] < 2 or not np.isfinite(spread):
        return f"{100 * s['mean']:.2f} (n=1)"
    return f"{100 * s['mean']:.2f} ± {100 * spread:.2f}"


def _plot_table(table: Mapping[str, Mapping[str, Any]], kmax: int, side: int, path: Path) -> Path:
    from softorder.analysis import save_figure, subplots

    fractions = list(table)
    rows, cells = [], []
    for m in PAPER_TABLE:
        ours = [(_cell(table[f].get(m)) if m in METHODS else "-") for f in fractions]
        paper = [f"{PAPER_TABLE[m][f][0]:.2f} ± {PAPER_TABLE[m][f][1]:.2f}" if f in PAPER_TABLE[m] else "-" for f in fractions]
        rows.append(LABELS.get(m, m))
        cells.append(ours + paper)
    cols = [f"ours, {int(round(100 * float(f)))}% test" for f in fractions] + [f"paper, {int(round(100 * float(f)))}% test" for f in fractions]
    fig, ax = subplots(figsize=(2.1 * len(cols) + 2.6, 0.42 * len(rows) + 1.2))
    ax.axis("off")
    tab = ax.table(cellText=cells, rowLabels=rows, colLabels=cols, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.scale(1.0, 1.4)
    ax.set_title(f"Omniglot, first {kmax} alphabets, test error % (mean ± std over trials); ours at {side}x{side} (cf. Fig. 6c)", fontsize=9)
    return save_figure(fig, path)


def _markdown(cells, table, kmax: int, side: int, config: Mapping[str, Any]) -> str:
    methods = list(config["methods"])
    first = _frac(config["test_fractions"][0])
    lines = [f"Input {side}x{side}; test error % of the mean over tasks, mean ± 95% CI over trials.", ""]
    lines.append(f"By number of tasks ({int(round(100 * float(first)))}% test):")
    lines.append("")
    lines.append("| tasks | " + " | ".join(LABELS[m] for m in methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    for key, cell in cells.items():
        if key.endswith(f"/test={first}"):
            k = key.split("/")[0].split("=")[1]
            lines.append(f"| {k} | " + " | ".join(_cell(cell.get(m), std=False) for m in methods) + " |")
    lines += ["", f"First {kmax} alphabets, mean ± std over trials, with the paper's numbers (50 alphabets, 105x105):", ""]
    fractions = list(table)
    lines.append("| method | " + " | ".join(f"ours {int(round(100 * float(f)))}%" for f in fractions) + " | " + " | ".join(f"paper {int(round(100 * float(f)))}%" for f in fractions) + " |")
    lines.append("|---|" + "---|" * (2 * len(fractions)))
    for m in PAPER_TABLE:
        ours = [(_cell(table[f].get(m)) if m in methods else "-") for f in fractions]
        paper = [f"{PAPER_TABLE[m][f][0]:.2f} ± {PAPER_TABLE[m][f][1]:.2f}" if f in PAPER_TABLE[m] else "-" for f in fractions]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(ours + paper) + " |")
    lines.append("")
    return "\n".join(lines)


EXPERIMENT = OmniglotExperiment()
