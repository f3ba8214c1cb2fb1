"""softorder.runtime: the allocator settings the command line applies."""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap

import pytest
import torch

from softorder import runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A round: eight 8 MiB blocks made, written and freed. The process measures rounds of blocks from
# glibc's posix_memalign (what torch's CPU allocator calls for a tensor's storage), then rounds of
# torch tensors, on one thread with transparent huge pages turned off (so that a fault is one page),
# and prints the page faults of each round after a first (warm-up) round of each kind. By default
# glibc returns the freed top of its heap to the system after a round, so the next round faults
# its pages in again; with the settings it keeps them.
_FAULTS_PER_ROUND = textwrap.dedent(
    """
    import ctypes, json, os, resource, sys
    libc = ctypes.CDLL(None, use_errno=True)
    thp_off = libc.prctl(41, 1, 0, 0, 0) == 0  # PR_SET_THP_DISABLE
    import torch
    torch.set_num_threads(1)
    from softorder.runtime import tune_cpu_allocator
    applied = tune_cpu_allocator() if sys.argv[1] == "tune" else False
    BLOCK = 8 * 2**20
    libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def malloc_round():
        blocks = [ctypes.c_void_p() for _ in range(8)]
        for b in blocks:
            assert libc.posix_memalign(ctypes.byref(b), 64, BLOCK) == 0
            ctypes.memset(b, 1, BLOCK)
        for b in blocks:
            libc.free(b)
    def tensor_round():
        xs = [torch.ones(BLOCK // 4) for _ in range(8)]
        del xs
    def faults_per_round(round_, rounds):
        round_()
        out = []
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            round_()
            out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return out
    print(json.dumps({"applied": applied, "thp_off": thp_off, "page_size": os.sysconf("SC_PAGE_SIZE"),
                      "malloc": faults_per_round(malloc_round, 6), "tensors": faults_per_round(tensor_round, 8)}))
    """
)
ROUND_BYTES = 8 * 8 * 2**20


def _faults(mode: str) -> dict:
    """One fresh process's measurement; the allocator variables (MALLOC_*, GLIBC_TUNABLES) and the
    switch are left out of its environment, so that only ``mode`` decides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in (runtime.ENV_SWITCH, "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")
    }
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_ROUND, mode], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the allocator settings are glibc's (mallopt); this C library has no such mechanism")
@pytest.mark.skipif(
    "malloc" in os.environ.get("LD_PRELOAD", ""),
    reason="another malloc is preloaded (LD_PRELOAD): glibc's allocator, which the settings tune, is not in use",
)
def test_tuned_allocator_keeps_freed_pages_mapped():
    """The same rounds in two fresh processes on this machine, one untuned and one after
    tune_cpu_allocator(): the untuned one faults most of its pages in again every round, the
    tuned one (nearly) none; torch tensors in the tuned process reuse their pages too."""
    default, tuned = _faults("default"), _faults("tune")
    if not (default["thp_off"] and tuned["thp_off"]):
        pytest.skip("transparent huge pages could not be turned off for the measuring process (prctl "
                    "PR_SET_THP_DISABLE), so its page-fault count does not count pages")
    assert default["applied"] is False and tuned["applied"] is True
    pages = ROUND_BYTES / default["page_size"]
    # the repeated faults: those of the last four rounds (the heap may still grow in the first ones)
    untuned_faults, tuned_faults = statistics.median(default["malloc"][-4:]), max(tuned["malloc"][-4:])
    assert untuned_faults >= 0.5 * pages, f"untuned: {default['malloc']} faults per round of {pages:.0f} pages"
    assert tuned_faults <= 0.05 * pages, f"tuned: {tuned['malloc']} faults per round of {pages:.0f} pages"
    assert tuned_faults <= 0.1 * untuned_faults
    # Torch's own small allocations can pin the top of the heap, so whether the untuned process
    # faults its tensors in again varies from run to run (not asserted); tuned, they do not.
    assert max(tuned["tensors"][-4:]) <= 0.05 * pages, f"tuned tensors: {tuned['tensors']} faults per round"


def test_user_settings_and_switch_are_respected(monkeypatch):
    """With the user's own MALLOC_* setting, or SOFTORDER_TUNE_ALLOCATOR=0, nothing is applied.
    (On glibc, without them, the call would apply the settings and return True.)"""
    monkeypatch.delenv(runtime.ENV_SWITCH, raising=False)  # the test default (conftest) is off
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert runtime.tune_cpu_allocator() is False  # the user's own setting stands
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert runtime.tune_cpu_allocator() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    for off in ("0", " 0 "):
        monkeypatch.setenv(runtime.ENV_SWITCH, off)
        assert runtime.tune_cpu_allocator() is False


def test_negative_thresholds_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        runtime.tune_cpu_allocator(mmap_threshold=-1)
    with pytest.raises(ValueError, match="non-negative"):
        runtime.tune_cpu_allocator(trim_threshold=-1)


def test_threads_option_sets_torch_threads_and_rejects_bad_counts(tmp_path, capsys, monkeypatch):
    from softorder.cli import main
    from softorder.data.check import run_check

    tuned = []
    real_tune = runtime.tune_cpu_allocator

    def recording_tune(*args, **kwargs):
        tuned.append(real_tune(*args, **kwargs))
        return tuned[-1]

    monkeypatch.setattr(runtime, "tune_cpu_allocator", recording_tune)
    expected = io.StringIO()
    run_check(tmp_path, out=expected)  # what `softorder data` prints for an empty data directory
    capsys.readouterr()

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["--threads", "1", "data", "--data-dir", str(tmp_path)]) == 0  # nothing present: nothing corrupt
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    captured = capsys.readouterr()
    assert captured.out == expected.getvalue() and captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == f"data directory: {tmp_path}"
    assert [line.split()[0] for line in lines[2:]] == ["mnist", "uci", "omniglot", "celeba"]
    assert all("missing: no files" in line for line in lines[2:])
    assert tuned == [False]  # the command asks to tune the allocator; in the tests (conftest) it does nothing

    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["--threads", bad, "data", "--data-dir", str(tmp_path)])
        assert exc.value.code == 2
        assert "--threads" in capsys.readouterr().err
