"""A published archive (`Remote`: URL, file name, the publisher's MD5), the bounds on fetching it, and the words
for whatever goes wrong: each failure one line that says what happened and how to pass a local file instead.

The settings, read from the environment when a fetch starts (a value of bad form is one line):

- ``RESNETLAB_FETCH_DEADLINE`` (seconds, default 3600): the longest a download may take in all, connecting,
  headers and body; past it the connection is shut and the part is kept for the next call to resume.
- ``RESNETLAB_FETCH_MIN_RATE`` (bytes a second, default 1024; 0 turns it off): a server that sends fewer bytes
  than this over any span of the read timeout (30 s) is given up on, as one that sends nothing is: a server
  that trickles a byte a second never lets a read time out.
- ``RESNETLAB_DATA_MIRROR`` (a base URL, http://, https:// or file://; unset or empty: the publisher's URL):
  the archives are fetched from BASE/FILENAME (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) and
  checked against the published MD5 as ever. ``resnetlab data fetch --mirror URL`` sets it for one call.

A process that finds another downloading into the same folder waits for it at most the deadline and twice the
read timeout (the other's download is bounded by its own deadline, then verified), then gives up in one line.
The bounds are kept by :class:`Watch`, a thread that shuts the download's connections once it runs past them
(a read blocked on a trickling server, or on headers that never end, returns then).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import http.client
import math
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnetlab.errors import DataError, one_line


@dataclass(frozen=True)
class Remote:
    """Where one archive is published and the checksum its publisher gives for it."""

    kind: str  # the data set name, as in --data KIND
    url: str
    filename: str
    md5: str


def fail(remote: Remote, what: str) -> DataError:
    """One line: what happened, then how to do without the download."""
    source = remote.url.strip() or f"the {remote.kind} archive"
    return DataError(f"{remote.kind}: {what}. To use a copy of your own, download {source} (MD5 {remote.md5}) "
                     f"and pass --data {remote.kind}:PATH")


def _split(url: str) -> urllib.parse.SplitResult | None:
    """``url``'s parts; None for a URL that cannot be split (``http://[::1``: an unclosed IPv6 bracket)."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        return None


def url_problem(url: str) -> str | None:
    """Why the table's URL cannot be requested at all (empty, no scheme, cannot be split); None if it can be."""
    if not url.strip():
        return "the download URL is empty"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number, or out of range, raises here
    except ValueError as exc:
        return f"the download URL {url!r} is malformed ({one_line(exc)})"
    if not parts.scheme:
        return f"the download URL {url!r} has no scheme (http:// or https://)"
    return None


def host_of(url: str) -> str:
    parts = _split(url)
    return (parts.netloc if parts is not None else "") or url


def _proxy_for(url: str) -> str | None:
    """The proxy urllib sends ``url`` through, if any (from the *_proxy environment variables)."""
    parts = _split(url)
    if parts is None:
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme)
    if not proxy:
        return None
    with contextlib.suppress(Exception):
        if urllib.request.proxy_bypass(parts.hostname or ""):
            return None
    return proxy


def via_proxy(url: str) -> str:
    proxy = _proxy_for(url)
    parts = _split(url)
    return f" (through the proxy {host_of(proxy)} of ${parts.scheme if parts else ''}_proxy)" if proxy else ""


