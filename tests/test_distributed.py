"""Distributed runs: sweeps on Ray (retries, failures, restart, the fallback without Ray) and
data-parallel training that equals one process training on the whole batch.

The Ray tests share one local Ray (two CPUs) started in this process; the command-line tests run
``softorder sweep`` in a subprocess, once against that Ray (``--address``) and once starting its
own. The synthetic experiments below stand in for the paper's presets. The tests that start Ray,
``softorder sweep`` or torchrun are marked ``slow``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from softorder import TaskArrays, TaskSpec, TensorTasks, TrainConfig, build_model, fit
from softorder.distributed import sweep_executor
from softorder.distributed.data_parallel import DataParallel
from softorder.experiments.runner import Experiment, Trial, run_experiment
from softorder.tasks import Batch, MultitaskData
from softorder.runtime import torch_threads
from softorder.train import CHECKPOINT_NAME, load_checkpoint

try:
    import ray
except ImportError:  # the [distributed] extra is not installed
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install 'softorder[distributed]'); CI installs it")
TESTS = Path(__file__).resolve().parent
TOL = 1e-5


# --- a synthetic experiment ---------------------------------------------------------------------


class Synthetic(Experiment):
    """Trials that count their attempts on disk: 'flaky' fails on its first attempt, 'broken' always."""

    name = "synthetic"

    def default_config(self, quick):
        return {"keys": ["good", "flaky"], "value": 1.5}

    def trials(self, config):
        return [Trial(k, {"k": k}) for k in config["keys"]]

    def run_trial(self, config, trial, trial_dir, data_dir):
        attempts = trial_dir / "attempts"
        attempts.mkdir(exist_ok=True)
        (attempts / f"{os.getpid()}-{time.time_ns()}").touch()
        if trial.key == "broken":
            raise RuntimeError("broken on purpose")
        if trial.key == "flaky" and not (trial_dir / "marker").exists():
            (trial_dir / "marker").touch()
            raise RuntimeError("flaky: the first attempt fails")
        return {"value": config["value"], "pid": os.getpid(), "threads": torch.get_num_threads()}

    def summarize(self, config, results, out_dir):
        return {"total": sum(r["value"] for r in results.values())}


EXPERIMENT = Synthetic()


def attempts(out_dir: Path, key: str) -> int:
    folder = out_dir / "trials" / key / "attempts"
    return len(list(folder.iterdir())) if folder.exists() else 0


def sweep_cli(*args: str, cwd: Path = TESTS) -> subprocess.CompletedProcess:
    """``softorder sweep`` in a fresh process; this folder is its working directory (and so on the
    path of Ray's workers, which import the experiment from here)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "softorder.cli", "sweep", "test_distributed:EXPERIMENT", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


# --- sweeps on Ray ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with two CPUs (two trials at once) for this module; its address."""
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'softorder[distributed]'); CI installs it")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this file
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.slow
@needs_ray
def test_sweep_on_ray_retries_a_failed_trial(local_ray, tmp_path):
    log = io.StringIO()
    summary = run_experiment(EXPERIMENT, tmp_path, executor=sweep_executor(max_retries=1, out=log), out=log)
    assert summary["trials_finished"] == 2 and summary["trials_failed"] == [] and summary["total"] == 3.0
    assert attempts(tmp_path, "good") == 1 and attempts(tmp_path, "flaky") == 2
    assert "trial flaky failed (attempt 1/2): RuntimeError: flaky: the first attempt fails; retrying" in log.getvalue()
    for key in ("good", "flaky"):
        result = json.loads((tmp_path / "trials" / key / "result.json").read_text())["result"]
        assert result["pid"] != os.getpid()  # ran in a Ray worker
        assert result["threads"] == 1  # torch limited to the task's one CPU
    assert json.loads((tmp_path / "summary.json").read_text())["total"] == 3.0
    again = run_experiment(EXPERIMENT, tmp_path, executor=sweep_executor(max_retries=1, out=log), out=log)
    assert again["trials_finished"] == 2 and attempts(tmp_path, "good") == 1 and attempts(tmp_path, "flaky") == 2
    assert ray.is_initialized()  # a Ray this process started is left to it


