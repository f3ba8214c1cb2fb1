"""Markdown tables from a results JSON file written by run.py (for docs/performance.md).

    python benchmarks/run.py report [benchmarks/results/results.json]
"""

from __future__ import annotations

import json
from pathlib import Path


def md(header: list[str], rows: list[list]) -> str:
    def f(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(f(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(path: Path) -> None:
    r = json.loads(path.read_text())
    m = r["machine"]
    out = [f"Command: `{r['command']}`; wall time {r['wall_s']:.0f} s; {m['cpu']}, {m['logical_cpus']} logical CPUs, "
           f"torch {m['torch']}, {m['threads']} thread(s), allocator {'tuned' if r.get('allocator_tuned') else 'default'}; load average {m['loadavg_start'][0]:.1f} at the start, "
           f"{m['loadavg_end'][0]:.1f} at the end."]
    for commit, entry in r.get("before_skipped", {}).items():  # present only when some were skipped
        which = "; ".join(f"{section}: {cands}" for section, cands in entry["candidates"].items())
        out.append(f"\nSkipped the \"before\" candidates at {commit} ({which}): {entry['reason']}.")
    if "peak" in r:
        out.append("\n**Matrix-multiply peak** (square float32 torch.mm, best of 10):\n")
        out.append(md(["n", "best GFLOP/s", "median GFLOP/s"],
                      [[n, v["best_flops_per_s"] / 1e9, v["median_flops_per_s"] / 1e9] for n, v in r["peak"]["sizes"].items()]))
    for s in ("mnist", "celeba"):
        if s not in r:
            continue
        d = r[s]
        out.append(f"\n**{s}: one training step** (median of {r['config']['reps']} interleaved rounds)\n")
        rows = [[k, d["median_ms"][k], d["flops"][k] / 1e9, d["flops"][k] / d["median_ms"][k] / 1e6] for k in d["flops"]]
        out.append(md(["candidate", "ms", "GFLOP", "GFLOP/s"], rows))
        out.append("")
        out.append(md(["ratio", "ratio of medians", "median per-round ratio"],
                      [[k, v["ratio"], v["median_round_ratio"]] for k, v in d["ratios"].items()]))
        out.append("")
        out.append(md(["soft ordering FLOP/s as a fraction of the mm peak", "value"], [[k, v] for k, v in d["fraction_of_peak"].items()]))
        if "best_peak_flops_per_s" in d:
            out.append(f"\nbest peak: {d['best_peak_flops_per_s'] / 1e9:.1f} GFLOP/s (the peak section's, or the interleaved 1024 mm's if higher)")
    if "omniglot" in r:
        d = r["omniglot"]
        out.append(f"\n**Omniglot, {d['tasks']} tasks, 105x105: one training step** (median of {r['config']['omniglot_reps']})\n")
        out.append(md(["candidate", "ms", "GFLOP", "GFLOP/s"],
                      [[k, d["median_ms"][k], d["flops"][k] / 1e9, d["flops"][k] / d["median_ms"][k] / 1e6] for k in d["flops"]]))
        out.append("")
        out.append(md(["ratio", "ratio of medians", "median per-round ratio"], [[k, v["ratio"], v["median_round_ratio"]] for k, v in d["ratios"].items()]))
    if "growth" in r:
        for axis, d in r["growth"].items():
            base = next(iter(d))
            out.append(f"\n**Growth in {axis}** (MNIST setting, soft ordering; "
                       + ("depth 4" if axis == "tasks" else f"{r['config']['growth_depth_tasks']} tasks, L = depth") + ")\n")
            out.append(md([axis, "ms", f"x at {base}", "GFLOP", "saved for backward (MiB)", "peak allocated (MiB)"],
                          [[p, v["median_ms"], v["median_ms"] / d[base]["median_ms"], v["flops"] / 1e9, v["saved_bytes"] / 2**20,
                            (v["peak_alloc_bytes"] or 0) / 2**20] for p, v in d.items()]))
    if "ablations" in r:
        for s, d in r["ablations"].items():
            out.append(f"\n**{s}: each optimization switched off** (soft step)\n")
            out.append(md(["variant", "ms", "off / on"], [[k, v["median_ms"], v["off_over_on"]["ratio"]] for k, v in d.items()]))
    if "overhead" in r:
        for s, d in r["overhead"].items():
            out.append(f"\n**{s}: encoder and decoder overhead**\n")
            out.append(md(["part", "ms", "share of step"], [[k, v["median_ms"], v["share_of_step"]] for k, v in d.items()]))
    if "threads" in r:
        out.append("\n**Intra-op threads, switched per call in one process** (soft step)\n")
        out.append(md(["setting", "1 thread ms", "2 threads ms", "2 / 1"],
                      [[s, d["median_ms"]["1 thread"], d["median_ms"]["2 threads"], d["two_over_one"]["ratio"]] for s, d in r["threads"].items()]))
    if "environment" in r:
        d = {k: v for k, v in r["environment"].items() if k != "candidates"}
        names = list(next(iter(d.values())))
        out.append("\n**Process settings, one worker process each, steps interleaved** (ms; ratio to 1 thread)\n")
        out.append(md(["workload"] + names, [[w] + [f"{v[n]['median_ms']:.0f} ({v[n]['over_1_thread']['ratio']:.2f})" for n in names] for w, v in d.items()]))
        out.append("\n\"default allocator\": `SOFTORDER_TUNE_ALLOCATOR=0`; every other worker tunes it as the `softorder` command does.")
    print("\n".join(out))
