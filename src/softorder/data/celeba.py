"""CelebA: 40 binary facial attributes, optionally with landmark regression (Sec. 4.4, App. A.4).

Files under ``<data_dir>/celeba/`` (official names):

* ``list_attr_celeba.txt``: 40 attributes of all 202,599 images (-1 / 1, read as 0 / 1);
* ``list_eval_partition.txt``: the official split (0 / 1 / 2 = train / val / test);
* ``img_align_celeba/000001.jpg ...``: the aligned 178x218 images (from ``img_align_celeba.zip``);
* ``list_landmarks_align_celeba.txt``: five (x, y) landmarks per aligned image (optional task).

CelebA is distributed through Google Drive and cannot be fetched by a plain URL: a missing file
raises an error that says where to download it and where to put it.

All tasks read the same images (``shared_input = True``): a batch is one tensor
``(n, 3, H, W)`` with one target per attribute. Images are streamed from disk: only the rows of a
batch are decoded, resized to ``image_size`` (bilinear, aspect not kept) and normalised with the
ImageNet mean and standard deviation, as torchvision's pretrained ResNet-50 expects.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from softorder.data._checks import require_int
from softorder.data.download import DataFile, ensure_file
from softorder.data.errors import DataCorruptError, DataMissingError
from softorder.data.paths import resolve_data_dir
from softorder.tasks import SPLITS, Batch, MultitaskData, TaskSpec, batch_generator

DATASET = "celeba"
IMAGE_DIR = "img_align_celeba"
IMAGE_WIDTH, IMAGE_HEIGHT = 178, 218
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LANDMARK_TASK = "landmarks"
NUM_ATTRIBUTES = 40
_PROJECT_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
_MANUAL = (
    f"CelebA is shared through Google Drive and can't be fetched by URL: open {_PROJECT_PAGE}, follow "
    "the Google Drive link and download it by hand ({where})."
)


def _celeba_file(name: str, md5: str, where: str, sha256: str | None = None) -> DataFile:
    return DataFile(DATASET, name, md5=md5, sha256=sha256, manual=_MANUAL.format(where=where))


ATTR_FILE = _celeba_file(
    "list_attr_celeba.txt", "75e246fa4810816ffd6ee81facbd244c", "folder Anno/",
    "f0e5da289d5ccf75ffe8811132694922b60f2af59256ed362afa03fefba324d0",
)
PARTITION_FILE = _celeba_file(
    "list_eval_partition.txt", "d32c9cbf5e040fd4025c592c306e6668", "folder Eval/",
    "fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7",
)
LANDMARKS_FILE = _celeba_file(
    "list_landmarks_align_celeba.txt", "cc24ecafdb5b50baae59b03474781f8c", "folder Anno/"
)
IMAGES_ZIP = _celeba_file(
    "img_align_celeba.zip", "00d2c5bc6d35e252742224ab0c1e8fcb", "Img/img_align_celeba.zip"
)
FILES: dict[str, DataFile] = {"attributes": ATTR_FILE, "partition": PARTITION_FILE, "landmarks": LANDMARKS_FILE}


# ----------------------------------------------------------------------------- annotation files


def _lines(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise DataCorruptError(f"{path} is not a plain-text CelebA annotation file ({exc})") from exc


def _table(path: Path, columns: int, dtype: type) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``count / header / rows of (file name, values...)``."""
    lines = _lines(path)
    if len(lines) < 2:
        raise DataCorruptError(f"{path} is truncated: it lacks the count and header lines")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataCorruptError(
            f"{path}: the first line should be the number of images, got {lines[0][:40]!r}"
        ) from None
    header = lines[1].split()
    if len(header) != columns:
        raise DataCorruptError(f"{path}: header names {len(header)} columns, expected {columns}")
    rows = [line for line in lines[2:] if line.strip()]
    if len(rows) != count:
        raise DataCorruptError(
            f"{path} is truncated or padded: it says {count} images but has {len(rows)} rows"
        )
    names = [r.split(None, 1)[0] for r in rows]
    try:
        values = np.loadtxt(rows, usecols=range(1, columns + 1), dtype=dtype, ndmin=2)
    except ValueError as exc:
        raise DataCorruptError(f"{path}: malformed row ({exc})") from exc
    if values.shape != (count, columns):
        raise DataCorruptError(f"{path}: expected {count} rows of {columns} values, got {values.shape}")
    return header, names, values


