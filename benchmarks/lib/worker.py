"""A benchmark worker process, for comparing process-wide settings (threads, OpenMP, allocator).

Settings such as OMP_WAIT_POLICY only take effect at process start, so each candidate runs in its
own worker, started as ``python benchmarks/run.py worker THREADS``; the environment section
interleaves their steps over pipes. A worker tunes the C allocator as the ``softorder`` command
does unless its environment has SOFTORDER_TUNE_ALLOCATOR=0.

Protocol, one line per command on stdin, one JSON line per answer on stdout:
    build <setting> <ordering>     -> {"ok": true}       (setting: mnist, celeba, omniglot10)
    step                           -> {"s": seconds}     (one timed training step)
    quit
"""

from __future__ import annotations

import json
import sys
import time

import torch

from softorder.runtime import tune_cpu_allocator

from . import settings


def main(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    work = None
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "build":
            setting, ordering = cmd[1], cmd[2]
            if setting == "omniglot10":
                work = settings.omniglot_workload(False, 10)
            else:
                work = settings.workload(setting, ordering)
            work.step()
            answer = {"ok": True}
        elif cmd[0] == "step":
            t0 = time.perf_counter()
            work.step()  # type: ignore[union-attr]
            answer = {"s": time.perf_counter() - t0}
        elif cmd[0] == "quit":
            break
        else:
            answer = {"error": f"unknown command {cmd[0]}"}
        print(json.dumps(answer), flush=True)