@pytest.mark.slow
@needs_ray
def test_sweep_command_reports_failures_and_restarts(local_ray, tmp_path):
    """``softorder sweep`` on a running cluster (--address), then restarted on a local Ray it starts."""
    args = ["--out", str(tmp_path), "--max-retries", "1", "--set", 'keys=["good", "broken"]']
    first = sweep_cli("--address", local_ray, *args)
    assert first.returncode == 1, first.stderr
    assert f"connecting to the Ray cluster at {local_ray}" in first.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trials_finished"] == 1 and summary["total"] == 1.5  # the good trial still finished
    assert summary["trials_failed"] == [{"key": "broken", "error": "RuntimeError: broken on purpose", "attempts": 2}]
    assert "broken on purpose" in (tmp_path / "trials" / "broken" / "error.txt").read_text()
    assert "1 trial(s) failed: broken" in first.stderr
    assert attempts(tmp_path, "good") == 1 and attempts(tmp_path, "broken") == 2

    second = sweep_cli("--num-cpus", "2", *args)  # restart: the finished trial is skipped, the failed one tried again
    assert second.returncode == 1, second.stderr
    assert "starting a local Ray with 2 CPUs" in second.stderr
    assert "2 trials, 1 already finished, 1 to run" in second.stderr
    assert attempts(tmp_path, "good") == 1 and attempts(tmp_path, "broken") == 4


def test_sweep_without_ray_runs_trials_one_after_another(tmp_path, monkeypatch, capsys):
    from softorder.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    keys = 'keys=["good", "flaky", "broken"]'
    assert main(["sweep", "test_distributed:EXPERIMENT", "--out", str(tmp_path), "--max-retries", "1", "--set", keys]) == 1
    err = capsys.readouterr().err
    assert "Ray is not installed (pip install 'softorder[distributed]'): running the trials one after another" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trials_finished"] == 2
    assert summary["trials_failed"] == [{"key": "broken", "error": "RuntimeError: broken on purpose", "attempts": 2}]
    assert [attempts(tmp_path, k) for k in ("good", "flaky", "broken")] == [1, 2, 2]
    assert all(json.loads((tmp_path / "trials" / k / "result.json").read_text())["result"]["pid"] == os.getpid() for k in ("good", "flaky"))
    assert main(["sweep", "test_distributed:EXPERIMENT", "--out", str(tmp_path), "--address", "10.0.0.1:6379"]) == 2
    assert "needs Ray" in capsys.readouterr().err


def test_reproduce_stops_at_a_failing_trial(tmp_path):
    from softorder.experiments.runner import run_trials_locally

    with pytest.raises(RuntimeError, match="broken on purpose"):
        run_experiment(EXPERIMENT, tmp_path, overrides={"keys": ["broken", "good"]}, executor=run_trials_locally, out=io.StringIO())
    assert attempts(tmp_path, "good") == 0


# --- data-parallel training ---------------------------------------------------------------------


