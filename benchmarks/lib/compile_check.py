"""Does torch.compile help soft ordering on this CPU? (Not a section of the benchmark run: compiling
takes a minute.)

    python benchmarks/run.py compile-check [mnist|celeba] [--reps 7] [--threads 1]

Compares, interleaved, the eager core (with its fused ReLU/dropout/mix node) against the core
compiled with torch.compile (inductor, C++ code generated and built with the system compiler),
once as it is and once on the unfused path (ReLU, dropout and mixing as plain ops, which inductor
could fuse itself). Prints the compile time and the step-time ratios.
"""

from __future__ import annotations

import time

import torch

from . import harness, settings

SETTINGS = ("mnist", "celeba")


def main(setting: str = "mnist", reps: int = 7, threads: int = 1) -> None:
    torch.set_num_threads(threads)
    eager = settings.workload(setting, "soft")
    cands = {"eager": eager.step}
    for name, unfused in (("compiled", False), ("compiled, unfused path", True)):
        w = settings.workload(setting, "soft")
        core = w.model.core
        if unfused:
            core._bank.activation = "relu (unfused)"  # SoftOrdering._depth's generic path
        core._check_task = lambda h, task: None  # its int(task.min()) would break the graph
        if w.model.shared_encoder is not None:  # the model calls core.forward_shared
            core._check_shared = lambda z, tasks: tasks
            core.forward_shared = torch.compile(core.forward_shared)
        else:
            w.model.core = torch.compile(core)
        t0 = time.perf_counter()
        try:
            w.step()
        except Exception as exc:  # report, do not stop
            print(f"{name}: torch.compile failed: {type(exc).__name__}: {str(exc)[:500]}")
            continue
        print(f"{name}: compile + first step {time.perf_counter() - t0:.1f} s")
        cands[name] = w.step
    times = harness.interleaved(cands, reps, warmup=1)
    for k, v in times.items():
        print(f"{k:28s} median {harness.median(v) * 1e3:8.1f} ms   / eager {harness.ratio(times, k, 'eager')['ratio']:.2f}")
