"""The library's model code before the performance work (git commit fe89b97), kept verbatim apart
from its imports, so that every before/after ratio is measured side by side in one run."""

from baseline.model import build_model  # noqa: F401