def toy_tasks(seed: int = 0, n: int = 80) -> TensorTasks:
    """Three tasks of different kinds and input widths (so each has its own encoder)."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for i, (kind, k, d) in enumerate([("binary", 1, 4), ("multiclass", 3, 6), ("regression", 2, 4)]):
        x = torch.rand(n, d, generator=g)
        if kind == "binary":
            y = (x[:, 0] > x[:, 1]).long()
        elif kind == "multiclass":
            y = x[:, :3].argmax(dim=1)
        else:
            y = torch.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 3]], dim=1)
        spec = TaskSpec(f"task{i}", (d,), kind, k)
        tasks.append(TaskArrays(spec, {"train": (x[:60], y[:60]), "val": (x[60:], y[60:])}))
    return TensorTasks(tasks)


class SharedRows(MultitaskData):
    """Two binary tasks on the same rows (a shared encoder, like CelebA's attributes)."""

    shared_input = True

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(50, 5, generator=g)
        self.y = {"a": (self.x[:, 0] > 0.5).long(), "b": (self.x[:, 1] > self.x[:, 2]).long()}
        self.specs = (TaskSpec("a", (5,), "binary"), TaskSpec("b", (5,), "binary"))

    def train_batch(self, iteration, batch_size, seed):
        g = torch.Generator().manual_seed(seed * 1000 + iteration)
        idx = torch.randint(40, (batch_size,), generator=g)
        return Batch(self.x[idx], {k: v[idx] for k, v in self.y.items()})

    def eval_batches(self, split, batch_size):
        if split == "val":
            for s in range(40, 50, batch_size):
                yield Batch(self.x[s : s + batch_size], {k: v[s : s + batch_size] for k, v in self.y.items()})

    def split_sizes(self):
        return {k: {"train": 40, "val": 10, "test": 0} for k in self.y}


def _per_task_model():
    return build_model(toy_tasks().specs, width=16, depth=3, dropout=0.0, seed=0)


def _shared_model():
    torch.manual_seed(0)  # the shared encoder is made before build_model seeds the rest
    return build_model(SharedRows().specs, encoder=torch.nn.Linear(5, 12), width=12, depth=2, seed=0)


_BASE = dict(eval_every=4, progress=False, seed=3, eval_batch_size=7)
# trial -> (data, model, training settings); dropout 0 so that the runs can be equal
SCENARIOS = {
    "even": (toy_tasks, _per_task_model, dict(_BASE, iterations=12, batch_size=8)),
    "uneven": (toy_tasks, _per_task_model, dict(_BASE, iterations=8, batch_size=3)),
    "one-row-per-task": (toy_tasks, _per_task_model, dict(_BASE, iterations=8, batch_size=1, optimizer="sgd", lr=0.1)),
    "shared-rows": (SharedRows, _shared_model, dict(_BASE, iterations=8, batch_size=6)),
    "shared-one-row": (SharedRows, _shared_model, dict(_BASE, iterations=6, batch_size=1)),  # rank 1 has no rows
    "phase-2": (toy_tasks, _per_task_model, dict(_BASE, iterations=12, eval_every=2, batch_size=4, second_optimizer="rmsprop", patience=1, lr=0.05)),
}


class DataParallelScenarios(Experiment):
    """One trial per scenario, each training one small model; 'resumed' is 'even' stopped after 4
    iterations and continued. Under torchrun every rank also saves its final parameters."""

    name = "data-parallel-scenarios"

    def default_config(self, quick):
        return {}

    def trials(self, config):
        return [Trial(name, {}) for name in [*SCENARIOS, "resumed"]]

    def run_trial(self, config, trial, trial_dir, data_dir):
        import torch.distributed as dist

        make_data, make_model, settings = SCENARIOS["even" if trial.key == "resumed" else trial.key]
        torch.manual_seed(100 + int(os.environ.get("RANK", "0")))  # fit, not the caller, must make the ranks agree
        if trial.key == "resumed":
            fit(make_model(), make_data(), {**settings, "iterations": 4}, run_dir=trial_dir / "fit")  # "killed" at 4
        model = make_model()
        history = fit(model, make_data(), settings, run_dir=trial_dir / "fit")
        if dist.is_initialized():
            torch.save(model.state_dict(), trial_dir / f"rank{dist.get_rank()}.pt")
        return {"phases": history.series("phase")}

    def summarize(self, config, results, out_dir):
        return {}


DP_SCENARIOS = DataParallelScenarios()


def _assert_close(a: dict, b: dict, what: str) -> None:
    assert list(a) == list(b), what
    for key in a:
        diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0.0
        assert diff <= TOL, f"{what}: {key} differs by {diff}"


def _assert_same_history(a: list, b: list, what: str) -> None:
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b], what
    for ra, rb in zip(a, b):
        assert ra["phase"] == rb["phase"], what
        for key, value in ra.items():
            if key != "elapsed_s" and isinstance(value, float):
                assert abs(value - rb[key]) <= TOL, f"{what}: {key} at {ra['iteration']}: {value} vs {rb[key]}"


