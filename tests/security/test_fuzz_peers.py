"""Fuzzing a real peer cache server (`deossfs serve-cache`) over raw HTTP (hypothesis).

The process serves the cache of an instance that holds a segment of the devnet user's
file. Random methods, paths, headers (Fid, Index, Account, Message, Signature, Range,
Transfer-Encoding, ...) and bodies, most with valid signatures of the owner or of an
account that owns nothing, so they reach the deeper checks: every request must get a
4xx (or a legitimate 200 read), the process must survive, and nothing it stores may
change. Then the signed-request rules, against the same process: stale, future,
replayed (also after a restart), redirected and borrowed signatures are refused; an
account that neither owns the file nor was authorized by an owner is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deossfs.keys import Account, create_key_file
from deossfs.p2p.peers import REASON_HEADER, segment_tag
from deossfs.p2p.signing import sign_request
from deossfs.processing.layout import SEGMENT_SIZE

from ..cache.test_two_instances import serve_cache
from ..conftest import Devnet, deossfs
from ..harness import account, config_for, ledger
from .test_fuzz_node import methods, raw_request

#: examples for each focus: every part of a request broken alone, none, several
FUZZ_EXAMPLES_EACH = 100


class PeerServer:
    """A `deossfs serve-cache` process of one instance, which can be restarted."""

    def __init__(self, config: Path, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.log = directory / "serve-0.log"  # the current process's (see start)
        self.logs: list[Path] = []
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def start(self) -> None:
        # each start logs to a file of its own (serve_cache truncates the one it is given)
        self.log = self.directory / f"serve-{len(self.logs)}.log"
        self.logs.append(self.log)
        self.proc, self.endpoint = serve_cache(self.config, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="module")
def peer(secure_devnet: Devnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A serving instance of the devnet's user: its cache holds segment 0 of `fids[0]`;
    `fids[1]` is stored on the chain but not in this cache; `fids[2]` exists nowhere."""
    directory = tmp_path_factory.mktemp("peer-fuzz")
    config = config_for(secure_devnet, directory / "serving", cache=True)
    src = directory / "cached.bin"
    src.write_bytes(os.urandom(1_500_000))
    deossfs("put", "-q", str(src), "sec/peer-cached.bin", config=config)  # fills the cache
    elsewhere = config_for(secure_devnet, directory / "other")  # no cache
    src.write_bytes(os.urandom(1_000_000))
    deossfs("put", "-q", str(src), "sec/peer-uncached.bin", config=elsewhere)
    stats = [json.loads(deossfs("stat", "--json", f"sec/{name}", config=config).stdout)
             for name in ("peer-cached.bin", "peer-uncached.bin")]
    cache_dir = directory / "serving" / "workspace" / "cache"
    assert (cache_dir / "segments").is_dir()
    server = PeerServer(config, directory)
    server.start()
    try:
        yield {"server": server, "cache": cache_dir,
               "fids": [stats[0]["fid"], stats[1]["fid"], hashlib.sha256(os.urandom(8)).hexdigest()],
               "segment_hash": stats[0]["segments"][0]["hash"]}
    finally:
        server.stop()
        shutil.rmtree(cache_dir, ignore_errors=True)  # 32 MiB a run, on a shared disk
    # nothing any test sent made the server fail, nor did stopping it
    for log in server.logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and " ERROR " not in text, (log, text[-3000:])


@pytest.fixture(scope="module")
def stranger(secure_devnet: Devnet, tmp_path_factory: pytest.TempPathFactory) -> Account:
    """A funded account with a valid key of its own, which owns nothing here."""
    who = create_key_file(tmp_path_factory.mktemp("stranger") / "key.json")
    chain = ledger(secure_devnet)
    try:
        chain.fund(who.address, 10**24)
    finally:
        chain.close()
    return who


