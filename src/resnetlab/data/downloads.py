"""A published archive (`Remote`: URL, file name, the publisher's MD5) and the words for whatever goes wrong
fetching it: each failure one line that says what happened and how to pass a local file instead."""

from __future__ import annotations

import contextlib
import errno
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from resnetlab.data.base import one_line
from resnetlab.errors import DataError


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
