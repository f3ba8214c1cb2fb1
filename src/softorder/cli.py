"""The ``softorder`` command line: the demo, data checks, your own tasks and the paper's experiments.

``reproduce`` runs an experiment's trials one after another, ``sweep`` runs them as Ray tasks
(locally or on a cluster), and ``train`` trains them data-parallel under torchrun; all three write
the same run directory, so any of them resumes what another started.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from softorder.orderings import ORDERINGS


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON where they parse, else kept as strings."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"softorder: --set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def _data_dir(value: str | None) -> Path:
    from softorder.data import resolve_data_dir

    return resolve_data_dir(value)


def cmd_demo(args: argparse.Namespace) -> int:
    from softorder.experiments.demo import run_demo

    run_demo(args.out, iterations=args.iterations, seeds=args.seeds, seed=args.seed, progress=not args.no_progress)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from softorder.data.check import run_check

    return run_check(_data_dir(args.data_dir))


def _tensorboard(args: argparse.Namespace):  # -> a context manager
    """``--tensorboard DIR``: training runs inside the returned block log to DIR/<trial or ordering>."""
    from softorder.experiments.tensorboard_log import summary_writer_class, tensorboard_logging

    folder = getattr(args, "tensorboard", None)
    if folder is not None:
        try:
            summary_writer_class()
        except ImportError as exc:
            raise SystemExit(f"softorder: --tensorboard: {exc}") from None
    return tensorboard_logging(folder)


def cmd_fit(args: argparse.Namespace) -> int:
    from softorder.experiments.user_tasks import train_user_tasks

    labels = _per_file(args.label, args.files, "--label")
    kinds = _per_file(args.kind, args.files, "--kind")
    with _tensorboard(args):
        train_user_tasks(
            args.files,
            args.out,
            labels=labels,
            kinds=kinds,
            from_run=args.from_run,
            orderings=tuple(args.ordering) if args.ordering else None,
            width=args.width,
            depth=args.depth,
            dropout=args.dropout,
            identity_layer=args.identity_layer,
            iterations=args.iterations,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            progress=not args.no_progress,
        )
    return 0


def _per_file(values: list[str] | None, files: list[str], flag: str) -> list[str] | None:
    """A repeatable option given once for all files, or once per file."""
    if not values:
        return None
    if len(values) == 1:
        return values * len(files)
    if len(values) != len(files):
        raise ValueError(f"{flag} was given {len(values)} times for {len(files)} files: give it once for all, or once per file")
    return values


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import io

    from softorder._io import atomic_write_bytes
    from softorder.experiments.user_tasks import predict_csv

    header, rows = predict_csv(args.run, args.file, args.task, ordering=args.ordering)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if args.out:
        atomic_write_bytes(args.out, buf.getvalue().encode())
        print(f"wrote {len(rows)} predictions to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def _experiment(name: str):  # -> Experiment
    """A preset by name, or ``package.module:NAME`` for an Experiment of your own."""
    from softorder.experiments import get_experiment
    from softorder.experiments.runner import Experiment

    if ":" in name:
        import importlib

        module_name, _, attr = name.partition(":")
        try:
            experiment = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"softorder: cannot load experiment {name!r}: {exc}") from None
        if isinstance(experiment, type):
            experiment = experiment()
        if not isinstance(experiment, Experiment):
            raise SystemExit(f"softorder: {name!r} is a {type(experiment).__name__}, not an Experiment")
        return experiment
    try:
        return get_experiment(name)
    except KeyError as exc:
        raise SystemExit(f"softorder: {exc.args[0]}") from None


def _executor(args: argparse.Namespace):  # -> TrialExecutor
    """How the trials run: one after another (reproduce) or as Ray tasks (sweep)."""
    from softorder.experiments.runner import run_trials_locally

    if args.command != "sweep":
        return run_trials_locally
    from softorder.distributed.sweep import sweep_executor

    return sweep_executor(
        address=args.address,
        num_cpus=args.num_cpus,
        cpus_per_trial=args.cpus_per_trial,
        max_retries=args.max_retries,
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``reproduce``, ``sweep`` and ``train``: the same run directory, different ways to run trials."""
    from softorder.experiments.runner import run_experiment

    experiment = _experiment(args.name)
    out = Path(args.out or f"runs/{experiment.name or args.name}{'-quick' if args.quick else ''}")
    overrides = _parse_overrides(args.set or [])
    if args.trials is not None:
        overrides["trials"] = args.trials
    common = dict(quick=args.quick, overrides=overrides, data_dir=_data_dir(args.data_dir), trial_keys=args.trial)
    with _tensorboard(args):
        if args.command == "train":
            from softorder.distributed.torchrun import run_experiment_data_parallel

            summary = run_experiment_data_parallel(experiment, out, **common)
            if summary is None:  # a non-zero rank: rank 0 reports
                return 0
        else:
            summary = run_experiment(experiment, out, executor=_executor(args), **common)
    _print_summary(summary, out)
    failed = summary.get("trials_failed") or []
    if failed:
        print(f"softorder: {len(failed)} trial(s) failed: {', '.join(f['key'] for f in failed)}; rerun to retry them", file=sys.stderr)
        return 1
    return 0



