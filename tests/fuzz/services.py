"""The fuzzer's reach into issue 25's services: the CIFAR download (src/resnetlab/data/fetch.py) and the
experiment trackers (src/resnetlab/tracking.py). `scripts/fuzz.py` registers both families; read it first.

Families (each a hypothesis strategy of `Case`):

- `fetch`: `data fetch cifar10|cifar100 [--dir D]` and `train --data cifar10` (no path: fetched into
  RESNETLAB_CACHE, the case's directory) against a loopback HTTP server (threaded, one per process, on
  127.0.0.1) whose answers per request are generated: the archive (a small one in the CIFAR python layout, its
  MD5 put in the table for the case), 404/500/502/416, wrong bytes, an HTML page, cut short, stalled (the
  download's read timeout is made 1.5 s for the case: `fetch`'s `timeout` default), trickling (a byte every
  50 ms of the body, or of a header that never ends: no read ever times out), Range ignored or answered
  for another span, 2 GiB announced, no or a bad Content-Length, chunked, redirects (to itself, to ftp:, file:,
  a malformed or empty Location), garbage status lines and headers (too long, too many), nothing at all; with
  the download folder in a generated state (a stale `.part` of random bytes, a prefix, the whole archive or
  more; a cached archive changed since its SHA-256 record, a good archive whose record is wrong (SHA-256, size,
  another MD5), a record that is not JSON, nested deeply, of other types, a folder or a FIFO; things in the
  way: folders, FIFOs, links) or `--dir` a file, a FIFO, /dev/null, a loop, below a file or a missing deep
  path; URLs of bad form in the table (ftp:, file:, http://[::1, empty, a port nobody listens on, out of
  range, with spaces or a CR LF, https to the plain server); a data mirror (RESNETLAB_DATA_MIRROR, or `data
  fetch --mirror`: the loopback server under /mirror/ with the table's host unreachable, a file:// folder, or
  one of bad form); RESNETLAB_FETCH_DEADLINE made 4 s and RESNETLAB_FETCH_MIN_RATE drawn (default, 0, high).
- `tracker`: a tiny training (`train ... --data synthetic:8 --iters 2`) with generated `run.tracker` and
  `run.tracker_tags` values (unknown names, duplicates, numbers, lists, empty, huge tags, tags with = and
  control characters) and environments (MLFLOW_TRACKING_URI a good store, a SQLite file that is not a
  database, one in a missing or read-only folder, a folder, file: of a file, a closed port, an HTTP server that
  is not MLflow, an unknown scheme; WANDB_MODE odd values; WANDB_DIR a file, below a file, missing); and `train
  --resume` of a finished (or cut back) run trained with MLflow and W&B whose trackers.json is damaged (not
  JSON, nested deeply, entries of other types, a missing MLflow run, W&B's folder elsewhere as in a run
  copied from another place, a folder, a FIFO, a link).
  W&B never goes online: WANDB_BASE_URL is a closed loopback port and no API key is set.

Checks beyond fuzz.py's judge (`after`):

- fetch: no file lies at the archive's final name unless its MD5 is the table's (after failures too); a
  success leaves the archive there with its record's SHA-256 and size right and, for `data fetch`, says its
  path and MD5; a verified copy already there is used without a request; a good server and a benign folder
  state must give a success (a refusal of a good download is a finding too); no `.part` after a download;
  an archive with the published MD5 there before the case is there after it, whatever its record said and
  however the case ended; every download ends within the case's deadline (a trickle included); with a good
  mirror every request goes to it, and a mirror of bad form is refused.
- tracker: a training that exits 0 ends with the same final metrics as the same training without trackers
  (computed once per process; for --resume, the template run's own); a tracker failure is at most one line
  (`tracker NAME failed ...` in log.txt; nothing on stderr but MLflow's INFO notes), never a traceback
  (stdout and log.txt too), and costs no long stall (fuzz.py's time bound);
  nothing is written outside the case directory (the repository's top level, the tracker template, the
  home directory's W&B and MLflow places).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.core import CIFAR10_MEMBERS, Case, cifar_member

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("fetch", "tracker")
FETCH_TIMEOUT_S = 1.5  # the download's read timeout for a case (fetch's default is 30 s: a stall costs that)
FETCH_DEADLINE_S = 4.0  # RESNETLAB_FETCH_DEADLINE for a case (default 3600 s)
TRICKLE_S = 0.05  # a trickling answer's pause between bytes: never a read timeout
PROXIES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ftp_proxy", "FTP_PROXY", "all_proxy",
           "ALL_PROXY", "no_proxy", "NO_PROXY")
NAMES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}

_CURRENT: dict[str, Any] = {}  # the running case's parameters (set by `setup`, used by `around` and `after`)
_ONCE: dict[str, Any] = {}  # what is made once per process: the server, the archive, templates, references


def _setups(*steps: tuple[Any, ...]) -> dict[str, Any]:
    """Case.files entries that `setup` carries out in order (fuzz.py's `_write` hands them here)."""
    return {f"__service__{i}": s for i, s in enumerate(steps)}


# -- the archive and the loopback server ---------------------------------------------------------------------
def archive() -> bytes:
    """A CIFAR-10 archive in the original python layout (3 images a batch), made once per process."""
    if "archive" not in _ONCE:
        import tarfile

        import numpy as np

        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name in CIFAR10_MEMBERS:
                data = cifar_member(("none",), name, rng)
                assert data is not None
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        _ONCE["archive"] = buf.getvalue()
    return _ONCE["archive"]


def archive_md5() -> str:
    return hashlib.md5(archive(), usedforsecurity=False).hexdigest()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    if "closed" not in _ONCE:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            _ONCE["closed"] = sock.getsockname()[1]
    return _ONCE["closed"]


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
                    server.answer(self, mode, release)
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

    def answer(self, h: BaseHTTPRequestHandler, mode: str, release: threading.Event) -> None:
        body = archive()
        raw = h.wfile.write

        def head(status: str, headers: list[tuple[str, str]]) -> None:
            raw(f"HTTP/1.1 {status}\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
                + b"\r\n")

        if mode in ("404", "500", "502", "416"):
            h.send_error(int(mode))
            return
        if mode == "html":  # a captive portal: 200 with a page
            page = b"<html><body>Please log in to the network</body></html>"
            head("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(page)))])
            raw(page)
            return
        if mode == "huge":
            head("200 OK", [("Content-Length", str(2 << 30))])
            raw(body[:1000])
            return
        if mode.startswith("redirect"):
            where = {"redirect_self": h.path, "redirect_good": "/ok" + h.path,
                     "redirect_ftp": f"ftp://127.0.0.1:{closed_port()}/x.tar.gz", "redirect_file": "file:///etc/hostname",
                     "redirect_bad": "http://[::1/x", "redirect_empty": "", "redirect_none": None}[mode]
            head("302 Found", [("Content-Length", "0")] + ([("Location", where)] if where is not None else []))
            return
        if mode == "empty_reply":
            return
        if mode == "not_http":
            raw(b"SSH-2.0-OpenSSH_9.6\r\n")
            return
        if mode == "bad_status":
            raw(b"HTTP/1.1 2OO OK\r\nContent-Length: 5\r\n\r\nhello")
            return
        if mode == "cut_headers":
            raw(b"HTTP/1.1 200 OK\r\nContent-Le")
            return
        if mode == "long_header":
            head("200 OK", [("X-Long", "x" * 70_000), ("Content-Length", str(len(body)))])
            raw(body)
            return
        if mode == "many_headers":
            head("200 OK", [(f"X-H{i}", "1") for i in range(150)] + [("Content-Length", str(len(body)))])
            raw(body)
            return
        if mode == "stall_headers":  # the request read, then silence
            release.wait(3 * FETCH_TIMEOUT_S)
            return
        if mode == "trickle_headers":  # a header a byte at a time, never ending
            raw(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not release.wait(TRICKLE_S):
                raw(b"x")
                h.wfile.flush()
            return
        rng = h.headers.get("Range")
        start = 0
        if rng and mode not in ("norange", "no_length", "chunked", "bad_length", "bad_range", "range_elsewhere",
                                "short_length"):
            with contextlib.suppress(ValueError):
                start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                head("416 Range Not Satisfiable", [("Content-Range", f"bytes */{len(body)}"), ("Content-Length", "0")])
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
            head(status, headers + [("Transfer-Encoding", "chunked")])
            for i in range(0, len(data), 4096):
                piece = data[i:i + 4096]
                raw(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            raw(b"0\r\n\r\n")
            return
        if mode == "no_length":
            head(status, headers)
        elif mode == "bad_length":
            head(status, headers + [("Content-Length", "-5"), ("Content-Length", "12abc")])
        elif mode == "short_length":  # announces less than it sends
            head(status, headers + [("Content-Length", str(len(data) // 2))])
        else:
            head(status, headers + [("Content-Length", str(len(data)))])
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


def server() -> Server:
    if "server" not in _ONCE:
        _ONCE["server"] = Server()
    return _ONCE["server"]


# -- the fetch family -------------------------------------------------------------------------------------------
GOOD_MODES = ["good", "norange", "no_length", "chunked", "redirect_good"]
BAD_MODES = ["404", "500", "502", "416", "wrong", "html", "cut", "stall", "stall_headers", "huge", "redirect_self",
             "redirect_ftp", "redirect_file", "redirect_bad", "redirect_empty", "redirect_none", "empty_reply",
             "not_http", "bad_status", "cut_headers", "long_header", "many_headers", "bad_length", "short_length",
             "bad_range", "range_elsewhere", "trickle", "trickle_headers"]
SLOW_MODES = ("stall", "stall_headers", "trickle", "trickle_headers")  # each costs a bound: drawn less often
STATES = ["none", "part_random", "part_prefix", "part_full", "part_longer", "part_dir", "part_fifo",
          "cached_good_record", "cached_good_norecord", "cached_bad_sha_record", "cached_bad_size_record",
          "cached_other_md5_record", "cached_changed",
          "cached_wrong_norecord", "record_not_json", "record_deep", "record_list", "record_types", "record_dir",
          "record_huge_bytes", "record_fifo", "final_dir", "final_fifo", "final_dangling_link", "final_link_good",
          "final_link_wrong", "lock_dir", "part_and_cached"]
BENIGN_STATES = {"none", "part_random", "part_prefix", "part_full", "part_longer", "cached_good_record",
                 "cached_good_norecord", "cached_bad_sha_record", "cached_bad_size_record", "cached_other_md5_record",
                 "cached_changed", "cached_wrong_norecord",
                 "record_not_json", "record_deep", "record_list", "record_types", "record_dir", "record_huge_bytes",
                 "final_dangling_link", "final_link_good", "final_link_wrong", "lock_dir", "part_and_cached"}
OFFLINE_STATES = {"cached_good_record", "cached_good_norecord", "record_not_json", "record_deep", "record_list",
                  "record_types", "record_dir", "final_link_good", "part_and_cached", "cached_bad_sha_record",
                  "cached_bad_size_record", "cached_other_md5_record"}  # a good copy (the MD5 decides): no request
GOOD_COPY_STATES = OFFLINE_STATES | {"record_fifo", "record_huge_bytes"}  # never deleted, however the case ends
MIRRORS = {"none": None, "http": "http://127.0.0.1:{port}/mirror/", "http_noslash": "http://127.0.0.1:{port}/mirror",
           "file": "file://{root}/mirror/", "empty": "", "ftp": "ftp://127.0.0.1:{closed}/mirror/",
           "no_scheme": "127.0.0.1:{port}/mirror/", "ipv6_malformed": "http://[::1/mirror/",
           "query": "http://127.0.0.1:{port}/mirror/?x=1", "bad_port": "http://127.0.0.1:99999/mirror/"}
GOOD_MIRRORS = {"http", "http_noslash", "file"}
BAD_MIRRORS = {"ftp", "no_scheme", "ipv6_malformed", "query", "bad_port"}
FLAG_MIRRORS = ("file", "empty", "ipv6_malformed")  # `data fetch --mirror` takes those without a port to fill
MIN_RATES = [None, None, "0", "100000"]  # default 1024 B/s; none (the deadline alone); more than a trickle
URLS = {"server": "http://127.0.0.1:{port}/{name}", "server_query": "http://127.0.0.1:{port}/{name}?mirror=1#top",
        "ftp": "ftp://127.0.0.1:{closed}/{name}", "file_good": "file://{root}/elsewhere.tar.gz",
        "file_missing": "file://{root}/nothing/{name}", "ipv6_malformed": "http://[::1/{name}", "empty": "",
        "closed_port": "http://127.0.0.1:{closed}/{name}", "port_out_of_range": "http://127.0.0.1:99999/{name}",
        "no_host": "http:///{name}", "spaces": "http://127.0.0.1:{port}/a b/{name}",
        "crlf": "http://127.0.0.1:{port}/{name}\r\nX-Injected: 1", "https_to_http": "https://127.0.0.1:{port}/{name}",
        "no_scheme": "127.0.0.1:{port}/{name}"}
NOT_FOLDERS = ("a file", "below a file", "a FIFO", "/dev/null", "a symlink loop")
DIRS = ["dl", "dl", "dl", "missing deep path", "a file", "below a file", "a FIFO", "/dev/null", "a symlink loop"]
TRAIN_CIFAR = ["train", "--model", "resnet20", "--set", "model.depth=8", "--data", "cifar10", "--iters", "1",
               "--out", "{root}/out"]


def _dir_arg(kind: str) -> str:
    return {"dl": "{root}/dl", "missing deep path": "{root}/x/y/z/dl", "a file": "{root}/afile",
            "below a file": "{root}/afile/sub", "a FIFO": "{fifo}", "/dev/null": "{devnull}",
            "a symlink loop": "{loop}"}[kind]


def fetch_cases() -> st.SearchStrategy[Case]:
    """`data fetch` and `train --data cifar10` against a server of generated behaviour, a download folder in a
    generated state and, now and then, a table URL of bad form."""
    # the slow modes (each costs the timeout) one draw in eight
    mode = st.one_of(*([st.sampled_from(GOOD_MODES)] * 3),
                     *([st.sampled_from([m for m in BAD_MODES if m not in SLOW_MODES])] * 4),
                     st.sampled_from(list(SLOW_MODES)))
    url = st.one_of(*([st.just("server")] * 6), st.sampled_from(sorted(URLS)))
    command = st.sampled_from(["fetch", "fetch", "fetch --dir", "fetch --dir", "fetch cifar100", "train"])
    mirror = st.one_of(*([st.just("none")] * 4), st.sampled_from(sorted(MIRRORS)))
    rate = st.sampled_from(MIN_RATES)

    def build(cmd: str, dir_kind: str, state: str, plan: list[str], url_kind: str, seed: int,
              bounds: tuple[str, str | None, bool]) -> Case:
        mirror_kind, min_rate, by_flag = bounds
        kind = "cifar100" if cmd == "fetch cifar100" else "cifar10"
        if cmd == "fetch --dir":
            argv = ["data", "fetch", kind, "--dir", _dir_arg(dir_kind)]
            folder = "dl" if dir_kind == "dl" else None
        else:
            dir_kind = "cache"
            argv = list(TRAIN_CIFAR) if cmd == "train" else ["data", "fetch", kind]
            folder = "cache/downloads"
        if folder is None:
            state = "none"
        by_flag = by_flag and argv[0] == "data" and mirror_kind in FLAG_MIRRORS
        if by_flag:
            argv += ["--mirror", MIRRORS[mirror_kind] or ""]
        params = {"kind": kind, "folder": folder, "dir": dir_kind, "state": state, "plan": plan, "url": url_kind,
                  "seed": seed, "command": cmd, "mirror": mirror_kind, "by_flag": by_flag}
        writable = ("cache", "dl", "out", "x")
        env: dict[str, str | None] = {k: None for k in PROXIES}
        env |= {"RESNETLAB_CACHE": "{root}/cache", "RESNETLAB_DATA_MIRROR": None,
                "RESNETLAB_FETCH_DEADLINE": f"{FETCH_DEADLINE_S:g}", "RESNETLAB_FETCH_MIN_RATE": min_rate}
        invalid = f"--dir is {dir_kind}" if dir_kind in NOT_FOLDERS else ""
        if mirror_kind in BAD_MIRRORS or (by_flag and mirror_kind == "empty"):
            invalid = f"the mirror is {mirror_kind}"
        return Case("fetch", argv, _setups(("fetch", params)), env=env, writable=writable, invalid=invalid)

    return st.builds(build, command, st.sampled_from(DIRS), st.sampled_from(STATES),
                     st.lists(mode, min_size=1, max_size=3), url, st.integers(0, 2**16),
                     st.tuples(mirror, rate, st.booleans()))


def _fetch_setup(root: Path, p: dict[str, Any]) -> None:
    import numpy as np

    rng = np.random.default_rng(p["seed"])
    body = archive()
    (root / "afile").write_text("not a folder\n")
    (root / "elsewhere.tar.gz").write_bytes(body)  # a good copy elsewhere (file: URLs, links)
    (root / "wrong.tar.gz").write_bytes(body[:-1] + b"x")
    (root / "mirror").mkdir()
    for mirrored in NAMES.values():  # a file:// mirror (the MD5 of both table entries is this archive's)
        (root / "mirror" / mirrored).write_bytes(body)
    if p["folder"] is None:
        return
    folder = root / p["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    name = NAMES[p["kind"]]
    final, part, record = folder / name, folder / (name + ".part"), folder / (name + ".json")
    state = p["state"]

    def good_record(data: bytes, sha: str | None = None) -> dict[str, Any]:
        return {"url": "x", "md5": archive_md5(), "sha256": sha or hashlib.sha256(data).hexdigest(),
                "bytes": len(data), "downloaded": "2024-01-01T00:00:00Z"}

    if state == "part_random":
        part.write_bytes(rng.integers(0, 256, int(rng.integers(1, 2 * len(body))), dtype=np.uint8).tobytes())
    elif state == "part_prefix":
        part.write_bytes(body[: int(rng.integers(1, len(body)))])
    elif state == "part_full":
        part.write_bytes(body)
    elif state == "part_longer":
        part.write_bytes(body + b"junk")
    elif state == "part_dir":
        part.mkdir()
    elif state == "part_fifo":
        os.mkfifo(part)
    elif state.startswith(("cached_", "record_")) or state == "part_and_cached":
        data = body
        if state in ("cached_changed", "cached_wrong_norecord"):
            data = body[:-1] + b"x"
        final.write_bytes(data)
        if state == "part_and_cached":
            part.write_bytes(body[:100])
            record.write_text(json.dumps(good_record(body)))
        elif state in ("cached_good_record", "cached_changed"):
            record.write_text(json.dumps(good_record(body)))  # cached_changed: the record of the good bytes
        elif state == "cached_bad_sha_record":
            record.write_text(json.dumps(good_record(body, "0" * 64)))
        elif state == "cached_bad_size_record":
            record.write_text(json.dumps(good_record(body) | {"bytes": len(body) - 1}))
        elif state == "cached_other_md5_record":
            record.write_text(json.dumps(good_record(body, "1" * 64) | {"md5": "f" * 32}))
        elif state == "record_not_json":
            record.write_text("{not json")
        elif state == "record_deep":
            record.write_text("[" * 100_000 + "]" * 100_000)
        elif state == "record_list":
            record.write_text(json.dumps([good_record(body)]))
        elif state == "record_types":
            record.write_text(json.dumps({"md5": archive_md5(), "sha256": 5, "bytes": "many"}))
        elif state == "record_dir":
            record.mkdir()
        elif state == "record_fifo":  # read as a file, it would block until a writer comes
            os.mkfifo(record)
        elif state == "record_huge_bytes":
            record.write_text(json.dumps(good_record(body) | {"bytes": 10**400}))
    elif state == "final_dir":
        final.mkdir()
    elif state == "final_fifo":
        os.mkfifo(final)
    elif state == "final_dangling_link":
        final.symlink_to(root / "nowhere.tar.gz")
    elif state == "final_link_good":
        final.symlink_to(root / "elsewhere.tar.gz")
    elif state == "final_link_wrong":
        final.symlink_to(root / "wrong.tar.gz")
    elif state == "lock_dir":
        (folder / f".{name}.lock").mkdir()


@contextlib.contextmanager
def _fetch_around(root: Path, p: dict[str, Any]) -> Iterator[None]:
    from resnetlab.data import fetch as fetch_mod

    srv = server()
    srv.reset(p["plan"])
    url = URLS[p["url"]]
    saved_remotes = dict(fetch_mod.REMOTES)
    saved_timeout = fetch_mod.fetch.__kwdefaults__["timeout"]
    for kind, name in NAMES.items():
        fetch_mod.REMOTES[kind] = fetch_mod.Remote(kind, url.format(port=srv.port, closed=closed_port(), name=name,
                                                                   root=root), name, archive_md5())
    fetch_mod.fetch.__kwdefaults__["timeout"] = FETCH_TIMEOUT_S
    mirror = MIRRORS[p["mirror"]]
    if mirror is not None and not p["by_flag"]:
        if p["mirror"] in GOOD_MIRRORS:  # only the mirror can serve: the table's host is unreachable
            for kind, name in NAMES.items():
                fetch_mod.REMOTES[kind] = fetch_mod.Remote(kind, f"http://127.0.0.1:{closed_port()}/{name}", name,
                                                           archive_md5())
        os.environ["RESNETLAB_DATA_MIRROR"] = mirror.format(port=srv.port, closed=closed_port(), root=root)
    real_download, timings = fetch_mod._download, []

    def timed(*args: Any, **kw: Any) -> None:
        start = time.monotonic()
        try:
            real_download(*args, **kw)
        finally:
            timings.append(time.monotonic() - start)

    fetch_mod._download = timed
    try:
        yield
    finally:
        fetch_mod._download = real_download
        fetch_mod.REMOTES.clear()
        fetch_mod.REMOTES.update(saved_remotes)
        fetch_mod.fetch.__kwdefaults__["timeout"] = saved_timeout
        os.environ.pop("RESNETLAB_DATA_MIRROR", None)
        _CURRENT["requests"], _CURRENT["downloads"] = list(srv.requests), timings
        srv.reset(["good"])


def _md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _fetch_problem(root: Path, p: dict[str, Any], argv: list[str], rc: int | None, stdout: str,
                   stderr: str) -> str | None:
    want = archive_md5()
    name = NAMES[p["kind"]]
    folder = root / p["folder"] if p["folder"] else None
    final = folder / name if folder else None
    if final is not None and final.is_file() and p["state"] != "final_fifo":
        got = _md5_of(final)
        if got != want and not (rc != 0 and _bad_mirror(p)):  # a bad mirror: refused before the folder is read
            return f"an archive that is not the published one left at the final name (exit {rc})"
    problem = _bounds_problem(p, final, want, rc)
    if problem or rc != 0:
        return problem and f"{problem}: {stderr.strip()[-160:]}"
    if p["command"] != "fetch --dir" or p["dir"] in ("dl", "missing deep path"):
        where = final if final is not None else root / "x/y/z/dl" / name
        if not where.is_file():
            return "exit 0 with no archive at the final name"
        if _md5_of(where) != want:
            return "exit 0 with an archive that is not the published one"
        from resnetlab.data.fetch import read_record

        record = read_record(where)
        if record is not None:
            data = where.read_bytes()
            if record.get("sha256") != hashlib.sha256(data).hexdigest() or record.get("bytes") != len(data):
                return "exit 0 with a record whose SHA-256 or size is not the archive's"
        requests = _CURRENT.get("requests", [])
        if requests and where.with_name(name + ".part").exists():
            return "a .part left beside the downloaded archive"
        if p["state"] in OFFLINE_STATES and requests and _served(p):
            return f"a verified copy was there, yet {len(requests)} request(s) were made"
        if argv[:2] == ["data", "fetch"] and (str(where) not in stdout or want not in stdout):
            return f"data fetch's line does not name the archive and its MD5: {stdout.strip()[:160]!r}"
    return None


def _bad_mirror(p: dict[str, Any]) -> bool:
    return p["mirror"] in BAD_MIRRORS or (p["by_flag"] and p["mirror"] == "empty")


def _served(p: dict[str, Any]) -> bool:
    """Whether the case's archive comes from the loopback server or a good mirror (not a table URL of bad form)."""
    if _bad_mirror(p):
        return False
    return p["mirror"] in GOOD_MIRRORS or p["url"] in ("server", "server_query")


def _bounds_problem(p: dict[str, Any], final: Path | None, want: str, rc: int | None) -> str | None:
    """Issue 30's rules: a good archive never deleted, every download within the deadline, the mirror used (and
    one of bad form refused before any request), a good source and a benign folder a success."""
    if final is not None and p["state"] in GOOD_COPY_STATES and not (final.is_file() and _md5_of(final) == want):
        return f"an archive with the published MD5 was there and is gone (state {p['state']}, exit {rc})"
    slowest = max(_CURRENT.get("downloads", []), default=0.0)
    if slowest > FETCH_DEADLINE_S + 2.0:  # the watch's tick and the part's verification, far less
        return f"a download ran {slowest:.1f} s, past RESNETLAB_FETCH_DEADLINE={FETCH_DEADLINE_S:g}"
    requests = _CURRENT.get("requests", [])
    if (p["mirror"] in BAD_MIRRORS or p["mirror"] == "file") and requests:
        return f"mirror {p['mirror']}: {len(requests)} request(s) reached the server"
    if p["mirror"] in GOOD_MIRRORS and any(not path.removeprefix("/ok").startswith("/mirror/")
                                           for path, _ in requests):
        return f"a mirror was set, yet a request went elsewhere: {requests[:3]}"
    good_source = p["mirror"] == "file" or all(m in GOOD_MODES for m in p["plan"])
    if rc != 0 and _served(p) and good_source and p["state"] in BENIGN_STATES \
            and p["dir"] in ("dl", "cache", "missing deep path"):
        return "a good server's download refused"
    return None


# -- the tracker family -------------------------------------------------------------------------------------------
TINY_TRAIN = ["train", "--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:8", "--iters", "2"]
TRACKER_VALUES = ["mlflow"] * 3 + ["wandb"] * 3 + ["mlflow,wandb", "wandb,mlflow", "tensorboard", "mlflow,mlflow",
                  "nope", "MLflow", "", "[]", "5", "[1,2]", "none", "mlflow,", ",", '["mlflow", 5]', '{"a": 1}',
                  "mlflow wandb", " wandb ", "wandb\x1b[31m", "ml\nflow", "x" * 1000, "wandb,tensorboard"]
TAG_VALUES = [None] * 4 + ["team=vision", "a=1,b=2", "a=1,a=2", "=x", "novalue", "a=b=c", "k=" + "v" * 6000,
              "k" * 300 + "=v", "k=\x1b[31mred", "k=line\nbreak", "k=\ttab", "ünï=cödé", '["a=1", 5]', "5", "[]",
              "k= spaced ", " =v", "a=1,,b=2", "k=" + "v" * 4999, "x=" + "é" * 100]
MLFLOW_URIS = {"store": "sqlite:///{root}/mlflow.db", "not a database": "sqlite:///{root}/garbage.db",
               "missing folder": "sqlite:///{root}/missing/deep/mlflow.db",
               "read-only folder": "sqlite:///{root}/ro/mlflow.db", "a folder": "sqlite:///{root}/adir",
               "below a file": "sqlite:///{root}/afile/mlflow.db", "file: of a file": "file://{root}/afile",
               "a file path": "{root}/afile",
               "closed port": "http://127.0.0.1:{closed}", "not an MLflow server": "http://127.0.0.1:{port}",
               "unknown scheme": "nope://nowhere", "postgresql, no driver": "postgresql://u:p@127.0.0.1:{closed}/db",
               "unset": None}
MLFLOW_WEIGHTS = ["store"] * 6 + [k for k in MLFLOW_URIS if k not in ("store", "unset", "closed port")] \
    + ["closed port", "unset"]  # the default store (./mlflow.db, created: ~10 s) and retries are the slow ones
WANDB_MODES = ["offline"] * 6 + ["dryrun", "disabled", "sometimes", "", "OFFLINE", " offline", "offline\n"]
WANDB_DIRS = {"unset": None, "normal": "{root}/wandb", "a file": "{root}/afile", "below a file": "{root}/afile/sub",
              "missing deep path": "{root}/w/x/y", "read-only": "{root}/ro"}
DAMAGES = ["none", "none", "not JSON", "empty", "a list", "nested deep", "mlflow run missing", "mlflow run_id a number",
           "mlflow a string", "mlflow without its URI", "mlflow URI a closed port", "mlflow URI not a database",
           "wandb id with a slash", "wandb id a number", "wandb id huge", "wandb dir a file", "wandb dir moved",
           "wandb project a list", "a folder", "a FIFO", "a link to a file", "unknown tracker"]


def installed(name: str) -> bool:
    from resnetlab.settings.trackers import installed as found

    return found(name) and (name != "mlflow" or found("sqlalchemy"))


def tracker_cases() -> st.SearchStrategy[Case]:
    """A tiny training with generated tracker settings and environments, or `train --resume` of a run trained
    with MLflow and W&B whose trackers.json is damaged."""

    def build(resume: bool, tracker: str, tags: str | None, uri: str, mode: str, wdir: str, damage: str,
              cut_back: bool) -> Case:
        env = tracker_env()
        env["MLFLOW_TRACKING_URI"] = MLFLOW_URIS[uri]
        env["WANDB_MODE"] = mode
        env["WANDB_DIR"] = WANDB_DIRS[wdir]
        if resume:
            params = {"resume": True, "damage": damage, "cut_back": cut_back, "uri": uri, "wandb_dir": wdir,
                      "needs": [n for n in ("mlflow", "wandb") if installed(n)]}
            return Case("tracker", ["train", "--resume", "{root}/prev"], _setups(("tracker", params)), env=env,
                        writable=TRACKER_WRITABLE)
        argv = [*TINY_TRAIN, "--set", f"run.tracker={tracker}", "--out", "{root}/out/run"]
        if tags is not None:
            argv[-2:-2] = ["--set", f"run.tracker_tags={tags}"]
        names = {n for n in ("mlflow", "wandb") if n in tracker}
        if any(not installed(n) for n in names):  # the package is absent: the one-line refusal is what is judged
            argv = [*TINY_TRAIN, "--set", "run.tracker=nope", "--out", "{root}/out/run"]
        params = {"resume": False, "uri": uri, "wandb_dir": wdir, "needs": sorted(names)}
        return Case("tracker", argv, _setups(("tracker", params)), env=env, writable=TRACKER_WRITABLE)

    return st.builds(build, st.sampled_from([False, False, True]), st.sampled_from(TRACKER_VALUES),
                     st.sampled_from(TAG_VALUES), st.sampled_from(MLFLOW_WEIGHTS), st.sampled_from(WANDB_MODES),
                     st.sampled_from(["unset"] * 4 + sorted(WANDB_DIRS)), st.sampled_from(DAMAGES), st.booleans())


TRACKER_WRITABLE = ("out", "prev", "mlflow.db", "mlruns", "wandb", "wandb-home", "ro", "w", "missing", "cache",
                    "mlflow.db-journal")


def tracker_env() -> dict[str, str | None]:
    """What every tracker case sets: W&B offline, quiet and kept in the case (never online: its server is a
    closed loopback port, no key), no proxies, no experiment names from outside."""
    env: dict[str, str | None] = {k: None for k in PROXIES}
    env |= {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_BASE_URL": "http://127.0.0.1:{closed}",
            "WANDB_API_KEY": None, "WANDB_PROJECT": None, "WANDB_ENTITY": None, "WANDB_RUN_ID": None,
            "WANDB_RESUME": None, "WANDB_NOTES": None, "WANDB_TAGS": None, "WANDB_RUN_GROUP": None,
            "WANDB_DATA_DIR": "{root}/wandb-home/data", "WANDB_CACHE_DIR": "{root}/wandb-home/cache",
            "WANDB_CONFIG_DIR": "{root}/wandb-home/config", "WANDB_ARTIFACT_DIR": "{root}/wandb-home/artifacts",
            "MLFLOW_EXPERIMENT_NAME": None, "MLFLOW_EXPERIMENT_ID": None, "MLFLOW_RUN_ID": None,
            "RESNETLAB_CACHE": "{root}/cache"}
    return env


def _store_template() -> Path:
    """A migrated, empty MLflow SQLite store (its creation takes seconds: once per process, then copied)."""
    if "store" not in _ONCE:
        from mlflow.tracking import MlflowClient

        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-mlflow-"))
        cwd = os.getcwd()
        try:
            os.chdir(where)  # its default artifact root, ./mlruns, is taken from the cwd
            with contextlib.redirect_stderr(io.StringIO()):
                MlflowClient(f"sqlite:///{where / 'mlflow.db'}").search_experiments()
        finally:
            os.chdir(cwd)
        _ONCE["store"] = where / "mlflow.db"
    return _ONCE["store"]


def _wandb_teardown() -> None:
    import sys

    if "wandb" in sys.modules:
        with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            sys.modules["wandb"].teardown()


@contextlib.contextmanager
def _env(values: dict[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _quiet_train(argv: list[str]) -> str:
    from resnetlab.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    assert rc == 0, f"a template training failed: {argv}: {err.getvalue()[-300:]}"
    return err.getvalue()


def reference_final() -> dict[str, Any]:
    """The final metrics of the tiny training without trackers (once per process)."""
    if "reference" not in _ONCE:
        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "run"
        _quiet_train([*TINY_TRAIN, "--out", str(where)])
        _ONCE["reference"] = json.loads((where / "summary.json").read_text())["final"]
    return _ONCE["reference"]


def resume_template() -> Path:
    """A folder holding `prev` (the tiny training, run with MLflow and W&B where installed), its MLflow store
    (`mlflow.db`, `mlruns/`) and W&B's home (`wandb-home`): copied into a case and re-pointed there."""
    if "resume" not in _ONCE:
        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-tracked-"))
        names = [n for n in ("mlflow", "wandb") if installed(n)]
        env = {k: (v.replace("{root}", str(where)).replace("{closed}", str(closed_port())) if v else v)
               for k, v in tracker_env().items()}
        env |= {"WANDB_MODE": "offline", "WANDB_DIR": None, "MLFLOW_TRACKING_URI": f"sqlite:///{where / 'mlflow.db'}"}
        if "mlflow" in names:
            shutil.copy(_store_template(), where / "mlflow.db")
        cwd = os.getcwd()
        try:
            os.chdir(where)
            with _env(env):
                _quiet_train([*TINY_TRAIN, "--set", f"run.tracker={','.join(names) or '[]'}", "--out",
                              str(where / "prev")])
        finally:
            os.chdir(cwd)
            _wandb_teardown()
        _ONCE["resume"] = where
    return _ONCE["resume"]


def _copy_resume_template(root: Path, p: dict[str, Any]) -> None:
    template = resume_template()
    for item in template.iterdir():
        if item.is_dir():
            shutil.copytree(item, root / item.name, symlinks=True)
        else:
            shutil.copy2(item, root / item.name)
    old, new = str(template), str(root)
    db = root / "mlflow.db"
    if db.exists():  # the store's paths (artifact locations) re-pointed into the case
        with contextlib.closing(sqlite3.connect(db)) as con:
            con.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
            con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
            con.execute("UPDATE tags SET value = replace(value, ?, ?)", (old, new))
            con.commit()
    state_file = root / "prev" / "trackers.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    moved = json.loads(json.dumps(state).replace(old, new))
    if p["cut_back"]:  # as if killed after step 1: resumed for real, the trackers get metrics
        (root / "prev" / "checkpoints" / "step-00000002.pt").unlink()
        (root / "prev" / "summary.json").unlink()
    damage = p["damage"]
    text: str | None = json.dumps(moved)
    if damage == "not JSON":
        text = "{not json"
    elif damage == "empty":
        text = ""
    elif damage == "a list":
        text = "[1, 2]"
    elif damage == "nested deep":
        text = '{"mlflow": ' * 50_000 + "1" + "}" * 50_000
    elif damage == "wandb dir moved":  # a run directory copied from elsewhere: its record names the old place
        text = json.dumps(state)
    elif damage == "a folder":
        text = None
        state_file.unlink(missing_ok=True)
        state_file.mkdir()
    elif damage == "a FIFO":  # read as a file, it would block until a writer comes
        text = None
        state_file.unlink(missing_ok=True)
        os.mkfifo(state_file)
    elif damage == "a link to a file":
        text = None
        state_file.unlink(missing_ok=True)
        state_file.symlink_to(root / "afile")
    else:
        edits = {"mlflow run missing": ("mlflow", "run_id", "0" * 32),
                 "mlflow run_id a number": ("mlflow", "run_id", 5),
                 "mlflow without its URI": ("mlflow", "tracking_uri", "__delete__"),
                 "mlflow URI a closed port": ("mlflow", "tracking_uri", f"http://127.0.0.1:{closed_port()}"),
                 "mlflow URI not a database": ("mlflow", "tracking_uri", f"sqlite:///{root / 'garbage.db'}"),
                 "wandb id with a slash": ("wandb", "id", "../../escape"), "wandb id a number": ("wandb", "id", 5),
                 "wandb id huge": ("wandb", "id", "x" * 5000),
                 "wandb dir a file": ("wandb", "dir", str(root / "afile")),
                 "wandb project a list": ("wandb", "project", ["a"])}
        if damage in edits:
            tracker, key, value = edits[damage]
            entry = moved.setdefault(tracker, {}) if isinstance(moved.get(tracker), dict) else {}
            if value == "__delete__":
                entry.pop(key, None)
            else:
                entry[key] = value
            moved[tracker] = entry
        elif damage == "mlflow a string":
            moved["mlflow"] = "x"
        elif damage == "unknown tracker":
            moved["nope"] = {"id": 1}
        text = json.dumps(moved)
    if text is not None:
        state_file.write_text(text)


def _tracker_setup(root: Path, p: dict[str, Any]) -> None:
    import numpy as np

    (root / "afile").write_text("not a folder\n")
    (root / "garbage.db").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "adir").mkdir()
    if p["resume"]:
        _copy_resume_template(root, p)
    elif installed("mlflow") and "mlflow" in p["needs"]:
        shutil.copy(_store_template(), root / "mlflow.db")
    (root / "ro").mkdir()
    if installed("mlflow") and "mlflow" in p["needs"]:
        shutil.copy(_store_template(), root / "ro" / "mlflow.db")
    os.chmod(root / "ro", 0o500)


def _outside() -> dict[str, Any]:
    """What lies where a tracker would write outside the case: the repository's top level, the home
    directory's W&B and MLflow places, the tracker template's files."""
    seen: dict[str, Any] = {"repo": sorted(p.name for p in REPO.iterdir())}
    home = Path.home()
    for rel in (".config/wandb", ".cache/wandb", ".local/share/wandb", "mlruns", "mlflow.db", ".netrc", "wandb",
                ".cache/resnetlab"):
        seen[rel] = (home / rel).exists()
    if "resume" in _ONCE:
        seen["template"] = sorted(str(p.relative_to(_ONCE["resume"])) for p in _ONCE["resume"].rglob("*"))
    return seen


@contextlib.contextmanager
def _tracker_around(root: Path, p: dict[str, Any]) -> Iterator[None]:
    srv = server()
    srv.reset(["404"])  # the "HTTP server that is not MLflow"
    for key, value in list(os.environ.items()):  # the ports in the case's environment
        if "{closed}" in value or "{port}" in value:
            os.environ[key] = value.replace("{closed}", str(closed_port())).replace("{port}", str(srv.port))
    _wandb_teardown()
    _CURRENT["outside"] = _outside()
    try:
        yield
    finally:
        _wandb_teardown()
        srv.reset(["good"])


MLFLOW_INFO = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO ")  # MLflow's own notes (a new store's tables)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _tracker_problem(root: Path, p: dict[str, Any], argv: list[str], rc: int | None, stdout: str,
                     stderr: str) -> str | None:
    now = _outside()
    for key, was in _CURRENT.get("outside", {}).items():
        if now.get(key) != was:
            new = sorted(set(now.get(key) or []) - set(was or [])) if isinstance(was, list) else key
            return f"written outside the case directory: {key}: {str(new)[:120]}"
    run = root / ("prev" if p["resume"] else "out/run")
    log = _lines(run / "log.txt")
    for where, lines in (("stdout", stdout.splitlines()), ("log.txt", log)):
        if any("Traceback" in ln for ln in lines):
            return f"traceback in {where}"
    if rc != 0:
        return None
    for name in ("mlflow", "wandb", "tensorboard"):
        warned = [ln for ln in log if ln.startswith(f"tracker {name} failed")]
        if len(warned) > 1:
            return f"tracker {name}'s failure took {len(warned)} lines in log.txt"
    noise = [ln for ln in stderr.splitlines() if ln.strip() and not MLFLOW_INFO.match(ln)]
    if noise:
        return f"{len(noise)} line(s) on stderr from a training that exits 0: {noise[0][:120]!r}"
    summary = run / "summary.json"
    if not summary.is_file():
        return "exit 0 without summary.json"
    final = json.loads(summary.read_text()).get("final")
    want = p.get("reference") or reference_final()
    if final != want:
        return f"final metrics differ from the same training without trackers: {final} != {want}"
    return None


# -- the hooks fuzz.py calls ------------------------------------------------------------------------------------
def setup(root: Path, step: tuple[Any, ...]) -> None:
    """Carry out one set-up step of a case in its directory `root` (and remember the case's parameters)."""
    kind, params = step
    _CURRENT.clear()
    _CURRENT.update(kind=kind, params=params)
    if kind == "fetch":
        _fetch_setup(root, params)
    elif kind == "tracker":
        if params["resume"]:
            reference = json.loads((resume_template() / "prev" / "summary.json").read_text())["final"]
            params["reference"] = reference
        else:
            reference_final()  # made before the case's clock starts
        _tracker_setup(root, params)
    else:
        raise ValueError(f"unknown set-up step {kind!r}")


@contextlib.contextmanager
def around(case: Case, root: Path) -> Iterator[None]:
    """Inside the case's environment, around the command: the server's plan and the table (fetch), W&B's
    process-wide state and the places outside the case (tracker)."""
    if case.family not in FAMILIES or _CURRENT.get("kind") != case.family:
        yield
        return
    params = _CURRENT["params"]
    with (_fetch_around(root, params) if case.family == "fetch" else _tracker_around(root, params)):
        yield


def after(case: Case, argv: list[str], root: Path, rc: int | None, stdout: str, stderr: str) -> str | None:
    """The family's own checks, once the command has ended and passed fuzz.py's judge."""
    if case.family not in FAMILIES or _CURRENT.get("kind") != case.family:
        return None
    params = _CURRENT["params"]
    if case.family == "fetch":
        return _fetch_problem(root, params, argv, rc, stdout, stderr)
    return _tracker_problem(root, params, argv, rc, stdout, stderr)


STRATEGIES = {"fetch": fetch_cases, "tracker": tracker_cases}
