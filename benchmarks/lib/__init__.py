"""The benchmark's code behind ``benchmarks/run.py`` (its only entry point); see ``benchmarks/README.md``.

``run.py`` imports this package as ``lib`` (Python puts a script's own folder first on ``sys.path``),
and its modules import each other relatively, so nothing here edits ``sys.path``.
"""