def _print_summary(summary: dict, out: Path) -> None:
    """The run's results table when the experiment writes one, else the summary's short fields."""
    table = out / "results_table.md"
    if table.is_file():
        print(table.read_text().rstrip())
    else:
        for key, value in summary.items():
            if isinstance(value, (str, int, float, bool)):
                print(f"{key}: {value}")
        lines = list(_mean_ci_lines(summary))
        for line in lines[:60]:
            print(line)
        if len(lines) > 60:
            print(f"... {len(lines) - 60} more in summary.json")
    figures = summary.get("figures") or []
    if figures:
        print("figures: " + ", ".join(str(out / f) for f in figures))
    print(f"results in {out} (summary.json has every number; results.csv one row per trial, method, task and split)")


def _mean_ci_lines(node: object, path: tuple[str, ...] = ()) -> Iterator[str]:
    """``a / b / c: mean ± ci95 (n=...)`` for every mean-and-interval entry of a summary."""
    if isinstance(node, dict):
        if "mean" in node and "ci95" in node:
            yield f"{' / '.join(path)}: {node['mean']:.4g} ± {node['ci95']:.2g} (n={node.get('n', '?')})"
            return
        for key, value in node.items():
            yield from _mean_ci_lines(value, (*path, str(key)))


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from softorder.experiments import PRESETS

    p.add_argument("name", help=f"a preset: {', '.join(PRESETS)} (or package.module:EXPERIMENT for your own)")
    p.add_argument("--quick", action="store_true", help="reduced settings for two CPU cores (about ten minutes)")
    p.add_argument("--out", help="run directory (default: runs/NAME[-quick]); rerun to resume")
    p.add_argument("--data-dir", help="data directory (default: $SOFTORDER_DATA or the user cache)")
    p.add_argument("--trials", type=int, help="number of trials per setting")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting of the preset (repeatable)")
    p.add_argument("--trial", action="append", metavar="KEY", help="run only this trial (repeatable; default: all)")