def cache_state(cache_dir: Path) -> dict[str, object]:
    """What the cache stores: every file (path -> size, mtime) but diskcache's index
    database, and the index's entries (key -> file, size).

    The index database itself is left out as a file: serving a segment legitimately
    moves the entry's LRU position (its access time and count) there; what it says is
    stored is compared instead."""
    files: dict[str, object] = {}
    for path in cache_dir.rglob("*"):
        if path.is_file() and not path.name.startswith("cache.db"):
            info = path.stat()
            files[str(path.relative_to(cache_dir))] = (info.st_size, info.st_mtime_ns)
    db = sqlite3.connect(f"file:{cache_dir / 'segments' / 'cache.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT key, filename, size, mode FROM Cache ORDER BY key").fetchall()
    finally:
        db.close()
    files["<index>"] = rows
    return files


# ---- strategies ------------------------------------------------------------------------------

#: true one time in twenty
_rarely = st.integers(0, 19).map(lambda n: n == 0)
_TEXT = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=80)
_WORD = st.text("abcsegmnt/.", max_size=10)
_HEADER_BYTES = st.binary(max_size=120).filter(lambda b: b"\r" not in b and b"\n" not in b)
paths = st.one_of(st.sampled_from(["/segment", "/status", "/", "/segment/", "/segment?x=1",
                                   "/SEGMENT", "/../segment", "/segment/../status", "//segment",
                                   "/segment%00", "/%00", "/%0d%0aX-Injected:%20yes", "/%7f",
                                   "/%e2%80%a8", "/%ff%fe", "/%2e%2e/%2e%2e/etc/passwd", "*",
                                   "http://127.0.0.1/segment", "/status?x=%0d%0a"]),
                  # any bytes, percent-encoded: the path the app sees holds control characters
                  st.binary(max_size=24).map(lambda b: "/" + quote_from_bytes(b)),
                  # one percent-encoded control character (CR LF: a header injection attempt)
                  st.builds("/{}%{:02x}{}".format, _WORD, st.one_of(st.integers(0, 0x1F), st.just(0x7F)),
                            _WORD),
                  st.text(st.characters(codec="latin-1", exclude_characters="\r\n "), max_size=60)
                  .map(lambda s: "/" + s))
indexes = st.one_of(
    st.sampled_from(["0", "1", "00", "-1", "+0", " 0", "0 ", "1e3", "0x0", "\u0663", "\xb2",
                     "9999999", "10000000", "", "0" * 5000, "9" * 5000, "0" * 4400 + "1"]),
    st.integers(0, 2**70).map(str),
    # runs of digits, short and past Python's limit of 4300 digits for int()
    st.builds(lambda digit, n: digit * n, st.sampled_from("019"),
              st.one_of(st.integers(1, 30), st.integers(4000, 8000))),
    _TEXT)


#: the parts of a request the fuzz breaks
PARTS = ("method", "path", "fid", "index", "signature", "http")


