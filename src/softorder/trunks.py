"""Image trunks shared by all tasks, for the CelebA experiment (paper Sec. 4.4, Appendix A.4).

The paper's trunk is a ResNet-50 with ImageNet weights, truncated at the final average pooling
(2,048 features per image), then projected linearly to the 256 units of the soft-ordered core
(:func:`softorder.model.build_model` adds that projection when ``encoder_features`` is given).

* :func:`resnet50_trunk` is torchvision's ResNet-50 (``pip install "softorder[vision]"``; the
  torchvision release must be the one made for the installed torch, and for a CPU build of torch
  come from PyTorch's CPU index), with ImageNet weights from torchvision's cache
  (``weights="imagenet"``) or from a state-dict file.
* :func:`resnet50_plain_trunk` is the same architecture written in plain PyTorch, with
  torchvision's parameter names, so a torchvision ResNet-50 state-dict file loads into it where
  torchvision itself cannot be installed. It is used here to time ResNet-50.
* :func:`small_cnn_trunk` is a four-layer CNN for smoke runs and tests on a CPU; it is not the
  paper's model.

Every builder returns ``(module, features)``: the module maps ``(n, 3, H, W)`` images, normalised
with the ImageNet mean and standard deviation as the CelebA loader does, to ``(n, features)``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

RESNET50_FEATURES = 2048
TRUNKS = ("resnet50", "resnet50-plain", "small-cnn")
_IMAGENET_NAMES = ("imagenet", "IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT")
_TORCH_INDEX = "https://download.pytorch.org/whl"  # PyTorch's own package index, one folder per build
_TORCH_BUILD = re.compile(r"cpu|cu\d+|rocm[\d.]+|xpu")  # local version labels of the builds served there
_ALTERNATIVES = (
    "Or use trunk='resnet50-plain' (the same network in plain PyTorch, which loads a torchvision "
    "state-dict file) or trunk='small-cnn' (a small CNN for CPU smoke runs)."
)


def _matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release made for a torch release: ``'2.13.0+cpu' -> '0.28'``; None if unknown.

    Every torchvision release is built against one torch release and pins it exactly (torchvision
    0.28.0 requires torch==2.13.0); for torch 2.N that is torchvision 0.(N + 15).
    """
    m = re.match(r"(\d+)\.(\d+)", torch_version)
    if m is None or int(m[1]) != 2:
        return None
    return f"0.{int(m[2]) + 15}"


