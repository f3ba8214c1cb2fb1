"""Running an experiment: a grid of independent trials, each in its own directory, then a summary.

An :class:`Experiment` lists its trials for a resolved configuration, runs one trial into its
directory, and summarises the finished ones. :func:`run_experiment` writes ``config.json``, runs every
trial whose ``result.json`` is missing (a finished trial is never run again; an interrupted one
continues from its checkpoint), then writes ``results.csv`` (one row per trial, method, task and split:
:meth:`Experiment.tidy_rows`), ``summary.json`` and the figures. The trial loop is
pluggable (``executor``) so that the same experiment runs one trial after another
(:func:`run_trials_locally`, ``softorder reproduce``) or as a sweep of Ray tasks
(:func:`softorder.distributed.sweep_executor`, ``softorder sweep``). An executor returns the trials
that failed for good; they are reported in the summary and the others are summarised as usual.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from softorder._hints import did_you_mean
from softorder._io import atomic_write_bytes, atomic_write_json, check_writable_dir, differing_keys
from softorder.runtime import torch_threads

if TYPE_CHECKING:
    from torch import nn

RESULT_NAME = "result.json"
RESULTS_CSV_NAME = "results.csv"
# a results.csv row: the trial's key and parameters, then these (see Experiment.tidy_rows)
TIDY_COLUMNS = ("method", "task", "split", "error", "loss")
LOCK_NAME = "lock"


@dataclass(frozen=True)
class Trial:
    """One independent training run of an experiment: a unique key and its parameters."""

    key: str
    params: Mapping[str, Any]

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", self.key)


class Experiment(ABC):
    """A named preset: its configuration, its trials, how to run one and how to summarise."""

    name: str = ""
    description: str = ""

    @abstractmethod
    def default_config(self, quick: bool) -> dict[str, Any]:
        """The paper's settings, or the ``--quick`` ones for two CPU cores."""

    @abstractmethod
    def trials(self, config: Mapping[str, Any]) -> list[Trial]:
        """Every trial of the grid, in a fixed order."""

    @abstractmethod
    def run_trial(self, config: Mapping[str, Any], trial: Trial, trial_dir: Path, data_dir: Path | None) -> dict[str, Any]:
        """Run one trial (resumable from ``trial_dir``) and return its JSON-able result."""

    @abstractmethod
    def summarize(self, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        """Summary of the finished trials (``results[trial.key]``); writes the figures into out_dir."""

    def resolve_config(self, quick: bool, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with ``overrides``, rejecting unknown keys with a suggestion."""
        config = self.default_config(quick)
        for key, value in (overrides or {}).items():
            if key not in config:
                raise ValueError(f"{self.name}: unknown option {key!r}{did_you_mean(key, config)} (options: {', '.join(sorted(config))})")
            check_like_default(f"{self.name}: {key}", value, config[key])
            config[key] = value
        config["quick"] = quick
        return config

    def tidy_rows(self, config: Mapping[str, Any], trial: Trial, result: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A finished trial's final errors for ``results.csv``: one dict per (method, task, split) with
        the keys of :data:`TIDY_COLUMNS` (``loss`` may be left out); the runner adds the trial's key and
        parameters. The default reads the per-task dicts ``final_<split>_error`` or
        ``task_<split>_error`` (and ``..._loss`` beside them) of the result, with the method from the
        result's or the trial's ``method`` (else ``ordering``). Override it for other shapes."""
        method = result.get("method") or trial.params.get("method") or trial.params.get("ordering") or result.get("ordering")
        rows = []
        for split in ("train", "val", "test"):
            for prefix in ("final_", "task_"):
                errors = result.get(f"{prefix}{split}_error")
                if isinstance(errors, Mapping):
                    losses = result.get(f"{prefix}{split}_loss") or {}
                    rows += [{"method": method, "task": task, "split": split, "error": error, "loss": losses.get(task)}
                             for task, error in errors.items()]
                    break
        return rows


def check_like_default(name: str, value: Any, default: Any) -> None:
    """Refuse a setting whose type is not its default's: a whole number where the default is one,
    a number for a number, a list (of the same kind of items) for a list, text for text."""
    def kind(v: Any) -> str:
        if isinstance(v, bool):
            return "true or false"
        if isinstance(v, int):
            return "a whole number"
        if isinstance(v, float):
            return "a number"
        if isinstance(v, str):
            return "text"
        if isinstance(v, list):
            return "a list"
        return type(v).__name__

    fits = {
        "a whole number": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }.get(kind(default), lambda v: kind(v) == kind(default))
    if default is None or fits(value):
        if isinstance(default, list) and default and isinstance(value, list):
            for item in value:
                check_like_default(f"{name} item", item, default[0])
        return
    example = json.dumps(default)
    raise ValueError(f"{name} must be {kind(default)} like the default {example}, got {json.dumps(value) if not isinstance(value, str) else repr(value)}"
                     + (" (give lists as JSON, e.g. '[\"soft\"]')" if isinstance(default, list) and isinstance(value, str) else ""))


ERROR_NAME = "error.txt"


@dataclass(frozen=True)
class TrialFailure:
    """A trial that still failed after its retries: its key, the last error, the attempts made."""

    key: str
    error: str
    attempts: int = 1


# (experiment, config, pending trials, out_dir, data_dir) -> the trials that failed for good
TrialExecutor = Callable[[Experiment, Mapping[str, Any], Sequence[Trial], Path, "Path | None"], "Sequence[TrialFailure] | None"]


def progress_reporter(
    experiment: str,
    trial: Trial,
    iterations: int,
    *,
    every_s: float = 30.0,
    percent: bool = True,
    out: TextIO | None = None,
    also: Callable[[dict[str, Any]], None] | None = None,
    model: nn.Module | None = None,
) -> Callable[[dict[str, Any]], None]:
    """An ``on_eval`` callback for :func:`softorder.train.fit` that prints how a trial is going.

    One line per evaluation (iteration, training loss, mean error of the first evaluated split,
    seconds per iteration so far), at most one every ``every_s`` seconds, and always the last one.
    The error is shown as a percentage with ``percent`` (classification), else as it is (MSE).
    ``also`` is called first with the same record (e.g. to add quantities to it). Within a
    :func:`~softorder.experiments.tensorboard_log.tensorboard_logging` block (``--tensorboard DIR``)
    every record also goes to TensorBoard under ``DIR/<trial key>``, with ``model``'s soft order.
    """
    from softorder.experiments.tensorboard_log import eval_logger

    last_print = -math.inf
    tensorboard = eval_logger(trial.key, model, iterations)

    def report(record: dict[str, Any]) -> None:
        nonlocal last_print
        if also is not None:
            also(record)
        if tensorboard is not None:
            tensorboard(record)
        iteration = int(record.get("iteration", 0))
        now = time.monotonic()
        if iteration < iterations and now - last_print < every_s:
            return
        last_print = now
        parts = [f"iteration {iteration}/{iterations}"]
        if isinstance(record.get("train_loss"), float) and not math.isnan(record["train_loss"]):
            parts.append(f"train loss {record['train_loss']:.4g}")
        split = next((s for s in ("test", "val", "train") if f"{s}_error" in record), None)
        if split is not None:
            error = record[f"{split}_error"]
            parts.append(f"{split} error {100 * error:.2f}%" if percent else f"{split} error {error:.4g}")
        elapsed = record.get("elapsed_s")
        if elapsed and iteration:
            parts.append(f"{elapsed / iteration:.3g} s/it")
        print(f"[{experiment}] {trial.key}: {', '.join(parts)}", file=out or sys.stderr, flush=True)

    return report


def describe_error(exc: BaseException) -> str:
    """``Type: message``, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_trials_locally(
    experiment: Experiment,
    config: Mapping[str, Any],
    trials: Sequence[Trial],
    out_dir: Path,
    data_dir: Path | None,
    out: TextIO | None = None,
    *,
    max_retries: int = 0,
    keep_going: bool = False,
) -> list[TrialFailure]:
    """Run the pending trials one after another in this process.

    A trial that raises is run again up to ``max_retries`` times (continuing from its checkpoint).
    After that it is reported and the next trial runs when ``keep_going`` (a sweep), or the error
    propagates (``softorder reproduce``).
    """
    out = out or sys.stderr
    failures: list[TrialFailure] = []
    for i, trial in enumerate(trials, 1):
        trial_dir = trial_dir_of(out_dir, trial)
        with trial_lock(trial_dir) as ours:
            if not ours:
                print(f"[{experiment.name}] trial {i}/{len(trials)}: {trial.key} is running in another process; skipped", file=out, flush=True)
                continue
            if (trial_dir / RESULT_NAME).exists():
                print(f"[{experiment.name}] trial {i}/{len(trials)}: {trial.key} was finished by another process", file=out, flush=True)
                continue
            print(f"[{experiment.name}] trial {i}/{len(trials)}: {trial.key}", file=out, flush=True)
            failure = _run_with_retries(experiment, config, trial, out_dir, data_dir, out, max_retries=max_retries, keep_going=keep_going)
        if failure is not None:
            failures.append(failure)
    return failures


def _run_with_retries(
    experiment: Experiment,
    config: Mapping[str, Any],
    trial: Trial,
    out_dir: Path,
    data_dir: Path | None,
    out: TextIO,
    *,
    max_retries: int,
    keep_going: bool,
) -> TrialFailure | None:
    """One trial with up to ``max_retries`` retries; its failure, if it failed for good and ``keep_going``."""
    for attempt in range(1, max_retries + 2):
        try:
            run_one_trial(experiment, config, trial, out_dir, data_dir)
            return None
        except Exception as exc:
            last = attempt > max_retries
            if last and not keep_going:
                raise
            error = describe_error(exc)
            if not last:
                print(f"[{experiment.name}] trial {trial.key} failed (attempt {attempt}/{max_retries + 1}): {error}; retrying", file=out, flush=True)
                continue
            record_failure(out_dir, trial, "".join(traceback.format_exception(exc)))
            return TrialFailure(trial.key, error, attempt)
    return None


@contextmanager
def trial_lock(trial_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock on a trial's directory while it runs.

    Yields False, holding nothing, when another process holds it: two ``softorder reproduce`` into
    one ``--out`` then share the trials instead of training one twice. Where ``fcntl`` is missing
    (Windows) it always yields True.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield True
        return
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trial_dir_of(out_dir: Path, trial: Trial) -> Path:
    """Where a trial writes: ``out_dir/trials/<trial.dirname>``."""
    return Path(out_dir) / "trials" / trial.dirname


def run_one_trial(experiment: Experiment, config: Mapping[str, Any], trial: Trial, out_dir: Path, data_dir: Path | None, *, write_result: bool = True) -> dict[str, Any]:
    """Run a trial into ``out_dir/trials/<trial>`` and write its result atomically.

    ``write_result=False`` runs it without writing ``result.json`` (the non-zero ranks of a
    data-parallel run). A successful trial clears the ``error.txt`` of an earlier failure.
    """
    trial_dir = trial_dir_of(out_dir, trial)
    trial_dir.mkdir(parents=True, exist_ok=True)
    with torch_threads(config.get("threads")):  # each preset's threads setting, restored afterwards
        result = experiment.run_trial(config, trial, trial_dir, data_dir)
    if write_result:
        save_result(out_dir, trial, result)
    return result


def save_result(out_dir: Path, trial: Trial, result: dict[str, Any]) -> None:
    """Write a trial's ``result.json`` atomically (marking it finished) and clear an old ``error.txt``."""
    trial_dir = trial_dir_of(out_dir, trial)
    atomic_write_json(trial_dir / RESULT_NAME, {"key": trial.key, "params": dict(trial.params), "result": result})
    (trial_dir / ERROR_NAME).unlink(missing_ok=True)


def record_failure(out_dir: Path, trial: Trial, text: str) -> None:
    """Keep the full error of a trial that failed for good in its ``error.txt``."""
    atomic_write_bytes(trial_dir_of(out_dir, trial) / ERROR_NAME, text.encode())


def finished_results(out_dir: Path, trials: Iterable[Trial]) -> dict[str, dict[str, Any]]:
    """``{trial.key: result}`` for every trial whose result file exists."""
    results = {}
    for trial in trials:
        path = out_dir / "trials" / trial.dirname / RESULT_NAME
        if path.exists():
            try:
                results[trial.key] = json.loads(path.read_text())["result"]
            except (json.JSONDecodeError, KeyError, OSError) as error:
                raise ValueError(f"{path} is damaged ({type(error).__name__}); delete it to run that trial again") from None
    return results


def select_trials(trials: Sequence[Trial], keys: Sequence[str] | None) -> list[Trial]:
    """The trials named by ``keys`` (all of them for ``None``); an unknown key is refused with a hint."""
    if keys is None:
        return list(trials)
    by_key = {t.key: t for t in trials}
    for key in keys:
        if key not in by_key:
            raise ValueError(f"no trial {key!r}{did_you_mean(key, by_key)} ({len(by_key)} trials, e.g. {', '.join(list(by_key)[:3])})")
    wanted = set(keys)
    return [t for t in trials if t.key in wanted]


def run_experiment(
    experiment: Experiment,
    out_dir: str | Path,
    *,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    data_dir: Path | None = None,
    executor: TrialExecutor | None = None,
    trial_keys: Sequence[str] | None = None,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run (or resume) an experiment into ``out_dir`` and return its summary.

    A directory made by an earlier run must have the same resolved configuration: a changed
    setting would mix incompatible trials, so it is refused with the differing keys named.
    ``trial_keys`` runs only those trials (the summary still covers every finished one). Trials
    that failed for good are listed in the summary's ``trials_failed``. Progress goes to ``out``
    (default: standard error).
    """
    out = out or sys.stderr
    config = {**experiment.resolve_config(quick, overrides), "experiment": experiment.name}
    out_dir = check_writable_dir(Path(out_dir))
    config_path = out_dir / "config.json"
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        changed = differing_keys(previous, config, ignore=("data_dir",))
        if changed:
            raise ValueError(f"{out_dir} holds a run with other settings ({', '.join(changed)}); use another --out or the same settings")
    atomic_write_json(config_path, config)
    trials = experiment.trials(config)
    selected = select_trials(trials, trial_keys)
    done = finished_results(out_dir, trials)
    pending = [t for t in selected if t.key not in done]
    print(f"[{experiment.name}] {len(trials)} trials, {len(done)} already finished, {len(pending)} to run -> {out_dir}", file=out, flush=True)
    run_trials = executor or functools.partial(run_trials_locally, out=out)
    failures = list(run_trials(experiment, config, pending, out_dir, data_dir) or [])
    for failure in failures:
        print(f"[{experiment.name}] trial {failure.key} failed after {failure.attempts} attempt(s): {failure.error}", file=out, flush=True)
    if failures:
        print(f"[{experiment.name}] {len(failures)} trial(s) failed (errors in their error.txt); rerun the same command to retry them", file=out, flush=True)
    results = finished_results(out_dir, trials)
    write_results_csv(out_dir / RESULTS_CSV_NAME, experiment, config, trials, results)
    summary = experiment.summarize(config, results, out_dir)
    summary = {
        "experiment": experiment.name,
        "trials_finished": len(results),
        "trials_total": len(trials),
        "trials_failed": [asdict(f) for f in failures],
        **summary,
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def results_table(experiment: Experiment, config: Mapping[str, Any], trials: Sequence[Trial], results: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of ``results.csv``: for each finished trial (in the grid's order) its
    :meth:`Experiment.tidy_rows`, each led by the trial's key (``trial_key``) and parameters."""
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {"trial_key": None}
    for trial in trials:
        if trial.key not in results:
            continue
        columns.update((k, None) for k in trial.params if k not in TIDY_COLUMNS)
        for row in experiment.tidy_rows(config, trial, results[trial.key]):
            rows.append({"trial_key": trial.key, **trial.params, **row})
    columns.update((k, None) for k in TIDY_COLUMNS)
    for row in rows:
        columns.update((k, None) for k in row)
    return list(columns), rows


def write_results_csv(path: Path, experiment: Experiment, config: Mapping[str, Any], trials: Sequence[Trial], results: Mapping[str, Mapping[str, Any]]) -> None:
    """Write :func:`results_table` to ``path`` atomically (a header alone while no trial has finished).
    Empty cells: no value (e.g. a loss the preset does not keep); lists and dicts are written as JSON."""
    columns, rows = results_table(experiment, config, trials, results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and the half-width of a t-based confidence interval."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci95": float("nan"), "n": 0}
    if x.size == 1:
        return {"mean": float(x[0]), "std": 0.0, "ci95": float("nan"), "n": 1}
    from scipy import stats  # scikit-learn's own dependency

    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * std / math.sqrt(x.size))
    return {"mean": float(x.mean()), "std": std, "ci95": half, "n": int(x.size)}