@st.composite
def requests(draw: st.DrawFn, peer: dict, signers: list[Account], focus: tuple[str, ...]) -> tuple:
    # the parts in `focus` are broken for sure, each other one rarely: most requests are
    # nearly right, so they get past the first checks to the deeper ones
    def broken(part: str) -> bool:
        return part in focus or draw(_rarely)

    method = draw(methods) if broken("method") else draw(st.sampled_from(["GET", "HEAD"]))
    path = draw(paths) if broken("path") else "/segment"
    # the cached file most often: the owner's requests for it are served (200)
    fid_ok = draw(st.sampled_from([peer["fids"][0], *peer["fids"]]))
    fid: str | None = draw(st.one_of(st.none(), _TEXT, st.text("0123456789abcdefABCDEF", min_size=60,
                                                              max_size=70))) if broken("fid") else fid_ok
    index = draw(st.sampled_from([0, 0, 1, 2]))
    index_text: str | None = draw(st.one_of(indexes, indexes, st.none())) if broken("index") else str(index)
    headers: list[tuple[bytes, bytes]] = []
    if fid is not None:
        headers.append((b"Fid", fid.encode("latin-1", "replace")))
    if index_text is not None:
        headers.append((b"Index", index_text.encode("latin-1", "replace")))
    signature = (draw(st.sampled_from(["garbage", "none", "stale", "future", "other request"]))
                 if broken("signature") else "valid")
    if signature in ("valid", "stale", "future", "other request"):
        now = time.time_ns() // 1_000_000
        when = {"stale": now - 10 * 60_000, "future": now + 10 * 60_000}.get(signature)
        tag = segment_tag(index + 1 if signature == "other request" else index)
        signed = sign_request(draw(st.sampled_from(signers)), method.strip(), fid or fid_ok, tag,
                              timestamp_ms=when)
        headers += [(k.encode(), v.encode("latin-1", "replace")) for k, v in signed.items()]
    elif signature == "garbage":
        for name in ("Account", "Message", "Signature"):
            if draw(st.booleans()):
                headers.append((name.encode(), draw(_TEXT).encode("latin-1")))
    if draw(st.booleans()):  # the server ignores ranges: always the whole segment
        headers.append((b"Range", draw(st.one_of(
            st.sampled_from([b"bytes=0-99", b"bytes=-5", b"bytes=5-", b"bytes=0-1,3-4",
                             b"bytes=999999999999999-", b"bytes=abc", b"items=0-1"]),
            _HEADER_BYTES))))
    if broken("http"):  # anything else, even bytes that are not text
        for _ in range(draw(st.integers(1, 3))):
            headers.append((draw(st.sampled_from([b"X-Junk", b"Transfer-Encoding", b"Expect",
                                                  b"Content-Length", b"Fid", b"Index", b"Account",
                                                  b"\xff\xfe"])),
                            draw(_HEADER_BYTES)))
    body = draw(st.binary(max_size=4096)) if draw(st.booleans()) else b""
    return method.encode("latin-1"), path.encode("latin-1"), headers, body