@dataclass(frozen=True)
class CelebAAnnotations:
    """Parsed annotation files: ``files`` (n,) image names, ``attributes`` (n, 40) uint8 0/1,
    ``partition`` (n,) int8 0/1/2, ``landmarks`` (n, 10) float32 pixels or None."""

    files: np.ndarray
    attribute_names: tuple[str, ...]
    attributes: np.ndarray
    partition: np.ndarray
    landmarks: np.ndarray | None


_CACHE: dict[tuple, CelebAAnnotations] = {}


def _stamp(path: Path | None) -> tuple | None:
    if path is None:
        return None
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def load_annotations(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    landmarks: bool = False,
    download: bool = True,
    verify: bool = True,
) -> CelebAAnnotations:
    """Parse (cached in-process) the attribute, partition and, if asked, landmark files."""
    root = resolve_data_dir(data_dir)
    attr_path = ensure_file(ATTR_FILE, root, download_missing=download, verify=verify)
    part_path = ensure_file(PARTITION_FILE, root, download_missing=download, verify=verify)
    land_path = None
    if landmarks:
        land_path = ensure_file(LANDMARKS_FILE, root, download_missing=download, verify=verify)
    key = (_stamp(attr_path), _stamp(part_path), _stamp(land_path))
    if key in _CACHE:
        return _CACHE[key]
    header, files, raw = _table(attr_path, NUM_ATTRIBUTES, np.int8)
    bad = ~np.isin(raw, (-1, 1))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataCorruptError(
            f"{attr_path}: {files[row]}, {header[col]} is {int(raw[row, col])}; expected -1 or 1"
        )
    attributes = (raw > 0).astype(np.uint8)
    part_rows = [line.split() for line in _lines(part_path) if line.strip()]
    if any(len(r) != 2 for r in part_rows):
        raise DataCorruptError(f"{part_path}: every line must be '<image> <0|1|2>'")
    try:
        partition = np.array([int(r[1]) for r in part_rows], dtype=np.int8)
    except ValueError as exc:
        raise DataCorruptError(f"{part_path}: {exc}") from exc
    if not np.isin(partition, (0, 1, 2)).all():
        raise DataCorruptError(f"{part_path}: partition values must be 0, 1 or 2")
    if [r[0] for r in part_rows] != files:
        raise DataCorruptError(f"{part_path} and {attr_path} do not list the same images in the same order")
    land = None
    if land_path is not None:
        _, land_files, land = _table(land_path, 10, np.float32)
        if land_files != files:
            raise DataCorruptError(f"{land_path} and {attr_path} do not list the same images in the same order")
    result = CelebAAnnotations(np.asarray(files), tuple(header), attributes, partition, land)
    _CACHE.clear()  # one parsed copy is enough (about 10 MB)
    _CACHE[key] = result
    return result


def present_images(data_dir: str | os.PathLike[str] | None = None) -> set[str]:
    """Names of the files in ``celeba/img_align_celeba/`` (empty if the folder is absent)."""
    folder = resolve_data_dir(data_dir) / DATASET / IMAGE_DIR
    try:
        return {e.name for e in os.scandir(folder) if e.is_file()}
    except FileNotFoundError:
        return set()