def network_problem(exc: BaseException, remote: Remote, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    host, via = host_of(remote.url), via_proxy(remote.url)
    if isinstance(reason, TimeoutError):
        return f"{host} did not answer within {timeout:g} s{via}"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {host}{via} (offline? {one_line(reason.strerror or reason)})"
    if isinstance(reason, ConnectionRefusedError):
        refused = host_of(_proxy_for(remote.url) or remote.url)
        return f"connection refused by {refused}{via} (offline, or no server there)"
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"no route to {host}{via} (offline?)"
    text = one_line(getattr(reason, "strerror", None) or reason)
    if "Tunnel connection failed" in text:  # https through a proxy that refused the CONNECT
        return f"the proxy refused the connection to {host}{via}: {text}"
    return f"cannot download {remote.url}{via} ({text})"


def strerror(exc: BaseException) -> str:
    return one_line(getattr(exc, "strerror", None) or exc)


def write_problem(exc: OSError, part: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk is full writing {part} (the partial download was removed); free space, or set "
                "RESNETLAB_CACHE (resnetlab data fetch: --dir) to a disk with room")
    return f"cannot write {part} ({strerror(exc)}); set RESNETLAB_CACHE (resnetlab data fetch: --dir) elsewhere"


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# ---- the bounds --------------------------------------------------------------------------------------------------
DEADLINE_VAR, MIN_RATE_VAR, MIRROR_VAR = "RESNETLAB_FETCH_DEADLINE", "RESNETLAB_FETCH_MIN_RATE", "RESNETLAB_DATA_MIRROR"
DEFAULT_DEADLINE = 3600.0  # seconds: CIFAR-10's 163 MiB at 46 KiB/s; a slower link resumes in a second call
DEFAULT_MIN_RATE = 1024.0  # bytes a second over each read-timeout span


@dataclass(frozen=True)
class Bounds:
    """How long a download may go on: ``timeout`` s without a byte, fewer than ``min_rate`` bytes a second over
    any ``timeout`` s, ``deadline`` s in all; a wait for another process's download, ``wait`` s."""

    timeout: float
    deadline: float
    min_rate: float

    @property
    def wait(self) -> float:
        return self.deadline + 2 * self.timeout


def _setting(var: str, default: float, what: str, *, zero: bool) -> float:
    raw = os.environ.get(var, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise DataError(f"{var}={raw!r}: not {what}")
    return value


def bounds(timeout: float) -> Bounds:
    """The bounds of a download whose reads time out after ``timeout`` s, from the environment."""
    return Bounds(timeout, _setting(DEADLINE_VAR, DEFAULT_DEADLINE, "a number of seconds above 0", zero=False),
                  _setting(MIN_RATE_VAR, DEFAULT_MIN_RATE, "a number of bytes a second (0: no minimum)", zero=True))


class Watch:
    """A download's clock, kept by a thread: once the download runs past ``bounds`` it says why (``why``) and
    shuts every connection the download opened, so that a read blocked on a trickle returns."""

    def __init__(self, bounds: Bounds, host: str) -> None:
        self.bounds, self.host = bounds, host
        self.why: str | None = None
        self.start = self.window = time.monotonic()
        self.window_bytes = 0
        self._open: list[Any] = []  # connections while they connect, then their sockets
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resnetlab-fetch-watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def got(self, n: int) -> None:
        with self._lock:
            self.window_bytes += n

    def add(self, conn: Any) -> None:
        """Watch a connection (an http.client connection while it connects, or a socket)."""
        with self._lock:
            self._open.append(conn)
            if self.why is not None:
                _shut(conn)

    def _verdict(self, now: float) -> str | None:
        b = self.bounds
        if now - self.start >= b.deadline:
            return f"{self.host} took more than {b.deadline:g} s ({DEADLINE_VAR})"
        span = now - self.window
        if span < b.timeout:
            return None
        if self.window_bytes < b.min_rate * span:
            return (f"{self.host} sent {self.window_bytes} bytes of the archive in {span:.1f} s ("
                    f"{'too slow' if self.window_bytes else 'stalled'}: below {MIN_RATE_VAR}={b.min_rate:g} bytes "
                    "a second)")
        self.window, self.window_bytes = now, 0
        return None

    def _run(self) -> None:
        tick = min(0.25, self.bounds.timeout / 4, self.bounds.deadline / 4)
        while not self._stop.wait(tick):
            with self._lock:
                self.why = self._verdict(time.monotonic())
                if self.why is not None:
                    for conn in self._open:
                        _shut(conn)
                    return

    def connection(self, cls: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        """``cls`` whose instances this watch can shut: while connecting (a TLS handshake too) and after."""
        watch = self

        class Watched(cls):  # type: ignore[valid-type, misc]
            def connect(self) -> None:
                watch.add(self)
                super().connect()
                watch.add(self.sock)  # urllib drops the connection's reference once the response is read

        return Watched


def _shut(conn: Any) -> None:
    sock = getattr(conn, "sock", conn)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # closed already; socket.socket's own, not SSLSocket's, shutdown
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def opener(watch: Watch) -> urllib.request.OpenerDirector:
    """urllib's opener with connections ``watch`` can shut; a fresh one, so that its ProxyHandler reads the
    *_proxy variables now (urlopen's global one kept the first)."""

    class HTTP(urllib.request.HTTPHandler):
        def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
            return super().do_open(watch.connection(http_class), req, **kw)

    class HTTPS(urllib.request.HTTPSHandler):
        def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
            return super().do_open(watch.connection(http_class), req, **kw)

    return urllib.request.build_opener(HTTP, HTTPS)


@contextlib.contextmanager
def locked(path: Path, remote: Remote, wait: float, log: Callable[[str], None]) -> Iterator[None]:
    """One process downloads into a folder's file at a time; another waits for it (then finds its copy) at most
    ``wait`` s. A lock that cannot be made (a read-only cache with the archive in it) is done without."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        if not _lock(fd, 0.0):
            log(f"waiting for another resnetlab process downloading into {path.parent}")
            if not _lock(fd, wait):
                raise fail(remote, f"another resnetlab process has been downloading into {path.parent} for more "
                                   f"than {wait:g} s (it holds {path.name}); stop it, or wait and run the same "
                                   "command again")
        yield
    finally:
        os.close(fd)


def _lock(fd: int, wait: float) -> bool:
    """Whether the lock on ``fd`` was taken within ``wait`` s (a file system without locks: taken as if)."""
    give_up = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= give_up:
                return False
        except OSError:  # no locks here (ENOLCK, EOPNOTSUPP): the MD5 check still guards the archive
            return True
        time.sleep(min(0.2, max(wait / 10, 0.01)))


# ---- a mirror ------------------------------------------------------------------------------------------------------
def mirror_problem(base: str) -> str | None:
    """Why ``base`` is not a mirror's base URL; None if it is."""
    if not base.strip():
        return "it is empty"
    if any(c.isspace() or ord(c) < 32 for c in base):
        return "it holds a space or control character"
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port  # noqa: B018 - a port that is not a number, or out of range, raises here
    except ValueError as exc:
        return f"it is malformed ({one_line(exc)})"
    if not parts.scheme:
        return "it has no scheme"
    if parts.scheme not in ("http", "https", "file"):
        return f"its scheme is {parts.scheme}:, not http, https or file"
    if parts.scheme != "file" and not parts.hostname:
        return "it has no host"
    if parts.query or parts.fragment:
        return "it has a query or fragment (the archive's name is appended to it)"
    return None


def mirrored(remote: Remote, mirror: str | None) -> Remote:
    """``remote`` fetched from the mirror ``mirror`` (None: ``$RESNETLAB_DATA_MIRROR``; unset or empty: none)."""
    base, setting = (os.environ.get(MIRROR_VAR) or None, MIRROR_VAR) if mirror is None else (mirror, "mirror")
    if base is None:
        return remote
    problem = mirror_problem(base)
    if problem:
        raise DataError(f"the data mirror {base!r} ({setting}) is not a base URL: {problem}; give one such as "
                        "https://mirror.example/cifar/ that holds the archives under their published names")
    return dataclasses.replace(remote, url=base + ("" if base.endswith("/") else "/") + remote.filename)


# ---- files ---------------------------------------------------------------------------------------------------------
CHUNK = 1 << 20


def hashes(path: Path, *names: str) -> list[str]:
    """The hex digests ``names`` (hashlib's: "md5", "sha256") of ``path``, in one read."""
    digests = [hashlib.new(name, usedforsecurity=False) for name in names]
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for digest in digests:
                digest.update(block)
    return [digest.hexdigest() for digest in digests]


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def progress_bar(progress: bool | str, total: int | None, have: int, name: str) -> Any:
    """A tqdm bar on stderr (``progress`` "auto": when stderr is a terminal), or None."""
    if progress is False or (progress == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                file=sys.stderr, leave=False, dynamic_ncols=True)
