"""``softorder data``: check every dataset in the data directory and print a table.

Nothing is downloaded or written. MNIST, UCI and Omniglot are parsed in full and checksum-verified;
for CelebA the annotation files are parsed and the images present are counted (not decoded).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from softorder.data.errors import DataCorruptError, DataMissingError
from softorder.data.paths import resolve_data_dir


@dataclass
class CheckResult:
    """One dataset's line of the table. ``status`` is ``ok``, ``missing`` or ``corrupt``."""

    dataset: str
    status: str
    tasks: str = "-"
    train: int | None = None
    val: int | None = None
    test: int | None = None
    reason: str = ""


def _present(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    return [p for p in paths if p.is_file()], [p for p in paths if not p.is_file()]


def _missing(dataset: str, missing: list[Path], total: int, tasks: str = "-", hint: str = "") -> CheckResult:
    names = ", ".join(p.name for p in missing)
    what = "no files" if len(missing) == total else f"{len(missing)} of {total} files"
    return CheckResult(dataset, "missing", tasks, reason=f"{what} ({names})" + (f"; {hint}" if hint else ""))


def check_mnist(root: Path, verify: bool = True) -> CheckResult:
    from softorder.data import mnist

    paths = []
    for spec in mnist.FILES.values():
        gz = root / mnist.DATASET / spec.name
        plain = gz.with_name(spec.name.removesuffix(".gz"))
        paths.append(plain if not gz.exists() and plain.is_file() else gz)
    present, missing = _present(paths)
    if missing:
        for key, path in zip(mnist.FILES, paths):
            if path.is_file():
                mnist._read(key, path, verify=verify)  # raises DataCorruptError
        return _missing("mnist", missing, len(paths))
    arrays = mnist.load_mnist(root, download=False, verify=verify)
    return CheckResult(
        "mnist", "ok", "45 pairs", len(arrays.train_labels), None, len(arrays.test_labels),
        "digit pairs drawn from the 45 (train / test = all images)",
    )


def check_uci(root: Path, verify: bool = True) -> CheckResult:
    from softorder.data import uci
    from softorder.data.download import verify_file

    paths = [spec.path(root) for spec in uci.FILES.values()]
    present, missing = _present(paths)
    for name, spec in uci.FILES.items():
        path = spec.path(root)
        if path.is_file():
            if verify:
                verify_file(spec, path)
            uci.parse_uci_file(uci.source(name), path)
    if missing:
        return _missing("uci", missing, len(paths), tasks=f"{len(uci.SOURCES) - len(missing)} of 10")
    data = uci.uci_tasks(root, download=False, verify=verify)
    sizes = data.split_sizes()
    wrong = [
        f"{s.name}: {sum(sizes[s.name].values())} rows"
        for s in uci.SOURCES
        if sum(sizes[s.name].values()) != s.samples
    ]
    if wrong and verify:
        raise DataCorruptError("row counts differ from the paper's Fig. 5a: " + "; ".join(wrong))
    return CheckResult(
        "uci", "ok", str(len(sizes)),
        sum(v["train"] for v in sizes.values()), sum(v["val"] for v in sizes.values()), None,
        "80/20 split, split_seed=0",
    )


def check_omniglot(root: Path, verify: bool = True) -> CheckResult:
    from softorder.data import omniglot
    from softorder.data.download import verify_file

    folder = root / omniglot.DATASET
    npz = [folder / omniglot.NPZ_FILES[p].name for p in omniglot.PARTS] + [folder / omniglot.JSON_NAME]
    zips = [omniglot.ZIP_FILES[p].path(root) for p in omniglot.PARTS]
    present, missing = _present(npz)
    if missing:
        if all(z.is_file() for z in zips):
            for p in omniglot.PARTS:
                if verify:
                    verify_file(omniglot.ZIP_FILES[p], omniglot.ZIP_FILES[p].path(root))
            return CheckResult(
                "omniglot", "ok", "50", reason="official zips present: converted to .npz on first use"
            )
        if npz[-1].is_file():
            omniglot._read_catalog(npz[-1])
        for part in omniglot.PARTS:
            if (folder / omniglot.NPZ_FILES[part].name).is_file():
                omniglot.load_part(root, part, download=False, verify=verify)
        return _missing(
            "omniglot", missing, len(npz),
            hint="or put the official images_background.zip / images_evaluation.zip there "
            "(converted on first use)",
        )
    summary = omniglot.omniglot_summary(root, verify=verify)
    notes = []
    try:
        omniglot.map_paper_order(summary["names"])
        notes.append("all 50 alphabets of the paper's order found")
    except KeyError as exc:
        notes.append(str(exc.args[0]))
    chars, drawings = summary["characters"], summary["drawings"]
    if len(drawings) != 1:
        raise DataCorruptError(f"Omniglot characters have different numbers of drawings: {drawings}")
    n_test = int(round(0.1 * drawings[0]))
    notes.insert(0, f"{chars:,} characters x {drawings[0]} drawings; sizes for test_fraction=0.1")
    return CheckResult(
        "omniglot", "ok", str(summary["alphabets"]), chars * (drawings[0] - n_test), None, chars * n_test,
        "; ".join(notes),
    )


def check_celeba(root: Path, verify: bool = True) -> CheckResult:
    from softorder.data import celeba
    from softorder.data.download import verify_file

    paths = [celeba.ATTR_FILE.path(root), celeba.PARTITION_FILE.path(root)]
    present, missing = _present(paths)
    if missing:
        for spec in (celeba.ATTR_FILE, celeba.PARTITION_FILE):
            if spec.path(root).is_file() and verify:
                verify_file(spec, spec.path(root))
        return _missing("celeba", missing, len(paths), hint=f"download by hand: {celeba._PROJECT_PAGE}")
    s = celeba.celeba_summary(root, verify=verify)
    tasks = f"{s['attributes']}" + (" + landmarks" if s["landmarks"] else "")
    if s["images_present"] == s["images"]:
        note = "all images present"
    elif s["images_present"] == 0:
        note = f"no images in {celeba.IMAGE_DIR}/ (extract {celeba.IMAGES_ZIP.name} there)"
    else:
        note = (
            f"only {s['images_present']:,} of {s['images']:,} images present: "
            "smoke runs only (available_only=True)"
        )
    if not s["landmarks"]:
        note += f"; no {celeba.LANDMARKS_FILE.name}"
    part = s["partition"]
    return CheckResult("celeba", "ok", tasks, part["train"], part["val"], part["test"], note)


CHECKS: dict[str, Callable[[Path, bool], CheckResult]] = {
    "mnist": check_mnist,
    "uci": check_uci,
    "omniglot": check_omniglot,
    "celeba": check_celeba,
}


def check_dataset(name: str, root: Path, verify: bool = True) -> CheckResult:
    """Check one dataset, turning data errors into a ``missing`` / ``corrupt`` result."""
    try:
        return CHECKS[name](root, verify)
    except DataCorruptError as exc:
        return CheckResult(name, "corrupt", reason=str(exc))
    except DataMissingError as exc:
        return CheckResult(name, "missing", reason=str(exc))
    except OSError as exc:  # a file present but not readable (permissions, a folder in its place...)
        where = f" {exc.filename}" if exc.filename else ""
        return CheckResult(name, "unreadable", reason=f"cannot read{where}: {exc.strerror or exc}")


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def format_table(results: list[CheckResult]) -> str:
    header = ("dataset", "tasks", "train", "val", "test", "status")
    rows = []
    for r in results:
        status = f"{r.status}: {r.reason}" if r.reason else r.status
        rows.append((r.dataset, r.tasks, _fmt(r.train), _fmt(r.val), _fmt(r.test), status))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:-1])]
    lines = []
    for row in (header, *rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row[:-1], widths))]
        lines.append("  ".join(cells) + "  " + row[-1])
    return "\n".join(lines)


def run_check(
    data_dir: str | os.PathLike[str] | None = None, out: TextIO | None = None, *, verify: bool = True
) -> int:
    """Check every dataset under ``data_dir``; print the table to ``out`` (default stdout).

    Returns 1 if a file that is present is corrupt, else 0 (missing datasets are not an error).
    ``verify=False`` checks structure only, not the official checksums (for test fixtures).
    """
    out = sys.stdout if out is None else out
    root = resolve_data_dir(data_dir)
    print(f"data directory: {root}" + ("" if root.is_dir() else " (does not exist)"), file=out)
    results = [check_dataset(name, root, verify) for name in CHECKS]
    print(format_table(results), file=out)
    corrupt = [r.dataset for r in results if r.status == "corrupt"]
    if corrupt:
        print(f"corrupt: {', '.join(corrupt)} (delete the files named above to download them again)", file=out)
    unreadable = [r.dataset for r in results if r.status == "unreadable"]
    if unreadable:
        print(f"unreadable: {', '.join(unreadable)} (check the permissions of the files named above)", file=out)
    return 1 if corrupt or unreadable else 0
