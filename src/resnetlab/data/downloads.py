"""A published archive (:class:`Remote`), the bounds on fetching it and the one-line words for what goes wrong.

The bounds are read from the environment when a fetch starts (README, "Data"): ``RESNETLAB_FETCH_DEADLINE`` and
``RESNETLAB_FETCH_MIN_RATE``; :class:`Watch`, a thread, shuts the download's connections once it runs past them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from resnetlab.errors import DataError, one_line

DEADLINE_VAR, MIN_RATE_VAR, MIRROR_VAR = "RESNETLAB_FETCH_DEADLINE", "RESNETLAB_FETCH_MIN_RATE", "RESNETLAB_DATA_MIRROR"
DEFAULT_DEADLINE = 3600.0  # seconds: CIFAR-10's 163 MiB at 46 KiB/s; a slower link resumes in a second call
DEFAULT_MIN_RATE = 1024.0  # bytes a second over each read-timeout span


@dataclasses.dataclass(frozen=True)
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


def url_problem(url: str, *, base: bool = False) -> str | None:
    """Why ``url`` cannot be requested, or with ``base`` why it is not a mirror's base URL; None if it is fine."""
    if not url.strip():
        return f"{'it' if base else 'the download URL'} is empty"
    if base and any(c.isspace() or ord(c) < 32 for c in url):
        return "it holds a space or control character"
    subject = "it" if base else f"the download URL {url!r}"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number, or out of range, raises here
    except ValueError as exc:
        return f"{subject} is malformed ({one_line(exc)})"
    if not parts.scheme:
        return f"{subject} has no scheme" + ("" if base else " (http:// or https://)")
    if not base:
        return None
    if parts.scheme not in ("http", "https", "file"):
        return f"its scheme is {parts.scheme}:, not http, https or file"
    if parts.scheme != "file" and not parts.hostname:
        return "it has no host"
    if parts.query or parts.fragment:
        return "it has a query or fragment (the archive's name is appended to it)"
    return None


def _split(url: str) -> urllib.parse.SplitResult | None:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:  # http://[::1 (an unclosed IPv6 bracket)
        return None


def host_of(url: str) -> str:
    parts = _split(url)
    return (parts.netloc if parts is not None else "") or url


def _proxy_for(url: str) -> tuple[str, str] | None:
    """The proxy urllib sends ``url`` through (the *_proxy environment variables) and its scheme, if any."""
    parts = _split(url)
    if parts is None or not (proxy := urllib.request.getproxies().get(parts.scheme)):
        return None
    with contextlib.suppress(Exception):
        if urllib.request.proxy_bypass(parts.hostname or ""):
            return None
    return proxy, parts.scheme


def via_proxy(url: str) -> str:
    proxy = _proxy_for(url)
    return f" (through the proxy {host_of(proxy[0])} of ${proxy[1]}_proxy)" if proxy else ""


