"""Where the data lives.

The data directory holds one folder per dataset (``mnist/``, ``omniglot/``, ``uci/``, ``celeba/``),
each with the official files under their official names.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_DIR = "SOFTORDER_DATA"
DATASETS = ("mnist", "uci", "omniglot", "celeba")


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/softorder``, or ``~/.cache/softorder`` when XDG_CACHE_HOME is unset."""
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "softorder"


def resolve_data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``value`` if given, else ``$SOFTORDER_DATA``, else the user cache.

    The directory need not exist yet (downloads create it).
    """
    if value is not None and str(value) != "":
        return Path(value).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return default_data_dir()


def dataset_dir(data_dir: str | os.PathLike[str] | None, dataset: str) -> Path:
    """``<data_dir>/<dataset>``, with ``data_dir`` resolved by :func:`resolve_data_dir`."""
    return resolve_data_dir(data_dir) / dataset
