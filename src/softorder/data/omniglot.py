"""Omniglot: one character-recognition task per alphabet (paper, Sec. 4.3 and Appendix A.3).

Files under ``<data_dir>/omniglot/``:

* ``images_background.npz`` / ``images_evaluation.npz``: key ``images``, bool, shape
  ``(characters, 20, 105, 105)``, **True = white background, False = ink** (as in the official
  PNGs); key ``labels``, ``(characters, 20)`` int64, the character index. Characters are in the
  order of the official file ids (background: id c+1, evaluation: id c+965).
* ``alphabets.json``: for each part, the alphabets in order with ``start`` (first character) and
  ``count`` (number of characters).

When these are absent, the official ``images_background.zip`` / ``images_evaluation.zip`` (from
github.com/brendenlake/omniglot) are used, downloaded if needed, and converted once to the same
``.npz`` + ``alphabets.json`` (written atomically).

Tasks: the 50 alphabets, in the paper's fixed order (A.3) by default; task ``k`` classifies the
characters of its alphabet (labels ``0..count-1``). Per character, a fixed, seeded choice of
drawings is held out for test (10 %: 2 of 20, or 20 %: 4 of 20). Inputs are ink = 1.0 on a 0.0
background, shape ``(1, 105, 105)``, or ``(1, 105/f, 105/f)`` with ``downsample=f`` (average
pooling, for CPU runs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from softorder.data._checks import require_int
from softorder.data.compact import CompactTensorTasks
from softorder.data.download import DataFile, atomic_path, ensure_file, hash_file
from softorder.data.errors import DataCorruptError, DataMissingError
from softorder.data.paths import resolve_data_dir
from softorder.tasks import TaskArrays, TaskSpec

DATASET = "omniglot"
PARTS = ("background", "evaluation")
IMAGE_SIDE = 105
_ZIP_BASES = (
    "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",
    "https://github.com/brendenlake/omniglot/raw/master/python/",
)

# The paper's fixed random order of the 50 alphabets (Appendix A.3), as the paper spells them.
PAPER_ORDER: tuple[str, ...] = (
    "Gujarati", "Sylheti", "Arcadian", "Tibetan", "Old Church Slavonic (Cyrillic)", "Angelic",
    "Malay (Jawi-Arabic)", "Sanskrit", "Cyrillic", "Anglo-Saxon Futhorc", "Syriac (Estrangelo)",
    "Ge'ez", "Japanese (katakana)", "Keble", "Manipuri", "Alphabet of the Magi", "Gurmukhi",
    "Korean", "Early Aramaic", "Atemayar Qelisayer", "Tagalog", "Mkhedruli (Georgian)",
    "Inuktitut (Canadian Aboriginal Syllabics)", "Tengwar", "Hebrew", "N'Ko", "Grantha", "Latin",
    "Syriac (Serto)", "Tifinagh", "Balinese", "Mongolian", "ULOG", "Futurama", "Malayalam",
    "Oriya", "Ojibwe (Canadian Aboriginal Syllabics)", "Avesta", "Kannada", "Bengali",
    "Japanese (hiragana)", "Armenian", "Aurek-Besh", "Glagolitic", "Asomtavruli (Georgian)",
    "Greek", "Braille", "Burmese (Myanmar)", "Blackfoot (Canadian Aboriginal Syllabics)", "Atlantean",
)


def _npz_arrays_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(f"{images.shape}{images.dtype}{labels.shape}".encode())
    h.update(np.packbits(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def _npz_content_sha256(path: Path) -> str:
    return _npz_arrays_sha256(*_read_npz(path))


def _json_part_sha256(entries: list) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


ZIP_FILES: dict[str, DataFile] = {
    "background": DataFile(
        DATASET, "images_background.zip", urls=tuple(b + "images_background.zip" for b in _ZIP_BASES),
        md5="68d2efa1b9178cc56df9314c21c6e718",
    ),
    "evaluation": DataFile(
        DATASET, "images_evaluation.zip", urls=tuple(b + "images_evaluation.zip" for b in _ZIP_BASES),
        md5="6b91aef0f799c5bb55b94e3f2daec811",
    ),
}
NPZ_FILES: dict[str, DataFile] = {
    "background": DataFile(
        DATASET, "images_background.npz",
        sha256="8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199",
        content_sha256="3e9868767d892dc5ea8e11423afca9a4dbc6c110103f0600cb186a3bcd91574d",
        content_digest=_npz_content_sha256,
    ),
    "evaluation": DataFile(
        DATASET, "images_evaluation.npz",
        sha256="0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276",
        content_sha256="ee157eab3eb36d0edf129df5955df0b3fb465c0f8ce55a0b64bdde4cec811e75",
        content_digest=_npz_content_sha256,
    ),
}
JSON_NAME = "alphabets.json"
# sha256 of each part's entry list in alphabets.json, serialised canonically (sorted keys, no spaces).
JSON_PART_SHA256 = {
    "background": "ffc153bd15cbf9ba39a41e65a4862462fbd4377b1d8b31e4c111c4ab0a91381a",
    "evaluation": "63a7d4a1788cb7dfc87ec7009744023c704e26066e3b93ee5d12aae35f01f57c",
}


def normalize_name(name: str) -> str:
    """A spelling-insensitive key: lower case, letters and digits only ("N'Ko" == "N_Ko")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def map_paper_order(alphabets: Sequence[str], count: int = len(PAPER_ORDER)) -> list[str]:
    """The file's names of the first ``count`` alphabets of the paper's order (A.3).

    Raises ``KeyError`` naming every paper alphabet that ``alphabets`` lacks.
    """
    by_key: dict[str, str] = {}
    for a in alphabets:
        key = normalize_name(a)
        if key in by_key:
            raise ValueError(f"alphabet names {by_key[key]!r} and {a!r} are indistinguishable")
        by_key[key] = a
    wanted = PAPER_ORDER[:count]
    missing = [p for p in wanted if normalize_name(p) not in by_key]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise KeyError(f"{len(missing)} alphabet(s) of the paper's order not found: {shown}")
    return [by_key[normalize_name(p)] for p in wanted]


