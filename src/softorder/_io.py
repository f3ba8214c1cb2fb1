"""The files runs keep: atomic writes (a reader sees the old file or the whole new one, never a
part), folders checked writable before any work, and stored settings compared with a rerun's."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a new file gets what the umask allows
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable_dir(path: str | Path) -> Path:
    """``path`` as an existing folder this process can write into (made if missing), checked before
    any work is done; a file in the way or a folder without write access is refused by name."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; --out needs a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"cannot write into {path} ({error.strerror})") from None
    return path


def differing_keys(stored: Mapping[str, Any], now: Mapping[str, Any], *, ignore: Iterable[str] = (), absent_is_same: bool = False) -> list[str]:
    """The keys whose values differ between settings stored by an earlier run and a rerun's, sorted.
    ``absent_is_same``: a key only one side has (e.g. a setting added since) is not a difference."""
    keys = set(stored) & set(now) if absent_is_same else set(stored) | set(now)
    return sorted(k for k in keys - set(ignore) if stored.get(k) != now.get(k))
