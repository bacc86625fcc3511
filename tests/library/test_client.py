"""deossfs as a library, through the public API only (`import deossfs`): put, get, ls,
stat and rm on a real devnet, every kind of source and destination, ranges and streams,
progress callbacks, buckets and territories, errors from the one taxonomy, and both the
blocking and the trio client. Nothing here imports from inside the package."""

from __future__ import annotations

import io
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import deossfs

from ..conftest import Devnet
from ..conftest import deossfs as cli

MIB = 1024 * 1024
#: two segments (encrypted files carry a little less than 32 MiB per segment)
BIG = os.urandom(40 * MIB)


@pytest.fixture(scope="module")
def client(devnet: Devnet) -> Iterator[deossfs.Client]:
    with deossfs.Client(config=devnet.dir) as opened:  # a devnet directory will do
        yield opened


@pytest.fixture
def bucket(client: deossfs.Client) -> str:
    name = f"lib-{uuid.uuid4().hex[:10]}"
    client.create_bucket(name)
    return name


def test_put_get_ls_stat_rm(client: deossfs.Client, bucket: str) -> None:
    stored = client.put(b"hello, CESS", f"{bucket}/greetings/hello.txt")
    assert isinstance(stored, deossfs.StoredObject)
    assert (stored.size, stored.segments, stored.encrypted) == (11, 1, True)
    assert client.get(f"{bucket}/greetings/hello.txt") == b"hello, CESS"

    listed = client.ls(bucket)
    assert [(o.key, o.fid, o.size) for o in listed] == [("greetings/hello.txt", stored.fid, 11)]
    assert [o.key for o in client.ls(f"{bucket}/greet")] == ["greetings/hello.txt"]
    assert client.ls(f"{bucket}/other") == []

    stat = client.stat(f"{bucket}/greetings/hello.txt")
    assert (stat.fid, stat.size, stat.stored_size, stat.state) == (stored.fid, 11, 11, "Active")
    assert stat.encrypted and stat.stage is None and stat.stage_params is None
    assert len(stat.segments) == 1 and len(stat.segments[0].fragments) == 12
    nodes = {f.node for f in stat.segments[0].fragments}
    assert len(nodes) == 12 and all(f.endpoint and f.endpoint.startswith("http://")
                                    for f in stat.segments[0].fragments)
    assert client.state(stored.fid) == deossfs.FileStatus(stored.fid, "stored", 11, 12)

    assert client.rm(f"{bucket}/greetings/hello.txt") == stored.fid
    assert client.ls(bucket) == []
    with pytest.raises(deossfs.NotFound, match="no object"):
        client.get(f"{bucket}/greetings/hello.txt")
    client.delete_bucket(bucket)
    assert bucket not in client.buckets()


def test_objects_of_zero_bytes(client: deossfs.Client, bucket: str, devnet: Devnet,
                               tmp_path: Path) -> None:
    """CESS stores no empty file: an object of zero bytes lives in the bucket's metadata
    object, as the mount and S3 keep it, and every call treats it as an object."""
    stored = client.put(b"", f"{bucket}/empty.txt")
    assert (stored.fid, stored.size, stored.segments) == ("", 0, 0)
    client.put(b"", f"{bucket}/e")  # a key the chain would hash, too
    assert [(o.key, o.fid, o.size) for o in client.ls(bucket)] == [("e", "", 0), ("empty.txt", "", 0)]
    assert client.get(f"{bucket}/empty.txt") == b""
    assert client.get(f"{bucket}/empty.txt", tmp_path / "out") == tmp_path / "out"
    assert (tmp_path / "out").read_bytes() == b""
    sink = io.BytesIO()
    assert client.get(f"{bucket}/empty.txt", sink) == 0

    async def pieces() -> list[bytes]:
        async with deossfs.AsyncClient(config=devnet.dir) as aclient, \
                aclient.stream(f"{bucket}/empty.txt") as stream:
            return [piece async for piece in stream]

    assert trio.run(pieces) == []
    stat = client.stat(f"{bucket}/empty.txt")
    assert (stat.fid, stat.size, stat.state, stat.segments) == ("", 0, "empty", ())
    # the CLI sees the same
    assert cli("get", "-q", f"{bucket}/e", str(tmp_path / "e"), config=devnet.config).returncode == 0
    assert (tmp_path / "e").read_bytes() == b""
    assert "state  empty" in cli("stat", f"{bucket}/empty.txt", config=devnet.config).stdout
    # bytes replace it, and zero bytes replace those (their file leaves the chain)
    full = client.put(b"now with bytes", f"{bucket}/empty.txt")
    assert client.get(f"{bucket}/empty.txt") == b"now with bytes"
    client.put(b"", f"{bucket}/empty.txt")
    assert client.get(f"{bucket}/empty.txt") == b""
    with pytest.raises(deossfs.NotFound):
        client.state(full.fid)
    assert client.rm(f"{bucket}/empty.txt") == "" and client.rm(f"{bucket}/e") == ""
    assert client.ls(bucket) == []
    with pytest.raises(deossfs.NotFound):
        client.get(f"{bucket}/empty.txt")
    client.delete_bucket(bucket)


