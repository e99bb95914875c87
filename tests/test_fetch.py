"""Tests for fewcells.data.fetch: local folders, archives, and downloads from a loopback server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fewcells.data.fetch import fetch, sha256_file
from fewcells.errors import FewcellsError

IMAGES = {
    "ALL_IDB2/img/Im001_1.tif": b"II*\x00 blast",
    "ALL_IDB2/img/Im002_0.tif": b"II*\x00 healthy",
    "ALL_IDB2/README.txt": b"readme",
}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


def assert_nothing_left(out_dir: Path) -> None:
    assert not (out_dir / "files").exists()
    assert not (out_dir / "source.json").exists()
    leftovers = [p.name for p in out_dir.glob(".files.tmp-*")] if out_dir.exists() else []
    assert leftovers == []


# --- local folder -----------------------------------------------------------------------


def test_path_source_is_used_in_place(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "img").mkdir(parents=True)
    out_dir = tmp_path / "out"
    root = fetch({"path": str(images)}, out_dir, progress=False)
    assert root == images.resolve()
    record = json.loads((out_dir / "source.json").read_text())
    assert record == {"root": str(images.resolve()), "source": {"path": str(images)}}
    assert not (out_dir / "files").exists()


def test_path_source_subdir(tmp_path: Path) -> None:
    (tmp_path / "images" / "img").mkdir(parents=True)
    source = {"path": str(tmp_path / "images"), "subdir": "img"}
    root = fetch(source, tmp_path / "out", progress=False)
    assert root == (tmp_path / "images" / "img").resolve()
    with pytest.raises(FewcellsError, match=r"'subdir' 'nope'"):
        fetch({**source, "subdir": "nope"}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "source.json").exists()


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FewcellsError, match="no_such_folder.*does not exist"):
        fetch({"path": str(missing)}, tmp_path / "out", progress=False)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FewcellsError, match="a_file.*is not a folder"):
        fetch({"path": str(tmp_path / "a_file")}, tmp_path / "out", progress=False)


# --- local archives ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tgz", ".tar"])
def test_archive_extracts(tmp_path: Path, suffix: str) -> None:
    archive = tmp_path / f"data{suffix}"
    if suffix == ".zip":
        write_zip(archive, IMAGES)
    else:
        write_tar(archive, IMAGES, "w" if suffix == ".tar" else "w:gz")
    out_dir = tmp_path / "out"
    root = fetch({"archive": str(archive), "subdir": "ALL_IDB2/img"}, out_dir, progress=False)
    assert root == (out_dir / "files" / "ALL_IDB2" / "img").resolve()
    assert sorted(p.name for p in root.iterdir()) == ["Im001_1.tif", "Im002_0.tif"]
    assert (root / "Im001_1.tif").read_bytes() == IMAGES["ALL_IDB2/img/Im001_1.tif"]
    record = json.loads((out_dir / "source.json").read_text())
    assert record["root"] == str(root)
    assert record["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert record["source"] == {"archive": str(archive), "subdir": "ALL_IDB2/img"}


def test_archive_rerun_reuses_extraction_until_archive_changes(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "data.zip", IMAGES)
    out_dir = tmp_path / "out"
    fetch({"archive": str(archive)}, out_dir, progress=False)
    sentinel = out_dir / "files" / "sentinel"
    sentinel.write_text("left by the first run")
    fetch({"archive": str(archive)}, out_dir, progress=False)
    assert sentinel.exists(), "same archive: the extraction must be reused"
    write_zip(archive, {**IMAGES, "ALL_IDB2/img/Im003_1.tif": b"new"})
    root = fetch({"archive": str(archive)}, out_dir, progress=False)
    assert not sentinel.exists(), "changed archive: the extraction must be redone"
    assert (root / "ALL_IDB2" / "img" / "Im003_1.tif").read_bytes() == b"new"


def test_archive_missing_subdir_leaves_nothing(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "data.zip", IMAGES)
    with pytest.raises(FewcellsError, match=r"'subdir' 'ALL_IDB1/img'.*data\.zip"):
        fetch({"archive": str(archive), "subdir": "ALL_IDB1/img"}, tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_archive_sha256_is_checked_when_given(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "data.zip", IMAGES)
    with pytest.raises(FewcellsError, match="'sha256' expects " + "0" * 64):
        fetch({"archive": str(archive), "sha256": "0" * 64}, tmp_path / "out", progress=False)
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("bad_name", ["../evil.txt", "/tmp/evil.txt", "img/../../evil.txt"])
def test_path_traversal_is_refused(tmp_path: Path, kind: str, bad_name: str) -> None:
    members = {**IMAGES, bad_name: b"evil"}
    (tmp_path / "sub").mkdir()
    if kind == "zip":
        archive = write_zip(tmp_path / "sub" / "data.zip", members)
    else:
        archive = write_tar(tmp_path / "sub" / "data.tar.gz", members)
    out_dir = tmp_path / "sub" / "out"
    with pytest.raises(FewcellsError, match=re.escape(repr(bad_name))):
        fetch({"archive": str(archive)}, out_dir, progress=False)
    assert_nothing_left(out_dir)
    assert not list(tmp_path.rglob("evil.txt"))


def test_tar_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as bundle:
        link = tarfile.TarInfo("img/escape")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        bundle.addfile(link)
    with pytest.raises(FewcellsError, match=r"cannot extract archive .*data\.tar"):
        fetch({"archive": str(archive)}, tmp_path / "out", progress=False)
    assert_nothing_left(tmp_path / "out")


def corrupt_zip_member(path: Path) -> None:
    write_zip(path, {"img/a.tif": b"A" * 1000})
    path.write_bytes(path.read_bytes().replace(b"A" * 1000, b"B" * 1000))


def truncated_tgz(path: Path) -> None:
    write_tar(path, {f"img/{i}.tif": bytes(range(256)) * 64 for i in range(4)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("garbage.zip", lambda p: p.write_bytes(b"not an archive at all"), "not a readable zip"),
        ("crc.zip", corrupt_zip_member, "Bad CRC-32"),
        ("cut.tar.gz", truncated_tgz, "ended before"),
    ],
)
def test_corrupt_archive_is_a_clear_error(tmp_path: Path, name: str, make, message: str) -> None:
    archive = tmp_path / name
    make(archive)
    with pytest.raises(FewcellsError, match=f"archive {re.escape(str(archive))}.*{message}"):
        fetch({"archive": str(archive)}, tmp_path / "out", progress=False)
    assert_nothing_left(tmp_path / "out")


def test_missing_archive_names_it(tmp_path: Path) -> None:
    with pytest.raises(FewcellsError, match="absent.zip"):
        fetch({"archive": str(tmp_path / "absent.zip")}, tmp_path / "out", progress=False)


def test_failure_removes_an_old_source_json(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    fetch({"path": str(tmp_path)}, out_dir, progress=False)
    assert (out_dir / "source.json").exists()
    with pytest.raises(FewcellsError):
        fetch({"path": str(tmp_path / "gone")}, out_dir, progress=False)
    assert not (out_dir / "source.json").exists()


# --- downloads --------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the loopback server serves, how it misbehaves, and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_next: bool = False
    ignore_range: bool = False
    range_headers: list[str | None] = field(default_factory=list)


class RangeHandler(BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-` support, 404 for unknown paths, 500 for /boom."""

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        state.range_headers.append(requested)
        if self.path == "/boom":
            self.send_error(500)
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if requested and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if state.drop_next:
            state.drop_next = False
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        """Keep test output quiet."""


