"""The loopback HTTP server the `fetch` and `tracker` families talk to (one per process, threaded, on 127.0.0.1):
it serves a small CIFAR-10 archive in the original python layout, or answers each request the way the case's
plan says (errors, redirects, wrong or cut bytes, stalls, trickles, broken headers)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fuzz.common import closed_port
from tests.fuzz.craft import cifar_members

FETCH_TIMEOUT_S = 1.5  # the download's read timeout for a case (fetch's default is 30 s: a stall costs that)
TRICKLE_S = 0.05  # a trickling answer's pause between bytes: never a read timeout
FIXED = {"empty_reply": b"", "not_http": b"SSH-2.0-OpenSSH_9.6\r\n", "cut_headers": b"HTTP/1.1 200 OK\r\nContent-Le",
         "bad_status": b"HTTP/1.1 2OO OK\r\nContent-Length: 5\r\n\r\nhello"}  # answers of fixed bytes


@cache
def archive() -> bytes:
    """A CIFAR-10 archive in the original python layout (3 images a batch), made once per process."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in cifar_members(("none",)).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@cache
def archive_md5() -> str:
    """The MD5 of `archive()`, put in the table for a case."""
    return hashlib.md5(archive(), usedforsecurity=False).hexdigest()


class Server:
    """A loopback HTTP server of `archive()`. `plan` is consumed one mode per request (the last repeats);
    `requests` records each (path, Range); a stalled answer waits for `release` (set at the case's end)."""

    def __init__(self) -> None:
        self.plan: list[str] = ["good"]
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                with server.lock:
                    server.requests.append((self.path, self.headers.get("Range")))
                    mode = "good" if self.path.startswith("/ok/") else (
                        server.plan.pop(0) if len(server.plan) > 1 else server.plan[0])
                    release = server.release
                with contextlib.suppress(ConnectionError, OSError):  # the client gave up (its timeout)
                    if not _answer_whole(self, mode, release):
                        _answer_body(self, mode, release)
                self.close_connection = True

            do_POST = do_GET  # noqa: N815 - MLflow's REST calls, when a case points MLflow here

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self, plan: list[str]) -> None:
        with self.lock:
            self.plan, self.requests = list(plan) or ["good"], []
            self.release.set()  # any answer still stalled from an earlier case ends now
            self.release = threading.Event()


def _head(h: BaseHTTPRequestHandler, status: str, headers: list[tuple[str, str]]) -> None:
    h.wfile.write(f"HTTP/1.1 {status}\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
                  + b"\r\n")


def _answer_whole(h: BaseHTTPRequestHandler, mode: str, release: threading.Event) -> bool:
    """The answers that ignore the request's Range (errors, redirects, broken headers, stalls); False: another mode."""
    raw = h.wfile.write
    body = archive()
    if mode in ("404", "500", "502", "416"):
        h.send_error(int(mode))
        return True
    page = b"<html><body>Please log in to the network</body></html>"  # a captive portal: 200 with a page
    length = ("Content-Length", str(len(body)))
    whole = {"html": ([("Content-Type", "text/html"), ("Content-Length", str(len(page)))], page),
             "huge": ([("Content-Length", str(2 << 30))], body[:1000]),
             "long_header": ([("X-Long", "x" * 70_000), length], body),
             "many_headers": ([(f"X-H{i}", "1") for i in range(150)] + [length], body)}
    if mode in whole:
        _head(h, "200 OK", whole[mode][0])
        raw(whole[mode][1])
        return True
    if mode.startswith("redirect"):
        where = {"redirect_self": h.path, "redirect_good": "/ok" + h.path,
                 "redirect_ftp": f"ftp://127.0.0.1:{closed_port()}/x.tar.gz", "redirect_file": "file:///etc/hostname",
                 "redirect_bad": "http://[::1/x", "redirect_empty": "", "redirect_none": None}[mode]
        _head(h, "302 Found", [("Content-Length", "0")] + ([("Location", where)] if where is not None else []))
        return True
    if mode in FIXED:
        raw(FIXED[mode])
        return True
    if mode == "stall_headers":  # the request read, then silence
        release.wait(3 * FETCH_TIMEOUT_S)
        return True
    if mode == "trickle_headers":  # a header a byte at a time, never ending
        raw(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not release.wait(TRICKLE_S):
            raw(b"x")
            h.wfile.flush()
        return True
    return False


def _answer_body(h: BaseHTTPRequestHandler, mode: str, release: threading.Event) -> None:
    """The archive's bytes from the requested offset: whole, wrong, cut, stalled, trickled, chunked or mislabelled."""
    raw = h.wfile.write
    body = archive()
    rng = h.headers.get("Range")
    start = 0
    if rng and mode not in ("norange", "no_length", "chunked", "bad_length", "bad_range", "range_elsewhere",
                            "short_length"):
        with contextlib.suppress(ValueError):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        if start >= len(body):
            _head(h, "416 Range Not Satisfiable", [("Content-Range", f"bytes */{len(body)}"), ("Content-Length", "0")])
            return
    data = body[start:]
    if mode == "wrong":
        flip = max(0, 100 - start)
        data = data[:flip] + bytes([data[flip] ^ 0xFF]) + data[flip + 1:]
    headers: list[tuple[str, str]] = []
    status = "200 OK"
    if start:
        status = "206 Partial Content"
        headers.append(("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"))
    if mode == "bad_range":
        status, headers = "206 Partial Content", [("Content-Range", "bytes x-y/z")]
    elif mode == "range_elsewhere":
        status, headers = "206 Partial Content", [("Content-Range", f"bytes 7-{len(body) - 1}/{len(body)}")]
        data = body[7:]
    if mode == "chunked":
        _head(h, status, headers + [("Transfer-Encoding", "chunked")])
        for i in range(0, len(data), 4096):
            piece = data[i:i + 4096]
            raw(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        raw(b"0\r\n\r\n")
        return
    lengths = {"no_length": [], "bad_length": [("Content-Length", "-5"), ("Content-Length", "12abc")],
               "short_length": [("Content-Length", str(len(data) // 2))]}  # short: announces less than it sends
    _head(h, status, headers + lengths.get(mode, [("Content-Length", str(len(data)))]))
    if mode in ("cut", "stall", "trickle"):
        raw(data[: len(data) // 2])
        h.wfile.flush()
        if mode == "stall":
            release.wait(3 * FETCH_TIMEOUT_S)
        for byte in data[len(data) // 2:] if mode == "trickle" else b"":  # until the client gives up
            if release.wait(TRICKLE_S):
                break
            raw(bytes([byte]))
            h.wfile.flush()
        return
    raw(data)


@cache
def server() -> Server:
    """The process's loopback server (started on first use)."""
    return Server()