def test_keys_the_chain_hashes(client: deossfs.Client, bucket: str, devnet: Devnet) -> None:
    """Keys under 3 or over 63 bytes are declared under a hash: put publishes them in the
    bucket's metadata object, so ls (here and in the CLI) shows them as they were given,
    and the bucket can still be deleted once they are gone."""
    deep = "deep/" + "d" * 70 + "/leaf.txt"
    short = client.put(b"short", f"{bucket}/k1")
    client.put(b"deep", f"{bucket}/{deep}")
    assert [o.key for o in client.ls(bucket)] == ["deep/" + "d" * 70 + "/leaf.txt", "k1"]
    assert [o.key for o in client.ls(f"{bucket}/deep/")] == [deep]
    assert [(o.fid, o.size) for o in client.ls(f"{bucket}/k")] == [(short.fid, 5)]
    assert client.get(f"{bucket}/{deep}") == b"deep"
    listed = cli("ls", bucket, config=devnet.config).stdout
    assert f" {deep}\n" in listed and " k1\n" in listed and "~k" not in listed, listed
    with pytest.raises(deossfs.DeossError, match="not empty"):
        client.delete_bucket(bucket)
    client.rm(f"{bucket}/k1")
    client.rm(f"{bucket}/{deep}")
    assert client.ls(bucket) == []
    # the metadata object left behind is deossfs' own: it goes with the bucket
    client.delete_bucket(bucket)
    assert bucket not in client.buckets()


