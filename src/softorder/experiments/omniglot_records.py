"""Tables and figures of the Omniglot protocol runs, rebuilt from the committed trial records alone.

``softorder records omniglot results/omniglot --out DIR`` reads every record of
:mod:`softorder.experiments.records` in the folder and writes ``omniglot_protocol.md`` (the paper's
Fig. 6c table next to ours, with n and a 95% interval per cell; the start question, trial by
trial) and, when 50-alphabet soft-ordering records exist, ``omniglot_protocol_usage.png`` (Fig. 6b).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from softorder._io import atomic_write_bytes
from softorder.experiments.omniglot import LABELS, METHODS, PAPER_TABLE
from softorder.experiments.records import read_records
from softorder.experiments.runner import mean_ci


def write_protocol_summary(records_dir: Path, out_dir: Path) -> list[Path]:
    """Write the protocol's tables (and figure) from the records in ``records_dir``; returns the files."""
    records = read_records(records_dir)
    if not records:
        raise ValueError(f"{records_dir}: no trial records (*.json) there")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "\n".join([_paper_table(records), _start_question(records), _listing(records)])
    written = [out_dir / "omniglot_protocol.md"]
    atomic_write_bytes(written[0], text.encode())
    soft50 = [r for r in records if r["num_tasks"] == 50 and r["method"] == "soft" and r["init"] == "he"]
    if soft50:
        from softorder.analysis import plot_usage_distribution

        mixing = np.mean([np.asarray(r["result"]["mixing"]) for r in soft50], axis=0)
        written.append(plot_usage_distribution(mixing, out_dir / "omniglot_protocol_usage.png",
                                               title=f"Omniglot, 50 alphabets: layer usage by depth over the tasks (cf. Fig. 6b; {len(soft50)} trial(s), mean)"))
    return written


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "not run"
    s = mean_ci([100 * v for v in values])
    ci = f" ± {s['ci95']:.2f}" if np.isfinite(s["ci95"]) else ""
    return f"{s['mean']:.2f}{ci} (n={s['n']})"


def _paper_table(records: Sequence[Mapping[str, Any]]) -> str:
    cells: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in records:
        if r["num_tasks"] == 50 and r["iterations"] == 5000 and r["init"] == "he":
            cells[(r["method"], r["test_fraction"])].append(r["test_error"])
    lines = ["## All 50 alphabets, 5,000 iterations (Fig. 6c)", "",
             "Mean test error (%) over trials, ± the half-width of a 95% t interval (n >= 2).", "",
             "| method | ours, 10% test | paper, 10% test | ours, 20% test | paper, 20% test |", "|---|---|---|---|---|"]
    for m in METHODS:
        paper = PAPER_TABLE[m]
        lines.append(f"| {LABELS[m]} | {_cell(cells[(m, 0.1)])} | {paper['0.1'][0]:.2f} ± {paper['0.1'][1]:.2f} | "
                     f"{_cell(cells[(m, 0.2)])} | {paper['0.2'][0]:.2f} ± {paper['0.2'][1]:.2f} |")
    lines.append("\nThe paper's ± is its reported spread over its trials, not a 95% interval.\n")
    return "\n".join(lines)


def _start_question(records: Sequence[Mapping[str, Any]]) -> str:
    rows = sorted((r for r in records if r["num_tasks"] == 10), key=lambda r: (r["method"], r["init"], r["seed"]))
    lines = ["## The start question: 10 alphabets, 5,000 iterations", "",
             "| method | start | seed | test error (%) | collapsed | dead (task, channel) pairs at depth 4 |", "|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        lines.append(f"| {LABELS[r['method']]} | {r['init']} | {r['seed']} | {100 * r['test_error']:.2f} | "
                     f"{'yes' if res['collapsed'] else 'no'} | {100 * res['dead_channel_share']:.1f}% |")
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["init"])].append(r)
    lines += ["", "| method | start | collapsed | mean test error (%), all runs | mean test error (%), runs that did not collapse |", "|---|---|---|---|---|"]
    for (m, i), runs in sorted(groups.items()):
        learned = [r["test_error"] for r in runs if not r["result"]["collapsed"]]
        lines.append(f"| {LABELS[m]} | {i} | {len(runs) - len(learned)} of {len(runs)} | {_cell([r['test_error'] for r in runs])} | "
                     f"{_cell(learned) if learned else '-'} |")
    lines.append("\nCollapsed: the mean test error ended above 0.9 times chance's (stuck near chance).\n")
    return "\n".join(lines)


def _listing(records: Sequence[Mapping[str, Any]]) -> str:
    lines = ["## Every record", "", "| file | commit | training hours | threads | machine |", "|---|---|---|---|---|"]
    for r in records:
        hours = (r.get("train_seconds") or float("nan")) / 3600
        lines.append(f"| `{r['file']}` | `{r['commit'][:10]}` | {hours:.2f} | {r.get('threads', 1)} | {r.get('machine', 'not recorded')} |")
    return "\n".join(lines) + "\n"
