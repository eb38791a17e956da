"""`--data cifar10` with no path: the archive fetched into the data cache (src/resnetlab/data/fetch.py).

Every test serves a GENERATED archive in the real CIFAR python layout (conftest's make_cifar) from a server on
127.0.0.1, with the table pointed at it; the real host is never contacted. The server counts its requests, so
"no network" is asserted as "no request reached it".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import deadline
from resnetlab.cli import main
from resnetlab.data import DataOptions, load_data
from resnetlab.data import fetch as fetch_mod
from resnetlab.data.fetch import REMOTES, Remote, fetch, read_record
from resnetlab.errors import DataError

NAME = "cifar-10-python.tar.gz"
TRICKLE_S = 0.02  # a trickling server's pause between bytes (far below any read timeout of the tests)


class Server:
    """A loopback HTTP server of one file. `modes` is consumed one per request (the last repeats):
    good (Range honoured), norange (whole file always), stall (half, then silence), cut (half of the announced
    length, then close), wrong (one byte changed), huge (announces 2 GiB), 404, 502, trickle (the headers, then
    a byte every TRICKLE_S: never TRICKLE_S without one, so no read times out), trickle_headers (the status
    line, then a header a byte every TRICKLE_S)."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.modes, self.requests = payload, ["good"], []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                mode = server.modes.pop(0) if len(server.modes) > 1 else server.modes[0]
                body, status, extra = server.payload, 200, {}
                if mode in ("404", "502"):
                    self.send_error(int(mode))
                    return
                if mode.startswith("trickle"):
                    server.trickle(self, mode)
                    return
                if mode == "huge":  # announces 2 GiB
                    self.send_response(200)
                    self.send_header("Content-Length", str(2 << 30))
                    self.end_headers()
                    self.close_connection = True
                    return
                if mode == "wrong":
                    body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
                rng = self.headers.get("Range")
                if rng and mode not in ("norange",):
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status, extra = 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
                    body = body[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                if mode in ("stall", "cut"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if mode == "stall":
                        server.release.wait(10)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def trickle(self, handler: BaseHTTPRequestHandler, mode: str) -> None:
        """A byte every TRICKLE_S (of the body, or of an endless header) until the server closes."""
        out = handler.wfile
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.payload)}\r\n"
        out.write(head.encode() + (b"X-Slow: " if mode == "trickle_headers" else b"\r\n"))
        body = iter(self.payload) if mode == "trickle" else iter(lambda: ord("x"), None)
        with contextlib.suppress(OSError):  # the client gave up
            for byte in body:
                out.write(bytes([byte]))
                out.flush()
                if self.release.wait(TRICKLE_S):
                    break
        handler.close_connection = True

    def url(self, name: str = NAME) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                "NO_PROXY", "RESNETLAB_FETCH_DEADLINE", "RESNETLAB_FETCH_MIN_RATE", "RESNETLAB_DATA_MIRROR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def archive(make_cifar) -> bytes:
    path, _ = make_cifar("cifar10", tar=True, per_batch=4)
    return path.read_bytes()


@pytest.fixture
def served(archive: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Server]:
    """The generated archive on a loopback server, the table's cifar10 entry pointed at it, the cache in tmp."""
    server = Server(archive)
    md5 = hashlib.md5(archive).hexdigest()
    monkeypatch.setitem(REMOTES, "cifar10", Remote("cifar10", server.url(), NAME, md5))
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    yield server
    server.close()


def quiet(_line: str) -> None:
    pass


def get(**kw: object) -> Path:
    kw.setdefault("log", quiet)
    kw.setdefault("progress", False)
    return fetch("cifar10", **kw)  # type: ignore[arg-type]