@dataclass
class Served:
    base_url: str
    state: ServerState
    archive: bytes
    sha256: str

    @property
    def url(self) -> str:
        return f"{self.base_url}/data/ALL_IDB2.zip"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    archive = write_zip(tmp_path / "served.zip", IMAGES).read_bytes()
    state = ServerState(files={"/data/ALL_IDB2.zip": archive})
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield Served(f"http://{host}:{port}", state, archive, hashlib.sha256(archive).hexdigest())
    server.shutdown()
    server.server_close()
    thread.join()


def test_url_download_verify_extract(tmp_path: Path, served: Served) -> None:
    out_dir = tmp_path / "out"
    source = {"url": served.url, "sha256": served.sha256, "subdir": "ALL_IDB2/img"}
    root = fetch(source, out_dir, progress=False)
    assert root == (out_dir / "files" / "ALL_IDB2" / "img").resolve()
    assert sorted(p.name for p in root.iterdir()) == ["Im001_1.tif", "Im002_0.tif"]
    assert (out_dir / "download" / "ALL_IDB2.zip").read_bytes() == served.archive
    assert not (out_dir / "download" / "ALL_IDB2.zip.part").exists()
    record = json.loads((out_dir / "source.json").read_text())
    assert record == {"root": str(root), "source": source, "sha256": served.sha256}
    assert served.state.range_headers == [None]

    fetch(source, out_dir, progress=False)
    assert served.state.range_headers == [None], "a rerun must not download again"


