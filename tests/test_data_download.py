"""Data directory resolution, checksums and atomic downloads (fake sources only, never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from softorder.data import download as dl
from softorder.data.download import DataFile, atomic_path, ensure_file, verify_file
from softorder.data.errors import DataCorruptError, DataError, DataMissingError
from softorder.data.paths import default_data_dir, resolve_data_dir

PAYLOAD = b"official bytes\n" * 100


def _spec(**kw) -> DataFile:
    base = dict(dataset="toy", name="toy.bin", urls=("https://example.invalid/toy.bin",),
                sha256=hashlib.sha256(PAYLOAD).hexdigest())
    base.update(kw)
    return DataFile(**base)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- data directory


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTORDER_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("SOFTORDER_DATA")
    assert resolve_data_dir() == tmp_path / "xdg" / "softorder"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "softorder" == default_data_dir()


def test_resolve_data_dir_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("~/data") == tmp_path / "data"


def test_error_classes():
    err = DataMissingError("x.bin is missing from /d")
    assert isinstance(err, FileNotFoundError) and isinstance(err, DataError)
    assert str(err) == "x.bin is missing from /d"
    assert isinstance(DataCorruptError("bad"), ValueError)


# ----------------------------------------------------------------------------- checksums


def test_verify_file_accepts_official_and_names_a_corrupt_file(tmp_path):
    path = tmp_path / "toy" / "toy.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    spec = _spec()
    assert ensure_file(spec, tmp_path) == path
    path.write_bytes(PAYLOAD[:-5])  # truncated
    with pytest.raises(DataCorruptError, match=r"toy\.bin.*checksum"):
        verify_file(spec, path)


def test_md5_or_content_checksum_suffice(tmp_path):
    path = tmp_path / "toy" / "toy.bin"
    path.parent.mkdir()
    path.write_bytes(b"repacked" + PAYLOAD)
    by_md5 = _spec(sha256=None, md5=hashlib.md5(b"repacked" + PAYLOAD).hexdigest())
    verify_file(by_md5, path)
    by_content = _spec(
        content_sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        content_digest=lambda p: hashlib.sha256(p.read_bytes()[len(b"repacked"):]).hexdigest(),
    )
    verify_file(by_content, path)  # bytes differ, content matches
    # and each is a real check: another md5, or other content, is refused
    with pytest.raises(DataCorruptError, match=r"toy\.bin.*bytes do not match"):
        verify_file(_spec(sha256=None, md5=hashlib.md5(PAYLOAD).hexdigest()), path)
    other_content = _spec(content_sha256=hashlib.sha256(b"other" + PAYLOAD).hexdigest(), content_digest=by_content.content_digest)
    with pytest.raises(DataCorruptError, match=r"toy\.bin.*neither its bytes nor its content match"):
        verify_file(other_content, path)


def test_atomic_path_removes_the_temporary_file_on_error(tmp_path):
    final = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert _leftovers(tmp_path) == []
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole" and _leftovers(tmp_path) == ["out.bin"]


# ----------------------------------------------------------------------------- downloads


def test_fake_download_from_a_file_url(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "toy"
    mirror.mkdir(parents=True)
    (mirror / "toy.bin").write_bytes(PAYLOAD)
    monkeypatch.setenv("SOFTORDER_MIRROR", (tmp_path / "mirror").as_uri())
    data = tmp_path / "data"
    path = ensure_file(_spec(), data)
    assert path == data / "toy" / "toy.bin" and path.read_bytes() == PAYLOAD
    assert _leftovers(data / "toy") == ["toy.bin"]


def test_module_level_mirror_overrides_the_environment(tmp_path, monkeypatch):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "toy.bin").write_bytes(PAYLOAD)
    monkeypatch.setitem(dl.MIRRORS, "toy", (tmp_path / "flat").as_uri())
    assert ensure_file(_spec(), tmp_path / "data").read_bytes() == PAYLOAD


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, int | None]] = {}

    def do_GET(self):  # noqa: N802
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, length = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    _Handler.routes = {}
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler.routes
    server.shutdown()
    server.server_close()


def test_fake_download_over_http(tmp_path, monkeypatch, http_mirror):
    base, routes = http_mirror
    routes["/toy/toy.bin"] = (PAYLOAD, None)
    monkeypatch.setenv("SOFTORDER_MIRROR", base)
    assert ensure_file(_spec(), tmp_path).read_bytes() == PAYLOAD


def test_corrupt_download_leaves_nothing_in_place(tmp_path, monkeypatch, http_mirror):
    base, routes = http_mirror
    routes["/toy/toy.bin"] = (b"tampered" + PAYLOAD, None)
    monkeypatch.setenv("SOFTORDER_MIRROR", base)
    with pytest.raises(DataCorruptError, match=r"toy\.bin.*checksum.*nothing was written"):
        ensure_file(_spec(), tmp_path)
    assert _leftovers(tmp_path / "toy") == []


def test_truncated_download_is_a_failed_download(tmp_path, monkeypatch, http_mirror):
    base, routes = http_mirror
    routes["/toy/toy.bin"] = (PAYLOAD[:100], len(PAYLOAD))  # the connection closes early
    monkeypatch.setenv("SOFTORDER_MIRROR", base)
    with pytest.raises(DataMissingError, match="toy.bin"):
        ensure_file(_spec(), tmp_path)
    assert _leftovers(tmp_path / "toy") == []


def test_offline_error_names_file_folder_and_url(tmp_path, offline_mirror):
    with pytest.raises(DataMissingError) as info:
        ensure_file(_spec(), tmp_path)
    message = str(info.value)
    assert "toy.bin is missing from" in message
    assert str(tmp_path / "toy") in message
    assert f"{offline_mirror}/toy/toy.bin" in message
    assert "could not be downloaded" in message
    assert _leftovers(tmp_path / "toy") == []


def test_official_urls_are_used_without_a_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTORDER_MIRROR")
    assert dl.candidate_urls(_spec()) == ["https://example.invalid/toy.bin"]
    with pytest.raises(DataMissingError, match=r"https://example\.invalid/toy\.bin"):
        ensure_file(_spec(), tmp_path, download_missing=False)


def test_manual_only_file_explains_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTORDER_MIRROR")
    spec = _spec(urls=(), manual="Get it from the project page by hand.")
    with pytest.raises(DataMissingError, match="project page by hand.*Put it in"):
        ensure_file(spec, tmp_path)
