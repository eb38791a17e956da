"""The CIFAR python-version archives fetched on first use (``--data cifar10`` or ``cifar100`` with no path).

:data:`REMOTES` holds each archive's URL, file name and published MD5; :func:`fetch` returns the path of a verified
copy, downloaded (resumed, within :mod:`resnetlab.data.downloads`' bounds) only when no good copy is there.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnetlab.data.base import DataOptions
from resnetlab.data.cache import cache_dir
from resnetlab.data.downloads import (
    Remote,
    Watch,
    fail,
    host_of,
    locked,
    mib,
    mirrored,
    network_problem,
    strerror,
    url_problem,
    via_proxy,
    write_problem,
)
from resnetlab.errors import DataError, ResnetlabError, one_line
from resnetlab.files.atomic import fsync_dir, replace_with
from resnetlab.files.jsondoc import parse_json
from resnetlab.files.reading import CHUNK, hashes, read_file

Log = Callable[[str], None]

DEFAULT_TIMEOUT = 30.0  # seconds without a byte (connect, or any read) before a download is called stalled
MAX_BYTES = 1 << 30  # far above either archive (about 163 MiB): a server sending more is not serving CIFAR


REMOTES: dict[str, Remote] = {
    "cifar10": Remote("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": Remote("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def fetch(kind: str, directory: str | Path | None = None, *, options: DataOptions | None = None,
          timeout: float = DEFAULT_TIMEOUT, log: Log = _stderr, progress: bool | str = "auto",
          remote: Remote | None = None, mirror: str | None = None) -> Path:
    """The path of the verified ``kind`` archive in ``directory`` (default: ``downloads/`` in the data cache),
    downloaded first unless a good copy is there. ``remote`` replaces the table's entry (tests); ``mirror`` (else
    ``$RESNETLAB_DATA_MIRROR``) is a base URL the table's file is fetched from instead of the publisher's.

    ``log`` gets the notes of the way there (downloading, resuming, a bad copy removed, waiting for another
    process) once the archive is in place, so that a failure is its one DataError line and nothing else. One
    process downloads into a folder at a time (a lock beside the file); the others wait, bounded."""
    if remote is None:
        if kind not in REMOTES:
            raise DataError(f"{kind!r}: resnetlab downloads {', '.join(REMOTES)} only")
        remote = mirrored(REMOTES[kind], mirror)
    watch = Watch(timeout, host_of(remote.url))  # a bad RESNETLAB_FETCH_* setting is refused here
    try:
        folder = (Path(directory).expanduser() if directory is not None
                  else cache_dir(options or DataOptions()) / "downloads")
    except DataError as exc:  # no home for the default cache
        raise fail(remote, str(exc)) from None
    final = folder / remote.filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(remote, f"cannot create {folder} ({strerror(exc)})") from None
    notes: list[str] = []
    wait = watch.deadline + 2 * timeout  # the other's download is bounded by its deadline, then verified
    with locked(folder / f".{remote.filename}.lock", remote, wait, notes.append):
        if not _good_copy(final, remote, notes.append):
            _download(remote, final, watch, notes.append, progress)
    for note in notes:
        log(note)
    return final


# ---- a copy already there ---------------------------------------------------------------------------------
def record_path(final: Path) -> Path:
    """The record beside a fetched archive: URL, published MD5, SHA-256 and size as downloaded."""
    return final.with_name(final.name + ".json")


def read_record(final: Path) -> dict[str, object] | None:
    """The record beside a fetched archive; None when there is none, or none that reads: not a regular file (a
    FIFO would block the read), not JSON, nested too deeply, or not of the record's fields."""
    where = record_path(final)
    try:
        record = parse_json(read_file(where, "record"), str(where))
    except (OSError, ValueError, ResnetlabError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("bytes"), int)
    return record if ok else None


