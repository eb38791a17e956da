"""The `fetch` family: the CIFAR download (`data fetch`, `train --data cifar10`) against the loopback server
(tests.fuzz.loopback) answering as generated, a download folder in a generated state, table URLs and mirrors of
bad form; its checks are issue 25's and 30's rules for the archive and its record (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import strategies as st

from tests.fuzz.common import PROXIES, TINY, closed_port, environ, write_files
from tests.fuzz.core import Case, Ended, Family, register
from tests.fuzz.loopback import FETCH_TIMEOUT_S, archive, archive_md5, server

FETCH_DEADLINE_S = 4.0  # RESNETLAB_FETCH_DEADLINE for a case (default 3600 s)
NAMES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
_SEEN: dict[str, Any] = {}  # what the server and the downloads saw during the command, for `after`

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
BENIGN_STATES = set(STATES) - {"part_dir", "part_fifo", "record_fifo", "final_dir", "final_fifo"}
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
DIR_ARGS = {"dl": "{root}/dl", "missing deep path": "{root}/x/y/z/dl", "a file": "{root}/afile",
            "below a file": "{root}/afile/sub", "a FIFO": "{fifo}", "/dev/null": "{devnull}",
            "a symlink loop": "{loop}"}
NOT_FOLDERS = tuple(DIR_ARGS)[2:]
DIRS = ["dl", "dl", *DIR_ARGS]
TRAIN_CIFAR = ["train", *TINY[:4], "--data", "cifar10", "--iters", "1", "--out", "{root}/out"]


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
            argv = ["data", "fetch", kind, "--dir", DIR_ARGS[dir_kind]]
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
        return Case("fetch", argv, steps=(("fetch", params),), env=env, writable=writable, invalid=invalid)

    return st.builds(build, command, st.sampled_from(DIRS), st.sampled_from(STATES),
                     st.lists(mode, min_size=1, max_size=3), url, st.integers(0, 2**16),
                     st.tuples(mirror, rate, st.booleans()))


def setup(root: Path, step: tuple[str, dict[str, Any]]) -> None:
    """The case's files: good and wrong copies elsewhere, a file:// mirror, the download folder in its state."""
    import numpy as np

    p = step[1]
    rng = np.random.default_rng(p["seed"])
    body = archive()
    # a good copy elsewhere (file: URLs, links), a wrong one, a file:// mirror (the MD5 of both table entries is
    # this archive's)
    write_files(root, {"afile": b"not a folder\n", "elsewhere.tar.gz": body, "wrong.tar.gz": body[:-1] + b"x",
                       **{f"mirror/{mirrored}": body for mirrored in NAMES.values()}})
    if p["folder"] is None:
        return
    folder = root / p["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    name = NAMES[p["kind"]]
    final, part, record = folder / name, folder / (name + ".part"), folder / (name + ".json")
    state = p["state"]
    if state.startswith(("cached_", "record_")) or state == "part_and_cached":  # an archive at the final name
        final.write_bytes(body[:-1] + b"x" if state in ("cached_changed", "cached_wrong_norecord") else body)
    parts = {"part_full": body, "part_longer": body + b"junk", "part_and_cached": body[:100]}
    folders = {"part_dir": part, "record_dir": record, "final_dir": final, "lock_dir": folder / f".{name}.lock"}
    fifos = {"part_fifo": part, "final_fifo": final, "record_fifo": record}  # read as a file, one blocks forever
    links = {"final_dangling_link": "nowhere.tar.gz", "final_link_good": "elsewhere.tar.gz",
             "final_link_wrong": "wrong.tar.gz"}
    if state == "part_random":
        part.write_bytes(rng.integers(0, 256, int(rng.integers(1, 2 * len(body))), dtype=np.uint8).tobytes())
    elif state == "part_prefix":
        part.write_bytes(body[: int(rng.integers(1, len(body)))])
    elif state in parts:
        part.write_bytes(parts[state])
    elif state in folders:
        folders[state].mkdir()
    elif state in fifos:
        os.mkfifo(fifos[state])
    elif state in links:
        final.symlink_to(root / links[state])
    if state in (records := _records(body)):
        record.write_text(records[state])


def _records(body: bytes) -> dict[str, str]:
    """The record beside the cached archive, by state (`cached_changed`: the record of the good bytes)."""

    def good(sha: str | None = None, **changed: Any) -> str:  # as a download writes it, with `changed` fields
        return json.dumps({"url": "x", "md5": archive_md5(), "sha256": sha or hashlib.sha256(body).hexdigest(),
                           "bytes": len(body), "downloaded": "2024-01-01T00:00:00Z"} | changed)

    return {"part_and_cached": good(), "cached_good_record": good(), "cached_changed": good(),
            "cached_bad_sha_record": good("0" * 64), "cached_bad_size_record": good(bytes=len(body) - 1),
            "cached_other_md5_record": good("1" * 64, md5="f" * 32), "record_not_json": "{not json",
            "record_deep": "[" * 100_000 + "]" * 100_000, "record_list": f"[{good()}]",
            "record_types": json.dumps({"md5": archive_md5(), "sha256": 5, "bytes": "many"}),
            "record_huge_bytes": good(bytes=10**400)}


@contextlib.contextmanager
def around(case: Case, root: Path) -> Iterator[None]:
    """Inside the case's environment, around the command: the server's plan, the table of URLs (only the mirror's
    host reachable where a good mirror is set), the mirror, and each download timed."""
    from resnetlab.data import fetch as fetch_mod

    p = case.steps[0][1]
    srv = server()
    srv.reset(p["plan"])
    fill = {"port": srv.port, "closed": closed_port(), "root": root}
    mirror = MIRRORS[p["mirror"]] if not p["by_flag"] else None
    url = f"http://127.0.0.1:{closed_port()}/{{name}}" if mirror is not None and p["mirror"] in GOOD_MIRRORS \
        else URLS[p["url"]]
    remotes = {kind: fetch_mod.Remote(kind, url.format(name=name, **fill), name, archive_md5())
               for kind, name in NAMES.items()}
    real_download, timings = fetch_mod._download, []

    def timed(*args: Any, **kw: Any) -> None:
        start = time.monotonic()
        try:
            real_download(*args, **kw)
        finally:
            timings.append(time.monotonic() - start)

    try:
        with mock.patch.dict(fetch_mod.REMOTES, remotes), mock.patch.object(fetch_mod, "_download", timed), \
                mock.patch.dict(fetch_mod.fetch.__kwdefaults__, timeout=FETCH_TIMEOUT_S), \
                environ({"RESNETLAB_DATA_MIRROR": None if mirror is None else mirror.format(**fill)}):
            yield
    finally:
        _SEEN["requests"], _SEEN["downloads"] = list(srv.requests), timings
        srv.reset(["good"])


def _md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def after(ended: Ended) -> str | None:
    """The family's checks, once the command has ended and passed the common judge."""
    root, argv, rc, stdout, stderr = ended.root, ended.argv, ended.rc, ended.stdout, ended.stderr
    p = ended.case.steps[0][1]
    want = archive_md5()
    name = NAMES[p["kind"]]
    final = root / p["folder"] / name if p["folder"] else None
    # (where a bad mirror was refused, the folder was never read: what lies there is not the command's)
    if final is not None and final.is_file() and p["state"] != "final_fifo" and _md5_of(final) != want \
            and not (rc != 0 and _bad_mirror(p)):
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
        requests = _SEEN.get("requests", [])
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
    return not _bad_mirror(p) and (p["mirror"] in GOOD_MIRRORS or p["url"] in ("server", "server_query"))


def _bounds_problem(p: dict[str, Any], final: Path | None, want: str, rc: int | None) -> str | None:
    """Issue 30's rules: a good archive never deleted, every download within the deadline, the mirror used (and
    one of bad form refused before any request), a good source and a benign folder a success."""
    if final is not None and p["state"] in GOOD_COPY_STATES and not (final.is_file() and _md5_of(final) == want):
        return f"an archive with the published MD5 was there and is gone (state {p['state']}, exit {rc})"
    slowest = max(_SEEN.get("downloads", []), default=0.0)
    if slowest > FETCH_DEADLINE_S + 2.0:  # the watch's tick and the part's verification, far less
        return f"a download ran {slowest:.1f} s, past RESNETLAB_FETCH_DEADLINE={FETCH_DEADLINE_S:g}"
    requests = _SEEN.get("requests", [])
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


register(Family("fetch", fetch_cases, setup, around, after))