def _add_tensorboard_option(p: argparse.ArgumentParser, runs: str) -> None:
    p.add_argument("--tensorboard", metavar="DIR", help=f"log training to TensorBoard under DIR/<{runs}>: loss, each split's error "
                   "(mean and per task), soft-order weights (pip install 'softorder[tensorboard]')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softorder", description="Deep multitask learning with soft layer ordering.")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        help="torch intra-op threads (default: PyTorch's, one per core); 1 is faster on a busy shared machine "
        "(docs/performance.md). Experiment trials use their preset's threads setting (--set threads=N) where it is set",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_data, _add_experiment_commands, _add_fit, _add_predict, _add_records):
        add(sub)
    return parser


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="single-task, parallel and soft ordering on scikit-learn's bundled tasks, 3 seeds each (about a minute)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--iterations", type=_positive_int, default=None, help="iterations per run (default: 600)")
    demo.add_argument("--seeds", type=_positive_int, default=3, help="seeds per ordering (default: 3)")
    demo.add_argument("--seed", type=int, default=0, help="the first seed (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=cmd_demo)


def _add_data(sub: Any) -> None:
    data = sub.add_parser("data", help="check every dataset present in the data directory")
    data.add_argument("--data-dir", help="data directory (default: $SOFTORDER_DATA or the user cache)")
    data.set_defaults(func=cmd_data)


def _add_experiment_commands(sub: Any) -> None:
    """reproduce, sweep and train: one experiment's trials, here, on Ray, or data-parallel."""
    rep = sub.add_parser("reproduce", help="run one of the paper's experiments")
    _add_run_options(rep)
    _add_tensorboard_option(rep, "trial")
    rep.set_defaults(func=cmd_run)
    sweep = sub.add_parser(
        "sweep",
        help="run an experiment's trials in parallel as Ray tasks (pip install softorder[distributed])",
        description="Run the trials as Ray tasks on a local Ray started here, or on a cluster (--address); "
        "a failed trial is retried, then reported. Without Ray, the trials run one after another.",
    )
    _add_run_options(sweep)
    sweep.add_argument("--address", help="Ray cluster to use (e.g. HEAD_IP:6379, or auto; default: $RAY_ADDRESS, else a local Ray)")
    sweep.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all of this machine's)")
    sweep.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs (and torch threads) per trial (default: 1)")
    sweep.add_argument("--max-retries", type=int, default=2, help="times a failed trial is run again before it is reported (default: 2)")
    sweep.set_defaults(func=cmd_run)
    train = sub.add_parser(
        "train",
        help="train an experiment's trials data-parallel: run under torchrun (docs/distributed.md)",
        description="Every process of a torchrun job trains the same trials, each process a share of every batch: "
        "torchrun --nproc_per_node N -m softorder.distributed EXPERIMENT [--trial KEY]. Alone, trains them in this process.",
    )
    _add_run_options(train)
    _add_tensorboard_option(train, "trial")
    train.set_defaults(func=cmd_run)


def _add_fit(sub: Any) -> None:
    fit = sub.add_parser(
        "fit",
        help="train the orderings on your own tasks: one CSV file per task",
        description="Each CSV file is a task: numeric feature columns and a label column (the last unless --label). "
        "Trains each ordering, prints validation error per task, writes checkpoints (rerun to resume), a saved model "
        "per ordering and figures to --out.",
    )
    fit.add_argument("files", nargs="+", help="CSV files, one per task (named after the file)")
    fit.add_argument("--out", default="runs/fit", help="output directory (default: runs/fit)")
    fit.add_argument("--label", action="append", help="label column name or index, once for all files or once per file")
    fit.add_argument("--kind", action="append", choices=["binary", "multiclass", "regression"],
                     help="what each task predicts, once for all files or once per file (default: from the labels; "
                     "a numeric label with more than 20 values must be given one)")
    fit.add_argument("--from", dest="from_run", metavar="RUN", help="reuse the shared layers trained in RUN (a softorder fit --out folder), "
                     "frozen: learn only the new tasks' soft order, encoders and decoders")
    fit.add_argument("--ordering", action="append", choices=list(ORDERINGS), help="repeatable (default: parallel and soft; soft with --from)")
    for flag, kind, default in (("--width", int, 32), ("--depth", int, 4), ("--dropout", float, 0.2), ("--iterations", int, 2000),
                                ("--batch-size", int, 32), ("--lr", float, 1e-3), ("--seed", int, 0)):
        fit.add_argument(flag, type=kind, default=default, help=f"(default: {default})" + (" rows per task per iteration" if flag == "--batch-size" else ""))
    fit.add_argument("--identity-layer", action="store_true", help="add the identity layer to soft ordering")
    fit.add_argument("--no-progress", action="store_true")
    _add_tensorboard_option(fit, "ordering")
    fit.set_defaults(func=cmd_fit)


def _add_predict(sub: Any) -> None:
    predict = sub.add_parser("predict", help="predict with a model trained by softorder fit, one output row per input row")
    predict.add_argument("run", help="a softorder fit --out folder, or one saved model's folder")
    predict.add_argument("file", help="a CSV file with the task's feature columns (its label column may be left out)")
    predict.add_argument("--task", required=True, help="the task to predict (named after its training file)")
    predict.add_argument("--ordering", help="which ordering's model (default: the lowest validation error)")
    predict.add_argument("--out", help="write the predictions here (default: standard output)")
    predict.set_defaults(func=cmd_predict)


def _add_records(sub: Any) -> None:
    records = sub.add_parser("records", help="rebuild an experiment's tables and figures from its committed trial records")
    records.add_argument("experiment", choices=["omniglot"], help="whose records (omniglot: the paper's protocol, Fig. 6c)")
    records.add_argument("folder", help="the records' folder, e.g. results/omniglot")
    records.add_argument("--out", default=None, help="where to write the tables and figures (default: the records' folder)")
    records.set_defaults(func=cmd_records)


def cmd_records(args: argparse.Namespace) -> int:
    from softorder.experiments.omniglot_records import write_protocol_summary

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of trial records")
    for path in write_protocol_summary(folder, Path(args.out) if args.out else folder):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from softorder.runtime import tune_cpu_allocator
    from softorder.train import TrainingDiverged

    args = build_parser().parse_args(argv)
    tune_cpu_allocator()  # keeps a training step's freed memory mapped (docs/performance.md)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("softorder: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ConnectionError) as exc:
        print(f"softorder: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"softorder: training diverged: {exc}; try a lower --lr", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
