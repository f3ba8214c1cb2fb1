"""Errors raised by the data layer.

Every error names the file (and, where it helps, the directory and the URL) it is about, so a user
can act on it without reading a traceback into NumPy, gzip or PIL.
"""

from __future__ import annotations


class DataError(Exception):
    """Base class of the data layer's errors."""


class DataMissingError(DataError, FileNotFoundError):
    """A file a task set needs is absent and could not be downloaded."""

    def __str__(self) -> str:  # FileNotFoundError would otherwise format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class DataCorruptError(DataError, ValueError):
    """A file is present but truncated, malformed, or does not match its known checksum."""