def test_url_wrong_sha256_leaves_nothing(tmp_path: Path, served: Served) -> None:
    out_dir = tmp_path / "out"
    wrong = "f" * 64
    with pytest.raises(FewcellsError) as caught:
        fetch({"url": served.url, "sha256": wrong}, out_dir, progress=False)
    message = str(caught.value)
    assert served.url in message and wrong in message and served.sha256 in message
    assert_nothing_left(out_dir)
    assert list((out_dir / "download").iterdir()) == []


@pytest.mark.parametrize(("path", "status"), [("/data/missing.zip", "404"), ("/boom", "500")])
def test_url_http_error_names_url_and_status(
    tmp_path: Path, served: Served, path: str, status: str
) -> None:
    url = served.base_url + path
    with pytest.raises(FewcellsError, match=re.escape(url) + f".*HTTP {status}"):
        fetch({"url": url, "sha256": served.sha256}, tmp_path / "out", progress=False)
    assert_nothing_left(tmp_path / "out")


def test_url_connection_refused_names_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    with pytest.raises(FewcellsError, match=re.escape(url) + ".*refused"):
        fetch({"url": url, "sha256": "0" * 64}, tmp_path / "out", progress=False)


def test_url_resume_after_dropped_connection(tmp_path: Path, served: Served) -> None:
    out_dir = tmp_path / "out"
    source = {"url": served.url, "sha256": served.sha256}
    part = out_dir / "download" / "ALL_IDB2.zip.part"
    served.state.drop_next = True
    with pytest.raises(FewcellsError, match="interrupted"):
        fetch(source, out_dir, progress=False)
    assert_nothing_left(out_dir)
    kept = part.stat().st_size
    assert 0 < kept < len(served.archive)

    root = fetch(source, out_dir, progress=False)
    assert served.state.range_headers == [None, f"bytes={kept}-"]
    assert sha256_file(out_dir / "download" / "ALL_IDB2.zip") == served.sha256
    assert (root / "ALL_IDB2" / "img" / "Im002_0.tif").exists()


@pytest.mark.parametrize(
    ("stale_part", "ignore_range"),
    [(b"wrong start", True), (b"x" * 100_000, False)],
    ids=["server-ignores-range", "range-not-satisfiable"],
)
def test_url_stale_part_is_restarted(
    tmp_path: Path, served: Served, stale_part: bytes, ignore_range: bool
) -> None:
    out_dir = tmp_path / "out"
    part = out_dir / "download" / "ALL_IDB2.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(stale_part)
    served.state.ignore_range = ignore_range
    fetch({"url": served.url, "sha256": served.sha256}, out_dir, progress=False)
    assert served.state.range_headers[0] == f"bytes={len(stale_part)}-"
    assert (out_dir / "download" / "ALL_IDB2.zip").read_bytes() == served.archive


