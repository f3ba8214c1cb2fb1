"""Shared fixtures.

``data_dir``: the real data (``SOFTORDER_TEST_DATA``, e.g. ``../shared/data``); tests using it are
skipped when the variable is unset.

Every test runs with downloads pointed at a closed loopback port (``SOFTORDER_MIRROR``), so no test
ever reaches the internet; tests that exercise downloads set their own mirror.

Every test also runs with ``SOFTORDER_TUNE_ALLOCATOR=0``: tests call the command line's ``main`` in
this process, and ``main`` would otherwise retune this process's allocator
(``softorder.runtime.tune_cpu_allocator``) for every test that follows. The tests of the tuning
itself (tests/test_runtime.py) measure it in fresh processes, without the variable.

Tests that start Ray, torchrun or a fresh Python interpreter are marked ``slow`` (pyproject.toml);
``python -m pytest -m "not slow"`` leaves them out.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ENV_TEST_DATA = "SOFTORDER_TEST_DATA"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_OFFLINE_MIRROR = f"http://127.0.0.1:{_closed_port()}/softorder-offline"


@pytest.fixture(autouse=True)
def _no_internet_downloads(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every download at a closed local port: a missing file fails fast and offline."""
    monkeypatch.setenv("SOFTORDER_MIRROR", _OFFLINE_MIRROR)
    return _OFFLINE_MIRROR


@pytest.fixture(autouse=True)
def _keep_the_test_process_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` leaves this process's allocator as it is (``SOFTORDER_TUNE_ALLOCATOR=0``)."""
    monkeypatch.setenv("SOFTORDER_TUNE_ALLOCATOR", "0")


@pytest.fixture
def offline_mirror(_no_internet_downloads: str) -> str:
    """The unreachable mirror URL that downloads go to during tests."""
    return _no_internet_downloads


@pytest.fixture
def data_dir() -> Path:
    """The real data directory, or skip the test when ``SOFTORDER_TEST_DATA`` is unset."""
    value = os.environ.get(ENV_TEST_DATA)
    if not value:
        pytest.skip("real data not given: set SOFTORDER_TEST_DATA=../shared/data")
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.fail(f"{ENV_TEST_DATA}={value} is not a directory")
    return path
