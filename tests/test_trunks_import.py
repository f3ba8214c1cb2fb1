"""The ResNet-50 trunk's message when torchvision is missing or does not import (no torchvision,
no network: the import is made to fail)."""

from __future__ import annotations

import builtins

import pytest
import torch

from softorder import trunks
from softorder.trunks import build_trunk, resnet50_trunk

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.fixture
def torchvision_import(monkeypatch):
    """Make ``import torchvision`` raise the given exception; returns the setter."""
    real_import = builtins.__import__

    def fail_with(exc: BaseException, *, installed: str | None = None, torch_version: str = "2.13.0+cpu") -> None:
        def fake_import(name, *args, **kwargs):
            if name == "torchvision" or name.startswith("torchvision."):
                raise exc
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake_import)
        monkeypatch.setattr(trunks, "_installed_torchvision", lambda: installed)
        monkeypatch.setattr(torch, "__version__", torch_version)

    return fail_with


def _message(excinfo: pytest.ExceptionInfo[ImportError]) -> str:
    return " ".join(str(excinfo.value).split())


def test_missing_torchvision_next_to_cpu_torch_names_the_release_and_the_cpu_index(torchvision_import):
    cause = ModuleNotFoundError("No module named 'torchvision'")
    torchvision_import(cause)
    with pytest.raises(ImportError) as excinfo:
        resnet50_trunk()
    msg = _message(excinfo)
    assert "torchvision is not installed" in msg
    assert "torchvision 0.28, the release made for torch 2.13" in msg
    assert f'pip install "torchvision==0.28.*" "torch==2.13.0" --index-url {CPU_INDEX}' in msg
    assert "pip uninstall" not in msg
    assert 'softorder[vision]' in msg  # and why the extra alone is not enough here
    assert "trunk='resnet50-plain'" in msg and "trunk='small-cnn'" in msg
    assert excinfo.value.__cause__ is cause


def test_torchvision_that_fails_to_import_is_named_with_the_error(torchvision_import):
    # what PyPI's torchvision 0.28.0 (built for the CUDA torch) does next to torch 2.13.0+cpu
    torchvision_import(RuntimeError("operator torchvision::nms does not exist"), installed="0.28.0")
    with pytest.raises(ImportError) as excinfo:
        build_trunk("resnet50")
    msg = _message(excinfo)
    assert "torchvision 0.28.0 is installed but does not import with torch 2.13.0+cpu" in msg
    assert "RuntimeError: operator torchvision::nms does not exist" in msg
    assert "CPU-only build" in msg
    assert f'pip uninstall -y torchvision && pip install "torchvision==0.28.*" "torch==2.13.0" --index-url {CPU_INDEX}' in msg


def test_pypi_torch_gets_the_extra_with_its_torch_pinned(torchvision_import):
    torchvision_import(ModuleNotFoundError("No module named 'torchvision'"), torch_version="2.14.1")
    with pytest.raises(ImportError) as excinfo:
        resnet50_trunk()
    msg = _message(excinfo)
    assert "torchvision 0.29, the release made for torch 2.14" in msg
    assert 'pip install "softorder[vision]" "torch==2.14.1"' in msg
    assert "--index-url" not in msg


def test_cuda_build_from_pytorchs_index_gets_that_index(torchvision_import):
    torchvision_import(ModuleNotFoundError("No module named 'torchvision'"), torch_version="2.13.0+cu130")
    with pytest.raises(ImportError) as excinfo:
        resnet50_trunk()
    assert ('pip install "torchvision==0.28.*" "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu130'
            in _message(excinfo))


def test_unknown_torch_release_points_at_the_compatibility_table(torchvision_import):
    torchvision_import(ModuleNotFoundError("No module named 'torchvision'"), torch_version="3.0.0")
    with pytest.raises(ImportError) as excinfo:
        resnet50_trunk()
    msg = _message(excinfo)
    assert "made for torch 3.0.0" in msg and "github.com/pytorch/vision#installation" in msg


@pytest.mark.parametrize(
    "torch_version, series",
    [("2.2.0", "0.17"), ("2.13.0+cpu", "0.28"), ("2.14.1", "0.29"), ("2.15.0.dev20260101+cpu", "0.30"), ("1.13.1", None), ("", None)],
)
def test_matching_torchvision(torch_version, series):
    assert trunks._matching_torchvision(torch_version) == series


def test_other_import_errors_are_passed_on(torchvision_import):
    torchvision_import(ImportError("libjpeg.so.8: cannot open shared object file"))
    with pytest.raises(ImportError) as excinfo:
        resnet50_trunk()
    msg = _message(excinfo)
    assert "not installed" not in msg
    assert "torchvision is installed but does not import with torch 2.13.0+cpu" in msg
    assert "ImportError: libjpeg.so.8: cannot open shared object file" in msg
