"""Does torch.compile help soft ordering on this CPU? (Not part of run.py: compiling takes a minute.)

    python benchmarks/compile_check.py [mnist|celeba] [--reps 7]

Compares, interleaved, the eager core (with its fused ReLU/dropout/mix node) against the core
compiled with torch.compile (inductor, C++ code generated and built with the system compiler),
once as it is and once on the unfused path (ReLU, dropout and mixing as plain ops, which inductor
could fuse itself). Prints the compile time and the step-time ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402
import settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("setting", nargs="?", default="mnist", choices=["mnist", "celeba"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eager = settings.workload(args.setting, "soft")
    cands = {"eager": eager.step}
    for name, unfused in (("compiled", False), ("compiled, unfused path", True)):
        w = settings.workload(args.setting, "soft")
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
    times = harness.interleaved(cands, args.reps, warmup=1)
    for k, v in times.items():
        print(f"{k:28s} median {harness.median(v) * 1e3:8.1f} ms   / eager {harness.ratio(times, k, 'eager')['ratio']:.2f}")


if __name__ == "__main__":
    main()