def test_every_kind_of_source(client: deossfs.Client, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(BIG)
    with open(path, "rb") as handle:
        handle.seek(MIB)  # a file object is read from where it stands
        offset = client.put(handle, f"{bucket}/from-offset")
    sources = {
        "from-path": (str(path), BIG),
        "from-pathlike": (path, BIG),
        "from-bytesio": (io.BytesIO(BIG[:5 * MIB]), BIG[:5 * MIB]),
        "from-iterator": ((BIG[i:i + 3 * MIB] for i in range(0, len(BIG), 3 * MIB)), BIG),
        "from-memoryview": (memoryview(BIG)[:1000], BIG[:1000]),
    }
    fids = {name: client.put(source, f"{bucket}/{name}").fid for name, (source, _) in sources.items()}
    fids["from-offset"] = offset.fid
    assert offset.size == len(BIG) - MIB and offset.segments == 2
    for name, (_, expected) in sources.items():
        assert client.get(f"{bucket}/{name}") == expected, name
    assert client.get(f"{bucket}/from-offset") == BIG[MIB:]
    # the same bytes under one name, put again: the same FID (nothing new is stored)
    assert client.put(path, f"{bucket}/from-path").fid == fids["from-path"]


def test_a_pipe_is_spooled_and_stored(client: deossfs.Client, bucket: str) -> None:
    read_end, write_end = os.pipe()
    data = os.urandom(3 * MIB)

    def write() -> None:  # the other end of a source that cannot seek
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    with os.fdopen(read_end, "rb") as pipe:
        stored = client.put(pipe, f"{bucket}/piped")
    writer.join()
    assert stored.size == len(data) and client.get(f"{bucket}/piped") == data


def test_destinations_ranges_and_streams(client: deossfs.Client, bucket: str, tmp_path: Path) -> None:
    client.put(BIG, f"{bucket}/big")
    dest = tmp_path / "out" / "big.bin"
    dest.parent.mkdir()
    assert client.get(f"{bucket}/big", dest) == dest and dest.read_bytes() == BIG
    assert [p.name for p in dest.parent.iterdir()] == ["big.bin"]  # no partial file left

    sink = io.BytesIO()
    assert client.get(f"{bucket}/big", sink, start=10, end=20) == 10
    assert sink.getvalue() == BIG[10:20]
    boundary = 32 * MIB - 100  # across the first segment's end
    assert client.get(f"{bucket}/big", start=boundary, end=boundary + 300) == BIG[boundary:boundary + 300]
    assert client.get(f"{bucket}/big", start=len(BIG) - 5) == BIG[-5:]
    assert client.get(f"{bucket}/big", start=5, end=5) == b""
    ranged = tmp_path / "range.bin"
    client.get(f"{bucket}/big", ranged, start=MIB, end=2 * MIB)
    assert ranged.read_bytes() == BIG[MIB:2 * MIB]
    with pytest.raises(deossfs.InvalidInput, match="bad byte range"):
        client.get(f"{bucket}/big", start=20, end=10)

    with client.stream(f"{bucket}/big") as pieces:
        assert b"".join(pieces) == BIG
    with client.stream(f"{bucket}/big", start=boundary) as pieces:
        first = next(pieces)  # leaving early stops the fetching
    assert BIG[boundary:].startswith(first) and first
    with pytest.raises(deossfs.NotFound), client.stream(f"{bucket}/nothing"):
        pass


def test_progress_callbacks(client: deossfs.Client, bucket: str) -> None:
    calls: list[tuple[int, int]] = []
    client.put(BIG, f"{bucket}/progress", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(BIG), len(BIG))
    assert all(total == len(BIG) for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    got: list[tuple[int, int]] = []
    client.get(f"{bucket}/progress", io.BytesIO(), progress=lambda done, total: got.append((done, total)))
    assert got[-1] == (len(BIG), len(BIG)) and len(got) >= 2


def test_errors_are_the_taxonomy(client: deossfs.Client, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(deossfs.NotFound, match="bucket 'no-such-bucket' does not exist") as caught:
        client.put(b"x" * 10, "no-such-bucket/a.txt")
    assert "bucket create" in caught.value.hint and not caught.value.temporary
    with pytest.raises(deossfs.InvalidName):
        client.put(b"data", "no-slash")
    with pytest.raises(deossfs.InvalidName):
        client.create_bucket("Bad Bucket!")
    with pytest.raises(deossfs.InvalidInput, match="cannot store a int"):
        client.put(42, f"{bucket}/number")  # type: ignore[arg-type]
    with pytest.raises(deossfs.AlreadyExists):
        client.create_bucket(bucket)
    with pytest.raises(FileNotFoundError):
        client.put(tmp_path / "missing", f"{bucket}/a.txt")
    with pytest.raises(deossfs.NotFound):
        client.territory("no-such-territory")
    with pytest.raises(deossfs.ConfigError, match="without a deossfs.toml"):
        deossfs.Client(config=tmp_path)
    assert client.ls(bucket) == []  # nothing of the above was stored


def test_territory_buckets_and_the_account(client: deossfs.Client, bucket: str, devnet: Devnet) -> None:
    territory = client.territory()
    assert isinstance(territory, deossfs.Territory)
    assert territory.name == "default" and territory.state == deossfs.TerritoryState.ACTIVE
    assert territory.remaining_space > 0
    # other suites on the session devnet mint territories of their own
    assert "default" in [t.name for t in client.territories()]
    assert bucket in client.buckets()
    assert client.account == cli("key", "show", config=devnet.config).stdout.strip()


def test_what_the_library_stores_the_cli_reads_and_back(client: deossfs.Client, bucket: str,
                                                       devnet: Devnet, tmp_path: Path) -> None:
    client.put(BIG[:2 * MIB], f"{bucket}/shared.bin", encrypt=False)
    cli("get", f"{bucket}/shared.bin", str(tmp_path / "via-cli"), config=devnet.config)
    assert (tmp_path / "via-cli").read_bytes() == BIG[:2 * MIB]
    (tmp_path / "up").write_bytes(b"stored by the CLI")
    cli("put", str(tmp_path / "up"), f"{bucket}/from-cli", config=devnet.config)
    assert client.get(f"{bucket}/from-cli") == b"stored by the CLI"
    assert not client.stat(f"{bucket}/shared.bin").encrypted


def test_bytes_that_look_like_a_processing_envelope(client: deossfs.Client, bucket: str) -> None:
    """A file whose own bytes begin as a processed file's do is not mistaken for one."""
    lookalike = b"\x89DEOSSFS\x00STAGE\r\n" + b"\x00\x00\x00\x02{}" + os.urandom(1000)
    client.put(lookalike, f"{bucket}/lookalike")
    assert client.get(f"{bucket}/lookalike") == lookalike
    stat = client.stat(f"{bucket}/lookalike")
    assert stat.stage == "identity" and stat.size == len(lookalike) < stat.stored_size


def test_a_second_instance_with_its_own_workspace(client: deossfs.Client, bucket: str,
                                                  devnet: Devnet, tmp_path: Path) -> None:
    client.put(BIG[:MIB], f"{bucket}/seen")
    with deossfs.Client(config=devnet.config,
                        options=[f"workspace={tmp_path / 'ws'}", "cache.enabled=false"]) as other:
        assert other.get(f"{bucket}/seen") == BIG[:MIB]
        assert other.config.cache.enabled is False


async def test_the_trio_client(devnet: Devnet) -> None:
    async with deossfs.AsyncClient(config=devnet.config) as client:
        bucket = f"lib-{uuid.uuid4().hex[:10]}"
        await client.create_bucket(bucket)

        async def chunks():  # noqa: ANN202
            for i in range(0, 4 * MIB, MIB):
                await trio.sleep(0)
                yield BIG[i:i + MIB]

        stored = await client.put(chunks(), f"{bucket}/async")
        assert stored.size == 4 * MIB
        assert await client.get(f"{bucket}/async", start=MIB, end=MIB + 10) == BIG[MIB:MIB + 10]
        received = bytearray()
        async with client.stream(f"{bucket}/async") as pieces:
            async for piece in pieces:
                received += piece
        assert received == BIG[:4 * MIB]
        assert [o.key for o in await client.ls(bucket)] == ["async"]
        assert (await client.stat(f"{bucket}/async")).size == 4 * MIB
        await client.rm(f"{bucket}/async")
        with pytest.raises(deossfs.NotFound):
            await client.stat(f"{bucket}/async")
