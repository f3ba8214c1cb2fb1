"""softorder.runtime: the allocator settings the command line applies."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from softorder import runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Eight 8 MiB tensors made and freed per round: by default glibc trims the freed top of its heap
# after each round, so every round faults its pages in again; with the settings it keeps them.
_FAULTS_PER_ROUND = textwrap.dedent(
    """
    import resource, sys
    import torch
    from softorder.runtime import tune_cpu_allocator
    applied = tune_cpu_allocator() if sys.argv[1] == "tune" else False
    def round_():
        xs = [torch.ones(2 * 2**20) for _ in range(8)]
        del xs
    round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        round_()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
    """
)


def _faults(mode: str, **env: str) -> tuple[bool, float]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != runtime.ENV_SWITCH}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_ROUND, mode], capture_output=True, text=True, env=full_env, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(not GLIBC, reason="the allocator settings are glibc's")
def test_tuned_allocator_keeps_freed_pages_mapped():
    applied_default, default = _faults("default")
    applied, tuned = _faults("tune")
    assert applied and not applied_default
    pages = 8 * 8 * 2**20 / 4096
    assert default > 0.15 * pages  # the rounds fault (some of) their pages in again
    assert tuned < 0.05 * pages and tuned < 0.25 * default


def test_user_settings_and_switch_are_respected(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert runtime.tune_cpu_allocator() is False  # the user's own setting stands
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv(runtime.ENV_SWITCH, "0")
    assert runtime.tune_cpu_allocator() is False


def test_negative_thresholds_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        runtime.tune_cpu_allocator(mmap_threshold=-1)


def test_threads_option_sets_torch_threads_and_rejects_bad_counts(tmp_path, capsys):
    from softorder.cli import main

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "data", "--data-dir", str(tmp_path)]) in (0, 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["--threads", bad, "data", "--data-dir", str(tmp_path)])
        assert exc.value.code == 2
        assert "--threads" in capsys.readouterr().err
