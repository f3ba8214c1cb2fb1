"""Trial records: one small JSON file per finished trial, kept in the repository.

A long grid (Omniglot at the paper's protocol takes days of CPU) is finished piece by piece over
sessions whose machines do not keep files. Each finished trial therefore writes a record, a few
kilobytes, that is committed; a preset given a records directory skips every trial whose record is
already there, and the tables and figures are rebuilt from the records alone. A record names the
settings that make trials comparable; one whose settings differ from the run asking for it is
refused, never mixed in.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from softorder._io import atomic_write_json, differing_keys

RECORD_VERSION = 1


def record_path(records_dir: Path, fields: Mapping[str, Any], name_keys: Sequence[str]) -> Path:
    """``records_dir/<key=value_...>.json`` from the fields that tell trials apart."""
    parts = [f"{k}={fields[k]:g}" if isinstance(fields[k], float) else f"{k}={fields[k]}" for k in name_keys]
    return Path(records_dir) / ("_".join(parts) + ".json")


def read_record(path: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record at ``path`` if there is one, checked against ``settings``; None if absent.

    Raises ValueError naming the file when it is unreadable or was made with other settings.
    """
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable trial record ({error}); delete it to rerun the trial") from None
    stored = record.get("settings", {})
    differ = differing_keys(stored, settings)
    if differ:
        shown = ", ".join(f"{k}: {stored.get(k)!r} there, {settings.get(k)!r} here" for k in differ)
        raise ValueError(f"{path} was made with other settings ({shown}); use another records directory or the same settings")
    return record


def write_record(path: Path, fields: Mapping[str, Any], settings: Mapping[str, Any], result: Mapping[str, Any], commit: str) -> dict[str, Any]:
    """Write a record atomically: its identifying ``fields``, the ``settings`` it was run with, the
    ``commit`` of the code that ran it (:func:`source_commit`, taken when the trial started), and
    the trial's ``result``."""
    record = {"version": RECORD_VERSION, **fields, "settings": dict(settings), "commit": commit, "result": dict(result)}
    atomic_write_json(path, record)
    return record


def recorded(path: Path, fields: Mapping[str, Any], settings: Mapping[str, Any], run: Callable[[], dict[str, Any]],
             summary: Callable[[dict[str, Any]], Mapping[str, Any]] = lambda result: {}) -> dict[str, Any]:
    """A trial's result from its record at ``path`` (checked against ``settings``), or ``run()``'s,
    then written as the record with ``fields`` and ``summary(result)`` at its top level."""
    record = read_record(path, settings)
    if record is not None:
        print(f"{path}: the trial's record is there; not run again", flush=True)
        return record["result"]
    commit = source_commit()  # before the trial: the tree may move on while it runs
    result = run()
    write_record(path, {**fields, **summary(result)}, settings, result, commit)
    return result


def read_records(records_dir: Path) -> list[dict[str, Any]]:
    """Every record in a directory, sorted by file name; an unreadable one is refused by name."""
    records = []
    for path in sorted(Path(records_dir).glob("*.json")):
        try:
            records.append({**json.loads(path.read_text()), "file": path.name})
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable trial record ({error})") from None
    return records


def machine_name() -> str:
    """The processor a trial ran on (its model name from /proc/cpuinfo where there is one) and, when
    CUDA is available, the GPU: training times are only comparable on the same machine."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu + (f" + {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")


def source_commit() -> str:
    """The git commit of the source tree now (with '+dirty' for uncommitted changes under src/),
    or 'unknown' outside a git checkout. Take it when a trial starts: the tree may move on while
    the trial runs."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
