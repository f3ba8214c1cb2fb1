"""MNIST digit-vs-digit tasks (paper, Sec. 4.1 and Appendix A.1).

A task separates two distinct digits ``a`` and ``b`` (label 0 for ``a``, 1 for ``b``). Its training
and test sets are MNIST's train and test sets restricted to those two digits; pixels are scaled to
[0, 1] and images flattened to 784 values. A set of tasks is drawn with the two digits distinct
within a task and with replacement across tasks (45 possible tasks, so a set may repeat a pair).

Files: the four official IDX files under ``<data_dir>/mnist/``, gzipped (official names) or not
(the same names without ``.gz``). A gzip file is accepted when its bytes are the official archive
(md5) or its decompressed bytes equal the official IDX file (sha256), so re-compressed copies work.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from softorder.data._checks import require_int
from softorder.data.compact import CompactTensorTasks
from softorder.data.download import DataFile, ensure_file
from softorder.data.errors import DataCorruptError
from softorder.data.paths import resolve_data_dir
from softorder.tasks import TaskArrays, TaskSpec

DATASET = "mnist"
BASE_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
IMAGE_SIDE = 28
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000


def _gunzip(path: Path) -> bytes:
    """The bytes of ``path``, decompressed when they are gzip data (by magic number, not name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        if path.suffix == ".gz":
            raise DataCorruptError(f"{path} is not a gzip file; delete it to download it again")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataCorruptError(
            f"{path} is not a complete gzip file ({exc}); delete it to download it again"
        ) from exc


def _content_sha256(path: Path) -> str:
    return hashlib.sha256(_gunzip(path)).hexdigest()


def _file(name: str, md5: str, content_sha256: str) -> DataFile:
    return DataFile(
        DATASET,
        name,
        urls=tuple(base + name for base in BASE_URLS),
        md5=md5,
        content_sha256=content_sha256,
        content_digest=_content_sha256,
    )


# md5: the official .gz archives; content_sha256: the decompressed official IDX files.
FILES: dict[str, DataFile] = {
    "train_images": _file(
        "train-images-idx3-ubyte.gz",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": _file(
        "train-labels-idx1-ubyte.gz",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": _file(
        "t10k-images-idx3-ubyte.gz",
        "9fb629c4189551a2d022fa330f9573f3",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": _file(
        "t10k-labels-idx1-ubyte.gz",
        "ec29112dd5afa0611ce80d1b7f02629c",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}


@dataclass(frozen=True)
class MnistArrays:
    """Parsed MNIST: images ``(n, 28, 28)`` uint8 (0..255) and labels ``(n,)`` uint8 (0..9)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse the bytes of an unsigned-byte IDX file with ``ndim`` dimensions (``path`` for errors)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataCorruptError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DataCorruptError(f"{path}: IDX element type 0x{data[2]:02x}, expected unsigned bytes (0x08)")
    if data[3] != ndim:
        raise DataCorruptError(f"{path}: IDX file has {data[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataCorruptError(f"{path} is truncated inside its IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataCorruptError(
            f"{path} is {state}: header gives shape {dims} ({expected} bytes), file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _locate(key: str, data_dir: Path, download: bool, verify: bool) -> Path:
    spec = FILES[key]
    plain = data_dir / DATASET / spec.name.removesuffix(".gz")
    if not spec.path(data_dir).exists() and plain.is_file():
        return plain  # the decompressed official file
    # Verification happens while parsing (the decompressed bytes are needed anyway).
    return ensure_file(spec, data_dir, download_missing=download, verify=False)


def _read(key: str, path: Path, verify: bool) -> np.ndarray:
    spec = FILES[key]
    data = _gunzip(path)
    is_images = key.endswith("images")
    array = parse_idx(data, path, ndim=3 if is_images else 1)
    if is_images and array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataCorruptError(f"{path}: images are {array.shape[1:]}, expected 28x28")
    if not is_images and array.size and int(array.max()) > 9:
        raise DataCorruptError(f"{path}: label {int(array.max())} is not a digit")
    if verify and spec.content_sha256 and hashlib.sha256(data).hexdigest() != spec.content_sha256:
        raise DataCorruptError(
            f"{path} does not hold the official {spec.name.removesuffix('.gz')} (sha256 of its "
            f"decompressed bytes differs from {spec.content_sha256}); delete it to download it again "
            f"from {spec.urls[0]}"
        )
    return array


_CACHE: dict[tuple, MnistArrays] = {}


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None, *, download: bool = True, verify: bool = True
) -> MnistArrays:
    """Load (downloading if needed) and validate MNIST; parsed arrays are cached in-process.

    With ``verify`` the decompressed files must equal the official ones (sha256); without it
    only their structure is checked (IDX header, sizes, label range, matching counts).
    """
    root = resolve_data_dir(data_dir)
    paths = {key: _locate(key, root, download, verify) for key in FILES}
    stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths.values())
    cache_key = (stamp, verify)
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    arrays = {key: _read(key, path, verify) for key, path in paths.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DataCorruptError(
                f"MNIST {split} set: {paths[f'{split}_images']} has {n_img} images but "
                f"{paths[f'{split}_labels']} has {n_lab} labels"
            )
    result = MnistArrays(**arrays)
    _CACHE.clear()  # keep one parsed copy (about 55 MB)
    _CACHE[cache_key] = result
    return result


def all_digit_pairs() -> list[tuple[int, int]]:
    """The 45 tasks: unordered pairs of distinct digits, as ``(a, b)`` with ``a < b``."""
    return list(itertools.combinations(range(10), 2))


def draw_digit_pairs(num_tasks: int, seed: int) -> list[tuple[int, int]]:
    """``num_tasks`` pairs drawn uniformly from the 45, with replacement across tasks (A.1)."""
    num_tasks, seed = require_int("num_tasks", num_tasks, 1), require_int("seed", seed, 0)
    pairs = all_digit_pairs()
    rng = np.random.default_rng(seed)
    return [pairs[int(i)] for i in rng.integers(0, len(pairs), size=num_tasks)]


def _check_pairs(pairs: list) -> list[tuple[int, int]]:
    out = []
    for p in pairs:
        try:
            a, b = (int(d) for d in p)
        except (TypeError, ValueError):
            raise ValueError(f"a digit pair must be two digits, got {p!r}") from None
        if not (0 <= a <= 9 and 0 <= b <= 9) or a == b:
            raise ValueError(f"a digit pair needs two distinct digits in 0..9, got {p!r}")
        out.append((a, b))
    if not out:
        raise ValueError("pairs is empty")
    return out


def mnist_pairs(
    data_dir: str | os.PathLike[str] | None = None,
    num_tasks: int | None = None,
    seed: int = 0,
    pairs: list[tuple[int, int]] | None = None,
    *,
    download: bool = True,
    verify: bool = True,
) -> CompactTensorTasks:
    """A set of MNIST digit-pair tasks (Sec. 4.1, A.1).

    Args:
        num_tasks: how many tasks to draw (default 2); with ``pairs``, must equal ``len(pairs)``.
        seed: draws the pairs (see :func:`draw_digit_pairs`).
        pairs: explicit ``(a, b)`` pairs instead of drawn ones; label 1 means digit ``b``.

    Task ``i`` is named ``t{i:02d}_{a}v{b}`` (unique even when a pair repeats). Each task has
    ``train`` and ``test`` splits: inputs ``(n, 784)`` float32 in [0, 1] (stored as uint8), labels
    ``(n,)`` int64 in {0, 1}; kind ``binary``.
    """
    if pairs is not None:
        chosen = _check_pairs(list(pairs))
        if num_tasks is not None and num_tasks != len(chosen):
            raise ValueError(f"num_tasks={num_tasks} but {len(chosen)} pairs were given")
    else:
        chosen = draw_digit_pairs(2 if num_tasks is None else num_tasks, seed)
    mnist = load_mnist(data_dir, download=download, verify=verify)
    tasks = []
    for i, (a, b) in enumerate(chosen):
        spec = TaskSpec(f"t{i:02d}_{a}v{b}", (IMAGE_SIDE * IMAGE_SIDE,), "binary")
        splits = {}
        for split, images, labels in (
            ("train", mnist.train_images, mnist.train_labels),
            ("test", mnist.test_images, mnist.test_labels),
        ):
            keep = np.flatnonzero((labels == a) | (labels == b))
            x = torch.from_numpy(images[keep].reshape(len(keep), -1).copy())
            y = torch.from_numpy((labels[keep] == b).astype(np.int64))
            splits[split] = (x, y)
        if splits["train"][0].shape[0] == 0:
            raise DataCorruptError(f"MNIST has no training images of digits {a} and {b}")
        tasks.append(TaskArrays(spec, splits))
    return CompactTensorTasks(tasks, scale=1.0 / 255.0)
