"""Materialise a data source: a local folder, a local archive, or a verified download.

`fetch` leaves either a complete image root plus `source.json` describing it, or nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, NoReturn

from fewcells import __version__
from fewcells.atomic import atomic_path, write_json
from fewcells.errors import FewcellsError

SOURCE_KINDS = ("path", "archive", "url")
OPTIONAL_KEYS = ("subdir", "sha256")
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
PROGRESS_INTERVAL_S = 1.0
# Written inside an extracted folder: the sha256 of the archive it came from.
EXTRACTED_MARKER = ".fewcells-archive-sha256"
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(source: dict, out_dir: Path, *, progress: bool = True) -> Path:
    """Materialise `source` under `out_dir`, write `out_dir/source.json`, return the image root.

    A local folder is used in place; an archive (local or downloaded and verified) is
    extracted into `out_dir/files`, unless that folder already holds the same archive.
    """
    out_dir = Path(out_dir)
    record_path = out_dir / "source.json"
    record_path.unlink(missing_ok=True)
    kind = _validate_source(source)
    subdir = source.get("subdir")
    record: dict = {"source": source}
    if kind == "path":
        base = Path(source["path"]).expanduser().resolve()
        if not base.is_dir():
            problem = "does not exist" if not base.exists() else "is not a folder"
            raise FewcellsError(f"data source path {base} {problem}")
        root = _image_root(base, subdir, source["path"])
    else:
        files_dir = out_dir / "files"
        if kind == "url":
            archive_sha = source["sha256"].lower()
            if _extracted_sha(files_dir) != archive_sha:
                archive = _download_verified(source["url"], archive_sha, out_dir, progress)
                _extract(archive, archive_sha, files_dir, subdir)
        else:
            archive = Path(source["archive"]).expanduser().resolve()
            if not archive.is_file():
                raise FewcellsError(f"data source archive {source['archive']!r} is not a file")
            archive_sha = sha256_file(archive)
            if "sha256" in source and archive_sha != source["sha256"].lower():
                raise FewcellsError(
                    f"archive {archive}: sha256 is {archive_sha}, "
                    f"but the source's key 'sha256' expects {source['sha256']}"
                )
            if _extracted_sha(files_dir) != archive_sha:
                _extract(archive, archive_sha, files_dir, subdir)
        root = _image_root(files_dir.resolve(), subdir, source[kind])
        record["sha256"] = archive_sha
    record["root"] = str(root)
    write_json(record, record_path)
    return root


def source_listing(dataset: dict, cache: str | os.PathLike | None = None) -> str:
    """For a `path:` source, a sha256 of its file listing (relative path, size, content
    sha256): the manifest rule's parameter, so that added, removed or rewritten files rerun
    the manifest and everything after it, while a copy with new modification times does
    not. CACHE (a JSON file) keeps each file's sha256 under its size and mtime, so only new
    or touched files are read again. Empty for other sources (their sha256 decides)."""
    source = dataset.get("source") or {}
    if not isinstance(source, dict) or not isinstance(source.get("path"), str):
        return ""
    base = Path(source["path"]).expanduser()
    root = base / source["subdir"] if isinstance(source.get("subdir"), str) else base
    known = _read_listing_cache(cache)
    seen = {}
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            relative = path.relative_to(root).as_posix()
            try:
                stat = path.stat()
                entry = known.get(relative)
                if not isinstance(entry, list) or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
                    entry = [stat.st_size, stat.st_mtime_ns, sha256_file(path)]
            except OSError:
                continue
            seen[relative] = entry
            digest.update(f"{relative}\0{entry[0]}\0{entry[2]}\n".encode())
    if cache is not None and seen != known:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        write_json(seen, cache)
    return digest.hexdigest()


def _read_listing_cache(cache: str | os.PathLike | None) -> dict[str, list]:
    """The {relative path: [size, mtime_ns, sha256]} of CACHE; empty when absent or unreadable
    (it is only a cache: the files are then read again)."""
    if cache is None:
        return {}
    try:
        known = json.loads(Path(cache).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _validate_source(source: dict) -> str:
    """Check the keys and values of a source dict; return its kind (path, archive or url)."""
    allowed = ", ".join(repr(key) for key in SOURCE_KINDS)
    if not isinstance(source, dict):
        raise FewcellsError(f"a data source must be a mapping with one of the keys {allowed}")
    kinds = [key for key in SOURCE_KINDS if key in source]
    if len(kinds) != 1:
        found = ", ".join(repr(key) for key in kinds) or "none of them"
        raise FewcellsError(
            f"a data source needs exactly one of the keys {allowed} (found {found})"
        )
    kind = kinds[0]
    unknown = sorted(set(source) - {kind, *OPTIONAL_KEYS})
    if unknown:
        raise FewcellsError(
            f"data source has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: one of {allowed}, plus 'subdir' and 'sha256'"
        )
    if not isinstance(source[kind], str) or not source[kind]:
        raise FewcellsError(f"data source key {kind!r} must be a non-empty string")
    if kind == "path" and "sha256" in source:
        raise FewcellsError("data source key 'sha256' applies to 'archive' or 'url', not 'path'")
    if kind == "url":
        scheme = urllib.parse.urlsplit(source["url"]).scheme
        if scheme not in ("http", "https"):
            raise FewcellsError(f"data source 'url' {source['url']!r} must start with http(s)://")
        if "sha256" not in source:
            raise FewcellsError(f"data source 'url' {source['url']!r} needs the key 'sha256'")
    if "sha256" in source and not (
        isinstance(source["sha256"], str) and SHA256_PATTERN.fullmatch(source["sha256"].lower())
    ):
        raise FewcellsError(
            f"data source key 'sha256' must be 64 hexadecimal characters, got {source['sha256']!r}"
        )
    if "subdir" in source:
        subdir = source["subdir"]
        if not isinstance(subdir, str) or not subdir or _unsafe_member_name(subdir):
            raise FewcellsError(
                f"data source key 'subdir' must be a relative folder inside the source "
                f"without '..', got {subdir!r}"
            )
    return kind


def _image_root(base: Path, subdir: str | None, described: str) -> Path:
    """`base` or `base/subdir`, which must be a folder."""
    if subdir is None:
        return base
    root = base / subdir
    if not root.is_dir():
        raise FewcellsError(f"data source key 'subdir' {subdir!r}: no folder {root} in {described}")
    return root


def _extracted_sha(files_dir: Path) -> str | None:
    """The archive sha256 recorded in an extracted folder, or None if there is none."""
    marker = files_dir / EXTRACTED_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def _unsafe_member_name(name: str) -> bool:
    """True for absolute paths, drive letters and '..' components."""
    posix = name.replace("\\", "/")
    return (
        posix.startswith("/")
        or re.match(r"[A-Za-z]:", posix) is not None
        or ".." in PurePosixPath(posix).parts
    )


def _extract(archive: Path, archive_sha: str, files_dir: Path, subdir: str | None) -> None:
    """Extract a zip or tar archive into `files_dir` atomically, replacing what was there."""
    with atomic_path(files_dir, directory=True, also_marked_by=(EXTRACTED_MARKER,)) as tmp:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as bundle:
                    _refuse_unsafe(archive, bundle.namelist())
                    bad = bundle.testzip()  # reads every member, checking its CRC
                    if bad is not None:
                        raise FewcellsError(
                            f"archive {archive} is corrupt: member {bad!r} fails its "
                            "check (Bad CRC-32)"
                        )
                    bundle.extractall(tmp)
            else:
                _verify_tar(archive)
                with tarfile.open(archive, "r:*") as bundle:
                    _refuse_unsafe(archive, bundle.getnames())
                    bundle.extractall(tmp, filter="data")
        except tarfile.ReadError:
            raise FewcellsError(f"archive {archive} is not a readable zip or tar file") from None
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise FewcellsError(f"cannot extract archive {archive}: {exc}") from None
        if subdir is not None and not (tmp / subdir).is_dir():
            raise FewcellsError(
                f"data source key 'subdir' {subdir!r}: no folder {subdir} in {archive}"
            )
        (tmp / EXTRACTED_MARKER).write_text(archive_sha + "\n")


def _verify_tar(archive: Path) -> None:
    """Read a tar archive to its very end before anything is used: every member's data, then
    the rest of the (decompressed) stream, which must be the tar end blocks only (tarfile
    stops silently at a damaged header), so that gzip, bzip2 and xz check their CRCs."""
    with tarfile.open(archive, "r:*") as bundle:
        members = 0
        for member in bundle:
            members += 1
            if member.isfile():
                stream = bundle.extractfile(member)
                while stream.read(CHUNK_BYTES):
                    pass
        rest = bundle.fileobj
        while chunk := rest.read(CHUNK_BYTES):
            if chunk.count(0) != len(chunk):
                raise FewcellsError(
                    f"archive {archive} is corrupt: unreadable data after its first "
                    f"{members} member(s)"
                )


def _refuse_unsafe(archive: Path, names: list[str]) -> None:
    """Raise if any member would land outside the extraction folder."""
    unsafe = [name for name in names if _unsafe_member_name(name)]
    if unsafe:
        raise FewcellsError(
            f"archive {archive} has member(s) with an absolute path or '..', refused: "
            + ", ".join(repr(name) for name in unsafe[:5])
        )


def _download_verified(url: str, expected_sha: str, out_dir: Path, progress: bool) -> Path:
    """Download `url` into `out_dir/download` (resuming a .part), verify it, return the file."""
    download_dir = out_dir / "download"
    name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
    final = download_dir / (name if name not in ("", ".", "..") else "archive")
    if final.is_file():
        if sha256_file(final) == expected_sha:
            return final
        final.unlink()
    part = final.with_name(final.name + ".part")
    download_dir.mkdir(parents=True, exist_ok=True)
    _download(url, part, progress)
    actual_sha = sha256_file(part)
    if actual_sha != expected_sha:
        part.unlink()
        raise FewcellsError(
            f"download {url}: sha256 mismatch, expected {expected_sha}, got {actual_sha} "
            "(the file was deleted)"
        )
    os.replace(part, final)
    return final


def _open(url: str, offset: int) -> http.client.HTTPResponse | None:
    """GET `url` from byte `offset`; None when the server says that range is not satisfiable."""
    headers = {"User-Agent": f"fewcells/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None
        raise FewcellsError(f"download {url} failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FewcellsError(f"download {url} failed: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FewcellsError(f"download {url} failed: {exc}") from None


def _download(url: str, part: Path, progress: bool) -> None:
    """Stream `url` into `part`, resuming from its current size when the server allows."""
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset)
    if response is None:
        part.unlink()
        offset = 0
        response = _open(url, 0)
    with response:
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                part.unlink()
                raise FewcellsError(
                    f"download {url}: asked for bytes from {offset}, server sent "
                    f"Content-Range {content_range!r}; the partial file was deleted, run again"
                )
        else:
            offset = 0  # the server ignored the Range header: start over
        length_header = response.headers.get("Content-Length")
        expected = int(length_header) if length_header is not None else None
        total = offset + expected if expected is not None else None
        meter = _ProgressLine(part.name.removesuffix(".part"), offset, total, progress)
        received = 0
        with open(part, "ab" if offset else "wb") as stream:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    stream.write(chunk)
                    received += len(chunk)
                    meter.update(offset + received)
            except (OSError, http.client.HTTPException) as exc:
                _raise_interrupted(url, part, offset + received, repr(exc))
        meter.finish(offset + received)
        if expected is not None and received < expected:
            _raise_interrupted(url, part, offset + received, "connection closed early")


def _raise_interrupted(url: str, part: Path, size: int, why: str) -> NoReturn:
    """Report a broken download whose .part is kept for resuming."""
    raise FewcellsError(
        f"download {url} interrupted after {size} bytes ({why}); "
        f"{part} is kept and the next run resumes from it"
    )


class _ProgressLine:
    """A throttled 'bytes, %, rate' line on stderr."""

    def __init__(self, label: str, start: int, total: int | None, enabled: bool) -> None:
        self.label = label
        self.start = start
        self.total = total
        self.enabled = enabled
        self.stream: IO[str] = sys.stderr
        self.started_at = time.monotonic()
        self.shown_at = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.shown_at >= PROGRESS_INTERVAL_S:
            self.shown_at = now
            self._show(done, now, end="\r" if self.stream.isatty() else "\n")

    def finish(self, done: int) -> None:
        if self.enabled:
            self._show(done, time.monotonic(), end="\n")

    def _show(self, done: int, now: float, end: str) -> None:
        rate = (done - self.start) / max(now - self.started_at, 1e-6)
        line = f"{self.label}: {_mib(done)}"
        if self.total:
            line += f" of {_mib(self.total)} ({100 * done / self.total:.0f}%)"
        self.stream.write(f"{line} at {_mib(rate)}/s{end}")
        self.stream.flush()


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"
