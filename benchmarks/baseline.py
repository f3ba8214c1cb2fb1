"""The library's model code before the performance work, read from git at run time.

``build_model()`` returns ``build_model`` of ``src/softorder/{layers,orderings,model}.py`` as they
were at commit ``BASELINE_COMMIT``, written to a temporary package (``softorder_before``) with only
their imports between the three files renamed, so "before" and "after" are measured side by side in
one run without keeping a second copy of the code in the tree. Needs a git checkout that holds the
commit (not a shallow clone).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

BASELINE_COMMIT = "fe89b97"
MODULES = ("layers", "orderings", "model")
PACKAGE = "softorder_before"
REPO = Path(__file__).resolve().parent.parent


class BaselineUnavailable(RuntimeError):
    """The baseline commit cannot be read from git."""


def _source(module: str) -> str:
    path = f"src/softorder/{module}.py"
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:{path}"], check=True, capture_output=True, text=True
        )
    except FileNotFoundError as error:
        raise BaselineUnavailable("benchmarks: git is not installed; the 'before' measurements need it") from error
    except subprocess.CalledProcessError as error:
        raise BaselineUnavailable(
            f"benchmarks: cannot read {path} at commit {BASELINE_COMMIT} from {REPO} ({error.stderr.strip()}); "
            "the 'before' measurements need a full git clone (git fetch --unshallow)"
        ) from error
    text = done.stdout
    for other in MODULES:
        text = text.replace(f"from softorder.{other} import", f"from {PACKAGE}.{other} import")
    return text


def build_model() -> Callable:
    """``build_model`` of the library at ``BASELINE_COMMIT`` (same arguments as today's, as then)."""
    if PACKAGE not in sys.modules:
        root = Path(tempfile.mkdtemp(prefix="softorder-baseline-"))
        package = root / PACKAGE
        package.mkdir()
        (package / "__init__.py").write_text(f'"""softorder\'s model code at commit {BASELINE_COMMIT}."""\n')
        for module in MODULES:
            (package / f"{module}.py").write_text(_source(module))
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{PACKAGE}.model").build_model
