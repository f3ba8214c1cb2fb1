"""The library's model code at an earlier commit, read from git at run time.

``build_model(commit)`` returns ``build_model`` of ``src/softorder/{layers,orderings,model}.py`` as
they were at ``commit`` (default ``BASELINE_COMMIT``, before the performance work; ``CONV_COMMIT``,
before the convolution work), written to a temporary package (``softorder_<commit>``) with only
their imports between the three files renamed, so "before" and "after" are measured side by side in
one run without keeping a second copy of the code in the tree. Needs a git checkout that holds the
commits (not a shallow clone).
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
REPO = Path(__file__).resolve().parent.parent


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
        raise BaselineUnavailable("benchmarks: git is not installed; the 'before' measurements need it") from error
    except subprocess.CalledProcessError as error:
        raise BaselineUnavailable(
            f"benchmarks: cannot read {path} at commit {commit} from {REPO} ({error.stderr.strip()}); "
            "the 'before' measurements need a full git clone (git fetch --unshallow)"
        ) from error
    text = done.stdout
    for other in MODULES:
        text = text.replace(f"from softorder.{other} import", f"from {_package(commit)}.{other} import")
    return text


def build_model(commit: str = BASELINE_COMMIT) -> Callable:
    """``build_model`` of the library at ``commit`` (same arguments as today's, as then)."""
    package_name = _package(commit)
    if package_name not in sys.modules:
        root = Path(tempfile.mkdtemp(prefix=f"softorder-{commit}-"))
        package = root / package_name
        package.mkdir()
        (package / "__init__.py").write_text(f'"""softorder\'s model code at commit {commit}."""\n')
        for module in MODULES:
            (package / f"{module}.py").write_text(_source(module, commit))
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{package_name}.model").build_model
