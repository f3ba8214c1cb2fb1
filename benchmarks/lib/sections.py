"""The benchmark's sections, each a function of the run's configuration that prints its tables and
returns its numbers; :func:`run` runs the chosen sections and writes the JSON file.

Every comparison interleaves its candidates (see harness.py); times are medians, speeds are ratios
of medians. The "before" candidates (the library's model code at an earlier commit, read from git by
baseline.py) run where that commit can be read; :func:`run` finds out up front and says which it
skips.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from softorder.runtime import tune_cpu_allocator

from . import ablations, baseline, harness, settings

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"  # the environment section starts its workers with it


# --- configuration ------------------------------------------------------------------------------


def config(quick: bool) -> dict:
    if quick:
        return dict(reps=5, omniglot_tasks=10, omniglot_reps=2, omniglot50_tasks=10, omniglot50_reps=2, growth_tasks=[1, 4, 16, 64], growth_depths=[2, 4, 8],
                    growth_depth_tasks=16, growth_reps=3, ablation_reps=5, thread_reps=3, overhead_reps=5, env_reps=3)
    return dict(reps=11, omniglot_tasks=50, omniglot_reps=3, omniglot50_tasks=50, omniglot50_reps=5, growth_tasks=[1, 2, 4, 8, 16, 32, 64],
                growth_depths=[2, 3, 4, 5, 6, 7, 8], growth_depth_tasks=16, growth_reps=5, ablation_reps=9,
                thread_reps=5, overhead_reps=9, env_reps=7)


def machine_info(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE")},
        "loadavg_start": os.getloadavg(),
    }


# --- printing -----------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def ms(xs: list[float]) -> float:
    return harness.median(xs) * 1e3


# --- sections -----------------------------------------------------------------------------------


def section_peak(cfg: dict) -> dict:
    res = harness.mm_peak(sizes=(1024, 2048), reps=10)
    best = max(v["best_flops_per_s"] for v in res.values())
    table("float32 matrix-multiply peak (square torch.mm)", ["n", "best GFLOP/s", "median GFLOP/s"],
          [[n, v["best_flops_per_s"] / 1e9, v["median_flops_per_s"] / 1e9] for n, v in res.items()])
    return {"sizes": res, "peak_flops_per_s": best}


def section_setting(setting: str, cfg: dict, peak: float) -> dict:
    """Soft ordering against the typical loop and against parallel ordering, before (where the
    baseline commit can be read) and after."""
    before = baseline.has(baseline.BASELINE_COMMIT)
    work = {
        "loop": settings.workload(setting, "loop"),
        "soft": settings.workload(setting, "soft"),
        "parallel": settings.workload(setting, "parallel"),
    }
    if before:
        work["soft (before)"] = settings.workload(setting, "soft", impl="baseline")
        work["parallel (before)"] = settings.workload(setting, "parallel", impl="baseline")
    flops = {k: harness.count_flops(w.step) for k, w in work.items()}
    mm, mm_flops = harness.mm_call(1024)
    cands = {k: w.step for k, w in work.items()}
    cands["mm1024"] = mm
    times = harness.interleaved(cands, cfg["reps"], warmup=1)
    rows = []
    for k in work:
        rows.append([k, ms(times[k]), flops[k] / 1e9, flops[k] / harness.median(times[k]) / 1e9])
    table(f"{setting}: one training step (forward, backward, Adam)", ["candidate", "median ms", "GFLOP", "GFLOP/s"], rows)

    soft_fps = [flops["soft"] / t for t in times["soft"]]
    mm_fps = [mm_flops / t for t in times["mm1024"]]
    best_peak = max(peak, max(mm_fps))  # the peak section's best, or the interleaved mm's if higher
    frac = {
        "median_step_vs_best_peak": harness.median(soft_fps) / best_peak,
        "best_step_vs_best_peak": max(soft_fps) / best_peak,
        "median_round_vs_interleaved_mm": harness.median([s / m for s, m in zip(soft_fps, mm_fps)]),
    }
    ratios = {
        "loop_over_soft": harness.ratio(times, "loop", "soft"),
        "soft_over_parallel": harness.ratio(times, "soft", "parallel"),
    }
    if before:
        ratios |= {
            "soft_before_over_after": harness.ratio(times, "soft (before)", "soft"),
            "parallel_before_over_after": harness.ratio(times, "parallel (before)", "parallel"),
            "loop_over_soft_before": harness.ratio(times, "loop", "soft (before)"),
            "soft_over_parallel_before": harness.ratio(times, "soft (before)", "parallel (before)"),
        }
    table(f"{setting}: ratios (median of medians; median of per-round ratios)", ["ratio", "value", "per-round"],
          [[k, v["ratio"], v["median_round_ratio"]] for k, v in ratios.items()])
    table(f"{setting}: soft ordering's FLOP/s as a fraction of the matrix-multiply peak", ["measure", "fraction"],
          [[k, v] for k, v in frac.items()])
    return {"median_ms": {k: ms(v) for k, v in times.items()}, "times_s": times, "flops": flops,
            "ratios": ratios, "fraction_of_peak": frac, "best_peak_flops_per_s": best_peak}


def section_omniglot(cfg: dict) -> dict:
    tasks = cfg["omniglot_tasks"]
    before = baseline.has(baseline.BASELINE_COMMIT)
    work = {
        "shortcut": settings.omniglot_workload(False, tasks),
        "padded": settings.omniglot_workload(True, tasks),
    }
    if before:
        work["shortcut (before)"] = settings.omniglot_workload(False, tasks, impl="baseline")
        work["padded (before)"] = settings.omniglot_workload(True, tasks, impl="baseline")
    flops = {k: harness.count_flops(w.step) for k, w in work.items()}
    times = harness.interleaved({k: w.step for k, w in work.items()}, cfg["omniglot_reps"], warmup=0)
    table(f"omniglot, {tasks} tasks, 105x105: one training step", ["candidate", "median ms", "GFLOP", "GFLOP/s"],
          [[k, ms(times[k]), flops[k] / 1e9, flops[k] / harness.median(times[k]) / 1e9] for k in work])
    ratios = {"padded_over_shortcut": harness.ratio(times, "padded", "shortcut")}
    if before:
        ratios |= {
            "padded_over_shortcut_before": harness.ratio(times, "padded (before)", "shortcut (before)"),
            "shortcut_before_over_after": harness.ratio(times, "shortcut (before)", "shortcut"),
            "padded_before_over_after": harness.ratio(times, "padded (before)", "padded"),
        }
    table("omniglot: ratios", ["ratio", "value", "per-round"], [[k, v["ratio"], v["median_round_ratio"]] for k, v in ratios.items()])
    return {"tasks": tasks, "median_ms": {k: ms(v) for k, v in times.items()}, "times_s": times, "flops": flops, "ratios": ratios}


OMNIGLOT_IMAGES = 32_460  # 1,623 characters x 20 drawings, all 50 alphabets
FULL_PRESET_ITERATIONS = 5_000  # Fig. 6c: one drawing per alphabet per step
FULL_PRESET_EVALUATIONS = 5  # the preset evaluates the test split every 1,000 iterations


def _with_threads(fn, threads: int):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            fn()
        finally:
            torch.set_num_threads(before)
    return run


def _eval_seconds(model, num_tasks: int, per_task: int = 5) -> float:
    """Median seconds of one evaluation forward (no gradient) over per_task images of every task."""
    specs = settings.omniglot_specs(num_tasks)
    batch = {s.name: torch.rand(per_task, 1, 105, 105) for s in specs}
    model.eval()
    with torch.no_grad():
        times = harness.interleaved({"eval": lambda: model(batch)}, 3, warmup=1)["eval"]
    model.train()
    return harness.median(times) / (per_task * num_tasks)


def section_first_depth(tasks: int, reps: int) -> dict:
    """Soft ordering's first Omniglot depth on its own, forward and backward: the 1-channel images
    through the 4 x 53 filters and 2x2 pooling, then ReLU, dropout 0.5 and the mixing, now and at
    CONV_COMMIT (its _TinyConvMaxPool and _ReluDropoutMix; only now where that commit cannot be
    read), with the bytes the step must move."""
    import importlib

    commit = baseline.CONV_COMMIT
    before = baseline.has(commit)
    if before:
        baseline.build_model(commit)
        old_layers = importlib.import_module(f"softorder_{commit}.layers")
        old_orderings = importlib.import_module(f"softorder_{commit}.orderings")
    from softorder._kernels import keep_mask, narrow_conv_max_pool
    from softorder._kernels.mixing import _ReluDropoutMix

    torch.manual_seed(0)
    images = torch.rand(tasks, 1, 105, 105)
    weight, bias = torch.randn(212, 1, 3, 3, requires_grad=True), torch.randn(212, requires_grad=True)
    mixing = torch.rand(1, tasks, 4, requires_grad=True)

    def now_kernel():
        narrow_conv_max_pool(images, weight, bias, 2).sum().backward()

    def old_kernel():
        old_layers._TinyConvMaxPool.apply(images, weight, bias, 2).sum().backward()

    def now_depth():
        pre = narrow_conv_max_pool(images, weight, bias, 2).permute(0, 2, 3, 1).reshape(tasks, -1, 4, 53)  # (R, S, L, C)
        _ReluDropoutMix.apply(pre, mixing * 2, keep_mask((1, *pre.shape), 0.5)).sum().backward()

    def old_depth():
        pre = old_layers._TinyConvMaxPool.apply(images, weight, bias, 2).reshape(tasks, 4, -1)  # (R, L, F)
        old_orderings._ReluDropoutMix.apply(pre, mixing * 2, old_orderings.keep_mask((1, *pre.shape), 0.5)).sum().backward()

    cands = {"conv+pool now": now_kernel}
    if before:
        cands[f"conv+pool {commit}"] = old_kernel
    cands["whole depth now"] = now_depth
    if before:
        cands[f"whole depth {commit}"] = old_depth
    times = harness.interleaved(cands, reps, warmup=1)
    pooled_bytes = tasks * 212 * 52 * 52 * 4
    fill = torch.empty(tasks * 212 * 52 * 52)
    write_s = harness.median(harness.interleaved({"write": lambda: fill.fill_(1.0)}, 7, warmup=1)["write"])
    ratios = {}
    if before:
        ratios = {"conv+pool": harness.ratio(times, f"conv+pool {commit}", "conv+pool now"),
                  "whole depth": harness.ratio(times, f"whole depth {commit}", "whole depth now")}
    table(f"soft ordering's first Omniglot depth, {tasks} images, forward + backward (pooled output {pooled_bytes / 2**20:.0f} MiB; "
          f"writing it once takes {1e3 * write_s:.1f} ms here)", ["candidate", "median ms"], [[k, ms(v)] for k, v in times.items()])
    if before:
        table("first depth: before / now", ["part", "ratio", "per-round"], [[k, v["ratio"], v["median_round_ratio"]] for k, v in ratios.items()])
    return {"median_ms": {k: ms(v) for k, v in times.items()}, "ratios": ratios, "pooled_bytes": pooled_bytes, "write_once_s": write_s}


def section_omniglot50(cfg: dict) -> dict:
    """Every ordering's training step at the paper's Omniglot setting (50 alphabets, 105x105, one
    image per task, dropout 0.5): now, at commit CONV_COMMIT (before the convolution work), and the
    plain fast PyTorch network for parallel ordering; the projected time of the full preset; and the
    MNIST and CelebA soft steps against the same commit (no regression). Where CONV_COMMIT cannot be
    read, the candidates at it and the no-regression check are left out."""
    commit = baseline.CONV_COMMIT
    before = baseline.has(commit)
    tasks, reps = cfg["omniglot50_tasks"], cfg["omniglot50_reps"]
    orderings = ("soft", "parallel", "permuted", "single")
    work = {f"{o} now": settings.omniglot_ordering_workload(o, tasks) for o in orderings}
    if before:
        work |= {f"{o} {commit}": settings.omniglot_ordering_workload(o, tasks, impl="before-conv") for o in orderings}
    work["plain PyTorch (parallel's network)"] = settings.plain_omniglot_workload(tasks)
    cands = {k: w.step for k, w in work.items()}
    cands |= {f"{o} now, 2 threads": _with_threads(work[f"{o} now"].step, 2) for o in orderings}
    times = harness.interleaved(cands, reps, warmup=1)
    table(f"omniglot, {tasks} tasks, 105x105: one training step (1 thread unless named)", ["candidate", "median ms"],
          [[k, ms(v)] for k, v in times.items()])
    ratios = {}
    if before:
        ratios = {f"{o}: {commit} / now": harness.ratio(times, f"{o} {commit}", f"{o} now") for o in orderings}
    ratios["parallel now / plain PyTorch"] = harness.ratio(times, "parallel now", "plain PyTorch (parallel's network)")
    table("omniglot: ratios", ["ratio", "value", "per-round"], [[k, v["ratio"], v["median_round_ratio"]] for k, v in ratios.items()])
    projection = {}
    for o in orderings:
        per_image = _eval_seconds(work[f"{o} now"].model, tasks)
        for fraction in (0.1, 0.2):
            evaluate = FULL_PRESET_EVALUATIONS * round(fraction * OMNIGLOT_IMAGES) * per_image
            for threads, key in ((1, f"{o} now"), (2, f"{o} now, 2 threads")):
                train = FULL_PRESET_ITERATIONS * harness.median(times[key])
                projection[f"{o}/test={fraction:g}/threads={threads}"] = {"train_h": train / 3600, "eval_h": evaluate / 3600,
                                                                          "total_h": (train + evaluate) / 3600}
    table(f"projected time of one trial of the full preset ({tasks} alphabets, {FULL_PRESET_ITERATIONS} iterations; "
          "evaluation at 1 thread)", ["method / test fraction / threads", "train h", "eval h", "total h"],
          [[k, v["train_h"], v["eval_h"], v["total_h"]] for k, v in projection.items()])
    first_depth = section_first_depth(tasks, reps)
    out = {"tasks": tasks, "median_ms": {k: ms(v) for k, v in times.items()}, "times_s": times, "ratios": ratios,
           "projection": projection, "first_depth": first_depth}
    if not before:
        return out
    regress = {f"{s} soft now": settings.workload(s, "soft").step for s in ("mnist", "celeba")}
    regress |= {f"{s} soft {commit}": settings.workload(s, "soft", impl="before-conv").step for s in ("mnist", "celeba")}
    rtimes = harness.interleaved(regress, cfg["reps"], warmup=1)
    regression = {s: harness.ratio(rtimes, f"{s} soft now", f"{s} soft {commit}") for s in ("mnist", "celeba")}
    table(f"no regression: soft step now / at {commit}", ["setting", "now ms", "before ms", "now / before"],
          [[s, ms(rtimes[f"{s} soft now"]), ms(rtimes[f"{s} soft {commit}"]), regression[s]["ratio"]] for s in regression])
    return out | {"regression_median_ms": {k: ms(v) for k, v in rtimes.items()}, "regression": regression}


def _growth_point(num_tasks: int, depth: int) -> settings.Workload:
    return settings.workload("mnist", "soft", num_tasks=num_tasks, depth=depth)


def section_growth(cfg: dict) -> dict:
    out = {}
    for axis, points in (("tasks", cfg["growth_tasks"]), ("depth", cfg["growth_depths"])):
        work = {}
        for p in points:
            t, d = (p, 4) if axis == "tasks" else (cfg["growth_depth_tasks"], p)
            work[p] = _growth_point(t, d)
        times = harness.interleaved({p: w.step for p, w in work.items()}, cfg["growth_reps"], warmup=1)
        base = points[0]
        rows, res = [], {}
        for p, w in work.items():
            params = list(w.model.parameters()) + list(w.model.buffers())
            saved = harness.saved_activation_bytes(w.loss, params)
            peak = harness.peak_allocated_bytes(w.step)
            flops = harness.count_flops(w.step)
            res[p] = {"median_ms": ms(times[p]), "times_s": times[p], "saved_bytes": saved, "peak_alloc_bytes": peak, "flops": flops}
            rows.append([p, ms(times[p]), ms(times[p]) / ms(times[base]), flops / 1e9, saved / 2**20,
                         None if peak is None else peak / 2**20])
        label = "tasks (depth 4)" if axis == "tasks" else f"depth = layers ({cfg['growth_depth_tasks']} tasks)"
        table(f"growth in {label}: MNIST setting, soft ordering", [axis, "median ms", f"x {axis}={base}", "GFLOP",
              "saved for backward MiB", "peak allocated MiB"], rows)
        out[axis] = res
    return out


def section_ablations(cfg: dict) -> dict:
    """Each optimization off on its own (same model, interleaved): slowdown = off / on."""
    out = {}
    plans = {
        "mnist": {
            "bernoulli_ dropout masks": [ablations.bernoulli_masks],
            "a random byte per mask entry (as before)": [ablations.byte_masks],
            "unfused ReLU/dropout/mix (mul-sum mix)": ["unfused"],
            "unfused, bmm mix (as before)": ["unfused", ablations.bmm_mixing],
            "TaskDense gathers weights": [ablations.gathered_task_weights],
        },
        "celeba": {
            "bernoulli_ dropout masks": [ablations.bernoulli_masks],
            "a random byte per mask entry (as before)": [ablations.byte_masks],
            "unfused ReLU/dropout/mix (mul-sum mix)": ["unfused"],
            "unfused, bmm mix (as before)": ["unfused", ablations.bmm_mixing],
            "rows copied per task (no forward_shared)": [ablations.repeated_rows],
        },
    }
    for setting, plan in plans.items():
        w = settings.workload(setting, "soft")
        core = w.model.core
        cands = {"all on": w.step}
        for name, managers in plan.items():
            ms_ = [(lambda c=core: ablations.unfused_depth(c)) if m == "unfused" else m for m in managers]
            cands[name] = ablations.wrap(w.step, *ms_)
        times = harness.interleaved(cands, cfg["ablation_reps"], warmup=1)
        rows = [[k, ms(times[k]), harness.ratio(times, k, "all on")["ratio"]] for k in cands]
        table(f"{setting}: optimizations switched off one at a time (soft ordering step)", ["variant", "median ms", "off / on"], rows)
        out[setting] = {k: {"median_ms": ms(times[k]), "off_over_on": harness.ratio(times, k, "all on")} for k in cands}
    # the conv path, on Omniglot with 10 tasks (the same code path as 50)
    w = settings.omniglot_workload(False, 10)
    core = w.model.core
    cands = {
        "all on": w.step,
        "conv2d + pooling at the first depth (no narrow_conv_max_pool)": ablations.wrap(w.step, ablations.conv_then_pool_first_depth),
        "unfused: conv2d, ReLU, max_pool2d, dropout, mix (as before)": ablations.wrap(w.step, lambda: ablations.unfused_depth(core)),
        "bernoulli_ dropout masks": ablations.wrap(w.step, ablations.bernoulli_masks),
        "a random byte per mask entry (as before)": ablations.wrap(w.step, ablations.byte_masks),
    }
    times = harness.interleaved(cands, max(2, cfg["ablation_reps"] // 2), warmup=1)
    rows = [[k, ms(times[k]), harness.ratio(times, k, "all on")["ratio"]] for k in cands]
    table("omniglot (10 tasks, shortcut): optimizations switched off one at a time", ["variant", "median ms", "off / on"], rows)
    out["omniglot10"] = {k: {"median_ms": ms(times[k]), "off_over_on": harness.ratio(times, k, "all on")} for k in cands}
    return out


def section_overhead(cfg: dict) -> dict:
    """Share of a soft-ordering step spent in the encoders (TaskDense, MultitaskModel.encode) and
    decoders, timed on their own next to the full step."""
    out = {}
    for setting in ("mnist", "celeba"):
        w = settings.workload(setting, "soft")
        m = w.model
        names = m.task_names
        with torch.no_grad():
            if isinstance(w.inputs, torch.Tensor):
                z = m.shared_encoder(w.inputs)
                y = m.core.forward_shared(z, torch.arange(len(names)))
            else:
                h, task, _, _ = m.encode(w.inputs)
                y = m.core(h, task)
        counts = [y.shape[0] // len(names)] * len(names)
        yg = y.detach().requires_grad_()

        def decode_fb():
            outs = m._decode(yg, names, counts)
            torch.stack([o.sum() for o in outs]).sum().backward()

        if isinstance(w.inputs, torch.Tensor):
            encode = lambda: m.shared_encoder(w.inputs)  # noqa: E731
        else:
            encode = lambda: m.encode(w.inputs)  # noqa: E731
        times = harness.interleaved({"step": w.step, "encode (forward)": encode, "decoders (forward+backward)": decode_fb},
                                    cfg["overhead_reps"], warmup=1)
        step = harness.median(times["step"])
        rows = [[k, ms(v), harness.median(v) / step] for k, v in times.items()]
        table(f"{setting}: encoder and decoder overhead", ["part", "median ms", "share of step"], rows)
        out[setting] = {k: {"median_ms": ms(v), "share_of_step": harness.median(v) / step} for k, v in times.items()}
    return out


def section_threads(cfg: dict) -> dict:
    """The soft step with 1 and 2 intra-op threads, switched per call (torch.set_num_threads)."""
    out = {}
    before = torch.get_num_threads()
    for setting in ("mnist", "celeba"):
        w = settings.workload(setting, "soft")

        def with_threads(n):
            def run():
                torch.set_num_threads(n)
                try:
                    w.step()
                finally:
                    torch.set_num_threads(before)
            return run

        times = harness.interleaved({"1 thread": with_threads(1), "2 threads": with_threads(2)}, cfg["thread_reps"], warmup=1)
        table(f"{setting}: intra-op threads (soft step)", ["threads", "median ms"], [[k, ms(v)] for k, v in times.items()])
        out[setting] = {"median_ms": {k: ms(v) for k, v in times.items()}, "two_over_one": harness.ratio(times, "2 threads", "1 thread")}
    return out


def section_environment(cfg: dict) -> dict:
    """Process-wide settings, each candidate a worker process (``run.py worker``, worker.py), steps
    interleaved: the C allocator as the ``softorder`` command tunes it (softorder.runtime) or glibc's
    default, and one or two intra-op threads with OpenMP's default or passive waiting."""
    import subprocess

    untuned = {"SOFTORDER_TUNE_ALLOCATOR": "0"}
    candidates = {
        "1 thread": (1, {}),
        "1 thread, default allocator": (1, untuned),
        "2 threads": (2, {}),
        "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    }
    out = {}
    for setting, ordering in (("mnist", "soft"), ("celeba", "soft"), ("celeba", "loop"), ("omniglot10", "soft")):
        procs = {}
        for name, (threads, extra) in candidates.items():
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
            env.update(extra)
            procs[name] = subprocess.Popen([sys.executable, str(RUN_PY), "worker", str(threads)], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True, env=env)

        def ask(p, line):
            p.stdin.write(line + "\n")
            p.stdin.flush()
            return json.loads(p.stdout.readline())

        try:
            for p in procs.values():
                ask(p, f"build {setting} {ordering}")
            reps = cfg["env_reps"] if setting != "omniglot10" else max(2, cfg["env_reps"] // 2)
            times = harness.interleaved({n: (lambda p=p: None) for n, p in procs.items()}, 0)  # names only
            for r in range(reps):
                names = list(procs)
                for n in names[r % len(names):] + names[: r % len(names)]:
                    times[n].append(ask(procs[n], "step")["s"])
        finally:
            for p in procs.values():
                try:
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                except OSError:
                    pass
                p.wait(timeout=60)
        base = "1 thread"
        rows = [[n, ms(v), harness.ratio(times, n, base)["ratio"]] for n, v in times.items()]
        table(f"{setting} {ordering}: process settings (one worker process each)", ["setting", "median ms", f"/ {base}"], rows)
        out[f"{setting}/{ordering}"] = {n: {"median_ms": ms(v), "over_1_thread": harness.ratio(times, n, base)} for n, v in times.items()}
    out["candidates"] = {n: {"threads": t, "env": e} for n, (t, e) in candidates.items()}
    return out


# --- the run ------------------------------------------------------------------------------------

# the "before" candidates of each section, by the commit baseline.py reads them at
BEFORE = {
    "mnist": (baseline.BASELINE_COMMIT, "soft (before), parallel (before)"),
    "celeba": (baseline.BASELINE_COMMIT, "soft (before), parallel (before)"),
    "omniglot": (baseline.BASELINE_COMMIT, "shortcut (before), padded (before)"),
    "omniglot50": (baseline.CONV_COMMIT, f"the four orderings at {baseline.CONV_COMMIT}, the first depth at "
                   f"{baseline.CONV_COMMIT}, the no-regression check"),
}


def _with_core(w: settings.Workload, make_core, name: str) -> settings.Workload:
    """The same model and batch with another core built from the soft core (its layers and S)."""
    import copy

    model = copy.deepcopy(w.model)
    model.core = make_core(model.core)
    return settings.Workload(name, model, w.inputs, w.targets, w.specs)


def section_sparse(cfg: dict) -> dict:
    """Top-k and hardened soft orders against dense soft and parallel ordering, one training step
    each, interleaved (targets: top-1 <= 0.5x dense soft at MNIST-45, <= 0.4x at the CelebA core;
    the hardened core <= 1.2x parallel)."""
    from softorder.sparse import TopKSoftOrdering, harden

    out = {}
    for setting in ("mnist", "celeba"):
        soft = settings.workload(setting, "soft")
        torch.manual_seed(0)
        with torch.no_grad():
            soft.model.core.logits.normal_(0, 1)  # trained-looking orders: tasks choose different layers

        def top(k):
            def make(core):
                sparse = TopKSoftOrdering(list(core.layers), core.num_tasks, k=k, depth=core.depth, dropout=core.dropout)
                with torch.no_grad():
                    sparse.logits.copy_(core.logits)
                return sparse
            return make

        work = {"dense soft": soft, "top-2": _with_core(soft, top(2), "top-2"), "top-1": _with_core(soft, top(1), "top-1"),
                "hardened (k = 1)": _with_core(soft, lambda c: harden(c, 1), "hardened"), "parallel": settings.workload(setting, "parallel")}
        times = harness.interleaved({k: w.step for k, w in work.items()}, cfg["reps"], warmup=1)
        ratios = {"top-1 / dense soft": harness.ratio(times, "top-1", "dense soft"),
                  "top-2 / dense soft": harness.ratio(times, "top-2", "dense soft"),
                  "hardened / parallel": harness.ratio(times, "hardened (k = 1)", "parallel")}
        table(f"{setting}: sparse and hardened orders, one training step", ["candidate", "median ms"], [[k, ms(v)] for k, v in times.items()])
        table(f"{setting}: ratios", ["ratio", "value", "per-round"], [[k, v["ratio"], v["median_round_ratio"]] for k, v in ratios.items()])
        out[setting] = {"median_ms": {k: ms(v) for k, v in times.items()}, "ratios": ratios}
    out["routing"] = section_routing(cfg)
    return out


def section_routing(cfg: dict) -> dict:
    """Where a hardened core's extra time goes: one depth (ReLU dense layers, forward and backward) as
    one product, as four products on contiguous slices, with the rows routed to four layers, and as
    one batched product over the tasks' runs of rows (each run its task's layer, as a training batch
    takes); and one gather of rows by indexing against ``index_select``. At the MNIST-45 and CelebA
    core sizes."""
    from softorder import Dense
    from softorder._kernels import dense_by_runs
    from softorder.orderings import apply_by_group

    out = {}
    for name, runs, run, width in (("mnist", 45, 64, 64), ("celeba", 40, 32, 256)):
        torch.manual_seed(0)
        rows = runs * run
        layers = [Dense(width) for _ in range(4)]
        x = torch.randn(rows, width, requires_grad=True)
        group = torch.randint(0, 4, (rows,))
        layer_of_run = torch.randint(0, 4, (runs,))
        sizes = torch.bincount(group, minlength=4).tolist()
        perm = torch.randperm(rows)
        depth = {
            "one product": lambda: layers[0](x),
            "four products on slices": lambda: torch.cat([f(r) for f, r in zip(layers, x.split(sizes))]),
            "four products, rows routed": lambda: apply_by_group(x, group, 4, lambda j, r: layers[j](r)),
            f"by task runs ({runs} runs of {run})": lambda: dense_by_runs(layers, layer_of_run, x),
        }
        data = x.detach()
        calls = 10  # per timed sample: these take a millisecond or less

        def repeated(f):
            def run() -> None:
                for _ in range(calls):  # each result dropped before the next call, as in a training step
                    f()
            return run

        cands = {k: repeated(lambda f=f: f().sum().backward()) for k, f in depth.items()}
        cands.update({"gather x[perm]": repeated(lambda: data[perm]), "gather index_select": repeated(lambda: data.index_select(0, perm))})
        per_call = {k: ms(v) / calls for k, v in harness.interleaved(cands, 3 * cfg["reps"], warmup=2).items()}
        table(f"{name} size ({rows} rows x {width}): one depth forward and backward; one gather", ["candidate", "median ms per call"],
              [[k, v] for k, v in per_call.items()])
        out[name] = {"median_ms_per_call": per_call}
    return out


def skipped_before(only: list[str]) -> dict[str, dict]:
    """Reads, up front, each commit that the chosen sections' "before" candidates need; returns, for
    each commit that cannot be read, why and which sections' candidates are left out."""
    skipped: dict[str, dict] = {}
    for section in only:
        if section not in BEFORE:
            continue
        commit, candidates = BEFORE[section]
        reason = baseline.unavailable(commit)
        if reason is not None:
            entry = skipped.setdefault(commit, {"reason": reason, "candidates": {}})
            entry["candidates"][section] = candidates
    return skipped


def skip_line(skipped: dict[str, dict]) -> str:
    """One line: which "before" candidates are skipped, and why."""
    parts = []
    for commit, entry in skipped.items():
        what = "; ".join(f"{section}: {cands}" for section, cands in entry["candidates"].items())
        parts.append(f"at {commit} ({what}): {entry['reason']}")
    return f'# skipped the "before" candidates {"; ".join(parts)}. Every other candidate runs; {baseline.HINT}.'


def run(only: list[str], quick: bool, threads: int, default_allocator: bool, out: Path, command) -> int:
    """Runs the sections in ``only`` and writes every number to ``out``; ``command`` is recorded."""
    skipped = skipped_before(only)  # the "before" candidates are read from git before any work
    torch.set_num_threads(threads)
    allocator_tuned = False if default_allocator else tune_cpu_allocator()
    cfg = config(quick)
    results: dict = {"command": command, "quick": quick, "config": cfg, "machine": machine_info(threads),
                     "allocator_tuned": allocator_tuned}
    m = results["machine"]
    print(f"# softorder benchmarks: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, "
          f"{threads} thread(s), allocator {'tuned' if allocator_tuned else 'default'}, "
          f"load average {m['loadavg_start'][0]:.2f}")
    if skipped:
        print(skip_line(skipped))
        results["before_skipped"] = skipped
    sys.stdout.flush()
    t0 = time.perf_counter()
    peak = None
    if "peak" in only or "mnist" in only or "celeba" in only:
        results["peak"] = section_peak(cfg)
        peak = results["peak"]["peak_flops_per_s"]
    for s in ("mnist", "celeba"):
        if s in only:
            results[s] = section_setting(s, cfg, peak)
    runners = {"omniglot": section_omniglot, "omniglot50": section_omniglot50, "sparse": section_sparse, "growth": section_growth, "ablations": section_ablations,
               "overhead": section_overhead, "threads": section_threads, "environment": section_environment}
    for s, fn in runners.items():
        if s in only:
            results[s] = fn(cfg)
            torch.set_num_threads(threads)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwrote {out} ({results['wall_s']:.0f} s)")
    return 0