@pytest.mark.slow
def test_data_parallel_under_torchrun_equals_one_process_with_the_whole_batch(tmp_path):
    """Two processes (torchrun, gloo) against one, in every scenario: the same parameters (to 1e-5)
    and history; only rank 0 writes; a resumed two-process run equals an uninterrupted one."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "softorder.distributed"]
    run = subprocess.run([*torchrun, "test_distributed:DP_SCENARIOS", "--out", str(tmp_path / "dp")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "trial 1/7 on 2 processes: even" in run.stderr

    from softorder.cli import main

    assert main(["train", "test_distributed:DP_SCENARIOS", "--out", str(tmp_path / "one"), "--trial", "even", "--trial", "phase-2"]) == 0
    for name, (make_data, make_model, settings) in SCENARIOS.items():
        trial = tmp_path / "dp" / "trials" / name
        if name in ("even", "phase-2"):  # by the command, like the two-process run
            single = load_checkpoint(tmp_path / "one" / "trials" / name / "fit" / CHECKPOINT_NAME)
            reference, history = single["model"], single["history"]
        else:
            torch.manual_seed(7)
            model = make_model()
            history = fit(model, make_data(), settings, distributed=False).records
            reference = model.state_dict()
        for rank in range(2):
            _assert_close(torch.load(trial / f"rank{rank}.pt", weights_only=True), reference, f"{name}, rank {rank}")
        ckpt = load_checkpoint(trial / "fit" / CHECKPOINT_NAME)
        _assert_close(ckpt["model"], reference, f"{name}, checkpoint")
        _assert_same_history(ckpt["history"], history, name)
        assert len(ckpt["rng_ranks"]) == 2  # every process's random state, for an exact resume
        if name == "phase-2":
            assert 2 in [r["phase"] for r in history]
    resumed = load_checkpoint(tmp_path / "dp" / "trials" / "resumed" / "fit" / CHECKPOINT_NAME)
    _assert_close(resumed["model"], load_checkpoint(tmp_path / "one" / "trials" / "even" / "fit" / CHECKPOINT_NAME)["model"], "resumed")
    assert [r["iteration"] for r in resumed["history"]] == [4, 8, 12]
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["trials_finished"] == 7 and summary["trials_failed"] == []


class PairedRows(SharedRows):
    """SharedRows whose training batches repeat every drawn row ``repeat`` times in a row: with
    ``repeat=2`` and two processes (row ``j`` goes to rank ``j % 2``) both processes hold the same
    rows, those of a batch of half the size drawn with ``repeat=1``."""

    def __init__(self, repeat: int = 1) -> None:
        super().__init__()
        self.repeat = repeat

    def train_batch(self, iteration, batch_size, seed):
        g = torch.Generator().manual_seed(seed * 1000 + iteration)
        idx = torch.randint(40, (batch_size // self.repeat,), generator=g).repeat_interleave(self.repeat)
        return Batch(self.x[idx], {k: v[idx] for k, v in self.y.items()})


def _batchnorm_model():
    torch.manual_seed(0)  # the shared encoder is made before build_model seeds the rest
    encoder = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.BatchNorm1d(12), torch.nn.ReLU())
    return build_model(SharedRows().specs, encoder=encoder, width=12, depth=2, seed=0)


_BN_SETTINGS = dict(_BASE, iterations=12, batch_size=8)
# trial -> (two-process data, single-process reference data, reference batch size)
BN_SCENARIOS = {
    "bn-random": (lambda: PairedRows(1), lambda: PairedRows(1), 8),
    "bn-pairs": (lambda: PairedRows(2), lambda: PairedRows(1), 4),
}


class BatchNormScenarios(Experiment):
    """A model with BatchNorm in its shared encoder, trained on each of BN_SCENARIOS' data; under
    torchrun every rank saves its final parameters and buffers."""

    name = "batchnorm-scenarios"

    def default_config(self, quick):
        return {}

    def trials(self, config):
        return [Trial(name, {}) for name in BN_SCENARIOS]

    def run_trial(self, config, trial, trial_dir, data_dir):
        import torch.distributed as dist

        torch.manual_seed(100 + int(os.environ.get("RANK", "0")))
        model = _batchnorm_model()
        history = fit(model, BN_SCENARIOS[trial.key][0](), _BN_SETTINGS, run_dir=trial_dir / "fit")
        if dist.is_initialized():
            torch.save(model.state_dict(), trial_dir / f"rank{dist.get_rank()}.pt")
        return {"iterations": history.series("iteration")}

    def summarize(self, config, results, out_dir):
        return {}


DP_BATCHNORM = BatchNormScenarios()
BN_TOL = 0.05  # bn-random: rank 0's half-batch statistics against the whole batch's after 12 steps (measured: 0.016)


@pytest.mark.slow
def test_data_parallel_keeps_batchnorm_statistics_the_same_in_every_process(tmp_path):
    """Two processes (torchrun, gloo) train a model with BatchNorm in its shared encoder; after
    every step every process takes rank 0's running statistics (DDP's ``broadcast_buffers``).

    What that guarantees, and what is asserted:

    - every process ends with the same buffers, bit for bit (running mean, variance and the integer
      ``num_batches_tracked``), and they are the ones in rank 0's checkpoint;
    - the buffers are those of one process that saw rank 0's rows: when both processes hold the
      same rows (``bn-pairs``: every row of the batch twice, in a row) the run equals one process
      training on one copy of the rows (half the batch), parameters, buffers and history to 1e-5.

    They are not the statistics of one process with the whole batch: each process normalises its
    own half-batch in training (as DDP without SyncBatchNorm does), and the running statistics
    follow rank 0's half. For ordinary batches (``bn-random``, 4 of 8 rows per process) they are
    compared with that single-process run to ``BN_TOL`` = 0.05, absolute (measured: 0.016 for the
    means, 0.007 for the variances, which are of order 0.1 to 0.6 and 0.3): ``num_batches_tracked``
    is the same, and the means and variances, which moved well away from their initial 0 and 1,
    differ only by the sampling difference between a half-batch and the whole batch (and the small
    drift of the parameters that the half-batch normalisation causes).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "softorder.distributed"]
    run = subprocess.run([*torchrun, "test_distributed:DP_BATCHNORM", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    for name, (_, make_reference_data, batch_size) in BN_SCENARIOS.items():
        trial = tmp_path / "trials" / name
        ranks = [torch.load(trial / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
        ckpt = load_checkpoint(trial / "fit" / CHECKPOINT_NAME)
        buffers = [k for k in ranks[0] if "running_" in k or "num_batches_tracked" in k]
        assert len(buffers) == 3, buffers
        for key in buffers:
            assert torch.equal(ranks[0][key], ranks[1][key]), f"{name}: {key} differs between the processes"
            assert torch.equal(ckpt["model"][key], ranks[1][key]), f"{name}: {key} differs from the checkpoint"
        _assert_close(ranks[1], ranks[0], f"{name}, rank 1 against rank 0")

        torch.manual_seed(7)
        model = _batchnorm_model()
        with torch_threads(1):  # as the torchrun processes (OMP_NUM_THREADS=1): the same float sums
            history = fit(model, make_reference_data(), {**_BN_SETTINGS, "batch_size": batch_size}, distributed=False).records
        reference = model.state_dict()
        bn = "shared_encoder.1."
        assert ranks[0][bn + "num_batches_tracked"].item() == reference[bn + "num_batches_tracked"].item() == 12
        if name == "bn-pairs":
            for rank in range(2):
                _assert_close(ranks[rank], reference, f"{name}, rank {rank}")
            _assert_same_history(ckpt["history"], history, name)
        else:
            assert (reference[bn + "running_mean"].abs().max() > 5 * BN_TOL) and ((reference[bn + "running_var"] - 1).abs().max() > 5 * BN_TOL)
            for key in ("running_mean", "running_var"):
                diff = (ranks[0][bn + key] - reference[bn + key]).abs().max().item()
                assert diff <= BN_TOL, f"{name}: {key} differs from one process's by {diff}"


def test_running_stat_buffers_are_those_of_normalisation_layers_in_training():
    from softorder.distributed.data_parallel import SingleProcess, running_stat_buffers

    model = _batchnorm_model()
    bn = model.shared_encoder[1]
    assert [id(b) for b in running_stat_buffers(model)] == [id(bn.running_mean), id(bn.running_var), id(bn.num_batches_tracked)]
    assert running_stat_buffers(_shared_model()) == []  # no BatchNorm: no collective at all
    bn.eval()
    assert running_stat_buffers(model) == []  # frozen statistics do not change
    before = {k: v.clone() for k, v in model.state_dict().items()}
    SingleProcess(torch.device("cpu")).sync_buffers(model)
    _assert_close(model.state_dict(), before, "one process")


def test_shards_cover_the_batch_and_weigh_each_task():
    batch = toy_tasks().train_batch(0, 3, seed=0)
    shards = [DataParallel(rank, 2, torch.device("cpu")).shard(batch) for rank in range(2)]
    for t, name in enumerate(batch.targets):
        parts = [s.inputs[name] for s, _ in shards]
        assert torch.equal(torch.cat(parts).sort(dim=0).values, batch.inputs[name].sort(dim=0).values)
        assert [p.shape[0] for p in parts] == ([2, 1] if t % 2 == 0 else [1, 2])  # task t starts on rank t % 2
        assert [w[name] for _, w in shards] == [p.shape[0] / 3 for p in parts]
    one = toy_tasks().train_batch(0, 1, seed=0)  # one row per task: the tasks spread over the ranks
    first, second = (DataParallel(r, 2, torch.device("cpu")).shard(one)[0] for r in range(2))
    assert list(first.targets) == ["task0", "task2"] and list(second.targets) == ["task1"]
    shared, weights = DataParallel(1, 3, torch.device("cpu")).shard(SharedRows().train_batch(0, 5, 0))
    assert shared.inputs.shape[0] == 2 and weights == {"a": 0.4, "b": 0.4}
    assert DataParallel(2, 3, torch.device("cpu")).shard(SharedRows().train_batch(0, 2, 0)) == (None, {})


def test_fit_refuses_distributed_without_processes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = toy_tasks()
    with pytest.raises(ValueError, match="needs several processes: start them with torchrun"):
        fit(build_model(data.specs, width=8, depth=2), data, TrainConfig(iterations=1, progress=False), distributed=True)