# ----------------------------------------------------------------------------- files


def _npy_from_bytes(raw: bytes) -> np.ndarray:
    """An array from the bytes of a ``.npy`` file, without copying the data (read-only)."""
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - f.tell() != count * dtype.itemsize:
        raise ValueError(f"array data is {len(raw) - f.tell()} bytes, header says {count * dtype.itemsize}")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=f.tell())
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            if not {"images.npy", "labels.npy"} <= members:
                raise DataCorruptError(f"{path} lacks the keys 'images' and 'labels' (has {sorted(members)})")
            images = _npy_from_bytes(zf.read("images.npy"))
            labels = _npy_from_bytes(zf.read("labels.npy"))
    except DataCorruptError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataCorruptError(f"{path} is not a readable Omniglot .npz file ({exc})") from exc
    if images.dtype != np.bool_ or images.ndim != 4 or images.shape[2:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataCorruptError(
            f"{path}: 'images' is {images.dtype} {images.shape}, expected bool (characters, drawings, 105, 105)"
        )
    expected = np.broadcast_to(np.arange(images.shape[0])[:, None], images.shape[:2])
    if labels.shape != images.shape[:2] or not np.array_equal(labels, expected):
        raise DataCorruptError(f"{path}: 'labels' must be the character index of every drawing")
    return images, labels


def _read_catalog(path: Path) -> dict[str, list[dict]]:
    """Parse and check ``alphabets.json``: ``part -> [{alphabet, start, count}, ...]``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataCorruptError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not data or set(data) - set(PARTS):
        raise DataCorruptError(f"{path}: expected an object with keys among {PARTS}")
    for part, entries in data.items():
        if not isinstance(entries, list) or not entries:
            raise DataCorruptError(f"{path}: {part!r} must be a non-empty list of alphabets")
        start = 0
        for e in entries:
            ok = isinstance(e, dict) and isinstance(e.get("alphabet"), str) and e.get("alphabet")
            ok = ok and isinstance(e.get("start"), int) and isinstance(e.get("count"), int)
            if not ok or e["start"] != start or e["count"] < 1:
                raise DataCorruptError(
                    f"{path}: bad entry {e!r} in {part!r} (alphabets must be consecutive blocks of characters)"
                )
            start += e["count"]
    names = [e["alphabet"] for entries in data.values() for e in entries]
    if len(set(names)) != len(names):
        raise DataCorruptError(f"{path}: an alphabet is listed twice")
    return data


def _write_catalog(path: Path, part: str, entries: list[dict]) -> None:
    catalog: dict[str, list[dict]] = {}
    if path.is_file():
        try:
            catalog = _read_catalog(path)
        except DataCorruptError:
            catalog = {}
    catalog[part] = entries
    ordered = {p: catalog[p] for p in PARTS if p in catalog}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(ordered, indent=1), encoding="utf-8")


_PNG_NAME = re.compile(r"^(?:[^/]+/)?([^/]+)/([^/]+)/(\d+)_(\d+)\.png$")


def convert_zip(zip_path: Path, part: str, out_dir: Path) -> None:
    """Convert an official Omniglot zip into ``images_<part>.npz`` and its ``alphabets.json`` entry.

    Characters are ordered by their official file id; ``images[c, d]`` is drawing ``d+1`` of the
    character with the ``c``-th smallest id, True where the PNG is white.
    """
    from PIL import Image

    if part not in PARTS:
        raise ValueError(f"unknown Omniglot part {part!r}; expected one of {PARTS}")
    drawings: dict[int, dict[int, np.ndarray]] = {}
    alphabet_of: dict[int, str] = {}
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                m = _PNG_NAME.match(info.filename)
                if info.is_dir() or not m:
                    continue
                alphabet, char_id, drawing = m.group(1), int(m.group(3)), int(m.group(4))
                if alphabet_of.setdefault(char_id, alphabet) != alphabet:
                    raise DataCorruptError(f"{zip_path}: character id {char_id} appears in two alphabets")
                try:
                    with Image.open(io.BytesIO(zf.read(info))) as img:
                        pixels = np.asarray(img.convert("L")) > 127
                except (OSError, ValueError) as exc:
                    raise DataCorruptError(
                        f"{zip_path}: {info.filename} is not a readable PNG ({exc})"
                    ) from exc
                if pixels.shape != (IMAGE_SIDE, IMAGE_SIDE):
                    raise DataCorruptError(f"{zip_path}: {info.filename} is {pixels.shape}, expected 105x105")
                drawings.setdefault(char_id, {})[drawing] = pixels
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataCorruptError(
            f"{zip_path} is not a complete zip file ({exc}); delete it to download it again"
        ) from exc
    if not drawings:
        raise DataCorruptError(f"{zip_path} holds no Omniglot PNGs (<alphabet>/<character>/<id>_<n>.png)")
    ids = sorted(drawings)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise DataCorruptError(f"{zip_path}: character ids are not consecutive")
    per_char = {len(d) for d in drawings.values()}
    n_draw = len(drawings[ids[0]])
    if per_char != {n_draw} or any(sorted(drawings[i]) != list(range(1, n_draw + 1)) for i in ids):
        raise DataCorruptError(f"{zip_path}: every character must have drawings 1..{n_draw}")
    images = np.stack([np.stack([drawings[i][d] for d in range(1, n_draw + 1)]) for i in ids])
    labels = np.repeat(np.arange(len(ids), dtype=np.int64)[:, None], n_draw, axis=1)
    entries: list[dict] = []
    for c, i in enumerate(ids):
        name = alphabet_of[i]
        if entries and entries[-1]["alphabet"] == name:
            entries[-1]["count"] += 1
        elif any(e["alphabet"] == name for e in entries):
            raise DataCorruptError(f"{zip_path}: the characters of {name!r} do not have consecutive ids")
        else:
            entries.append({"alphabet": name, "start": c, "count": 1})
    npz_path = out_dir / NPZ_FILES[part].name
    with atomic_path(npz_path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=images, labels=labels)
    _write_catalog(out_dir / JSON_NAME, part, entries)
    record = {
        "npz_sha256": hash_file(npz_path)["sha256"],
        "alphabets_sha256": _json_part_sha256(entries),
        "source": zip_path.name,
        "source_md5": hash_file(zip_path, ("md5",))["md5"],
    }
    with atomic_path(_record_path(npz_path)) as tmp:
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")


def _record_path(npz_path: Path) -> Path:
    return npz_path.with_name(npz_path.name + ".sha256")


def _conversion_record(part: str, npz_path: Path, npz_sha256: str | None) -> dict | None:
    """The record written beside a converted ``.npz``, if the file was converted from the official
    zip (its md5) and, unless ``npz_sha256`` is None, the record describes exactly this file."""
    try:
        record = json.loads(_record_path(npz_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (
        isinstance(record, dict)
        and (npz_sha256 is None or record.get("npz_sha256") == npz_sha256)
        and record.get("source_md5") == ZIP_FILES[part].md5
    ):
        return record
    return None


def _convert_part(root: Path, part: str, download: bool, verify: bool) -> None:
    zip_path = ensure_file(ZIP_FILES[part], root, download_missing=download, verify=verify)
    convert_zip(zip_path, part, root / DATASET)


def _npz_missing(root: Path, part: str, what: str, cause: DataMissingError) -> DataMissingError:
    return DataMissingError(
        f"Omniglot: {what} in {root / DATASET}. These files are made from the official "
        f"{ZIP_FILES[part].name} (converted automatically), which is not available: {cause}"
    )


def _what_is_missing(root: Path, part: str, catalog: dict) -> str:
    npz_present = (root / DATASET / NPZ_FILES[part].name).is_file()
    if not npz_present and part not in catalog:
        return f"{NPZ_FILES[part].name} and the {part!r} entry of {JSON_NAME} are missing"
    if not npz_present:
        return f"{NPZ_FILES[part].name} is missing"
    return f"{JSON_NAME} has no {part!r} entry"


def load_catalog(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    require: Sequence[str] = PARTS,
) -> dict[str, list[dict]]:
    """``alphabets.json`` (made from the official zips when absent), with the ``require`` parts."""
    root = resolve_data_dir(data_dir)
    path = root / DATASET / JSON_NAME
    catalog = _read_catalog(path) if path.is_file() else {}
    for part in require:
        if part not in catalog or not (root / DATASET / NPZ_FILES[part].name).is_file():
            what = _what_is_missing(root, part, catalog)
            try:
                _convert_part(root, part, download, verify)
            except DataMissingError as exc:
                raise _npz_missing(root, part, what, exc) from exc
    catalog = _read_catalog(path) if path.is_file() else {}
    if verify:
        for part, entries in catalog.items():
            digest = _json_part_sha256(entries)
            if digest == JSON_PART_SHA256.get(part):
                continue
            record = _conversion_record(part, root / DATASET / NPZ_FILES[part].name, None)
            if record is None or record.get("alphabets_sha256") != digest:
                raise DataCorruptError(
                    f"{path}: the {part!r} alphabets differ from the official Omniglot ones; "
                    "delete it (and the .npz files) to rebuild them from the official zips"
                )
    return catalog


_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def load_part(
    data_dir: str | os.PathLike[str] | None, part: str, *, download: bool = True, verify: bool = True
) -> np.ndarray:
    """The ``images`` of one part: bool ``(characters, drawings, 105, 105)``, True = background.

    Cached in-process; converted from the official zip first when the ``.npz`` is absent.
    """
    root = resolve_data_dir(data_dir)
    path = root / DATASET / NPZ_FILES[part].name
    if not path.is_file():
        try:
            _convert_part(root, part, download, verify)
        except DataMissingError as exc:
            raise _npz_missing(root, part, f"{NPZ_FILES[part].name} is missing", exc) from exc
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, verify)
    if key not in _CACHE:
        images, labels = _read_npz(path)
        spec = NPZ_FILES[part]
        if verify:
            digest = hash_file(path)["sha256"]
            trusted = digest == spec.sha256 or _conversion_record(part, path, digest) is not None
            if not trusted and _npz_arrays_sha256(images, labels) != spec.content_sha256:
                raise DataCorruptError(
                    f"{path} does not hold the official Omniglot {part} images (neither its bytes, nor "
                    f"its arrays, nor the record of its conversion {_record_path(path).name} match); "
                    "delete it to rebuild it from the official zip"
                )
        _CACHE[key] = (images, labels)
    return _CACHE[key][0]


# ----------------------------------------------------------------------------- tasks


def _split_drawings(n_chars: int, n_draw: int, n_test: int, n_val: int, rng: np.random.Generator):
    """Per character, sorted drawing indices of train / val / test."""
    train, val, test = [], [], []
    for _ in range(n_chars):
        perm = rng.permutation(n_draw)
        test.append(np.sort(perm[:n_test]))
        val.append(np.sort(perm[n_test : n_test + n_val]))
        train.append(np.sort(perm[n_test + n_val :]))
    return np.stack(train), np.stack(val), np.stack(test)


def ink_counts(images: np.ndarray, downsample: int) -> np.ndarray:
    """Ink per ``downsample x downsample`` block: ``(..., 105, 105)`` bool (True = background) to
    ``(..., 105/f, 105/f)`` uint8 counts in ``0..f*f``."""
    ink = (~images).view(np.uint8)
    f = int(downsample)
    if f == 1:
        return ink
    cols = ink[..., 0::f].copy()  # sums of f strided slices: much faster than a reshape-sum
    for k in range(1, f):
        cols += ink[..., k::f]
    out = cols[..., 0::f, :].copy()
    for k in range(1, f):
        out += cols[..., k::f, :]
    return out


def _check_options(num_tasks, test_fraction, val_fraction, split_seed, downsample) -> None:
    valid = [f for f in range(1, IMAGE_SIDE + 1) if IMAGE_SIDE % f == 0]
    if isinstance(downsample, bool) or not isinstance(downsample, (int, np.integer)) or downsample not in valid:
        raise ValueError(f"downsample must be an integer factor of 105 ({valid}), got {downsample!r}")
    require_int("split_seed", split_seed, 0)
    if num_tasks is not None:
        require_int("num_tasks", num_tasks, 1)
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), e.g. 0.1 or 0.2; got {test_fraction!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def omniglot_tasks(
    data_dir: str | os.PathLike[str] | None = None,
    num_tasks: int | None = 50,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    downsample: int = 1,
    val_fraction: float = 0.0,
    order: str | Sequence[str] = "paper",
    *,
    download: bool = True,
    verify: bool = True,
) -> CompactTensorTasks:
    """The first ``num_tasks`` Omniglot alphabets as tasks (Sec. 4.3, A.3).

    Args:
        num_tasks: how many alphabets, taken from the start of ``order`` (None: all of them).
        test_fraction: drawings per character held out for test: 0.1 (2 of 20) or 0.2 (4 of 20).
        split_seed: fixes which drawings are held out, independently for every alphabet (the
            split of an alphabet does not depend on ``num_tasks`` or ``order``).
        downsample: integer factor dividing 105; average pooling to ``105/f`` pixels a side.
        val_fraction: drawings per character also held out for a ``val`` split (paper: none).
        order: ``"paper"`` (A.3), ``"file"`` (the order of ``alphabets.json``), or a list of names.

    Each task (named as in ``alphabets.json``) has ``train`` and ``test`` splits (and ``val``
    with ``val_fraction``): inputs ``(n, 1, 105/f, 105/f)`` float32 in [0, 1], ink = 1 (stored as
    uint8 counts), labels ``(n,)`` int64, the character index within the alphabet; kind
    ``multiclass`` with one class per character. Rows are ordered by character, then drawing.
    """
    _check_options(num_tasks, test_fraction, val_fraction, split_seed, downsample)
    catalog = load_catalog(data_dir, download=download, verify=verify, require=())
    names = _select(catalog, order, num_tasks)
    if names is None:  # the catalog lacks a needed alphabet: build the missing parts and retry
        catalog = load_catalog(data_dir, download=download, verify=verify, require=PARTS)
        names = _select(catalog, order, num_tasks, strict=True)
    assert names is not None
    where = {e["alphabet"]: (part, e) for part, entries in catalog.items() for e in entries}
    tasks = []
    for name in names:
        part, entry = where[name]
        images = load_part(data_dir, part, download=download, verify=verify)
        if entry["start"] + entry["count"] > images.shape[0]:
            raise DataCorruptError(
                f"{JSON_NAME} puts {name!r} at characters {entry['start']}.."
                f"{entry['start'] + entry['count'] - 1} but images_{part}.npz has {images.shape[0]} characters"
            )
        block = images[entry["start"] : entry["start"] + entry["count"]]
        n_chars, n_draw = block.shape[:2]
        n_test = int(round(float(test_fraction) * n_draw))
        n_val = int(round(float(val_fraction) * n_draw))
        if n_test < 1 or n_test + n_val >= n_draw:
            raise ValueError(
                f"test_fraction={test_fraction} and val_fraction={val_fraction} hold out {n_test} + {n_val} "
                f"of {n_draw} drawings per character; at least 1 must be tested and 1 trained on"
            )
        if n_chars < 2:
            raise DataCorruptError(f"alphabet {name!r} has a single character, so it is no classification task")
        rng = np.random.default_rng([int(split_seed), zlib.crc32(name.encode("utf-8"))])
        counts = ink_counts(block, int(downsample))  # (chars, drawings, s, s)
        side = counts.shape[-1]
        chosen = dict(zip(("train", "val", "test"), _split_drawings(n_chars, n_draw, n_test, n_val, rng)))
        splits = {}
        for split, idx in chosen.items():
            if idx.shape[1] == 0:
                continue
            rows = counts[np.arange(n_chars)[:, None], idx]  # (chars, k, s, s)
            x = torch.from_numpy(np.ascontiguousarray(rows.reshape(-1, 1, side, side)))
            y = torch.from_numpy(np.repeat(np.arange(n_chars, dtype=np.int64), idx.shape[1]))
            splits[split] = (x, y)
        tasks.append(TaskArrays(TaskSpec(name, (1, side, side), "multiclass", n_chars), splits))
    return CompactTensorTasks(tasks, scale=1.0 / (int(downsample) ** 2))


def _select(
    catalog: dict, order: str | Sequence[str], num_tasks: int | None, strict: bool = False
) -> list[str] | None:
    """The alphabet names to use, or None when the catalog lacks some (unless ``strict``)."""
    available = [e["alphabet"] for part in PARTS for e in catalog.get(part, [])]
    if isinstance(order, str) and order == "paper":
        count = len(PAPER_ORDER) if num_tasks is None else int(num_tasks)
        if count > len(PAPER_ORDER):
            raise ValueError(f"num_tasks={num_tasks}, but there are {len(PAPER_ORDER)} alphabets")
        try:
            return map_paper_order(available, count)
        except KeyError as exc:
            if strict:
                raise DataCorruptError(f"{JSON_NAME}: {exc.args[0]}") from None
            return None
    if isinstance(order, str):
        if order != "file":
            raise ValueError(f"order must be 'paper', 'file' or a list of alphabet names, got {order!r}")
        wanted = available if num_tasks is None else available[: int(num_tasks)]
        if num_tasks is not None and len(wanted) < int(num_tasks):
            if strict:
                raise ValueError(f"num_tasks={num_tasks}, but there are {len(available)} alphabets")
            return None
        return wanted
    names = list(order)
    if num_tasks is not None:
        names = names[: int(num_tasks)]
    if len(set(names)) != len(names):
        raise ValueError(f"order names an alphabet twice: {names}")
    lookup = {normalize_name(a): a for a in available}
    missing = [n for n in names if normalize_name(n) not in lookup]
    if missing:
        if strict:
            raise ValueError(f"unknown alphabets {missing}; the alphabets are {available}")
        return None
    return [lookup[normalize_name(n)] for n in names]


def omniglot_summary(data_dir: str | os.PathLike[str] | None = None, *, verify: bool = True) -> dict:
    """Counts of the Omniglot files present (no download): alphabets, characters, drawings."""
    catalog = load_catalog(data_dir, download=False, verify=verify)
    chars, drawings = 0, set()
    for part in PARTS:
        images = load_part(data_dir, part, download=False, verify=verify)
        total = sum(e["count"] for e in catalog[part])
        if total != images.shape[0]:
            raise DataCorruptError(
                f"{JSON_NAME} lists {total} {part} characters but images_{part}.npz has {images.shape[0]}"
            )
        chars += images.shape[0]
        drawings.add(images.shape[1])
    return {
        "alphabets": sum(len(catalog[p]) for p in PARTS),
        "characters": chars,
        "drawings": sorted(drawings),
        "names": [e["alphabet"] for p in PARTS for e in catalog[p]],
    }
