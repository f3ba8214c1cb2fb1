"""The library's model code at an earlier commit, read from git at run time.

``build_model(commit)`` returns ``build_model`` of ``src/softorder/{layers,orderings,model}.py`` as
they were at ``commit`` (default ``BASELINE_COMMIT``, before the performance work; ``CONV_COMMIT``,
before the convolution work), written to a temporary package (``softorder_<commit>``) with only
their imports between the three files renamed, so "before" and "after" are measured side by side in
one run without keeping a second copy of the code in the tree. Needs git and a checkout that holds
the commits (not a shallow clone); :func:`unavailable` says why a commit cannot be read, and the
benchmark then runs without the candidates that need it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

BASELINE_COMMIT = "fe89b97"  # before the performance work (docs/performance.md, "before")
CONV_COMMIT = "199f3cd"  # before the convolution work (the Omniglot-50 section)
MODULES = ("layers", "orderings", "model")
REPO = Path(__file__).resolve().parents[2]  # benchmarks/lib/baseline.py -> the repository


HINT = "the \"before\" candidates need git and a clone with the full history (in a shallow clone: git fetch --unshallow)"


class BaselineUnavailable(RuntimeError):
    """The baseline commit cannot be read from git."""


def _package(commit: str) -> str:
    return f"softorder_{commit}"


def _source(module: str, commit: str) -> str:
    path = f"src/softorder/{module}.py"
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{path}"], check=True, capture_output=True, text=True
        )
    except FileNotFoundError as error:
        raise BaselineUnavailable("git is not installed") from error
    except subprocess.CalledProcessError as error:
        detail = " ".join(error.stderr.split())
        raise BaselineUnavailable(f"git cannot read {path} at {commit} in {REPO} ({detail})") from error
    text = done.stdout
    for other in MODULES:
        text = text.replace(f"from softorder.{other} import", f"from {_package(commit)}.{other} import")
    return text


def build_model(commit: str = BASELINE_COMMIT) -> Callable:
    """``build_model`` of the library at ``commit`` (same arguments as today's, as then)."""
    package_name = _package(commit)
    if package_name not in sys.modules:
        sources = {module: _source(module, commit) for module in MODULES}  # all read before anything is written
        root = Path(tempfile.mkdtemp(prefix=f"softorder-{commit}-"))
        package = root / package_name
        package.mkdir()
        (package / "__init__.py").write_text(f'"""softorder\'s model code at commit {commit}."""\n')
        for module, text in sources.items():
            (package / f"{module}.py").write_text(text)
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{package_name}.model").build_model


_reasons: dict[str, str | None] = {}


def unavailable(commit: str) -> str | None:
    """Why the library's code at ``commit`` cannot be read from git, or None if it can (then it is
    read and imported now, once)."""
    if commit not in _reasons:
        try:
            build_model(commit)
            _reasons[commit] = None
        except BaselineUnavailable as error:
            _reasons[commit] = str(error)
    return _reasons[commit]


def has(commit: str) -> bool:
    """Whether the "before" candidates at ``commit`` can run."""
    return unavailable(commit) is None
