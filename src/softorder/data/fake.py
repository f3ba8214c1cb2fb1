"""Small datasets written in the official file formats, for tests and offline demos.

Each ``write_fake_*`` function creates ``<data_dir>/<dataset>/`` with a few rows of random content
laid out exactly like the real files, so every loader can be exercised without the real data. The
files do not match the official checksums: load them with ``verify=False``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from softorder.data.paths import resolve_data_dir


def _idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_fake_mnist(
    data_dir: str | os.PathLike[str], n_train: int = 200, n_test: int = 50, seed: int = 0, gzipped: bool = True
) -> Path:
    """Four IDX files with random 28x28 images; labels cycle through the ten digits."""
    rng = np.random.default_rng(seed)
    folder = resolve_data_dir(data_dir) / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            data = _idx_bytes(array)
            if gzipped:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return folder


# (file name, separator, label column, features, label values, sequence-name column, missing cells)
_UCI_LAYOUT = (
    ("australian.dat", " ", -1, 14, ["0", "1"], False, False),
    ("ecoli.data", "  ", -1, 7, ["cp", "im", "pp"], True, False),
    ("german.data-numeric", "   ", -1, 24, ["1", "2"], False, False),
    ("hepatitis.data", ",", 0, 19, ["1", "2"], False, True),
    ("pima-indians-diabetes.data", ",", -1, 8, ["0", "1"], False, False),
    ("processed.cleveland.data", ",", -1, 13, ["0", "1", "2", "3", "4"], False, True),
    ("yeast.data", "  ", -1, 8, ["CYT", "MIT", "NUC"], True, False),
)


def write_fake_uci(data_dir: str | os.PathLike[str], rows: int = 30, seed: int = 0) -> Path:
    """The seven UCI files with ``rows`` random rows each (every class at least twice)."""
    rng = np.random.default_rng(seed)
    folder = resolve_data_dir(data_dir) / "uci"
    folder.mkdir(parents=True, exist_ok=True)
    for name, sep, label_col, n_feat, classes, has_name, has_missing in _UCI_LAYOUT:
        lines = []
        for r in range(rows):
            cells = [f"{v:.2f}" for v in rng.normal(5.0, 2.0, size=n_feat)]
            if has_missing and r % 7 == 3:
                cells[r % n_feat] = "?"
            label = classes[r % len(classes)]
            cells = [label, *cells] if label_col == 0 else [*cells, label]
            if has_name:
                cells = [f"SEQ{r}_FAKE", *cells]
            lines.append(sep.join(cells))
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


DEFAULT_FAKE_ALPHABETS: dict[str, list[tuple[str, int]]] = {
    "background": [("Gujarati", 3), ("Arcadian", 2)],
    "evaluation": [("Sylheti", 2), ("Tibetan", 4)],
}


def _fake_characters(rng: np.random.Generator, n_chars: int, n_draw: int) -> np.ndarray:
    """Bool images, True = white background, with a few random ink strokes."""
    images = np.ones((n_chars, n_draw, 105, 105), dtype=bool)
    for c in range(n_chars):
        for d in range(n_draw):
            for _ in range(3):
                r, q = rng.integers(5, 100, size=2)
                images[c, d, r - 3 : r + 3, q - 20 : q + 20] = False
    return images


def write_fake_omniglot(
    data_dir: str | os.PathLike[str],
    alphabets: dict[str, Sequence[tuple[str, int]]] | None = None,
    drawings: int = 20,
    seed: int = 0,
) -> Path:
    """``images_<part>.npz`` and ``alphabets.json`` for ``{part: [(alphabet, characters), ...]}``."""
    alphabets = DEFAULT_FAKE_ALPHABETS if alphabets is None else alphabets
    rng = np.random.default_rng(seed)
    folder = resolve_data_dir(data_dir) / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    catalog = {}
    for part, entries in alphabets.items():
        total = sum(c for _, c in entries)
        images = _fake_characters(rng, total, drawings)
        labels = np.repeat(np.arange(total, dtype=np.int64)[:, None], drawings, axis=1)
        with open(folder / f"images_{part}.npz", "wb") as fh:
            np.savez_compressed(fh, images=images, labels=labels)
        start, listed = 0, []
        for name, count in entries:
            listed.append({"alphabet": name, "start": start, "count": count})
            start += count
        catalog[part] = listed
    (folder / "alphabets.json").write_text(json.dumps(catalog, indent=1))
    return folder


def write_fake_omniglot_zip(
    path: str | os.PathLike[str],
    part: str,
    alphabets: Sequence[tuple[str, int]],
    drawings: int = 20,
    first_id: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """A zip laid out like the official one (``images_<part>/<alphabet>/characterNN/<id>_<nn>.png``,
    1-bit PNGs). Returns the bool images it holds, ``(characters, drawings, 105, 105)``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = sum(c for _, c in alphabets)
    images = _fake_characters(rng, total, drawings)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        c = 0
        for name, count in alphabets:
            for k in range(count):
                char_id = first_id + c
                for d in range(drawings):
                    buf = io.BytesIO()
                    Image.fromarray(images[c, d]).convert("1").save(buf, format="PNG")
                    member = f"images_{part}/{name}/character{k + 1:02d}/{char_id:04d}_{d + 1:02d}.png"
                    zf.writestr(member, buf.getvalue())
                c += 1
    return images


ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def write_fake_celeba(
    data_dir: str | os.PathLike[str],
    n: int = 12,
    partition: Sequence[int] | None = None,
    images: int | None = None,
    landmarks: bool = True,
    seed: int = 0,
) -> Path:
    """CelebA annotation files for ``n`` images and the first ``images`` (default all) JPEGs.

    ``partition`` defaults to the first 60 % train, then val, then test.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = resolve_data_dir(data_dir) / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    attrs = rng.choice([-1, 1], size=(n, len(ATTRIBUTE_NAMES)))
    if partition is None:
        partition = [0 if i < 0.6 * n else 1 if i < 0.8 * n else 2 for i in range(n)]
    lines = [str(n), " ".join(ATTRIBUTE_NAMES)]
    lines += [f"{f} " + " ".join(f"{v:2d}" for v in row) for f, row in zip(names, attrs)]
    (folder / "list_attr_celeba.txt").write_text("\r\n".join(lines) + "\r\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{f} {p}\r\n" for f, p in zip(names, partition)))
    if landmarks:
        points = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
        header = " ".join(f"{p}_{a}" for p in points for a in "xy")
        xs, ys = rng.integers(0, 178, size=(n, 5)), rng.integers(0, 218, size=(n, 5))
        pts = np.stack([xs, ys], axis=2).reshape(n, 10)
        body = [f"{f} " + " ".join(str(int(v)) for v in row) for f, row in zip(names, pts)]
        (folder / "list_landmarks_align_celeba.txt").write_text("\n".join([str(n), header, *body]) + "\n")
    for f in names[: n if images is None else images]:
        pixels = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / f, format="JPEG", quality=80)
    return folder
