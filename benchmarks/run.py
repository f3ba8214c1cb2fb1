"""Speed and memory of softorder, measured side by side in one run: the one entry point of benchmarks/.

    python benchmarks/run.py [--quick] [--only a,b] [--threads 1] [--out benchmarks/results/results.json] [--default-allocator]
    python benchmarks/run.py report [benchmarks/results/results.json]
    python benchmarks/run.py compile-check [mnist|celeba] [--reps 7] [--threads 1]

Without a command it runs the benchmark: ``--quick`` (about 2 minutes) uses fewer repetitions,
Omniglot with 10 tasks, and leaves out the environment section; the full run takes about 6 minutes
on an idle 2-CPU machine at 1 thread (8-9 minutes on a loaded one). Sections (``--only`` picks
some): peak, mnist, celeba, omniglot, omniglot50, sparse, growth, ablations, overhead, threads, environment.
Every comparison interleaves its candidates (see lib/harness.py); times are medians, speeds are
ratios of medians. Prints tables and writes every number to the JSON file.

``report`` prints a results file as the markdown tables of docs/performance.md; ``compile-check``
measures torch.compile against eager (not a section: compiling takes a minute). The code is in
lib/ (imported as ``lib``: Python puts this script's folder on ``sys.path``); benchmarks/README.md
describes it all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SECTIONS = ("peak", "mnist", "celeba", "omniglot", "omniglot50", "sparse", "growth", "ablations", "overhead", "threads", "environment")
COMMANDS = ("report", "compile-check")  # "worker" is left out of the help: the environment section starts it


def parser() -> argparse.ArgumentParser:
    usage = ("%(prog)s [--quick] [--only SECTIONS] [--threads N] [--out FILE] [--default-allocator]\n"
             "       %(prog)s report [FILE]\n"
             "       %(prog)s compile-check [mnist|celeba] [--reps N] [--threads N]")
    ap = argparse.ArgumentParser(usage=usage, description=__doc__.splitlines()[0],
                                 epilog="See benchmarks/README.md for what each section measures and how long it takes.")
    bench = ap.add_argument_group("the benchmark (no command)")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller Omniglot (about 1-2 minutes)")
    bench.add_argument("--out", type=Path, default=None, metavar="FILE", help="JSON file for every number (default: benchmarks/results/results.json)")
    bench.add_argument("--threads", type=int, default=None, metavar="N", help="intra-op threads for everything but the threads section (default 1)")
    bench.add_argument("--default-allocator", action="store_true",
                       help="leave glibc's allocator as it is (by default it is tuned as the softorder command tunes it)")
    bench.add_argument("--only", default=None, metavar="SECTIONS", help=f"comma-separated sections of {','.join(SECTIONS)} "
                       "(default: all; with --quick all but environment, which starts worker processes)")
    sub = ap.add_subparsers(dest="command", title="commands", metavar="{" + ",".join(COMMANDS) + "}",
                            description="instead of the benchmark, run.py can run one of these")
    report = sub.add_parser("report", prog=f"{ap.prog} report", help="print a results JSON file as markdown tables (for docs/performance.md)",
                            description="Markdown tables from a results JSON file written by the benchmark.")
    report.add_argument("file", nargs="?", type=Path, default=RESULTS / "results.json", metavar="FILE",
                        help="default: benchmarks/results/results.json")
    check = sub.add_parser("compile-check", prog=f"{ap.prog} compile-check", help="torch.compile against eager on one setting (slow: compiling takes a minute)",
                           description="Does torch.compile help soft ordering on this CPU? Interleaves the eager core "
                           "with the compiled one, fused and unfused.")
    check.add_argument("setting", nargs="?", default="mnist", choices=("mnist", "celeba"))
    check.add_argument("--reps", type=int, default=7, metavar="N", help="interleaved rounds (default 7)")
    check.add_argument("--threads", type=int, default=1, dest="check_threads", metavar="N",
                       help="intra-op threads (default 1)")
    worker = sub.add_parser("worker", prog=f"{ap.prog} worker")  # one process of the environment section, fed over a pipe (lib/worker.py)
    worker.add_argument("worker_threads", type=int, nargs="?", default=1)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.command is not None:
        given = [name for name, value in (("--quick", args.quick or None), ("--out", args.out), ("--threads", args.threads),
                                          ("--default-allocator", args.default_allocator or None), ("--only", args.only))
                 if value is not None]
        if given:
            ap.error(f"{', '.join(given)}: options of the benchmark run, not of the {args.command} command")
    if args.command == "report":
        from lib import report

        report.main(args.file)
        return 0
    if args.command == "compile-check":
        from lib import compile_check

        compile_check.main(args.setting, args.reps, args.check_threads)
        return 0
    if args.command == "worker":
        from lib import worker

        worker.main(args.worker_threads)
        return 0

    if args.only is None:
        args.only = ",".join(s for s in SECTIONS if not (args.quick and s == "environment"))
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    from lib import sections

    command = " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]) if argv is None else argv
    return sections.run(only, args.quick, 1 if args.threads is None else args.threads, args.default_allocator,
                        RESULTS / "results.json" if args.out is None else args.out, command)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # the reader went away (run.py report | head): no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1)
