"""An experiment's trials, each trained data-parallel by all the processes of a torchrun job.

``torchrun --nproc_per_node N -m softorder.distributed EXPERIMENT [--trial KEY]... [options]`` (or
``torchrun ... $(which softorder) train EXPERIMENT ...``) starts N processes; every one of them
runs the same trials in the same order, and inside each trial :func:`softorder.train.fit` shares
every batch among them (:mod:`softorder.distributed.data_parallel`). Rank 0 is the leader: it
checks the run directory, picks the pending trials, sends them to the others, writes each trial's
``result.json`` and checkpoints, and writes the summary. Without torchrun (one process) this is
``softorder reproduce`` restricted to the chosen trials.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from softorder.distributed.data_parallel import init_process_group
from softorder.experiments.runner import Experiment, Trial, TrialFailure, run_experiment, run_one_trial


def run_experiment_data_parallel(
    experiment: Experiment,
    out_dir: str | Path,
    *,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    data_dir: Path | None = None,
    trial_keys: Sequence[str] | None = None,
    out: TextIO | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) ``experiment``'s trials with every trial data-parallel over all processes.

    Every process calls this with the same arguments. Returns the summary on rank 0 and ``None``
    on the other ranks. A single process (no torchrun) runs the trials by itself.
    """
    import torch.distributed as dist

    out = out or sys.stderr
    created = init_process_group()
    try:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return run_experiment(experiment, out_dir, quick=quick, overrides=overrides, data_dir=data_dir, trial_keys=trial_keys, out=out)
        if dist.get_rank() != 0:
            _follow(experiment, Path(out_dir), data_dir)
            return None
        sent = False

        def lead(exp: Experiment, config: Mapping[str, Any], trials: Sequence[Trial], out_path: Path, data: Path | None) -> list[TrialFailure]:
            nonlocal sent
            _share([dict(config), list(trials)])
            sent = True
            world = dist.get_world_size()
            for i, trial in enumerate(trials, 1):
                print(f"[{exp.name}] trial {i}/{len(trials)} on {world} processes: {trial.key}", file=out, flush=True)
                run_one_trial(exp, config, trial, out_path, data)
            return []

        try:
            return run_experiment(experiment, out_dir, quick=quick, overrides=overrides, data_dir=data_dir, executor=lead, trial_keys=trial_keys, out=out)
        except BaseException:
            if not sent:  # release the other processes, which wait for the plan
                _share(None)
            raise
    finally:
        if created:
            dist.destroy_process_group()


def _share(plan: Any) -> Any:
    """Rank 0's ``plan`` on every process."""
    import torch.distributed as dist

    box = [plan]
    dist.broadcast_object_list(box, src=0, device="cpu")
    return box[0]


def _follow(experiment: Experiment, out_dir: Path, data_dir: Path | None) -> None:
    """A non-zero rank: take part in the leader's trials, writing no results."""
    plan = _share(None)
    if plan is None:  # the leader stopped before running any trial (and reports why)
        raise SystemExit(1)
    config, trials = plan
    for trial in trials:
        run_one_trial(experiment, config, trial, out_dir, data_dir, write_result=False)
