"""Sweeps: an experiment's trials as Ray tasks, on this machine or on a Ray cluster.

:func:`ray_executor` is a trial executor for :func:`softorder.experiments.runner.run_experiment`:
one Ray task per pending trial (Ray core, :func:`softorder.experiments.runner.run_one_trial`), each
trial writing into its own directory under the sweep's (``out_dir/trials/<trial>``, results written
atomically), so the directory must be on a filesystem that every node sees at the same path. A
trial that raises, or whose worker or node dies, is submitted again up to ``max_retries`` times
(it continues from its checkpoint); after that it is reported and the others go on. The runner
skips finished trials, so rerunning the sweep runs only the unfinished and failed ones.

:func:`sweep_executor` picks Ray when it is installed (``pip install softorder[distributed]``) and
otherwise the sequential executor with the same retries, saying so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from softorder.experiments.runner import (
    Experiment,
    Trial,
    TrialExecutor,
    TrialFailure,
    RESULT_NAME,
    describe_error,
    record_failure,
    run_one_trial,
    run_trials_locally,
    save_result,
    trial_dir_of,
)

INSTALL_HINT = "pip install 'softorder[distributed]'"


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _ray_trial(experiment: Experiment, config: Mapping[str, Any], trial: Trial, out_dir: str, data_dir: str | None, threads: int) -> dict[str, Any]:
    """The body of one Ray task: a trial with torch limited to the task's CPU share."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    return run_one_trial(experiment, config, trial, Path(out_dir), Path(data_dir) if data_dir is not None else None)


def _connect(address: str | None, num_cpus: int | None, out: TextIO) -> bool:
    """Connect to a cluster, or start a local Ray; False when this process was connected already."""
    import ray

    if ray.is_initialized():
        print("[sweep] using the Ray this process is connected to", file=out, flush=True)
        return False
    address = _cluster_address(address)
    if address is not None:
        print(f"[sweep] connecting to the Ray cluster at {address}", file=out, flush=True)
        ray.init(address=address)
        print(f"[sweep] connected: {ray.cluster_resources().get('CPU', 0):g} CPUs", file=out, flush=True)
    else:
        cpus = int(num_cpus or os.cpu_count() or 1)
        print(f"[sweep] starting a local Ray with {cpus} CPUs", file=out, flush=True)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False)
    return True


def _cluster_address(address: str | None) -> str | None:
    """The cluster to use: ``address``, else ``$RAY_ADDRESS``, else ``None`` (a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def ray_executor(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: int = 1,
    max_retries: int = 2,
    out: TextIO | None = None,
) -> TrialExecutor:
    """A trial executor that runs every pending trial as a Ray task.

    Args:
        address: a Ray cluster to connect to (``ray start --head`` prints it; ``auto`` finds the
            one on this machine; ``$RAY_ADDRESS`` is used when not given). Without one, a local
            Ray with ``num_cpus`` CPUs (default: this machine's) is started and shut down after.
            A process already connected to Ray (``ray.init()``) keeps its connection.
        cpus_per_trial: CPUs reserved by each trial; torch in the trial uses that many threads.
        max_retries: how many times a failed trial is run again before it is reported.
    """
    out = out or sys.stderr
    if cpus_per_trial < 1:
        raise ValueError(f"cpus_per_trial must be >= 1, got {cpus_per_trial}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if num_cpus is not None and _cluster_address(address) is not None:
        raise ValueError("--num-cpus sizes a local Ray; a cluster brings its own CPUs (leave out --num-cpus, or --address and $RAY_ADDRESS)")

    def execute(experiment: Experiment, config: Mapping[str, Any], trials: Sequence[Trial], out_dir: Path, data_dir: Path | None) -> list[TrialFailure]:
        if not trials:
            return []
        import ray

        connected = _connect(address, num_cpus, out)
        try:
            return _run_on_ray(experiment, config, trials, Path(out_dir).resolve(), data_dir, cpus_per_trial, max_retries, out)
        finally:
            if connected:
                ray.shutdown()

    return execute


def _run_on_ray(
    experiment: Experiment,
    config: Mapping[str, Any],
    trials: Sequence[Trial],
    out_dir: Path,
    data_dir: Path | None,
    cpus_per_trial: int,
    max_retries: int,
    out: TextIO,
) -> list[TrialFailure]:
    import ray

    # Ray itself retries nothing: every attempt comes back here, so the retries are counted and
    # reported the same way for an exception in the trial and for a lost worker or node.
    task = ray.remote(num_cpus=cpus_per_trial, max_retries=0)(_ray_trial)
    shared = (ray.put(experiment), ray.put(dict(config)))
    data = str(Path(data_dir).resolve()) if data_dir is not None else None
    attempts: dict[str, int] = {}
    running: dict[Any, Trial] = {}
    failures: list[TrialFailure] = []

    def submit(trial: Trial) -> None:
        attempts[trial.key] = attempts.get(trial.key, 0) + 1
        ref = task.options(name=f"{experiment.name}:{trial.key}").remote(*shared, trial, str(out_dir), data, cpus_per_trial)
        running[ref] = trial

    name = experiment.name
    print(f"[{name}] submitting {len(trials)} trials to Ray ({cpus_per_trial} CPU each, up to {max_retries} retries)", file=out, flush=True)
    for trial in trials:
        submit(trial)
    finished, unshared = 0, False
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            trial = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
                error = describe_error(cause if isinstance(cause, BaseException) else exc)
                tries = attempts[trial.key]
                if tries <= max_retries:
                    print(f"[{name}] trial {trial.key} failed (attempt {tries}/{max_retries + 1}): {error}; retrying", file=out, flush=True)
                    submit(trial)
                else:
                    record_failure(out_dir, trial, str(exc))
                    failures.append(TrialFailure(trial.key, error, tries))
            else:
                finished += 1
                print(f"[{name}] trial {trial.key} finished ({finished}/{len(trials)})", file=out, flush=True)
                if not (trial_dir_of(out_dir, trial) / RESULT_NAME).exists():  # written on a node this one cannot see
                    if not unshared:
                        print(f"[{name}] warning: a result is missing from {out_dir}; is it on a filesystem shared with every Ray node? Results are written here from the tasks, checkpoints stay on the nodes", file=out, flush=True)
                    unshared = True
                    save_result(out_dir, trial, result)
    except BaseException:  # interrupted: stop the running trials; they resume from checkpoints
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    return failures


def sweep_executor(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: int = 1,
    max_retries: int = 2,
    out: TextIO | None = None,
) -> TrialExecutor:
    """Ray's executor (:func:`ray_executor`) when Ray is installed, else the trials one after another.

    Without Ray, a cluster ``address`` is an error; otherwise the sweep runs in this process with
    the same retries and reporting, and says so.
    """
    out = out or sys.stderr
    if ray_available():
        return ray_executor(address=address, num_cpus=num_cpus, cpus_per_trial=cpus_per_trial, max_retries=max_retries, out=out)
    if address:
        raise ValueError(f"running on the Ray cluster at {address} needs Ray: {INSTALL_HINT}")
    print(f"[sweep] Ray is not installed ({INSTALL_HINT}): running the trials one after another in this process", file=out, flush=True)
    return partial(run_trials_locally, out=out, max_retries=max_retries, keep_going=True)


__all__ = ["INSTALL_HINT", "ray_available", "ray_executor", "sweep_executor"]
