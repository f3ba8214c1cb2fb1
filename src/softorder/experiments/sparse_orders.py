"""Sparse and hardened soft orders against dense soft and parallel ordering (beyond the paper, Sec. 6).

Three domains, each at its own preset's model and settings: the ten UCI tasks (``uci``, validation
error of A.2's split), MNIST digit pairs (``mnist``, ``mnist_tasks`` tasks, test error) and the first
Omniglot alphabets (``omniglot``, ``omniglot_tasks`` alphabets at 105x105, 10% test). Methods:

* ``soft``: dense soft ordering (Eq. 7); after training it is also hardened (:func:`~softorder.sparse.harden`,
  each k of ``harden_k``, no further training) and evaluated again: the error before and after.
* ``soft-annealed``: the same, with the softmax temperature lowered geometrically from 1 to
  ``anneal_to`` over training (:func:`~softorder.sparse.temperature_schedule`), so the orders end
  nearly hard before they are hardened.
* ``top-2``, ``top-1``: trained as :class:`~softorder.sparse.TopKSoftOrdering` with that k
  (Gumbel top-k); ``top-2-noisy``: k = 2 with noisy top-k gating and its balancing term, the
  other training rule (it cannot train k = 1: see :class:`~softorder.sparse.TopKSoftOrdering`).
* ``parallel``: parallel ordering (Eq. 2), the cost that hardening aims at.

A trial is (domain, method, seed); the soft trials carry the hardened errors. One more trial per
domain, ``<domain>/step-time``, times a training step of every method round robin (median over
``timing_rounds`` rounds, S drawn at random so that tasks choose different layers), so the step
times in the table are measured side by side. The summary is ``sparse_orders.md``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softorder.experiments.runner import Experiment, Trial, mean_ci, progress_reporter

DOMAINS = ("uci", "mnist", "omniglot")
METHODS = ("soft", "soft-annealed", "top-2", "top-1", "top-2-noisy", "parallel")
TOP_K = {"top-2": (2, "gumbel"), "top-1": (1, "gumbel"), "top-2-noisy": (2, "noisy")}  # (k, gating)
# settings that choose which trials run, or how, not what a trial computes: records made under other
# values of these are reused
GRID_KEYS = ("domains", "methods", "trials", "records", "verify_data", "quick", "experiment")
LABELS = {"soft": "dense soft", "soft-annealed": "soft, annealed", "top-2": "top-2", "top-1": "top-1",
          "top-2-noisy": "top-2, noisy gating", "parallel": "parallel"}


@dataclass(frozen=True)
class Setting:
    """One domain's data and model, built by its own preset's functions, and how it is trained."""

    data: Any
    make_model: Callable[[str, int | None, str], Any]  # (ordering, top_k, gating) -> MultitaskModel
    split: str  # the split whose error is reported
    batch_size: int
    lr: float
    iterations: int
    eval_batch_size: int = 1024


def domain_setting(domain: str, config: Mapping[str, Any], seed: int, data_dir: Path | None) -> Setting:
    """The data and model of ``domain`` for one seed, at that preset's (non-quick) settings."""
    from softorder.experiments import get_experiment, mnist, omniglot, uci

    base = {**get_experiment(domain).default_config(False), "verify_data": config["verify_data"]}
    iterations = int(config[f"{domain}_iterations"])
    if domain == "uci":
        data = uci.load_tasks(base, data_dir)
        dropout = float(base["dropouts"][0])  # Keras' reading of A.2: drop 80%
        return Setting(data, lambda ordering, k, g: uci.make_model(data.specs, ordering, base, dropout, seed, top_k=k, gating=g),
                       "val", int(base["batch_size"]), float(base["lr"]), iterations)
    if domain == "mnist":
        tasks = int(config["mnist_tasks"])
        data, _ = mnist.load_task_set(data_dir, tasks, seed)
        return Setting(data, lambda ordering, k, g: mnist.make_model(data.specs, ordering, base, tasks, seed, top_k=k, gating=g),
                       "test", int(base["batch_size"]), float(base["lr"]), iterations)
    if domain == "omniglot":
        data = omniglot.load_tasks(base, int(config["omniglot_tasks"]), 0.1, data_dir)
        return Setting(data, lambda ordering, k, g: omniglot.make_model(data.specs, ordering, base, seed, top_k=k, gating=g),
                       "test", int(base["batch_size"]), float(base["lr"]), iterations, eval_batch_size=256)
    raise ValueError(f"sparse-orders: unknown domain {domain!r}; expected some of {list(DOMAINS)}")


