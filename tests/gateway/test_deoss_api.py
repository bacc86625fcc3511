"""DeOSS's REST API through a real `deossfs gateway` process on the devnet, driven by
GatewayClient (signing as DeOSS clients do) and raw httpx where a test needs the wire."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from deossfs.chain.interface import SegmentSpec, UserBrief
from deossfs.errors import (
    AccessDenied,
    InvalidInput,
    NotFound,
    NotYetStored,
    RangeNotSatisfiable,
)
from deossfs.processing.layout import FRAGMENT_SIZE, SEGMENT_SIZE
from deossfs.processing.pipeline import SegmentCodec, bytes_reader

from ..harness import Mounted, config_for, ledger, nodes_by_account, wait_for
from .conftest import GatewayProcess, Gateways, new_user, random_bytes, raw_exchange

pytestmark = pytest.mark.slow


def test_round_trip_for_the_gateways_own_account(gateway: GatewayProcess, gateways: Gateways,
                                                 tmp_path: Path) -> None:
    data = random_bytes(SEGMENT_SIZE + 5_000_000)  # two segments
    with gateway.client(gateways.account) as client:
        assert client.version().startswith("deossfs v")
        fid = client.upload(data, "two-segments.bin", territory="default")
        assert client.download(fid) == data
        # ranges: inside segment 1, across the boundary, open-ended, suffix
        assert client.download(fid, byte_range=(SEGMENT_SIZE + 10, SEGMENT_SIZE + 99)) == \
            data[SEGMENT_SIZE + 10: SEGMENT_SIZE + 100]
        assert client.download(fid, byte_range=(SEGMENT_SIZE - 5, SEGMENT_SIZE + 4)) == \
            data[SEGMENT_SIZE - 5: SEGMENT_SIZE + 5]
        assert client.download(fid, byte_range=(len(data) - 7, None)) == data[-7:]
        dest = client.download(fid, tmp_path / "back.bin")
        assert Path(dest).read_bytes() == data

        meta = client.metadata(fid)
        assert meta["size"] == len(data) and meta["state"] == "stored"
        assert meta["owner"] == [{"user": gateways.account.address, "file_name": "two-segments.bin",
                                  "bucket_name": "deoss", "territory_name": "default"}]
        state = client.state(fid)
        assert state["state"] == "stored" and state["segments"] == 2
        location = client.location(fid)
        held = {location[f"{j} batch fragments"]["account"] for j in range(12)}
        assert len(held) == 12 and held <= set(nodes_by_account(gateways.devnet))
        assert [f["endpoint"] for f in location["segments"][1]] and len(location["segments"]) == 2
        listed = client.list_files(territory="default")
        assert {"territory": "default", "fid": fid, "size": 2 * 12 * FRAGMENT_SIZE} in listed
        client.delete(fid)
        with pytest.raises(NotFound):
            client.metadata(fid)


def test_a_suffix_range_and_if_range_on_the_wire(gateway: GatewayProcess, gateways: Gateways) -> None:
    data = random_bytes(100_000)
    with gateway.client(gateways.account) as client:
        fid = client.put_object("ranges.bin", data, encrypt=False)
        with httpx.Client(base_url=gateway.url) as http:
            answer = http.get(f"/file/download/{fid}", headers={"Range": "bytes=-10"})
            assert answer.status_code == 206 and answer.content == data[-10:]
            assert answer.headers["content-range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
            # If-Range with the current ETag: the range; with another: the whole file
            etag = answer.headers["etag"]
            assert http.get(f"/file/download/{fid}", headers={"Range": "bytes=0-9", "If-Range": etag}
                            ).status_code == 206
            whole = http.get(f"/file/download/{fid}", headers={"Range": "bytes=0-9", "If-Range": '"x"'})
            assert whole.status_code == 200 and whole.content == data
            beyond = http.get(f"/file/download/{fid}", headers={"Range": f"bytes={len(data)}-"})
            assert beyond.status_code == 416 and beyond.json()["code"] == 416
            # DeOSS's own range form on /file/open: a Content-Range request header
            legacy = http.get(f"/file/open/{fid}", headers={"Content-Range": "bytes=5-9"})
            assert legacy.status_code == 206 and legacy.content == data[5:10]
            head = http.head(f"/file/download/{fid}")
            assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        with pytest.raises(RangeNotSatisfiable):
            client.download(fid, byte_range=(len(data) + 5, None))
        client.delete(fid)


def test_a_plain_file_keeps_cess_layout_and_anyone_may_read_it(gateway: GatewayProcess,
                                                                gateways: Gateways) -> None:
    data = random_bytes(3_000_000)
    with gateway.client(gateways.account) as client:
        fid = client.put_object("report.txt", data, encrypt=False)
        # the FID any CESS tool computes for these bytes: no encryption, no header
        assert fid == SegmentCodec(None).plan(bytes_reader(data), len(data)).fid
        with httpx.Client(base_url=gateway.url) as http:
            opened = http.get(f"/file/open/{fid}")
            assert opened.status_code == 200 and opened.content == data
            assert opened.headers["content-type"].startswith("text/plain")
            assert opened.headers["content-disposition"].startswith('inline; filename="report.txt"')
            assert http.get(f"/file/download/{fid}").content == data
        client.delete(fid)


def test_encrypted_files_are_their_owners_only(gateway: GatewayProcess, gateways: Gateways) -> None:
    data = random_bytes(200_000)
    stranger = new_user(gateways.devnet, authorize=gateways.account.address)
    with gateway.client(gateways.account) as owner, gateway.client(stranger) as other:
        fid = owner.upload(data, "secret.bin")
        with pytest.raises(AccessDenied, match="encrypted"):
            owner.download(fid, signed=False)
        with pytest.raises(AccessDenied, match="encrypted"):
            other.download(fid)
        fragment_hash = owner.location(fid)["segments"][0][0]["hash"]
        stored = owner.fragment(fid, fragment_hash)  # as the nodes hold it: ciphertext
        assert len(stored) == FRAGMENT_SIZE and hashlib.sha256(stored).hexdigest() == fragment_hash
        assert data[:4096] not in stored
        with pytest.raises(AccessDenied, match="does not own"):
            other.fragment(fid, fragment_hash)
        with pytest.raises(InvalidInput, match="fragment"):
            other.fragment(fid, "zz")
        owner.delete(fid)


def test_accounts_that_authorized_the_gateway_own_their_files(gateway: GatewayProcess,
                                                              gateways: Gateways) -> None:
    alice = new_user(gateways.devnet, authorize=gateways.account.address)
    data = random_bytes(1_500_000)
    with gateway.client(alice) as client:
        fid = client.upload(data, "alice.bin", territory="default")
        assert client.download(fid) == data
        chain = ledger(gateways.devnet)
        try:
            info = chain.file(fid)
            assert info is not None
            assert [(b.user, b.file_name, b.bucket_name, b.territory_name) for b in info.owners] == [
                (alice.address, "alice.bin", "deoss", "default")]
            # charged to alice's territory, in alice's bucket
            assert chain.territory(alice.address, "default").used_space > 0
            assert fid in chain.bucket(alice.address, "deoss").object_list
            gateway_bucket = chain.bucket(gateways.account.address, "deoss")
            assert gateway_bucket is None or fid not in gateway_bucket.object_list
        finally:
            chain.close()
        assert [f["fid"] for f in client.list_files()] == [fid]
        client.create_bucket("alices-photos")
        assert "alices-photos" in client.buckets()
        fid2 = client.upload(b"x" * 5000, "in-bucket.bin", bucket="alices-photos")
        assert client.bucket("alices-photos")["objects"] == [fid2]
        client.delete(fid2)
        client.delete_bucket("alices-photos")
        assert client.territory("default")["state"] == "Active"
        client.delete(fid)


def test_an_account_that_did_not_authorize_is_refused_with_the_way_out(
        gateway: GatewayProcess, gateways: Gateways) -> None:
    carol = new_user(gateways.devnet, authorize=None)
    with gateway.client(carol) as client:
        with pytest.raises(AccessDenied, match=f"deossfs authorize {gateways.account.address}"):
            client.upload(b"abc" * 1000, "nope.bin")
        chain = ledger(gateways.devnet, carol)
        try:
            chain.authorize(gateways.account.address)
        finally:
            chain.close()
        # the gateway re-reads authorizations it found missing
        wait_for(lambda: _uploads(client), 40, "the new authorization to be seen", interval=1)


def _uploads(client: object) -> bool:
    try:
        client.delete(client.upload(b"abc" * 1000, "now-yes.bin"))  # type: ignore[attr-defined]
    except AccessDenied:
        return False
    return True


def test_cipher_encrypted_files_need_their_cipher(gateway: GatewayProcess, gateways: Gateways) -> None:
    data = random_bytes(300_000)
    with gateway.client(gateways.account) as client:
        fid = client.upload(data, "ciphered.bin", cipher="my secret words")
        with pytest.raises(AccessDenied, match="another key"):
            client.download(fid)
        assert client.download(fid, cipher="my secret words") == data
        with pytest.raises(AccessDenied):
            client.download(fid, cipher="wrong words")
        client.delete(fid)
    assert "my secret words" not in gateway.log()


def test_the_mount_and_the_gateway_of_one_account_share_files(
        gateway: GatewayProcess, gateways: Gateways, tmp_path: Path) -> None:
    net = gateways.devnet
    net.cli("bucket", "create", "shared-gw")
    # CLI -> gateway
    src = tmp_path / "from-cli.bin"
    src.write_bytes(random_bytes(700_000))
    net.cli("put", str(src), "shared-gw/from-cli.bin")
    fid = json.loads(net.cli("stat", "--json", "shared-gw/from-cli.bin").stdout)["fid"]
    with gateway.client(gateways.account) as client:
        assert client.download(fid) == src.read_bytes()
        # gateway -> CLI
        data = random_bytes(900_000)
        client.upload(data, "from-gateway.bin", bucket="shared-gw")
    net.cli("get", "shared-gw/from-gateway.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data
    net.cli("rm", "shared-gw/from-cli.bin")
    net.cli("rm", "shared-gw/from-gateway.bin")
    net.cli("bucket", "rm", "shared-gw")


def test_several_files_in_one_request(gateway: GatewayProcess, gateways: Gateways) -> None:
    with gateway.client(gateways.account) as client:
        results = client.upload_files([("one.txt", b"1" * 4000), ("../escape", b"2" * 4000),
                                       ("two.txt", b"3" * 4000)])
        assert [r["result"] for r in results] == ["success", "failed", "success"]
        assert "'..'" in results[1]["reason"] and results[1]["fid"] == ""
        for result in (results[0], results[2]):
            assert client.download(result["fid"]) == (b"1" * 4000 if result["name"] == "one.txt"
                                                      else b"3" * 4000)
            client.delete(result["fid"])


def test_a_resumable_upload_continues_where_it_stopped(gateway: GatewayProcess, gateways: Gateways) -> None:
    data = random_bytes(3 * 1024 * 1024 + 17)
    total = len(data)
    with gateway.client(gateways.account) as client, httpx.Client(base_url=gateway.url) as http:
        def chunk(first: int, last: int, body: bytes | None = None) -> httpx.Response:
            return http.put("/resume/resumed.bin", content=data[first:last + 1] if body is None else body,
                            headers={**client.sign(), "Content-Range": f"bytes {first}-{last}/{total}"})

        first = chunk(0, 1_000_000 - 1)
        assert first.status_code == 308 and first.headers["range"] == "bytes=0-999999"
        assert first.headers["content-range"] == f"bytes 0-999999/{total}"
        # a gap is refused, saying where to go on
        gap = chunk(2_000_000, 2_500_000)
        assert gap.status_code == 400 and "send from byte 1000000" in gap.json()["msg"]
        # a chunk sent again lands where it belongs
        assert chunk(500_000, 1_499_999).status_code == 308
        # the gateway restarts: what it has survives
        gateway.stop()
        gateway.start()
        http.base_url = httpx.URL(gateway.url)
        client.url = gateway.url
        client._http.base_url = httpx.URL(gateway.url)
        fid = client.resumable_upload("resumed.bin", data, chunk_size=1_000_000)
        assert client.download(fid) == data
        client.delete(fid)


def test_a_file_still_being_stored_is_not_served(gateway: GatewayProcess, gateways: Gateways) -> None:
    """A storage order declared but not yet stored (no fragments sent): 409, with the way
    to follow it."""
    data = random_bytes(10_000)
    plan = SegmentCodec(None).plan(bytes_reader(data), len(data))
    chain = ledger(gateways.devnet)
    try:
        chain.upload_declaration(plan.fid, [SegmentSpec(s.hash, s.fragment_hashes) for s in plan.segments],
                                 UserBrief(gateways.account.address, "pending.bin", "deoss", "default"),
                                 len(data))
    finally:
        chain.close()
    with gateway.client(gateways.account) as client:
        with pytest.raises(NotYetStored, match="state"):
            client.download(plan.fid)
        assert client.state(plan.fid)["state"] == "uploading"
        assert client.metadata(plan.fid)["state"] == "uploading"


def test_bad_requests_get_a_status_and_a_reason(gateway: GatewayProcess, gateways: Gateways) -> None:
    me = gateways.account
    with gateway.client(me) as client, httpx.Client(base_url=gateway.url) as http:
        def put_object(name: str, headers: dict, body: bytes = b"data" * 100) -> httpx.Response:
            return http.put(f"/object/{name}", headers=headers, content=body)

        # signatures: missing, malformed, wrong, not an account
        assert put_object("a.bin", {}).status_code == 401
        bad = {**client.sign(), "Signature": "0x1234"}
        assert put_object("a.bin", bad).status_code == 401
        signed = client.sign()
        wrong = {**signed, "Message": signed["Message"] + "0"}
        assert put_object("a.bin", wrong).status_code == 401
        assert put_object("a.bin", {**client.sign(), "Account": "not-an-account"}).status_code == 401
        # stale, future and replayed messages
        stale = client.sign(f"{int(time.time()) - 3600}:ab12")
        assert "stale" in put_object("a.bin", stale).json()["msg"]
        future = client.sign(f"{int(time.time()) + 3600}:ab12")
        assert put_object("a.bin", future).status_code == 401
        before = client.list_files()
        once = client.sign()
        stored = put_object("replayed.bin", once)
        assert stored.status_code == 200
        replay = put_object("replayed.bin", once)
        assert replay.status_code == 401 and "used already" in replay.json()["msg"]
        client.delete(stored.json()["data"]["fid"])
        # names: path tricks and empty components, bad buckets and territories
        answer = put_object("%2e%2e", client.sign())
        assert answer.status_code == 400, answer.text
        for name in ("../../etc/passwd", "a//b", "/leading", "..", "trailing/"):
            answer = http.put("/file", headers={**client.sign(), "Filename": name},
                              files={"file": ("x", b"abc")})
            assert answer.status_code == 400, (name, answer.text)
        assert put_object("b.bin", {**client.sign(), "Bucket": "Bad_Bucket"}).status_code == 400
        assert put_object("b.bin", {**client.sign(), "Bucket": "nosuchbucket"}).status_code == 404
        assert put_object("b.bin", {**client.sign(), "Territory": "nosuch"}).status_code == 404
        # FIDs, routes, methods
        assert http.get("/file/download/xyz").status_code == 400
        assert http.get("/file/download/" + "0" * 64).status_code == 404
        assert http.get("/file/no/such/route").json()["code"] == 404
        # a path outside DeOSS's is S3's (a bucket and key): unsigned, S3's AccessDenied
        outside = http.get("/no/such/route")
        assert outside.status_code == 403 and b"<Code>AccessDenied</Code>" in outside.content
        assert http.post("/file").status_code == 405
        # a body that is not multipart, or is cut short
        assert http.put("/file", headers=client.sign(), content=b"raw").status_code == 400
        truncated = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.bin\"\r\n"
                     b"\r\n" + b"a" * 1000)
        answer = http.put("/file", headers={**client.sign(), "Content-Type": "multipart/form-data; boundary=XyZ"},
                          content=truncated)
        assert answer.status_code == 400 and "truncated" in answer.json()["msg"]
        # a declared length beyond the territory's free space, refused before the body
        head = "".join(f"{k}: {v}\r\n" for k, v in client.sign().items())
        answer = raw_exchange(gateway.url, (f"PUT /object/huge.bin HTTP/1.1\r\nHost: x\r\n{head}"
                                            f"Content-Length: {2**50}\r\n\r\n").encode() + b"x" * 1000)
        assert answer.startswith(b"HTTP/1.1 413") and b"free" in answer
        # the list needs an account
        assert http.get("/file/list").status_code == 400
        assert http.get("/file/list", params={"Account": "nope"}).status_code == 401
        # nothing above was stored, and the gateway is still up
        # nothing stored (earlier tests' objects may still be going: S3 deletes run in the
        # background, so the account's list can only shrink)
        after = client.list_files()
        assert all(item in before for item in after), [i for i in after if i not in before]
        assert gateway.alive
    staging = Path(gateway.dir) / "workspace" / "gateway" / "staging"
    wait_for(lambda: not any(staging.iterdir()), 30, "the staging area to be empty")


@pytest.mark.mount
def test_a_mount_and_the_gateway_read_each_others_files(gateway: GatewayProcess, gateways: Gateways,
                                                        tmp_path: Path) -> None:
    """The same account's mount and gateway: a file copied into the mount is downloaded
    through the gateway by its FID, and one uploaded through the gateway is read in the
    mount, both encrypted with the account's key."""
    import os
    import shutil

    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is absent")
    gateways.devnet.cli("bucket", "create", "mount-gw")
    mounted = Mounted(config_for(gateways.devnet, tmp_path / "machine"), tmp_path / "mnt")
    try:
        mounted.mount()
        written = random_bytes(1_200_000)
        (tmp_path / "w.bin").write_bytes(written)
        shutil.copyfile(tmp_path / "w.bin", mounted.path("mount-gw", "written-in-mount.bin"))
        mounted.wait_durable()
        fid = os.getxattr(mounted.path("mount-gw", "written-in-mount.bin"), "user.deossfs.fid").decode()
        with gateway.client(gateways.account) as client:
            assert client.download(fid) == written
            uploaded = random_bytes(800_000)
            client.upload(uploaded, "uploaded-via-gateway.bin", bucket="mount-gw")
        target = mounted.path("mount-gw", "uploaded-via-gateway.bin")
        wait_for(target.exists, 30, "the gateway's upload to appear in the mount")
        assert target.read_bytes() == uploaded
        target.unlink()
        mounted.path("mount-gw", "written-in-mount.bin").unlink()
        mounted.wait_durable()
    finally:
        mounted.cleanup()