def network_problem(exc: BaseException, remote: Remote, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    host, via = host_of(remote.url), via_proxy(remote.url)
    if isinstance(reason, TimeoutError):
        return f"{host} did not answer within {timeout:g} s{via}"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {host}{via} (offline? {one_line(reason.strerror or reason)})"
    if isinstance(reason, ConnectionRefusedError):
        proxy = _proxy_for(remote.url)
        return f"connection refused by {host_of(proxy[0]) if proxy else host}{via} (offline, or no server there)"
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"no route to {host}{via} (offline?)"
    text = strerror(reason)
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
def _setting(var: str, default: float, what: str, *, zero: bool) -> float:
    raw = os.environ.get(var, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise DataError(f"{var}={raw!r}: not {what}")
    return value


class Watch:
    """A download's bounds: ``timeout`` s without a byte (the socket's), and from the environment ``deadline`` s
    in all and ``min_rate`` bytes a second over any ``timeout`` s. In a ``with``, a thread keeps them: past one,
    it says why (``why``) and shuts every connection the download opened, so that a read blocked on a trickle
    (a byte a second never lets a read time out) returns."""

    def __init__(self, timeout: float, host: str) -> None:
        self.timeout, self.host = timeout, host
        self.deadline = _setting(DEADLINE_VAR, DEFAULT_DEADLINE, "a number of seconds above 0", zero=False)
        self.min_rate = _setting(MIN_RATE_VAR, DEFAULT_MIN_RATE, "a number of bytes a second (0: no minimum)",
                                 zero=True)
        self.why: str | None = None
        self.window_bytes = 0
        self._open: list[Any] = []  # connections while they connect, then their sockets
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resnetlab-fetch-watch", daemon=True)

    def __enter__(self) -> Watch:
        self.start = self.window = time.monotonic()
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

    def _run(self) -> None:
        while not self._stop.wait(min(0.25, self.timeout / 4, self.deadline / 4)):
            with self._lock:
                now = time.monotonic()
                span, sent = now - self.window, self.window_bytes
                if now - self.start >= self.deadline:
                    self.why = f"{self.host} took more than {self.deadline:g} s ({DEADLINE_VAR})"
                elif span >= self.timeout and sent < self.min_rate * span:
                    self.why = (f"{self.host} sent {sent} bytes of the archive in {span:.1f} s ("
                                f"{'too slow' if sent else 'stalled'}: below {MIN_RATE_VAR}={self.min_rate:g} bytes "
                                "a second)")
                elif span >= self.timeout:
                    self.window, self.window_bytes = now, 0
                if self.why is not None:
                    for conn in self._open:
                        _shut(conn)
                    return


    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener whose connections this watch can shut, while connecting (a TLS handshake too) and after;
        a fresh one, so that its ProxyHandler reads the *_proxy variables now (urlopen's global one kept the first)."""
        watch = self

        class Watched(urllib.request.AbstractHTTPHandler):
            def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
                class Connection(http_class):  # type: ignore[valid-type, misc]
                    def connect(self) -> None:
                        watch.add(self)
                        super().connect()
                        watch.add(self.sock)  # urllib drops the connection's reference once the response is read

                return super().do_open(Connection, req, **kw)

        class HTTP(Watched, urllib.request.HTTPHandler):
            pass

        class HTTPS(Watched, urllib.request.HTTPSHandler):
            pass

        return urllib.request.build_opener(HTTP, HTTPS)


def _shut(conn: Any) -> None:
    sock = getattr(conn, "sock", conn)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # closed already; socket.socket's own, not SSLSocket's, shutdown
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


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
        give_up, waiting = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    log(f"waiting for another resnetlab process downloading into {path.parent}")
                elif time.monotonic() >= give_up:
                    raise fail(remote, f"another resnetlab process has been downloading into {path.parent} for "
                                       f"more than {wait:g} s (it holds {path.name}); stop it, or wait and run the "
                                       "same command again") from None
                waiting = True
            except OSError:  # no locks here (ENOLCK, EOPNOTSUPP): the MD5 check still guards the archive
                break
            time.sleep(min(0.2, max(wait / 10, 0.01)))
        yield
    finally:
        os.close(fd)


def mirrored(remote: Remote, mirror: str | None) -> Remote:
    """``remote`` fetched from the mirror ``mirror`` (None: ``$RESNETLAB_DATA_MIRROR``; unset or empty: none),
    a base URL that holds the archives under their published names."""
    base, setting = (os.environ.get(MIRROR_VAR) or None, MIRROR_VAR) if mirror is None else (mirror, "mirror")
    if base is None:
        return remote
    problem = url_problem(base, base=True)
    if problem:
        raise DataError(f"the data mirror {base!r} ({setting}) is not a base URL: {problem}; give one such as "
                        "https://mirror.example/cifar/ that holds the archives under their published names")
    return dataclasses.replace(remote, url=base + ("" if base.endswith("/") else "/") + remote.filename)