def _good_copy(final: Path, remote: Remote, log: Log) -> bool:
    """Whether ``final`` holds the archive: its size and SHA-256 as recorded, else the published MD5, which alone
    decides (a good copy's missing or wrong record is rewritten). A copy without that MD5 is removed."""
    if not final.exists():
        return False
    if not final.is_file():
        raise fail(remote, f"{final} exists and is not a regular file; remove it")
    record = read_record(final)
    try:
        if (record is not None and record.get("md5") == remote.md5 and final.stat().st_size == record["bytes"]
                and hashes(final, "sha256")[0] == record["sha256"]):
            return True
        md5, sha = hashes(final, "md5", "sha256")
        if md5 == remote.md5:  # placed by hand, a record lost or wrong: the archive is good, record it if we can
            with contextlib.suppress(OSError, ResnetlabError):
                _write_record(final, remote, sha, final.stat().st_size)
            if record is not None:
                log(f"{final}: MD5 {md5} as published; its record did not match and was rewritten")
            return True
    except OSError as exc:
        raise fail(remote, f"cannot read {final} ({strerror(exc)})") from None
    recorded = " (nor the SHA-256 recorded when it was downloaded)" if record is not None else ""
    log(f"{final} has MD5 {md5}, not the published {remote.md5}{recorded}: removed, downloading it again")
    record_path(final).unlink(missing_ok=True)
    final.unlink(missing_ok=True)
    return False