def test_a_name_uploaded_twice_is_its_later_upload_everywhere(gateway: GatewayProcess, gateways: Gateways,
                                                              s3, tmp_path: Path) -> None:  # noqa: ANN001
    """DeOSS keeps every upload of a name (each its own FID). S3, the CLI and the mount
    show one object under the name: the upload stored last, the same one at every
    listing (they took turns before, one per listing, the CLI's get took the first and
    its ls showed both)."""
    import os

    net = gateways.devnet
    net.cli("bucket", "create", "twice")
    first, second = random_bytes(300_000), random_bytes(400_000)
    with gateway.client(gateways.account) as client:
        fids = []
        for data in (first, second):
            fids.append(client.upload(data, "report.bin", bucket="twice"))
            wait_for(lambda f=fids[-1]: client.state(f)["state"] == "stored", 60, "the upload to be stored")
        assert client.download(fids[0]) == first  # both are kept
    for _ in range(3):  # a listing each (the catalog refreshes after 2 s)
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="twice")["Contents"]] == ["report.bin"]
        assert s3.get_object(Bucket="twice", Key="report.bin")["Body"].read() == second
        time.sleep(2.1)
    net.cli("get", "twice/report.bin", str(tmp_path / "cli.bin"))
    assert (tmp_path / "cli.bin").read_bytes() == second
    listed = net.cli("ls", "twice").stdout.splitlines()  # once, the later upload
    assert [line.split() for line in listed] == [["400000", f"{fids[1][:16]}…", "report.bin"]]
    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is absent")
    mounted = Mounted(config_for(net, tmp_path / "machine"), tmp_path / "mnt")
    try:
        mounted.mount()
        target = mounted.path("twice", "report.bin")
        for _ in range(3):  # the mount lists a bucket again after 2 s
            assert os.getxattr(target, "user.deossfs.fid").decode() == fids[1]
            assert target.read_bytes() == second
            time.sleep(2.1)
            os.listdir(mounted.path("twice"))
    finally:
        mounted.cleanup()
    with gateway.client(gateways.account) as client:
        for fid in fids:
            client.delete(fid)