def one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "--data cifar10:PATH" in text, text  # and how to do without the download
    return text


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_download_verifies_records_and_the_second_call_stays_offline(served: Server, archive: bytes,
                                                                    tmp_path: Path) -> None:
    lines: list[str] = []
    path = get(log=lines.append)
    assert path == tmp_path / "cache" / "downloads" / NAME and path.read_bytes() == archive
    record = read_record(path)
    assert record is not None and record["sha256"] == hashlib.sha256(archive).hexdigest()
    assert record["md5"] == hashlib.md5(archive).hexdigest() and record["bytes"] == len(archive)
    assert leftovers(path.parent) == [NAME, NAME + ".json"]  # no .part
    assert any("SHA-256" in line for line in lines)
    assert len(served.requests) == 1
    served.modes = ["404"]  # were the network touched, this would fail
    assert get() == path
    assert len(served.requests) == 1


def test_load_data_and_train_with_no_path(served: Server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = load_data("cifar10", DataOptions(cache_dir=str(tmp_path / "cache")))
    assert (source.name, source.train_size, source.num_classes) == ("cifar10", 20, 10)
    assert len(served.requests) == 1
    out = tmp_path / "run"
    code = main(["train", "--model", "resnet20", "--set", "model.depth=8", "--data", "cifar10", "--iters", "2",
                 "--out", str(out), "--set", "run.progress=false"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["data"]["source"] == "cifar10"
    assert len(served.requests) == 1  # the cached copy


def test_fetch_command(served: Server, archive: bytes, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "fetch", "cifar10", "-o", str(tmp_path / "mine")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "mine" / NAME) in out and "SHA-256" in out
    assert (tmp_path / "mine" / NAME).is_file()
    assert main(["data", "fetch", "cifar10", "--dir", str(tmp_path / "mine"), "--json"]) == 0  # the old spelling
    assert len(served.requests) == 1
    record = json.loads(capsys.readouterr().out)  # stdout: the JSON alone
    assert (record["path"], record["md5"]) == (str(tmp_path / "mine" / NAME), hashlib.md5(archive).hexdigest())
    assert record["sha256"] == hashlib.sha256(archive).hexdigest()
    with pytest.raises(SystemExit) as exc:  # argparse: one line, exit 2
        main(["data", "fetch", "mnist"])
    assert exc.value.code == 2


def test_resume_a_partial_download_with_range(served: Server, archive: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    (folder / (NAME + ".part")).write_bytes(archive[:1000])
    path = get()
    assert path.read_bytes() == archive
    assert served.requests == [{"path": f"/{NAME}", "range": "bytes=1000-"}]


def test_cut_short_keeps_the_part_and_the_next_call_resumes(served: Server, archive: bytes,
                                                            tmp_path: Path) -> None:
    served.modes = ["cut", "good"]
    with pytest.raises(DataError) as exc:
        get()
    assert "cut short" in one_line(exc) and "resume" in str(exc.value)
    folder = tmp_path / "cache" / "downloads"
    assert leftovers(folder) == [NAME + ".part"]  # nothing at the final name
    assert (folder / (NAME + ".part")).read_bytes() == archive[: len(archive) // 2]
    assert get().read_bytes() == archive
    assert served.requests[1]["range"] == f"bytes={len(archive) // 2}-"


def test_a_stalled_server_times_out_in_one_line(served: Server, tmp_path: Path) -> None:
    served.modes = ["stall"]
    with pytest.raises(DataError) as exc:
        get(timeout=0.5)
    assert "stalled" in one_line(exc) and "0.5 s" in str(exc.value)
    assert not (tmp_path / "cache" / "downloads" / NAME).exists()


def test_wrong_bytes_are_an_md5_mismatch_and_leave_nothing(served: Server, archive: bytes, tmp_path: Path) -> None:
    served.modes = ["wrong"]
    with pytest.raises(DataError) as exc:
        get()
    text = one_line(exc)
    assert "MD5" in text and hashlib.md5(archive).hexdigest() in text and "removed" in text
    assert leftovers(tmp_path / "cache" / "downloads") == []


def test_a_resumed_part_that_turns_out_corrupt_is_downloaded_again(served: Server, archive: bytes,
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    (folder / (NAME + ".part")).write_bytes(b"\0" * 1000)  # not the archive's first bytes
    assert get().read_bytes() == archive
    assert [r["range"] for r in served.requests] == ["bytes=1000-", None]


def test_a_server_that_ignores_range_restarts_the_part(served: Server, archive: bytes, tmp_path: Path) -> None:
    served.modes = ["norange"]
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    (folder / (NAME + ".part")).write_bytes(archive[:1000])
    assert get().read_bytes() == archive


def test_http_404(served: Server, tmp_path: Path) -> None:
    served.modes = ["404"]
    with pytest.raises(DataError) as exc:
        get()
    assert "HTTP 404" in one_line(exc) and served.url() in str(exc.value)
    assert leftovers(tmp_path / "cache" / "downloads") == []


def test_connection_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = Remote("cifar10", f"http://127.0.0.1:{port}/{NAME}", NAME, "0" * 32)
    with pytest.raises(DataError) as exc:
        get(remote=remote, directory=tmp_path / "d")
    assert "connection refused" in one_line(exc)
    assert leftovers(tmp_path / "d") == []


def test_offline_name_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*_args: object, **_kw: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(DataError) as exc:
        get(directory=tmp_path / "d")  # the real table: never reached, resolution fails first
    assert "cannot resolve www.cs.toronto.edu" in one_line(exc) and "offline" in str(exc.value)


def test_a_proxy_error_names_the_proxy(served: Server, archive: bytes, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    proxy = Server(archive)
    proxy.modes = ["502"]
    try:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(DataError) as exc:
            get()
        text = one_line(exc)
        assert "HTTP 502" in text and f"proxy 127.0.0.1:{proxy.port}" in text and "$http_proxy" in text
        assert proxy.requests and not served.requests  # it went to the proxy, as urllib does
    finally:
        proxy.close()


def test_a_full_disk_removes_the_part(served: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def full(_fd: int, _data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fetch_mod, "_write_all", full)
    with pytest.raises(DataError) as exc:
        get()
    assert "disk is full" in one_line(exc) and "RESNETLAB_CACHE" in str(exc.value)
    assert leftovers(tmp_path / "cache" / "downloads") == []


def test_a_cached_copy_that_changed_is_fetched_again(served: Server, archive: bytes) -> None:
    path = get()
    path.write_bytes(archive[:-1] + b"x")  # same size, other bytes: the recorded SHA-256 tells
    lines: list[str] = []
    assert get(log=lines.append).read_bytes() == archive
    assert len(served.requests) == 2 and any("SHA-256" in line and "removed" in line for line in lines)


def test_a_copy_placed_by_hand_is_checked_against_the_md5(served: Server, archive: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    (folder / NAME).write_bytes(archive)
    assert get().read_bytes() == archive
    assert not served.requests and read_record(folder / NAME) is not None


def test_an_explicit_path_never_fetches(served: Server, make_cifar, tmp_path: Path) -> None:
    path, _ = make_cifar("cifar10", tar=False)
    source = load_data(f"cifar10:{path}", DataOptions(cache_dir=str(tmp_path / "cache")))
    assert source.train_size == 15 and not served.requests


@pytest.mark.parametrize("spec, needle", [("cifar10:", "cifar10 alone to download"),
                                          ("cifar100:", "cifar100 alone"), ("folder:", "needs a path")])
def test_an_empty_path_is_still_an_error(spec: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        load_data(spec)


def test_a_server_announcing_gigabytes_is_refused(served: Server, tmp_path: Path) -> None:
    served.modes = ["huge"]
    with pytest.raises(DataError) as exc:
        get()
    assert "more than any CIFAR archive" in one_line(exc)
    assert leftovers(tmp_path / "cache" / "downloads") == []


@pytest.mark.parametrize("where", ["dir_is_a_file", "archive_is_a_dir", "part_is_a_dir"])
def test_odd_things_in_the_way_are_one_line(where: str, served: Server, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    if where == "dir_is_a_file":
        folder.write_text("x")
    else:
        (folder / (NAME if where == "archive_is_a_dir" else NAME + ".part")).mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        get(directory=folder)
    assert ("cannot create" if where == "dir_is_a_file" else "not a regular file") in one_line(exc)
    assert not served.requests


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="downloads cifar10, cifar100 only"):
        fetch("mnist", tmp_path)




# ---- the findings of the fuzz campaign (docs/reliability.md, "Services (issue 25)") -------------------------------
@pytest.mark.parametrize("record", ["nested deeply", "a FIFO"])
def test_a_record_nested_deeply_or_a_fifo_is_no_record(record: str, served: Server, archive: bytes,
                                                       tmp_path: Path) -> None:
    """Was a RecursionError (100,000 brackets), or a read blocked forever on the FIFO."""
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    (folder / NAME).write_bytes(archive)
    where = fetch_mod.record_path(folder / NAME)
    if record == "a FIFO":
        os.mkfifo(where)
    else:
        where.write_text("[" * 100_000 + "]" * 100_000)
    with deadline(20):
        assert get() == folder / NAME
    assert not served.requests  # checked against the published MD5 instead
    if record == "a FIFO":  # never replaced (files.atomic): it stays, and reads as no record
        assert read_record(folder / NAME) is None
    else:  # recorded anew
        assert read_record(folder / NAME)["sha256"] == hashlib.sha256(archive).hexdigest()


@pytest.mark.parametrize("how", ["cut short", "a changed copy, then 404", "a bad part resumed, then 404"])
def test_a_failed_download_is_one_line_on_stderr(how: str, served: Server, archive: bytes, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """The notes of the way (downloading, resuming, removed, does not match) came before the error line."""
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    if how == "cut short":
        served.modes = ["cut", "good"]
    elif how == "a changed copy, then 404":
        assert get() == folder / NAME
        (folder / NAME).write_bytes(archive[:-1] + b"x")
        served.modes = ["404", "good"]
    else:
        (folder / (NAME + ".part")).write_bytes(b"\0" * 1000)  # resumed, its MD5 wrong: from the start, then 404
        served.modes = ["good", "404", "good"]
    capsys.readouterr()
    assert main(["data", "fetch", "cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnetlab: error: cifar10: "), err
    assert not (folder / NAME).exists()
    assert main(["data", "fetch", "cifar10"]) == 0  # a success still tells the way there
    err = capsys.readouterr().err
    assert ("resuming" if how == "cut short" else "downloading") in err, err
    assert (folder / NAME).read_bytes() == archive


def test_fetch_command_names_the_hashes_when_the_record_cannot_be_written(served: Server, archive: bytes,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Was "MD5 None, SHA-256 None"."""
    def refused(*_args: object) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fetch_mod, "_write_record", refused)
    assert main(["data", "fetch", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "None" not in out, out
    assert hashlib.md5(archive).hexdigest() in out and hashlib.sha256(archive).hexdigest() in out
    assert "record could not be written" in out


@pytest.mark.parametrize("url, needle", [("http://[::1/" + NAME, "malformed"), ("", "empty"),
                                         ("127.0.0.1:8000/" + NAME, "no scheme")])
def test_a_malformed_table_url_is_one_line(url: str, needle: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was a ValueError from urllib escaping: urlsplit in the error's words, Request outside the try."""
    remote = Remote("cifar10", url, NAME, "0" * 32)
    with pytest.raises(DataError) as exc:
        get(remote=remote, directory=tmp_path / "d")
    assert needle in one_line(exc)
    assert leftovers(tmp_path / "d") == []
    monkeypatch.setitem(REMOTES, "cifar10", remote)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # the proxy's words split the URL too
    assert main(["data", "fetch", "cifar10", "--dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


# ---- issue 30: a download's bounds, the published MD5 first, a mirror ---------------------------------------------
def lock_is_free(folder: Path) -> bool:
    fd = os.open(folder / f".{NAME}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


NO_RATE = {"RESNETLAB_FETCH_DEADLINE": "1.5", "RESNETLAB_FETCH_MIN_RATE": "0"}  # the deadline alone


@pytest.mark.parametrize("mode, env, needle", [
    ("trickle", {"RESNETLAB_FETCH_MIN_RATE": "2000"}, "RESNETLAB_FETCH_MIN_RATE=2000"),
    ("trickle", NO_RATE, "RESNETLAB_FETCH_DEADLINE"),
    ("trickle_headers", {}, "RESNETLAB_FETCH_MIN_RATE=1024"),  # the defaults
    ("trickle_headers", NO_RATE, "RESNETLAB_FETCH_DEADLINE")])
def test_a_trickling_server_is_bounded(mode: str, env: dict[str, str], needle: str, served: Server, archive: bytes,
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Was a download for ever: a byte every TRICKLE_S never trips the 0.5 s read timeout."""
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    served.modes = [mode, "good"]
    with deadline(20), pytest.raises(DataError) as exc:
        get(timeout=0.5)
    assert needle in one_line(exc) and "run the same command again" in str(exc.value)
    folder = tmp_path / "cache" / "downloads"
    assert not (folder / NAME).exists() and lock_is_free(folder)
    part = folder / (NAME + ".part")
    if mode == "trickle":  # the bytes that came are kept, and the next call resumes from them
        kept = part.stat().st_size
        assert 0 < kept < len(archive) and archive.startswith(part.read_bytes())
        assert get(timeout=0.5).read_bytes() == archive
        assert served.requests[-1]["range"] == f"bytes={kept}-"
    else:  # no byte of the archive came: no part
        assert not part.exists()


def test_processes_waiting_on_the_lock_are_bounded(served: Server, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """Was a wait for ever on a process that holds the lock and does not finish."""
    monkeypatch.setenv("RESNETLAB_FETCH_DEADLINE", "0.5")
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    fd = os.open(folder / f".{NAME}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: flock excludes it as it would another process
        with deadline(20), pytest.raises(DataError) as exc:
            get(timeout=0.25)
        assert "another resnetlab process" in one_line(exc) and str(folder) in str(exc.value)
        assert not served.requests
    finally:
        os.close(fd)
    assert get().is_file()  # once the holder is gone


@pytest.mark.parametrize("var, value", [("RESNETLAB_FETCH_DEADLINE", "soon"), ("RESNETLAB_FETCH_DEADLINE", "0"),
                                        ("RESNETLAB_FETCH_DEADLINE", "inf"), ("RESNETLAB_FETCH_MIN_RATE", "-1"),
                                        ("RESNETLAB_FETCH_MIN_RATE", "nan")])
def test_a_bad_bound_setting_is_one_line(var: str, value: str, served: Server, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(DataError) as exc:
        get()
    assert f"{var}={value!r}" in str(exc.value) and "\n" not in str(exc.value)
    assert not served.requests
    assert main(["data", "fetch", "cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and var in err, err


@pytest.mark.parametrize("record", ["a wrong SHA-256", "a wrong size", "another MD5"])
def test_a_good_archive_with_a_wrong_record_is_kept(record: str, served: Server, archive: bytes,
                                                    tmp_path: Path) -> None:
    """Was deleted (the record decided), and offline it could not come back: the published MD5 decides."""
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    (folder / NAME).write_bytes(archive)
    good = {"md5": hashlib.md5(archive).hexdigest(), "sha256": hashlib.sha256(archive).hexdigest(),
            "bytes": len(archive)}
    wrong = {"a wrong SHA-256": {"sha256": "0" * 64}, "a wrong size": {"bytes": 7},
             "another MD5": {"md5": "f" * 32, "sha256": "1" * 64}}[record]
    fetch_mod.record_path(folder / NAME).write_text(json.dumps(good | wrong))
    served.modes = ["404"]  # offline, in effect
    lines: list[str] = []
    assert get(log=lines.append).read_bytes() == archive
    assert not served.requests
    rewritten = read_record(folder / NAME)
    assert rewritten is not None and {k: rewritten[k] for k in good} == good
    assert any("record" in line and "rewritten" in line for line in lines), lines


def test_a_mirror_serves_both_commands(served: Server, archive: bytes, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as sock:  # the table's host: unreachable, as on an air-gapped cluster
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    md5 = hashlib.md5(archive).hexdigest()
    monkeypatch.setitem(REMOTES, "cifar10", Remote("cifar10", f"http://127.0.0.1:{closed}/~kriz/{NAME}", NAME, md5))
    base = f"http://127.0.0.1:{served.port}/datasets/cifar"
    assert main(["data", "fetch", "cifar10", "--dir", str(tmp_path / "mine"), "--mirror", base]) == 0
    assert (tmp_path / "mine" / NAME).read_bytes() == archive and md5 in capsys.readouterr().out
    assert [r["path"] for r in served.requests] == [f"/datasets/cifar/{NAME}"]
    assert read_record(tmp_path / "mine" / NAME)["url"] == f"{base}/{NAME}"
    monkeypatch.setenv("RESNETLAB_DATA_MIRROR", base + "/")  # what --data cifar10 uses
    source = load_data("cifar10", DataOptions(cache_dir=str(tmp_path / "cache")))
    assert source.train_size == 20 and len(served.requests) == 2
    assert served.requests[1]["path"] == f"/datasets/cifar/{NAME}"
    with pytest.raises(DataError):  # cifar100 from the same mirror, under its own name (served bytes: CIFAR-10's)
        fetch("cifar100", tmp_path / "c100", log=quiet, progress=False)
    assert served.requests[2]["path"] == "/datasets/cifar/cifar-100-python.tar.gz"
    import resnetlab  # the same from Python: the public API's fetch, quiet, with the mirror as an argument

    monkeypatch.delenv("RESNETLAB_DATA_MIRROR")
    capsys.readouterr()
    got = resnetlab.fetch("cifar10", tmp_path / "api", mirror=base)
    assert got.read_bytes() == archive and served.requests[3]["path"] == f"/datasets/cifar/{NAME}"
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("mirror, needle", [("", "empty"), ("mirror.lab/cifar", "no scheme"),
                                            ("ftp://mirror.lab/cifar/", "http, https or file"),
                                            ("http://[::1/cifar", "malformed"), ("http://m:99999/", "malformed"),
                                            ("http:///cifar/", "no host"), ("http://m/c?x=1", "query"),
                                            ("http://m/a b/", "space")])
def test_a_malformed_mirror_is_one_line(mirror: str, needle: str, served: Server, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["data", "fetch", "cifar10", "--mirror", mirror]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "mirror" in err, err
    if mirror:  # an empty variable is no mirror
        monkeypatch.setenv("RESNETLAB_DATA_MIRROR", mirror)
        with pytest.raises(DataError, match="RESNETLAB_DATA_MIRROR") as exc:
            load_data("cifar10", DataOptions(cache_dir=str(tmp_path / "cache")))
        assert "\n" not in str(exc.value) and needle in str(exc.value)
    assert not served.requests


def test_a_cache_without_a_home_is_one_line(served: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container's user with no home: Path.expanduser raised RuntimeError (a traceback)."""
    monkeypatch.delenv("RESNETLAB_CACHE")

    def homeless(self: Path) -> Path:
        if not str(self).startswith("~"):
            return self
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "expanduser", homeless)
    with pytest.raises(DataError) as exc:
        get()
    assert "RESNETLAB_CACHE" in one_line(exc) and "home" in str(exc.value)