def test_fuzzed_requests_get_clean_refusals(secure_devnet: Devnet, peer: dict,
                                            stranger: Account) -> None:
    server: PeerServer = peer["server"]
    before = cache_state(peer["cache"])
    log_before = server.log.stat().st_size
    signers = [account(secure_devnet), stranger]
    seen: dict[int | None, int] = {}

    def fuzz(focus: tuple[str, ...]) -> None:
        @settings(max_examples=FUZZ_EXAMPLES_EACH, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            method, path, headers, body = data.draw(requests(peer, signers, focus))
            status = raw_request(server.port, method, path, headers, body)
            seen[status] = seen.get(status, 0) + 1
            assert status is not None, "the peer server dropped the request without an answer"
            # a read: /status, or a segment this cache holds asked for by its owner; hypercorn
            # upper-cases the request method before the app sees it, so "get" is GET
            ok_read = status == 200 and method.strip().upper() in (b"GET", b"HEAD")
            # HTTP's own rule (RFC 9112 6.1): a transfer coding the server does not implement
            # is answered 501 by the HTTP layer (h11), before the request reaches the app
            coding = status == 501 and any(n.lower() == b"transfer-encoding" for n, _ in headers)
            # nothing else: the peer server has no 5xx by design (it never sheds load: no 503)
            assert ok_read or coding or 400 <= status < 500, (focus, status)

        one()

    # each part broken alone gets its share of examples (hypothesis draws unevenly from
    # one big mix), then requests with nothing broken for sure, then several parts at once
    for focus in [(part,) for part in PARTS] + [(), ("path", "fid", "index", "signature")]:
        fuzz(focus)
    print("statuses:", dict(sorted(seen.items(), key=lambda kv: str(kv[0]))))
    # the fuzz reached every check: bad requests, bad signatures, policy, missing segments
    assert {400, 401, 403, 404} <= seen.keys(), seen
    # the process survived and still serves; nothing it stores changed
    assert server.alive
    with httpx.Client(trust_env=False, timeout=60) as client:
        assert client.get(server.endpoint + "/status").status_code == 200
        fid = peer["fids"][0]
        response = client.get(server.endpoint + "/segment", headers={
            **sign_request(account(secure_devnet), "GET", fid, segment_tag(0)),
            "Fid": fid, "Index": "0"})
        assert response.status_code == 200 and len(response.content) == SEGMENT_SIZE
        assert hashlib.sha256(response.content).hexdigest() == peer["segment_hash"]
    assert cache_state(peer["cache"]) == before
    with open(server.log, "rb") as log:
        log.seek(log_before)
        tail = log.read().decode(errors="replace")
    assert "Traceback" not in tail and " ERROR " not in tail, tail[-3000:]


BAD_FIDS = [b"../../../../etc/passwd", b"..%2F..%2Fetc%2Fpasswd", b"/" + b"a" * 63,
            b"a" * 32 + b"\x00" + b"a" * 31, b"\xff\xfe" * 32, b"A" * 64, b"a" * 63, b"a" * 65,
            b"g" * 64, b"", b"..", b"f" * 10_000]
BAD_INDEXES = [b"-1", b"+0", b"1e3", b"0x0", b"\xd9\xa3", b"\xb2", b"10000000", b"", b"../0",
               b"9" * 4301, b"0" * 4400 + b"1", b"1" * 10_000]
BAD_PATHS = [b"/segment%00", b"/%0d%0aX-Injected:%20yes", b"/segment%0a", b"/%7f", b"/%20",
             b"/%09", b"/%e2%80%a8", b"/%ff", b"/segment/..%2f..%2fetc%2fpasswd"]


def test_hostile_values_are_refused_cleanly(secure_devnet: Devnet, peer: dict) -> None:
    """Values that once made the server answer 500: indexes past Python's 4300-digit
    limit for int(), and paths whose control characters went into the refusal's header."""
    server: PeerServer = peer["server"]
    before = cache_state(peer["cache"])
    log_before = server.log.stat().st_size
    owner = account(secure_devnet)
    fid = peer["fids"][0]

    def request(path: bytes, fid_value: bytes, index: bytes) -> int | None:
        headers = [(k.encode(), v.encode()) for k, v in
                   sign_request(owner, "GET", fid, segment_tag(0)).items()]
        return raw_request(server.port, b"GET", path, [(b"Fid", fid_value), (b"Index", index), *headers],
                           b"")

    for bad in BAD_FIDS:
        status = request(b"/segment", bad, b"0")
        # the longest is refused by the HTTP layer already (431 or 400), which is as good
        assert status == 400 or (status == 431 and len(bad) > 5000), (bad[:40], status)
    for bad in BAD_INDEXES:
        assert request(b"/segment", fid.encode(), bad) == 400, bad[:40]
    with httpx.Client(trust_env=False, timeout=60) as client:
        for bad in BAD_PATHS:
            response = client.get(server.endpoint + bad.decode())
            assert response.status_code == 404, (bad, response.status_code)
            # the reason header is plain text: nothing of the path can end it early
            assert response.headers[REASON_HEADER].isprintable(), response.headers
            assert "x-injected" not in response.headers
    assert server.alive
    assert cache_state(peer["cache"]) == before
    with open(server.log, "rb") as log:
        log.seek(log_before)
        tail = log.read().decode(errors="replace")
    assert "Traceback" not in tail and " ERROR " not in tail, tail[-3000:]


# ---- signed requests -------------------------------------------------------------------------


def ask(peer: dict, headers: dict[str, str], method: str = "GET", fid: str | None = None,
        index: int = 0) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=60) as client:
        return client.request(method, peer["server"].endpoint + "/segment",
                              headers={**headers, "Fid": fid or peer["fids"][0], "Index": str(index)})


def signed(who: Account, peer: dict, method: str = "GET", fid: str | None = None, index: int = 0,
           **kw: int) -> dict[str, str]:
    return sign_request(who, method, fid or peer["fids"][0], segment_tag(index), **kw)