def _installed_torchvision() -> str | None:
    """The installed torchvision distribution's version, or None (read without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchvision")
    except PackageNotFoundError:
        return None


def _torchvision_hint(exc: BaseException) -> str:
    """What went wrong importing torchvision, the release that matches this torch, and how to install it."""
    torch_version = str(torch.__version__)
    public, _, build = torch_version.partition("+")
    series = _matching_torchvision(torch_version)
    installed = _installed_torchvision()
    if installed is None and isinstance(exc, ModuleNotFoundError) and exc.name in (None, "torchvision"):
        what = "torchvision is not installed."
    else:
        name = "torchvision" if installed is None else f"torchvision {installed}"
        what = f"{name} is installed but does not import with torch {torch_version} ({type(exc).__name__}: {exc})."
    if series is None:
        want = (f"It must be the torchvision release made for torch {public} (the table at "
                "https://github.com/pytorch/vision#installation).")
        pin = "torchvision"
    else:
        want = (f"It must be torchvision {series}, the release made for torch {'.'.join(public.split('.')[:2])}: "
                "each torchvision release imports only with the torch release it was built for.")
        pin = f"torchvision=={series}.*"
    first = "pip uninstall -y torchvision && " if installed is not None else ""
    if build == "cpu":
        how = (f"This torch ({torch_version}) is a CPU-only build from PyTorch's index, and torchvision from PyPI is built for PyPI's "
               "CUDA torch and fails to import next to it; take torchvision from the same CPU index: "
               f'{first}pip install "{pin}" "torch=={public}" --index-url {_TORCH_INDEX}/cpu '
               '(pip install "softorder[vision]" alone takes torchvision from PyPI: the newest one, with the torch '
               "release that it pins).")
    elif build and _TORCH_BUILD.fullmatch(build):
        how = (f"This torch ({torch_version}) comes from PyTorch's {build} index; take torchvision from the same index: "
               f'{first}pip install "{pin}" "torch=={public}" --index-url {_TORCH_INDEX}/{build}')
    elif build:
        how = f"This torch ({torch_version}) is a custom build; build torchvision from source against it."
    else:
        how = (f'Install it with: {first}pip install "softorder[vision]" "torch=={public}" (naming your torch '
               "version keeps pip from replacing torch with the newest release to suit the newest torchvision).")
    return f"the ResNet-50 trunk needs torchvision: {what} {want} {how} {_ALTERNATIVES}"


class _Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(x, 1)


def _from_scratch_warning(name: str) -> None:
    warnings.warn(
        f"{name}: no pretrained weights given, so it is trained from scratch. The paper starts from ImageNet "
        "weights (A.4); pass weights='imagenet' (torchvision's cached download) or weights=PATH to a "
        "ResNet-50 state-dict file for comparable results.",
        UserWarning,
        stacklevel=3,
    )


def _load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ResNet-50 weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_backbone(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load a ResNet-50 state dict, ignoring the ImageNet classifier (``fc.*``)."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} is not a ResNet-50 state dict with torchvision's names: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}, "
            f"wrong shape {shapes[:3]}"
        )
    model.load_state_dict(state, strict=False)


def _truncate(model: nn.Module) -> nn.Module:
    """Everything up to and including the final average pooling, flattened: (n, 2048)."""
    model.fc = nn.Identity()
    return model


def resnet50_trunk(weights: str | os.PathLike[str] | None = None) -> tuple[nn.Module, int]:
    """torchvision's ResNet-50 truncated at the final average pooling: ``(n, 3, H, W) -> (n, 2048)``.

    Args:
        weights: ``None`` (random initialisation, with a warning: the paper used ImageNet
            weights), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` weights, from its cache or
            downloaded), or a path to a ResNet-50 state-dict file with torchvision's names.

    Raises:
        ImportError: torchvision is not installed, or does not import with this torch (a release
            made for another torch, or PyPI's CUDA build next to a CPU build of torch); the
            message names the matching torchvision release and the command that installs it.
    """
    try:
        import torchvision
    except Exception as exc:  # ImportError, or a torchvision built for another torch (or torch build)
        raise ImportError(_torchvision_hint(exc)) from exc
    if weights is not None and str(weights) in _IMAGENET_NAMES:
        name = "IMAGENET1K_V1" if str(weights) == "imagenet" else str(weights)
        model = torchvision.models.resnet50(weights=getattr(torchvision.models.ResNet50_Weights, name))
    else:
        model = torchvision.models.resnet50(weights=None)
        if weights is None:
            _from_scratch_warning("ResNet-50")
        else:
            _load_backbone(model, _load_state_dict_file(weights), str(weights))
    return _truncate(model), RESNET50_FEATURES


# --- the same ResNet-50 in plain PyTorch --------------------------------------------------------


class _Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (v1.5: the stride sits on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class PlainResNet50(nn.Module):
    """ResNet-50 (He et al. 2016) up to the global average pooling, torchvision's module names.

    ``forward``: ``(n, 3, H, W) -> (n, 2048)``. Initialised as torchvision does (Kaiming normal
    convolutions, unit BatchNorm scales).
    """

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, 3, 1)
        self.layer2 = self._stage(128, 4, 2)
        self.layer3 = self._stage(256, 6, 2)
        self.layer4 = self._stage(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [_Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [_Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet50_plain_trunk(weights: str | os.PathLike[str] | None = None) -> tuple[nn.Module, int]:
    """:class:`PlainResNet50`: ResNet-50 without torchvision, ``(n, 3, H, W) -> (n, 2048)``.

    ``weights``: ``None`` (random, with a warning) or a path to a torchvision ResNet-50 state-dict
    file (e.g. ``resnet50-0676ba61.pth`` from torchvision's cache; the ``fc.*`` entries are ignored).
    """
    model = PlainResNet50()
    if weights is None:
        _from_scratch_warning("ResNet-50 (plain PyTorch)")
    elif str(weights) in _IMAGENET_NAMES:
        raise ValueError(
            "trunk='resnet50-plain' cannot fetch ImageNet weights by name (that needs torchvision); "
            "pass weights=PATH to a torchvision ResNet-50 state-dict file"
        )
    else:
        _load_backbone(model, _load_state_dict_file(weights), str(weights))
    return model, RESNET50_FEATURES


# --- a small CNN for CPU smoke runs -------------------------------------------------------------


def small_cnn_trunk(weights: str | os.PathLike[str] | None = None, *, channels: int = 32) -> tuple[nn.Module, int]:
    """Four 3x3 stride-2 convolutions with BatchNorm and ReLU, then global average pooling.

    ``(n, 3, H, W) -> (n, 2 * channels)``. Not the paper's model: a stand-in that trains in
    seconds on a CPU, for smoke runs and tests. ``weights``: ``None`` or a state-dict file of this
    trunk.
    """
    c = int(channels)
    widths = [3, c // 2, c, c, 2 * c]
    layers: list[nn.Module] = []
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), _Flatten())
    if weights is not None:
        model.load_state_dict(_load_state_dict_file(weights))
    return model, 2 * c


BUILDERS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "resnet50": resnet50_trunk,
    "resnet50-plain": resnet50_plain_trunk,
    "small-cnn": small_cnn_trunk,
}


def build_trunk(name: str, weights: str | os.PathLike[str] | None = None) -> tuple[nn.Module, int]:
    """A trunk by name (``TRUNKS``) and its number of output features."""
    if name not in BUILDERS:
        raise ValueError(f"unknown trunk {name!r}; expected one of {list(TRUNKS)}")
    if weights == "":
        weights = None
    return BUILDERS[name](weights)
