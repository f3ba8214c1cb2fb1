"""The ``softorder`` command line: the demo, data checks and the paper's experiments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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

    run_demo(args.out, iterations=args.iterations, seed=args.seed, progress=not args.no_progress)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from softorder.data.check import run_check

    return run_check(_data_dir(args.data_dir))


def cmd_reproduce(args: argparse.Namespace) -> int:
    from softorder.experiments import get_experiment
    from softorder.experiments.runner import run_experiment

    try:
        experiment = get_experiment(args.name)
    except KeyError as exc:
        raise SystemExit(f"softorder: {exc.args[0]}") from None
    out = Path(args.out or f"runs/{args.name}{'-quick' if args.quick else ''}")
    overrides = _parse_overrides(args.set or [])
    if args.trials is not None:
        overrides["trials"] = args.trials
    summary = run_experiment(experiment, out, quick=args.quick, overrides=overrides, data_dir=_data_dir(args.data_dir))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_trial"}, indent=2)[:4000])
    print(f"results in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softorder", description="Deep multitask learning with soft layer ordering.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train soft and parallel ordering on scikit-learn's bundled tasks (about a minute)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--iterations", type=int, default=4000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="check every dataset present in the data directory")
    data.add_argument("--data-dir", help="data directory (default: $SOFTORDER_DATA or the user cache)")
    data.set_defaults(func=cmd_data)

    rep = sub.add_parser("reproduce", help="run one of the paper's experiments")
    rep.add_argument("name", help="random-tasks, mnist, visualize, uci, omniglot or celeba")
    rep.add_argument("--quick", action="store_true", help="reduced settings for two CPU cores (about ten minutes)")
    rep.add_argument("--out", help="run directory (default: runs/NAME[-quick]); rerun to resume")
    rep.add_argument("--data-dir", help="data directory (default: $SOFTORDER_DATA or the user cache)")
    rep.add_argument("--trials", type=int, help="number of trials per setting")
    rep.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting of the preset (repeatable)")
    rep.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("softorder: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"softorder: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