def reason(response: httpx.Response) -> str:
    # HEAD answers have no body: the reason travels in a header too
    return response.headers.get(REASON_HEADER, "")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_fresh_signed_request_is_served_once(secure_devnet: Devnet, peer: dict, method: str) -> None:
    headers = signed(account(secure_devnet), peer, method)
    first = ask(peer, headers, method)
    assert first.status_code == 200, first.text
    if method == "GET":
        assert hashlib.sha256(first.content).hexdigest() == peer["segment_hash"]
    again = ask(peer, headers, method)
    assert again.status_code == 401 and "replayed" in reason(again)


def test_stale_and_future_requests_are_refused(secure_devnet: Devnet, peer: dict) -> None:
    now = time.time_ns() // 1_000_000
    for offset, word in ((-10 * 60_000, "stale"), (10 * 60_000, "future")):
        response = ask(peer, signed(account(secure_devnet), peer, timestamp_ms=now + offset))
        assert response.status_code == 401 and word in response.json()["msg"], response.text


def test_a_replay_is_refused_after_the_server_restarts(secure_devnet: Devnet, peer: dict) -> None:
    headers = signed(account(secure_devnet), peer)
    assert ask(peer, headers).status_code == 200
    server: PeerServer = peer["server"]
    server.stop()
    server.start()  # the same instance: its replay memory is in its workspace
    response = ask(peer, headers)
    assert response.status_code == 401 and "replayed" in response.json()["msg"]


def test_a_signature_is_bound_to_its_request(secure_devnet: Devnet, peer: dict) -> None:
    owner = account(secure_devnet)
    cached, uncached, _ = peer["fids"]
    cases = [
        (signed(owner, peer, "HEAD"), {}),  # signed for a HEAD, used for a GET
        (signed(owner, peer, fid=uncached), {}),  # for another file
        (signed(owner, peer, index=1), {}),  # for another segment
        (signed(owner, peer), {"fid": uncached}),  # used for another file
        (signed(owner, peer), {"index": 1}),  # used for another segment
        (sign_request(owner, "GET", cached, "0"), {}),  # a tag that is not segment-<index>
    ]
    for headers, override in cases:
        response = ask(peer, headers, **override)  # type: ignore[arg-type]
        assert response.status_code == 401, (headers["Message"], response.text)
        assert "signed for another request" in response.json()["msg"]


def test_one_account_cannot_read_for_another(secure_devnet: Devnet, peer: dict, stranger: Account,
                                             tmp_path: Path) -> None:
    owner = account(secure_devnet)
    # the stranger's own valid signature: it owns nothing here
    response = ask(peer, signed(stranger, peer))
    assert response.status_code == 403 and "not an owner" in response.json()["msg"], response.text
    # the stranger's signature under the owner's name: the signature does not verify
    forged = {**signed(stranger, peer), "Account": owner.address}
    response = ask(peer, forged)
    assert response.status_code == 401 and "signature" in response.json()["msg"]
    # the owner's signature with the stranger's name on it: same
    borrowed = {**signed(owner, peer), "Account": stranger.address}
    response = ask(peer, borrowed)
    assert response.status_code == 401 and "signature" in response.json()["msg"]
    # not a valid address at all
    response = ask(peer, {**signed(owner, peer), "Account": "5" + "x" * 47})
    assert response.status_code == 401

    # a gateway the owner authorized may read (the storage nodes' rule): positive control,
    # with an account of its own (the server remembers the stranger's refusal for 30 s)
    gateway = create_key_file(tmp_path / "gateway.json")
    chain = ledger(secure_devnet)
    try:
        chain.fund(gateway.address, 10**24)
        chain.authorize(gateway.address)
        try:
            response = ask(peer, signed(gateway, peer))
            assert response.status_code == 200, response.text
            assert hashlib.sha256(response.content).hexdigest() == peer["segment_hash"]
        finally:
            chain.cancel_authorize(gateway.address)
    finally:
        chain.close()
    assert ask(peer, signed(stranger, peer)).status_code == 403