# ----------------------------------------------------------------------------- images


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image as ``(H, W, 3)`` uint8, resized to ``size = (H, W)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataMissingError(
            f"CelebA image {path} is missing (it was there when the task set was built)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataCorruptError(f"CelebA image {path} is unreadable or truncated ({exc})") from exc


class CelebATasks(MultitaskData):
    """CelebA attributes (and optionally landmarks) as tasks on shared image batches.

    Holds only file names and labels; images are read per batch, so the object is small and
    picklable (it keeps no open files), as DataLoader workers need. Batches: ``inputs`` float32
    ``(n, 3, H, W)`` normalised with the ImageNet mean/std; ``targets[attribute]`` int64 ``(n,)``
    in {0, 1}; ``targets["landmarks"]`` float32 ``(n, 10)`` in [0, 1] when included.
    """

    shared_input = True

    def __init__(
        self,
        image_dir: str | os.PathLike[str],
        files: dict[str, np.ndarray],
        attributes: dict[str, np.ndarray],
        attribute_names: Sequence[str],
        image_size: tuple[int, int],
        landmarks: dict[str, np.ndarray] | None = None,
        threads: int = 4,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.attribute_names = tuple(attribute_names)
        self.files = {s: np.asarray(files.get(s, np.array([], dtype=str))) for s in SPLITS}
        self.attributes = {
            s: np.asarray(attributes.get(s, np.zeros((0, len(self.attribute_names)), np.uint8))) for s in SPLITS
        }
        self.landmarks = None
        if landmarks is not None:
            self.landmarks = {s: np.asarray(landmarks.get(s, np.zeros((0, 10), np.float32))) for s in SPLITS}
        self.threads = max(1, int(threads))
        if len(self.files["train"]) == 0:
            raise ValueError("CelebA task set has no training images")
        for s in SPLITS:
            if self.attributes[s].shape != (len(self.files[s]), len(self.attribute_names)):
                raise ValueError(
                    f"CelebA {s}: {len(self.files[s])} files but attributes {self.attributes[s].shape}"
                )
            if self.landmarks is not None and self.landmarks[s].shape != (len(self.files[s]), 10):
                raise ValueError(
                    f"CelebA {s}: {len(self.files[s])} files but landmarks {self.landmarks[s].shape}"
                )
        shape = (3, *self.image_size)
        specs = [TaskSpec(a, shape, "binary") for a in self.attribute_names]
        if self.landmarks is not None:
            specs.append(TaskSpec(LANDMARK_TASK, shape, "regression", 10))
        self.specs = tuple(specs)

    def load_images(self, names: Sequence[str]) -> Tensor:
        """Read, resize and normalise the named images: ``(len(names), 3, H, W)`` float32."""
        paths = [self.image_dir / str(n) for n in names]
        if not paths:
            return torch.zeros((0, 3, *self.image_size))
        if self.threads > 1 and len(paths) > 1:
            with ThreadPoolExecutor(max_workers=min(self.threads, len(paths))) as pool:
                arrays = list(pool.map(lambda p: load_image(p, self.image_size), paths))
        else:
            arrays = [load_image(p, self.image_size) for p in paths]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous()

    def _batch(self, split: str, idx: np.ndarray) -> Batch:
        inputs = self.load_images(self.files[split][idx].tolist())
        attrs = torch.from_numpy(self.attributes[split][idx].astype(np.int64))
        targets = {a: attrs[:, j] for j, a in enumerate(self.attribute_names)}
        if self.landmarks is not None:
            targets[LANDMARK_TASK] = torch.from_numpy(self.landmarks[split][idx].astype(np.float32))
        return Batch(inputs, targets)

    def train_batch(self, iteration: int, batch_size: int, seed: int) -> Batch:
        gen = batch_generator(seed, iteration)
        n = len(self.files["train"])
        if batch_size <= n:
            idx = torch.randperm(n, generator=gen)[:batch_size]
        else:
            idx = torch.randint(n, (batch_size,), generator=gen)
        return self._batch("train", idx.numpy())

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        n = len(self.files[split])
        for start in range(0, n, batch_size):
            yield self._batch(split, np.arange(start, min(start + batch_size, n)))

    def split_sizes(self) -> dict[str, dict[str, int]]:
        sizes = {s: int(len(self.files[s])) for s in SPLITS}
        return {spec.name: dict(sizes) for spec in self.specs}


def _image_size(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        size = (int(value), int(value))
    else:
        try:
            h, w = value  # type: ignore[misc]
            size = (int(h), int(w))
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be an int or (height, width), got {value!r}") from None
    if min(size) < 1:
        raise ValueError(f"image_size must be positive, got {value!r}")
    return size


def celeba_tasks(
    data_dir: str | os.PathLike[str] | None = None,
    image_size: int | tuple[int, int] = 224,
    include_landmarks: bool = False,
    attributes: Sequence[str] | None = None,
    available_only: bool = False,
    split_seed: int = 0,
    threads: int = 4,
    *,
    download: bool = True,
    verify: bool = True,
) -> CelebATasks:
    """The CelebA task set (Sec. 4.4, A.4) on the official train / val / test partition.

    Args:
        image_size: side of the square network input (224 in the paper), or ``(H, W)``.
        include_landmarks: add the ``landmarks`` regression task (needs
            ``list_landmarks_align_celeba.txt``): five (x, y) points divided by 178 / 218.
        attributes: a subset of the 40 attribute names (default all, in file order).
        available_only: use only the images present (smoke runs on a partial download). If that
            leaves a split empty, the present images are re-split 80/10/10, deterministically from
            ``split_seed``, with a warning. Without it, missing images are an error.
        threads: threads decoding the images of one batch.
    """
    size = _image_size(image_size)
    split_seed = require_int("split_seed", split_seed, 0)
    root = resolve_data_dir(data_dir)
    ann = load_annotations(root, landmarks=include_landmarks, download=download, verify=verify)
    if attributes is None:
        columns = list(range(len(ann.attribute_names)))
    else:
        attributes = list(attributes)
        unknown = [a for a in attributes if a not in ann.attribute_names]
        if unknown or not attributes:
            raise ValueError(
                f"unknown CelebA attributes {unknown}; the attributes are {list(ann.attribute_names)}"
            )
        columns = [ann.attribute_names.index(a) for a in attributes]
    names = [ann.attribute_names[c] for c in columns]
    image_dir = root / DATASET / IMAGE_DIR
    present = present_images(root)
    has = np.fromiter((f in present for f in ann.files.tolist()), dtype=bool, count=len(ann.files))
    total = len(ann.files)
    partition = ann.partition.copy()
    keep = np.ones(total, dtype=bool)
    if not has.all():
        missing = ann.files[~has]
        if not available_only:
            first = ", ".join(missing[:5].tolist())
            raise DataMissingError(
                f"{len(missing):,} of {total:,} CelebA images listed in {PARTITION_FILE.name} are missing from "
                f"{image_dir} (first: {first}). Download {IMAGES_ZIP.name} ({_PROJECT_PAGE}, Google Drive, "
                f"folder Img/) and extract it into {root / DATASET}, or pass available_only=True to use only "
                "the images present (smoke runs)."
            )
        keep = has
        if not keep.any():
            raise DataMissingError(
                f"no CelebA images are present in {image_dir}; extract {IMAGES_ZIP.name} there"
            )
        counts = [int(((partition == p) & keep).sum()) for p in range(3)]
        message = f"CelebA: only {int(keep.sum()):,} of {total:,} images are present in {image_dir}"
        message += "; using those"
        if min(counts) == 0:
            kept = np.flatnonzero(keep)
            if len(kept) < 3:
                raise DataMissingError(
                    f"only {len(kept)} CelebA image(s) present in {image_dir}: too few for train, val and test"
                )
            rng = np.random.default_rng(int(split_seed))
            order = kept[rng.permutation(len(kept))]
            n_val = n_test = max(1, int(round(0.1 * len(kept))))
            partition[order[:n_val]] = 1
            partition[order[n_val : n_val + n_test]] = 2
            partition[order[n_val + n_test :]] = 0
            empty = ", ".join(s for s, c in zip(SPLITS, counts) if c == 0)
            message += (
                f". The official partition leaves {empty} empty, "
                f"so these images were re-split 80/10/10 (split_seed={split_seed}): "
                "not the paper's protocol, for smoke runs only"
            )
        warnings.warn(message, stacklevel=2)
    files, attrs, lands = {}, {}, {} if include_landmarks else None
    for p, split in enumerate(SPLITS):
        rows = np.flatnonzero((partition == p) & keep)
        files[split] = ann.files[rows]
        attrs[split] = ann.attributes[np.ix_(rows, columns)]
        if lands is not None:
            assert ann.landmarks is not None
            scale = np.tile(np.array([IMAGE_WIDTH, IMAGE_HEIGHT], dtype=np.float32), 5)
            lands[split] = (ann.landmarks[rows] / scale).astype(np.float32)
    return CelebATasks(image_dir, files, attrs, names, size, lands, threads=threads)


def celeba_summary(data_dir: str | os.PathLike[str] | None = None, *, verify: bool = True) -> dict:
    """Counts from the annotation files present (no download, no image decoding)."""
    root = resolve_data_dir(data_dir)
    has_landmarks = LANDMARKS_FILE.path(root).is_file()
    ann = load_annotations(root, landmarks=has_landmarks, download=False, verify=verify)
    present = present_images(root)
    listed = set(ann.files.tolist())
    return {
        "images": len(ann.files),
        "attributes": len(ann.attribute_names),
        "partition": {s: int((ann.partition == p).sum()) for p, s in enumerate(SPLITS)},
        "images_present": len(listed & present),
        "landmarks": has_landmarks,
    }