def test_url_progress_line(tmp_path: Path, served: Served, capsys) -> None:
    fetch({"url": served.url, "sha256": served.sha256}, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert re.search(r"ALL_IDB2\.zip: .* MiB of .* MiB \(100%\) at .* MiB/s", err)


# --- invalid source dicts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({}, "exactly one of the keys 'path', 'archive', 'url'.*none"),
        ({"path": "a", "url": "http://h/a.zip"}, "exactly one of .*found 'path', 'url'"),
        ({"subdir": "img"}, "exactly one of the keys"),
        ({"path": "a", "colour": "red"}, "unknown key.*'colour'"),
        ({"path": ""}, "'path' must be a non-empty string"),
        ({"url": "http://h/a.zip"}, "needs the key 'sha256'"),
        ({"url": "http://h/a.zip", "sha256": "abc"}, "'sha256' must be 64 hexadecimal"),
        ({"url": "http://h/a.zip", "sha256": "g" * 64}, "'sha256' must be 64 hexadecimal"),
        ({"url": "ftp://h/a.zip", "sha256": "0" * 64}, "'url'.*http"),
        ({"path": "a", "subdir": "../img"}, "'subdir'"),
        ({"archive": "a.zip", "subdir": "/abs"}, "'subdir'"),
        ({"path": "a", "sha256": "0" * 64}, "'sha256' applies to 'archive' or 'url'"),
        (["path", "a"], "must be a mapping"),
    ],
)
def test_invalid_source(tmp_path: Path, source, message: str) -> None:
    with pytest.raises(FewcellsError, match=message):
        fetch(source, tmp_path / "out", progress=False)
    assert_nothing_left(tmp_path / "out")


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over 1 MiB: more than one chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_source_listing_changes_when_files_are_added_removed_or_rewritten(tmp_path):
    from fewcells.data.fetch import source_listing

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.tif").write_bytes(b"a")
    dataset = {"source": {"path": str(tmp_path), "subdir": "img"}}
    first = source_listing(dataset)
    assert first == source_listing(dataset) and len(first) == 64
    (tmp_path / "img" / "b.tif").write_bytes(b"b")
    added = source_listing(dataset)
    assert added != first
    (tmp_path / "img" / "b.tif").unlink()
    assert source_listing(dataset) == first
    (tmp_path / "img" / "a.tif").write_bytes(b"longer")
    assert source_listing(dataset) != first
    assert source_listing({"kind": "demo"}) == ""
    assert source_listing({"source": {"url": "https://x/a.zip"}}) == ""


def test_source_listing_ignores_new_mtimes_and_reads_only_touched_files(tmp_path, monkeypatch):
    from fewcells.data import fetch

    (tmp_path / "img").mkdir()
    for name in ("a.tif", "b.tif"):
        (tmp_path / "img" / name).write_bytes(name.encode())
    dataset = {"source": {"path": str(tmp_path / "img")}}
    cache = tmp_path / "cache" / "listing.json"
    first = fetch.source_listing(dataset, cache=cache)
    assert set(json.loads(cache.read_text())) == {"a.tif", "b.tif"}
    read, real_sha256 = [], fetch.sha256_file
    monkeypatch.setattr(
        fetch, "sha256_file", lambda path: read.append(Path(path).name) or real_sha256(path)
    )
    assert fetch.source_listing(dataset, cache=cache) == first and read == []
    os.utime(tmp_path / "img" / "a.tif", ns=(10**18, 10**18))
    assert fetch.source_listing(dataset, cache=cache) == first and read == ["a.tif"]
    (tmp_path / "img" / "b.tif").write_bytes(b"B.tif")  # same size, new content
    assert fetch.source_listing(dataset, cache=cache) != first
    cache.write_text("not json")
    assert fetch.source_listing(dataset, cache=cache) == fetch.source_listing(dataset)


def test_a_tar_with_a_damaged_header_midway_extracts_nothing(tmp_path):
    import gzip

    members = {f"img/Im{i:03d}_1.tif": bytes([i]) * 700 for i in range(10)}
    plain = write_tar(tmp_path / "plain.tar", members, "w")
    data = bytearray(plain.read_bytes())
    data[6 * 1536 + 100] ^= 0xFF  # the 7th member's header (512-byte header + 2 data blocks)
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(FewcellsError, match=r"data.tar.gz is corrupt: .* first 6 member"):
        fetch({"archive": str(archive)}, tmp_path / "out", progress=False)
    assert_nothing_left(tmp_path / "out")


def test_a_gzip_crc_mismatch_extracts_nothing(tmp_path):
    archive = write_tar(tmp_path / "data.tar.gz", IMAGES)
    data = bytearray(archive.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    archive.write_bytes(bytes(data))
    with pytest.raises(FewcellsError, match="data.tar.gz"):
        fetch({"archive": str(archive)}, tmp_path / "out", progress=False)
    assert_nothing_left(tmp_path / "out")
