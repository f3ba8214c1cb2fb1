"""Known files, their checksums, and safe downloads.

Each official file is described by a :class:`DataFile`: where it lives under the data directory,
where it can be downloaded from, and the checksums it must match. :func:`ensure_file` returns the
path of a file that is present and verified, downloading it first when it is missing.

Downloads are atomic: the bytes go to a temporary file in the destination folder, are verified, and
only then renamed over the final name (``os.replace``); a failed, partial or corrupt download never
stays in place.

Download sources can be redirected, e.g. to a local mirror or, in tests, to a ``file://`` folder:

* ``MIRRORS[dataset] = base`` (module level) fetches ``<base>/<file name>``;
* the environment variable ``SOFTORDER_MIRROR=base`` fetches ``<base>/<dataset>/<file name>``
  (a mirror laid out like the data directory).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from softorder.data.errors import DataCorruptError, DataMissingError
from softorder.data.paths import ENV_DATA_DIR, resolve_data_dir

ENV_MIRROR = "SOFTORDER_MIRROR"
MIRRORS: dict[str, str] = {}
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One official file of a dataset.

    A present file is accepted when its bytes match ``sha256`` or ``md5`` (either that is known), or
    when ``content_digest(path)`` matches ``content_sha256``: a checksum of what the file holds
    (e.g. the decompressed bytes of a gzip file), for copies that are re-packed but equal in
    content. A file with no known checksum at all is accepted on its structure alone.
    """

    dataset: str
    name: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    content_sha256: str | None = None
    content_digest: Callable[[Path], str] | None = field(default=None, compare=False, repr=False)
    manual: str | None = None  # how to get the file by hand, where it can't be fetched by URL

    def path(self, data_dir: str | os.PathLike[str] | None) -> Path:
        return resolve_data_dir(data_dir) / self.dataset / self.name

    @property
    def has_checksum(self) -> bool:
        return bool(self.sha256 or self.md5 or (self.content_sha256 and self.content_digest))