def _write_record(final: Path, remote: Remote, sha256: str, size: int) -> None:
    record = {"url": remote.url, "md5": remote.md5, "sha256": sha256, "bytes": size,
              "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(record, indent=1) + "\n"
    replace_with(record_path(final), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def archive_hashes(final: Path) -> tuple[str, str, bool]:
    """The MD5 and SHA-256 of a fetched archive, and whether its record holds them: without one (a record that
    could not be written beside it) they are computed from the file."""
    record = read_record(final)
    if record is not None and isinstance(record.get("md5"), str):
        return str(record["md5"]), str(record["sha256"]), True
    try:
        md5, sha = hashes(final, "md5", "sha256")
    except OSError as exc:
        raise DataError(f"cannot read {final} ({strerror(exc)})") from None
    return md5, sha, False


# ---- the download: into NAME.part, renamed to NAME once its MD5 is the published one ---------------------------
class _Restart(Exception):
    """The part on disk cannot be continued: start it again from the first byte."""


def _download(remote: Remote, final: Path, watch: Watch, log: Log, progress: bool | str) -> None:
    part = final.with_name(final.name + ".part")
    if part.exists() and not part.is_file():
        raise fail(remote, f"{part} exists and is not a regular file; remove it")
    if malformed := url_problem(remote.url):
        raise fail(remote, malformed)
    with watch:
        for _attempt in range(2):
            try:
                size, resumed = _within(watch, remote, part, log, progress)
            except _Restart:
                part.unlink(missing_ok=True)
                continue
            try:
                md5, sha = hashes(part, "md5", "sha256")
            except OSError as exc:
                part.unlink(missing_ok=True)
                raise fail(remote, f"cannot read back {part} ({strerror(exc)})") from None
            if md5 == remote.md5:
                break
            part.unlink(missing_ok=True)  # wrong bytes are never resumed
            if not resumed:
                raise fail(remote, f"the downloaded file's MD5 is {md5}, not the published {remote.md5} (corrupt, "
                                   "or not the official archive); it was removed")
            log(f"{remote.kind}: the resumed download does not match the published MD5; downloading it from the "
                "start")
        else:
            raise fail(remote, f"{host_of(remote.url)} answered the resumed download inconsistently; the part was "
                               "removed")
    try:
        record_path(final).unlink(missing_ok=True)
        os.replace(part, final)
        fsync_dir(final.parent)
    except OSError as exc:
        raise fail(remote, f"cannot place {final} ({strerror(exc)})") from None
    try:
        _write_record(final, remote, sha, size)
    except (OSError, ResnetlabError) as exc:  # the archive is in place and good: its next use checks the MD5
        log(f"{remote.kind}: {final} ({mib(size)}), MD5 {md5} as published; its SHA-256 {sha} could not be "
            f"recorded ({strerror(exc)})")
        return
    log(f"{remote.kind}: {final} ({mib(size)}), MD5 {md5} as published, SHA-256 {sha} recorded")


def _within(watch: Watch, remote: Remote, part: Path, log: Log, progress: bool | str) -> tuple[int, bool]:
    """:func:`_transfer` within the watch's bounds: once they are passed, whatever the transfer made of its
    shut connection (an end, a break, an error), the bound is the one line and the part is kept to resume."""
    try:
        result = _transfer(watch, remote, part, log, progress)
    except (DataError, _Restart):
        if watch.why is None:
            raise
    if watch.why is None:
        return result
    if kept := (part.stat().st_size if part.exists() else 0):
        raise fail(remote, f"{watch.why}{via_proxy(remote.url)}, at {mib(kept)}; run the same command again to "
                           f"resume it ({part} is kept)")
    part.unlink(missing_ok=True)
    raise fail(remote, f"{watch.why}{via_proxy(remote.url)}; run the same command again")


def _transfer(watch: Watch, remote: Remote, part: Path, log: Log, progress: bool | str) -> tuple[int, bool]:
    """Download into ``part``, continuing it if it holds bytes already: the part's final size, and whether
    bytes of an earlier attempt are in it."""
    have, timeout = (part.stat().st_size if part.exists() else 0), watch.timeout
    try:
        request = urllib.request.Request(remote.url, headers={"User-Agent": "resnetlab"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        response = watch.opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # the part already holds every byte: verify it as it is
            return have, True
        raise fail(remote, f"HTTP {exc.code} {exc.reason} from {remote.url}{via_proxy(remote.url)}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        raise fail(remote, network_problem(exc, remote, timeout)) from None
    with response:
        total, start = _extent(response, have)
        if start != have:  # a whole body (Range ignored) or another range: write it from its first byte
            if start != 0:
                raise _Restart
            part.unlink(missing_ok=True)
            have = 0
        if total is not None and total > MAX_BYTES:
            raise fail(remote, f"{remote.url} announces {mib(total)}, more than any CIFAR archive; not downloaded")
        if have:
            log(f"{remote.kind}: resuming {part} at {mib(have)}" + (f" of {mib(total)}" if total else ""))
        else:
            log(f"{remote.kind}: downloading {remote.url}" + (f" ({mib(total)})" if total else "")
                + f" to {part.parent}")
        received = _receive(response, part, have, total, remote, watch, progress)
    if total is not None and received < total:
        raise fail(remote, f"the download was cut short at {mib(received)} of {mib(total)}; run the same "
                            f"command again to resume it ({part} is kept)")
    return received, have > 0


def _extent(response: http.client.HTTPResponse, have: int) -> tuple[int | None, int]:
    """(the archive's whole size if known, the offset of the body's first byte) of a 200 or 206 answer."""
    length = response.headers.get("Content-Length")
    body = int(length) if length and length.strip().isdigit() else None
    if response.status != 206:
        return body, 0
    try:  # Content-Range: bytes START-END/TOTAL
        span, _, whole = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
        start = int(span.partition("-")[0])
        total = int(whole) if whole.strip() != "*" else (start + body if body is not None else None)
    except ValueError:
        raise _Restart from None
    return total, start


def _receive(response: Any, part: Path, have: int, total: int | None, remote: Remote,
             watch: Watch, progress: bool | str) -> int:
    """Append the body to ``part``; the part's size when the body ends (a break with the size known is left to
    the caller to call cut short)."""
    from tqdm import tqdm

    received, host = have, host_of(remote.url)
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise fail(remote, write_problem(exc, part)) from None
    shown = progress is not False and (progress != "auto" or sys.stderr.isatty())
    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.filename,
               file=sys.stderr, leave=False, dynamic_ncols=True, disable=not shown)
    try:
        while True:
            try:
                block = response.read1(CHUNK)  # what has arrived: a stall loses none of it
            except TimeoutError:
                raise fail(remote, f"{host} sent nothing for {watch.timeout:g} s (stalled) at {mib(received)}"
                                   f"{via_proxy(remote.url)}; run the same command again to resume ({part} is "
                                   "kept)") from None
            except (http.client.HTTPException, OSError) as exc:  # a break (IncompleteRead: what came is kept)
                partial = exc.partial if isinstance(exc, http.client.IncompleteRead) else b""
                _write_all(fd, partial)
                received += len(partial)
                if total is None:
                    raise fail(remote, f"the connection to {host} broke at {mib(received)} ({one_line(exc)}); run "
                                       "the same command again to resume it") from None
                break
            if not block:
                break
            if received + len(block) > MAX_BYTES:
                part.unlink(missing_ok=True)
                raise fail(remote, f"{remote.url} sent more than {mib(MAX_BYTES)}, more than any CIFAR archive; "
                                   "the download was removed")
            _write_all(fd, block)
            received += len(block)
            watch.got(len(block))
            bar.update(len(block))
        os.fsync(fd)
    except OSError as exc:  # writing: a full disk, an I/O error
        part.unlink(missing_ok=True)
        raise fail(remote, write_problem(exc, part)) from None
    finally:
        os.close(fd)
        bar.close()
    return received


def _write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (the seam the full-disk tests replace)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
