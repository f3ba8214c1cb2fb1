"""Measuring on a shared, noisy machine: interleaved repetitions, medians, ratios; FLOPs; memory.

Every comparison runs its candidates round-robin (the order rotating each round), so a burst of
load from other processes hits all of them alike; a ratio is the ratio of the medians, and the
median of the per-round ratios is kept next to it as a check.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def interleaved(cands: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each candidate: ``warmup`` untimed calls each, then ``reps`` rounds."""
    names = list(cands)
    for _ in range(warmup):
        for n in names:
            cands[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            gc.collect()
            t0 = time.perf_counter()
            cands[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ratio(times: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    """a's time over b's: ratio of medians, and the median of the per-round ratios."""
    per_round = [x / y for x, y in zip(times[a], times[b])]
    return {"ratio": median(times[a]) / median(times[b]), "median_round_ratio": median(per_round)}


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call, as torch.utils.flop_counter counts them (matrix
    products and convolutions, forward and backward; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def mm_peak(sizes: tuple[int, ...] = (1024, 2048), reps: int = 6) -> dict:
    """Float32 matrix-multiply throughput of square torch.mm, best of ``reps`` per size (FLOP/s)."""
    out = {}
    for n in sizes:
        a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.mm(a, b, out=c)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            ts.append(time.perf_counter() - t0)
        out[n] = {"best_flops_per_s": 2 * n**3 / min(ts), "median_flops_per_s": 2 * n**3 / median(ts)}
    return out


def mm_call(n: int) -> tuple[Callable[[], object], int]:
    """One square float32 torch.mm of size n and its FLOPs, for interleaving with a step."""
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    return (lambda: torch.mm(a, b, out=c)), 2 * n**3


def saved_activation_bytes(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``loss_fn()`` (what a step
    holds between forward and backward), each storage counted once, parameters left out."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    del loss
    return sum(seen.values())


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's start/stop lines, which its C++ side writes straight to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_allocated_bytes(fn: Callable[[], object]) -> int | None:
    """Peak of the bytes held by torch's CPU allocator during ``fn()``, above what was held before
    it: the running sum of the allocation and free events that torch.profiler records with
    ``profile_memory=True``. None if this torch's profiler does not expose them."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        nodes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            n = stack.pop()
            nodes.append(n)
            stack.extend(n.children)
        allocs = sorted(
            (n for n in nodes if type(n.extra_fields).__name__ == "_ExtraFields_Allocation"),
            key=lambda n: n.start_time_ns,
        )
        cur = peak = 0
        for n in allocs:
            cur += n.extra_fields.alloc_size
            peak = max(peak, cur)
        return int(peak)
    except Exception:  # a private profiler structure that moved
        return None