def hash_file(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file's bytes, all computed in one pass."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def checksum_problem(spec: DataFile, path: Path) -> str | None:
    """Why ``path`` fails ``spec``'s checksums, or None when it passes (or none is known)."""
    if not spec.has_checksum:
        return None
    algorithms = tuple(a for a, v in (("sha256", spec.sha256), ("md5", spec.md5)) if v)
    digests = hash_file(path, algorithms) if algorithms else {}
    if spec.sha256 and digests.get("sha256") == spec.sha256:
        return None
    if spec.md5 and digests.get("md5") == spec.md5:
        return None
    if spec.content_sha256 and spec.content_digest is not None:
        try:
            if spec.content_digest(path) == spec.content_sha256:
                return None
        except DataCorruptError as exc:
            return str(exc)
        what = "neither its bytes nor its content match" if digests else "its content does not match"
    else:
        what = "its bytes do not match"
    expected = ", ".join(f"{a} {v}" for a, v in (("sha256", spec.sha256), ("md5", spec.md5)) if v)
    got = ", ".join(f"{a} {digests[a]}" for a in algorithms)
    detail = f" (expected {expected}; got {got})" if expected else ""
    return f"{what} the known checksum{detail}"


_VERIFIED: set[tuple] = set()


def verify_file(spec: DataFile, path: Path) -> None:
    """Raise :class:`DataCorruptError` naming ``path`` if it fails ``spec``'s checksums.

    Results are remembered in-process per (path, size, modification time).
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, spec.sha256, spec.md5, spec.content_sha256)
    if key in _VERIFIED:
        return
    problem = checksum_problem(spec, path)
    if problem:
        raise DataCorruptError(
            f"{path} is corrupt or not the official {spec.name}: {problem}. "
            f"Delete it to download it again{_source_hint(spec)}."
        )
    _VERIFIED.add(key)


def candidate_urls(spec: DataFile) -> list[str]:
    """The URLs to try for ``spec``, honouring ``MIRRORS`` and ``$SOFTORDER_MIRROR``."""
    if spec.dataset in MIRRORS:
        return [MIRRORS[spec.dataset].rstrip("/") + "/" + spec.name]
    env = os.environ.get(ENV_MIRROR)
    if env:
        return [f"{env.rstrip('/')}/{spec.dataset}/{spec.name}"]
    return list(spec.urls)


def _source_hint(spec: DataFile) -> str:
    urls = candidate_urls(spec)
    if urls:
        return " from " + " or ".join(urls)
    if spec.manual:
        return "; " + spec.manual
    return ""


def missing_message(spec: DataFile, directory: Path, reason: str | None = None) -> str:
    """A message naming the missing file, the folder it belongs in and where to get it."""
    lines = [f"{spec.name} is missing from {directory}"]
    if reason:
        lines[0] += f" and could not be downloaded ({reason})"
    lines[0] += "."
    urls = candidate_urls(spec)
    if urls:
        lines.append(f"Download it from {' or '.join(urls)} and put it in {directory}/ .")
    elif spec.manual:
        lines.append(f"{spec.manual} Put it in {directory}/ .")
    lines.append(
        f"(Or point the data directory at a folder that has {spec.dataset}/{spec.name}: "
        f"--data-dir or ${ENV_DATA_DIR}.)"
    )
    return " ".join(lines)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it replaces ``final``, else it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fetch(url: str, dest: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "softorder-data"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        expected = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        shutil.copyfileobj(response, out, _CHUNK)
        out.flush()
        os.fsync(out.fileno())
    if expected is not None and expected.isdigit() and dest.stat().st_size != int(expected):
        raise OSError(f"connection closed after {dest.stat().st_size} of {expected} bytes")


def download(spec: DataFile, data_dir: str | os.PathLike[str] | None, timeout: float | None = None) -> Path:
    """Download ``spec`` into ``<data_dir>/<dataset>/``, verify it, and move it into place.

    Raises :class:`DataMissingError` when no source can be reached (or the file has no URL) and
    :class:`DataCorruptError` when what was downloaded fails the checksum (nothing is kept).
    """
    final = spec.path(data_dir)
    directory = final.parent
    urls = candidate_urls(spec)
    if not urls:
        raise DataMissingError(missing_message(spec, directory))
    timeout = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    failures: list[str] = []
    mismatches: list[str] = []
    for url in urls:
        try:
            with atomic_path(final) as tmp:
                print(f"softorder: downloading {url} -> {final}", file=sys.stderr)
                try:
                    _fetch(url, tmp, timeout)
                except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                    raise _FetchFailed(f"{url}: {getattr(exc, 'reason', None) or exc}") from exc
                problem = checksum_problem(spec, tmp)
                if problem:
                    raise _Mismatch(f"{url}: {problem}")
        except _FetchFailed as exc:
            failures.append(str(exc))
            continue
        except _Mismatch as exc:
            mismatches.append(str(exc))
            continue
        return final
    if mismatches:
        raise DataCorruptError(
            f"the download of {spec.name} failed its checksum, so nothing was written to {directory}: "
            + "; ".join(mismatches)
            + (f" (other sources failed: {'; '.join(failures)})" if failures else "")
        )
    raise DataMissingError(missing_message(spec, directory, reason="; ".join(failures)))


class _FetchFailed(Exception):
    pass


class _Mismatch(Exception):
    pass


def ensure_file(
    spec: DataFile,
    data_dir: str | os.PathLike[str] | None,
    *,
    download_missing: bool = True,
    verify: bool = True,
) -> Path:
    """The path of ``spec`` under ``data_dir``, present and (with ``verify``) checksum-verified.

    A missing file is downloaded when ``download_missing`` and a source is known; otherwise a
    :class:`DataMissingError` says where to get it and where to put it.
    """
    path = spec.path(data_dir)
    if path.is_file():
        if verify:
            verify_file(spec, path)
        return path
    if path.exists():
        raise DataCorruptError(f"{path} exists but is not a regular file")
    if not download_missing:
        raise DataMissingError(missing_message(spec, path.parent))
    return download(spec, data_dir)
