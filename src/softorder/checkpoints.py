"""A training run's files: the checkpoint (for exact resumption) and the evaluation history.

A run directory holds ``checkpoint.pt`` (model, optimizer, random state, iteration, history, the
training configuration), written atomically, and ``history.json`` or ``history.csv``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from softorder._io import atomic_write_bytes, atomic_write_json

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class History:
    """One record per evaluation: iteration, phase, train loss, per-task errors and losses per split."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}


def save_history(path: Path, history: History) -> None:
    """Write the history as JSON (a list of records) or CSV (one row per record), by suffix."""
    path = Path(path)
    if path.suffix == ".csv":
        keys: list[str] = []
        for r in history.records:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history.records)
        atomic_write_bytes(path, buf.getvalue().encode())
    else:
        atomic_write_json(path, history.records)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a reader sees the previous one or the whole new one."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"checkpoint {path} could not be read ({type(exc).__name__}: {exc})") from exc


class RunFiles:
    """Where one training run keeps its checkpoint and history (``run_dir`` None: nowhere)."""

    def __init__(self, run_dir: str | Path | None, history_format: str) -> None:
        self.dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint = self.dir / CHECKPOINT_NAME if self.dir else None
        self.history = self.dir / f"history.{history_format}" if self.dir else None

    def load(self, read: Callable[[Callable[[], Any]], Any]) -> dict[str, Any] | None:
        """The checkpoint if there is one, read through ``read`` (e.g. on one process and shared)."""
        path = self.checkpoint
        if path is None:
            return None
        return read(lambda: load_checkpoint(path) if path.exists() else None)

    def save(self, state: dict[str, Any], history: History) -> None:
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, state)
            save_history(self.history, history)  # type: ignore[arg-type]

    def where_kept(self) -> str:
        """For messages: where the last good checkpoint is, if one was written."""
        if self.checkpoint is not None and self.checkpoint.exists():
            return f"the last good checkpoint is kept in {self.checkpoint}"
        return "no checkpoint was written"