def build(setting: Setting, method: str) -> Any:
    """The model of ``method`` (a name of :data:`METHODS`) for a setting."""
    k, gating = TOP_K.get(method, (None, "gumbel"))
    return setting.make_model("parallel" if method == "parallel" else "soft", k, gating)


class SparseOrders(Experiment):
    name = "sparse-orders"
    description = "beyond the paper: top-k, annealed and hardened soft orders against dense soft and parallel ordering"

    def default_config(self, quick: bool) -> dict[str, Any]:
        return {
            "domains": list(DOMAINS),
            "methods": list(METHODS),
            "trials": 1 if quick else 3,
            "uci_iterations": 1000 if quick else 10_000,  # the uci preset's
            "mnist_iterations": 1000 if quick else 20_000,  # the mnist preset's (A.1)
            "omniglot_iterations": 200 if quick else 5000,  # the omniglot preset's (A.3)
            "mnist_tasks": 8,
            "omniglot_tasks": 3 if quick else 10,
            "eval_every": 1000,
            "harden_k": [1, 2],
            "anneal_to": 0.05,
            "timing_rounds": 5 if quick else 15,
            "timing_steps": 3,  # training steps per method per round
            "threads": 1,
            "verify_data": True,
            "records": "",  # a directory of trial records (e.g. results/sparse-orders): finished trials there are skipped
        }

    def trials(self, config: Mapping[str, Any]) -> list[Trial]:
        bad = [d for d in config["domains"] if d not in DOMAINS] + [m for m in config["methods"] if m not in METHODS]
        if bad:
            raise ValueError(f"sparse-orders: unknown domain(s) or method(s) {bad}; domains are {list(DOMAINS)}, methods {list(METHODS)}")
        if not all(isinstance(k, int) and k >= 1 for k in config["harden_k"]) or not 0 < float(config["anneal_to"]) <= 1:
            raise ValueError("sparse-orders: harden_k must hold whole numbers of at least 1 and anneal_to lie in (0, 1]")
        trials = []
        for d in config["domains"]:
            trials += [Trial(f"{d}/{m}/trial={t}", {"domain": d, "method": m, "trial": t})
                       for t in range(int(config["trials"])) for m in config["methods"]]
            trials.append(Trial(f"{d}/step-time", {"domain": d, "method": "step-time", "trial": 0}))
        return trials

    def run_trial(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        if not config["records"]:
            return self._run(config, trial, trial_dir, data_dir)
        from softorder.experiments.records import recorded

        settings = {k: v for k, v in config.items() if k not in GRID_KEYS}
        return recorded(Path(config["records"]) / f"{trial.dirname}.json", dict(trial.params),
                        settings, lambda: self._run(config, trial, trial_dir, data_dir))

    def _run(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        domain, method, seed = trial.params["domain"], trial.params["method"], int(trial.params["trial"])
        setting = domain_setting(domain, config, seed, data_dir)
        if method == "step-time":
            return time_steps(setting, config)
        return self._train(setting, config, trial, trial_dir)

    def _train(self, setting: Setting, config: Mapping[str, Any], trial: Trial, trial_dir: Path) -> dict[str, Any]:
        from softorder.analysis import mixing_of
        from softorder.sparse import temperature_schedule
        from softorder.train import TrainConfig, fit

        method, seed = trial.params["method"], int(trial.params["trial"])
        model = build(setting, method)
        cfg = TrainConfig(iterations=setting.iterations, batch_size=setting.batch_size, lr=setting.lr, eval_every=int(config["eval_every"]),
                          eval_splits=(setting.split,), eval_batch_size=setting.eval_batch_size, seed=seed, progress=False)
        anneal = temperature_schedule(model.core, 1.0, float(config["anneal_to"]), cfg.iterations) if method == "soft-annealed" else None
        history = fit(model, setting.data, cfg, run_dir=trial_dir, on_eval=progress_reporter(self.name, trial, cfg.iterations, also=anneal, model=model))
        last, split = history.last, setting.split
        result: dict[str, Any] = {
            "error": last[f"{split}_error"],
            "task_error": {n: last[f"{split}_error/{n}"] for n in setting.data.task_names},
            "split": split,
            "train_seconds": last.get("elapsed_s"),
        }
        if method != "parallel":
            mixing = mixing_of(model)
            result["mixing"] = mixing.tolist()
            result["largest_weight"] = float(mixing.max(axis=1).mean())  # 1: every (task, depth) uses one layer
        if method in ("soft", "soft-annealed"):
            result["hardened_error"] = hardened_errors(model, setting, [int(k) for k in config["harden_k"]])
        return result

    def tidy_rows(self, config: Mapping[str, Any], trial: Trial, result: Mapping[str, Any]) -> list[dict[str, Any]]:
        if trial.params["method"] == "step-time":
            return [{"method": m, "task": "", "split": "step", "error": "", "step_ms": ms} for m, ms in result["median_ms"].items()]
        rows = [{"method": trial.params["method"], "task": t, "split": result["split"], "error": e} for t, e in result["task_error"].items()]
        for k, hard in result.get("hardened_error", {}).items():
            rows += [{"method": f"{trial.params['method']}, hardened k={k}", "task": t, "split": result["split"], "error": e}
                     for t, e in hard["task_error"].items()]
        return rows

    def summarize(self, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        tables = {d: domain_table(config, results, d) for d in config["domains"]}
        (out_dir / "sparse_orders.md").write_text(markdown(config, tables))
        return {"tables": tables}


def hardened_errors(model: Any, setting: Setting, ks: list[int]) -> dict[str, dict[str, Any]]:
    """The trained soft model's error with its core hardened to each k (the core put back after)."""
    from softorder.sparse import harden
    from softorder.train import evaluate

    soft, out = model.core, {}
    try:
        for k in ks:
            if k > soft.num_layers:
                continue
            model.core = harden(soft, k)
            errors = {n: r["error"] for n, r in evaluate(model, setting.data, setting.split, batch_size=setting.eval_batch_size).items()}
            out[str(k)] = {"error": float(np.mean(list(errors.values()))), "task_error": errors}
    finally:
        model.core = soft
    return out


def time_steps(setting: Setting, config: Mapping[str, Any]) -> dict[str, Any]:
    """Median milliseconds of one training step of each method, measured round robin on the same
    batches; ``hardened (k = 1)`` is a soft model with random S hardened. S is random for the soft
    models too, so that tasks choose different layers (as trained ones do)."""
    from softorder.sparse import harden

    generator = torch.Generator().manual_seed(0)
    models = {}
    for method in [m for m in config["methods"] if m != "soft-annealed"] + ["hardened (k = 1)"]:
        model = build(setting, "soft" if method.startswith("hardened") else method)
        if hasattr(model.core, "logits"):
            with torch.no_grad():
                model.core.logits.copy_(torch.randn(model.core.logits.shape, generator=generator))
        if method.startswith("hardened"):
            model.core = harden(model.core, 1)
        models[method] = (model.train(), torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=setting.lr))
    batches = [setting.data.train_batch(i, setting.batch_size, seed=0) for i in range(int(config["timing_steps"]))]
    times: dict[str, list[float]] = {m: [] for m in models}
    names = list(models)
    for r in range(int(config["timing_rounds"]) + 1):  # the first round warms up and is not kept
        for m in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for batch in batches:
                _train_step(*models[m], setting.data, batch)
            if r:
                times[m].append((time.perf_counter() - start) / len(batches))
    median = {m: 1000 * statistics.median(t) for m, t in times.items()}
    return {"median_ms": median, "rounds": int(config["timing_rounds"]), "steps_per_round": len(batches), "threads": torch.get_num_threads()}


def _train_step(model: Any, optimizer: torch.optim.Optimizer, data: Any, batch: Any) -> None:
    optimizer.zero_grad(set_to_none=True)
    outputs = model(batch.inputs, list(batch.targets))
    loss = torch.stack([data.spec(n).loss(outputs[n], t) for n, t in batch.targets.items()]).sum()
    extra = model.auxiliary_loss()
    (loss if extra is None else loss + extra).backward()
    optimizer.step()


def domain_table(config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], domain: str) -> dict[str, Any]:
    """Per method (and hardened soft method): error mean and 95% interval over seeds, its difference
    to dense soft ordering's error paired by seed (same seed: same data, tasks and start), step time."""
    rows: dict[str, Any] = {}
    step = results.get(f"{domain}/step-time", {}).get("median_ms", {})
    runs_of = {m: {t: results[k] for t in range(int(config["trials"])) if (k := f"{domain}/{m}/trial={t}") in results} for m in config["methods"]}
    dense = {t: r["error"] for t, r in runs_of.get("soft", {}).items()}

    def row(label: str, errors: Mapping[int, float], step_ms: float | None) -> dict[str, Any]:
        paired = [e - dense[t] for t, e in errors.items() if t in dense]
        return {"label": label, "error": mean_ci(list(errors.values())), "vs_dense": mean_ci(paired), "step_ms": step_ms}

    for m, runs in runs_of.items():
        rows[m] = row(LABELS[m], {t: r["error"] for t, r in runs.items()}, step.get("soft" if m == "soft-annealed" else m))  # annealing changes no arithmetic
        if runs and "largest_weight" in next(iter(runs.values())):
            rows[m]["largest_weight"] = float(np.mean([r["largest_weight"] for r in runs.values()]))
        for k in (str(k) for k in config["harden_k"]):
            hard = {t: r["hardened_error"][k]["error"] for t, r in runs.items() if k in r.get("hardened_error", {})}
            if hard:
                rows[f"{m}, hardened k={k}"] = row(f"{LABELS[m]}, hardened (k = {k})", hard, step.get("hardened (k = 1)") if k == "1" else None)
    return rows


def _percent(e: Mapping[str, float], sign: bool = False) -> str:
    """mean ± 95% half-width in percent ('-' without values)."""
    if e["n"] == 0:
        return "-"
    return f"{100 * e['mean']:{'+' if sign else ''}.2f}" + (f" ± {100 * e['ci95']:.2f}" if np.isfinite(e["ci95"]) else "")


def markdown(config: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> str:
    """One table per domain: error (%) mean ± 95% CI (n), the paired difference to dense soft
    ordering (points), step time and its ratio to dense soft's."""
    lines = []
    for domain, rows in tables.items():
        dense = (rows.get("soft") or {}).get("step_ms")
        lines += [f"### {domain}", "", "| method | error (%) | n | minus dense soft, paired by seed (points) | step (ms) | step / dense soft | mean largest weight |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows.values():
            ms = row.get("step_ms")
            ratio = f"{ms / dense:.2f}" if ms and dense else "-"
            weight = f"{row['largest_weight']:.2f}" if "largest_weight" in row else "-"
            lines.append(f"| {row['label']} | {_percent(row['error'])} | {row['error']['n']} | {_percent(row['vs_dense'], sign=True)} | "
                         f"{f'{ms:.1f}' if ms else '-'} | {ratio} | {weight} |")
        lines.append("")
    return "\n".join(lines)


EXPERIMENT = SparseOrders()
