"""Desktop file managers on a real mount, driven through GIO's `gio` tool.

Nautilus, Nemo and Thunar reach files through GLib's GIO; `gio` runs the same GIO code
(g_file_copy, g_file_move, g_file_trash, g_file_query_info) as a subprocess. It runs
with GIO_USE_VFS=local (what GIO does for file:// paths anyway, minus any D-Bus) and
LC_ALL=C (its messages are asserted on).

What the tests pin down (docs/mounting.md, "Desktop file managers"):
- browse, copy in and out byte for byte, `gio copy -p` keeps mode and mtime, rename and
  move within a bucket keep the FID (no re-upload), move across buckets copies and
  deletes (EXDEV fallback, xattrs kept), remove, save;
- the trash (the Delete key): `gio trash` of a file or a folder, `gio list trash://`,
  `gio trash --restore` and `--empty`, through GVfs's trash backend in a D-Bus session
  of the test's own (docs/semantics.md, "The trash");
- the names file managers probe at the root and in folders (`.hidden`, `.Trash`,
  `autorun.inf`, ...) are a quick ENOENT.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import diskcache
import pytest
import tomli_w

from deossfs.fs.db import ROOT_INODE
from deossfs.fs.operations import Operations
from deossfs.processing.encryption import PLAINTEXT_CAPACITY

from ..conftest import Devnet
from .conftest import NEEDS_MOUNT, bucket_name, wait_for
from .test_mount import Mounted, fid, machine, sha

GIO = shutil.which("gio")
#: GVfs's trash backend, which `trash://` (`gio list trash://`, `gio trash --restore`) needs
GVFSD_TRASH = "/usr/libexec/gvfsd-trash"
#: a Python with GObject introspection, to read GIO's error code (python3-gi; optional)
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [
    *NEEDS_MOUNT,
    pytest.mark.skipif(GIO is None, reason="the gio tool is missing (apt-get install libglib2.0-bin)"),
]

#: probes at most this long: a file manager does them for every folder it shows
QUICK_SECONDS = 0.5


GIO_ENV = {"GIO_USE_VFS": "local", "GIO_USE_VOLUME_MONITOR": "unix", "LC_ALL": "C"}


def gio(*args: str | Path, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([GIO or "gio", *map(str, args)], capture_output=True, text=True,
                            input=stdin, env=dict(os.environ, **GIO_ENV), timeout=120)
    if check:
        assert result.returncode == 0, f"gio {' '.join(map(str, args))}: {result.stderr}"
    return result


def listing(directory: Path) -> dict[str, tuple[int, str, str]]:
    """`gio list -a '*'` (every attribute, as a file manager asks): name -> (size, type, attrs)."""
    out: dict[str, tuple[int, str, str]] = {}
    for line in gio("list", "-a", "*", directory).stdout.splitlines():
        name, size, kind, attrs = line.split("\t", 3)
        out[name] = (int(size), kind, attrs)
    return out


@pytest.fixture
def desk(devnet: Devnet, tmp_path: Path) -> Iterator[Callable[..., Mounted]]:
    """desk(machine, own_cache=False) -> a Mounted at a fresh /tmp/desk-* mount point.

    own_cache: a segment cache of its own in the workspace (not the devnet's shared one),
    so that what this mount fetched can be told (`cached_segments`)."""
    made: list[Mounted] = []

    def make(name: str, own_cache: bool = False) -> Mounted:
        config = machine(devnet, tmp_path, name)
        if own_cache:
            data = tomllib.loads(config.read_text())
            data.get("cache", {}).pop("dir", None)  # default: <workspace>/cache
            config.write_text(tomli_w.dumps(data))
        point = Path(tempfile.mkdtemp(prefix="desk-", dir="/tmp"))
        mounted = Mounted(config, point)
        made.append(mounted)
        return mounted.mount()

    yield make
    for mounted in made:
        mounted.cleanup()
        with suppress(OSError):  # only once unmounted: never delete through a mount
            mounted.mountpoint.rmdir()


def cached_segments(m: Mounted, file_id: str) -> set[int]:
    """Indexes of the segments of `file_id` in the mount's own segment cache."""
    with diskcache.Cache(str(m.config.parent / "workspace" / "cache" / "segments")) as cache:
        return {int(str(key).rsplit("/", 1)[1]) for key in cache.iterkeys()
                if str(key).startswith(f"{file_id}/")}


def buckets_on_chain(m: Mounted) -> set[str]:
    return {line.rstrip("/") for line in m.cli("ls").stdout.splitlines() if line.strip()}


def test_gio_browse_copy_in_and_out(tmp_path: Path, desk: Callable[..., Mounted]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"empty.txt": 0, "one.bin": 1, "page.bin": 4096, "odd.bin": 3_000_003}
    for name, size in sizes.items():
        (src / name).write_bytes(os.urandom(size))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "run.sh", 0o755)
    os.chmod(src / "odd.bin", 0o640)
    old = 1_600_000_000_123_456_789
    for path in src.iterdir():
        os.utime(path, ns=(old, old))
    names = sorted(p.name for p in src.iterdir())
    big = tmp_path / "big" / "two-segments.bin"
    big.parent.mkdir()
    big.write_bytes(os.urandom(PLAINTEXT_CAPACITY + 5000))

    a = desk("a")
    bucket = bucket_name("desk")
    gio("mkdir", a.path(bucket))
    gio("mkdir", "-p", a.path(bucket, "plain", "deeper"))
    gio("mkdir", a.path(bucket, "kept"))
    # a file manager's paste: g_file_copy per file, with progress
    gio("copy", "--progress", *sorted(src.iterdir()), a.path(bucket, "plain"))
    # and with "preserve" (-p: G_FILE_COPY_ALL_METADATA)
    gio("copy", "-p", *sorted(src.iterdir()), a.path(bucket, "kept"))
    gio("copy", "--progress", big, a.path(bucket, "plain", "deeper"))
    for name in names:
        for folder in ("plain", "kept"):
            assert sha(a.path(bucket, folder, name)) == sha(src / name), (folder, name)
        st, kept = (src / name).stat(), a.path(bucket, "kept", name).stat()
        assert kept.st_mode == st.st_mode, name
        # GLib before 2.74 sets times in microseconds
        assert kept.st_mtime_ns // 1000 == st.st_mtime_ns // 1000, name

    # browsing: the root lists buckets as folders, a bucket its files with their sizes
    root = listing(a.mountpoint)
    assert root[bucket][1] == "(directory)"
    files = listing(a.path(bucket, "kept"))
    assert {n: (s, k) for n, (s, k, _) in files.items()} == \
        {n: ((src / n).stat().st_size, "(regular)") for n in names}
    assert "unix::mode=33261" in files["run.sh"][2]  # 0o100755
    info = gio("info", a.path(bucket, "kept", "odd.bin")).stdout
    assert "type: regular" in info and "size:  3000003" in info, info
    assert gio("info", "-a", "thumbnail::*", a.path(bucket, "kept", "odd.bin")).returncode == 0
    fs_info = gio("info", "-f", a.path(bucket)).stdout
    assert "filesystem::type: fuse" in fs_info, fs_info
    # `gio save` (an editor saving): a new file, then a replace of it
    for text in ("first version\n", "second, longer version\n"):
        gio("save", a.path(bucket, "saved.txt"), stdin=text)
        assert a.path(bucket, "saved.txt").read_text() == text
    a.wait_durable()
    a.umount()

    # another machine browses and copies everything out, read from the storage nodes
    b = desk("b", own_cache=True)
    assert set(listing(b.path(bucket, "kept"))) == set(names)
    # browsing sniffs the type of a .bin from its first bytes: that fetches the first
    # segment, and no read-ahead of the next ones (a first read is no sequential reader)
    deeper = b.path(bucket, "plain", "deeper")
    assert listing(deeper)[big.name][0] == big.stat().st_size
    big_fid = fid(deeper / big.name)
    wait_for(lambda: cached_segments(b, big_fid), 10, "the sniffed segment in the cache")
    time.sleep(1.5)  # a read-ahead would have fetched by now
    assert cached_segments(b, big_fid) == {0}
    out = tmp_path / "out"
    out.mkdir()
    gio("copy", "-p", *[b.path(bucket, "kept", n) for n in names], deeper / big.name, out)
    assert sha(out / big.name) == sha(big)
    for name in names:
        assert sha(out / name) == sha(src / name), name
        assert (out / name).stat().st_mtime_ns // 1000 == (src / name).stat().st_mtime_ns // 1000
    assert b.path(bucket, "saved.txt").read_text() == "second, longer version\n"

    # replacing a stored file (paste, "Replace"): GIO opens the old file for writing only
    # to look at it, then writes a temporary file and renames it over; the open must not
    # download the old content (a stored file is fetched at its first write)
    staging = b.config.parent / "workspace" / "staging"
    target = b.path(bucket, "plain", "odd.bin")
    fd = os.open(target, os.O_RDWR)
    try:
        ino = os.fstat(fd).st_ino
        assert not (staging / str(ino)).exists(), "open for writing fetched the stored file"
        os.pwrite(fd, b"X", 5)
        assert (staging / str(ino)).stat().st_size == sizes["odd.bin"]
    finally:
        os.close(fd)
    model = bytearray((src / "odd.bin").read_bytes())
    model[5:6] = b"X"
    assert target.read_bytes() == model
    gio("copy", src / "page.bin", b.path(bucket, "plain", "one.bin"))  # overwrites (as Replace)
    assert sha(b.path(bucket, "plain", "one.bin")) == sha(src / "page.bin")
    b.wait_durable()
    b.umount()


def test_gio_rename_move_remove(tmp_path: Path, desk: Callable[..., Mounted]) -> None:
    m = desk("a")
    bucket, other = bucket_name("desk"), bucket_name("desk")
    gio("mkdir", m.path(bucket))
    gio("mkdir", m.path(other))
    data = os.urandom(400_000)
    m.path(bucket, "photo.bin").write_bytes(data)
    os.chmod(m.path(bucket, "photo.bin"), 0o600)
    os.setxattr(m.path(bucket, "photo.bin"), "user.tag", b"holiday")
    m.path(bucket, "dir", "sub").mkdir(parents=True)
    m.path(bucket, "dir", "sub", "inner.txt").write_text("inside")
    m.wait_durable()
    first = fid(m.path(bucket, "photo.bin"))

    # rename (F2) and move within a bucket: database only, no re-upload
    assert "Rename successful" in gio("rename", m.path(bucket, "photo.bin"), "renamed.bin").stdout
    gio("move", m.path(bucket, "renamed.bin"), m.path(bucket, "dir"))
    gio("move", m.path(bucket, "dir"), m.path(bucket, "moved"))
    assert m.pending() == []
    moved = m.path(bucket, "moved", "renamed.bin")
    assert fid(moved) == first and moved.read_bytes() == data
    assert sorted(os.listdir(m.path(bucket))) == ["moved"]
    mtime = moved.stat().st_mtime_ns

    # across buckets: EXDEV, and GIO copies (keeping metadata and xattrs) and deletes
    gio("move", moved, m.path(other))
    across = m.path(other, "renamed.bin")
    assert across.read_bytes() == data and not moved.exists()
    assert across.stat().st_mode & 0o7777 == 0o600
    assert across.stat().st_mtime_ns // 1000 == mtime // 1000
    assert os.getxattr(across, "user.tag") == b"holiday"
    m.wait_durable()
    assert fid(across) != first
    wait_for(lambda: first not in m.cli("ls", bucket).stdout, 30, "the old object to leave the chain")
    # a folder across buckets: `gio move` does not recurse (a file manager then copies the
    # tree itself); it fails without touching the source
    result = gio("move", m.path(bucket, "moved"), m.path(other), check=False)
    assert result.returncode != 0
    assert m.path(bucket, "moved", "sub", "inner.txt").read_text() == "inside"
    assert not m.path(other, "moved").exists()
    # a bucket cannot be renamed on CESS (EXDEV); it stays as it was
    result = gio("rename", m.path(other), f"{other}-new", check=False)
    assert result.returncode != 0 and "cross-device" in result.stderr, result.stderr
    assert across.read_bytes() == data and not m.path(f"{other}-new").exists()
    # a folder name that is no bucket name, at the root
    result = gio("mkdir", m.path("Untitled Folder"), check=False)
    assert result.returncode != 0
    assert "Untitled Folder" not in os.listdir(m.mountpoint)

    # delete: a non-empty folder refuses, files and empty folders go, then the bucket
    result = gio("remove", m.path(bucket, "moved"), check=False)
    assert result.returncode != 0 and "not empty" in result.stderr.lower(), result.stderr
    gio("remove", m.path(bucket, "moved", "sub", "inner.txt"), m.path(bucket, "moved", "sub"),
        m.path(bucket, "moved"))
    assert os.listdir(m.path(bucket)) == []
    gio("remove", across)
    assert os.listdir(m.path(other)) == []
    m.wait_durable()
    gio("remove", m.path(bucket))
    assert bucket not in os.listdir(m.mountpoint)
    assert bucket not in buckets_on_chain(m)
    m.umount()


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """A D-Bus session of its own, where GIO starts gvfsd and its trash backend (what
    `trash://` is), as in a desktop session; yields gio(*args) run in it. Its own home
    trash (XDG_DATA_HOME), so only this test's items are listed."""
    if not Path(GVFSD_TRASH).exists() or shutil.which("dbus-daemon") is None:
        pytest.skip("gvfs's trash backend or dbus-daemon is missing (apt-get install gvfs dbus)")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    daemon = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert daemon.stdout is not None
    address = daemon.stdout.readline().strip()
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address, XDG_RUNTIME_DIR=str(runtime),
               XDG_DATA_HOME=str(tmp_path / "data"), GIO_USE_VOLUME_MONITOR="unix", LC_ALL="C")
    env.pop("GIO_USE_VFS", None)

    def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([GIO or "gio", *map(str, args)], capture_output=True, text=True,
                                env=env, timeout=120)
        if check:
            assert result.returncode == 0, f"gio {' '.join(map(str, args))}: {result.stderr}"
        return result

    try:
        yield run
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        # the gvfs daemons the bus started for this session (found by its address)
        for proc in Path("/proc").iterdir():
            with suppress(OSError):
                if proc.name.isdigit() and address.encode() in (proc / "environ").read_bytes():
                    os.kill(int(proc.name), 15)


def trashed(gio_in_session: Callable[..., subprocess.CompletedProcess]) -> dict[str, str]:
    """`gio trash --list`: original path -> trash:// URI of each item."""
    out = {}
    for line in gio_in_session("trash", "--list").stdout.splitlines():
        uri, _, original = line.partition("\t")
        out[original] = uri
    return out


def test_gio_trash_list_restore_empty(tmp_path: Path, desk: Callable[..., Mounted],
                                      session_bus: Callable[..., subprocess.CompletedProcess]) -> None:
    """The Delete key of a file manager, then its trash folder: `gio trash` moves a file
    and a folder to `.Trash-$UID` without uploading anything, `gio list trash://` shows
    them, `gio trash --restore` brings one back with its name, times and xattrs, and
    emptying the trash deletes the other from the chain. A bucket cannot be trashed."""
    m = desk("a")
    bucket = bucket_name("desk")
    gio("mkdir", m.path(bucket))
    m.path(bucket, "folder").mkdir()
    m.path(bucket, "folder", "doc.txt").write_text("the folder's document")
    note = m.path(bucket, "note.txt")
    note.write_text("a note")
    os.chmod(note, 0o640)
    os.setxattr(note, "user.tag", b"blue")
    os.utime(note, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    m.wait_durable()
    chain = m.chain_keys(bucket)
    fids = {"note": fid(note), "doc": fid(m.path(bucket, "folder", "doc.txt"))}
    uid = os.getuid()
    trash = m.path(f".Trash-{uid}")

    # the Delete key on a file and on a folder
    gio("trash", note, m.path(bucket, "folder"))
    assert os.listdir(m.path(bucket)) == []
    assert sorted(os.listdir(trash / "files")) == ["folder", "note.txt"]
    assert sorted(os.listdir(trash / "info")) == ["folder.trashinfo", "note.txt.trashinfo"]
    assert f"Path={bucket}/note.txt" in (trash / "info" / "note.txt.trashinfo").read_text()
    st = trash.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700)
    # moved, not uploaded again: the same objects on the chain, nothing pending
    assert fid(trash / "files" / "note.txt") == fids["note"]
    assert fid(trash / "files" / "folder" / "doc.txt") == fids["doc"]
    assert m.pending() == [] and m.chain_keys(bucket) == chain
    assert m.path(bucket, ".deossfs").exists() is False

    # the trash folder, as a file manager shows it
    def both_listed() -> dict[str, str]:
        items = trashed(session_bus)
        return items if {str(note), str(m.path(bucket, "folder"))} <= items.keys() else {}

    originals = wait_for(both_listed, 30, "gvfs to list the trashed items")
    names = session_bus("list", "-d", "trash://").stdout.splitlines()  # as a file manager shows them
    assert "note.txt" in names and "folder" in names, names

    # restore: the file is back with its name, times and xattrs
    session_bus("trash", "--restore", originals[str(note)])
    assert note.read_text() == "a note"
    st = note.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_600_000_000_000_000_000)
    assert os.getxattr(note, "user.tag") == b"blue" and fid(note) == fids["note"]
    assert sorted(os.listdir(trash / "files")) == ["folder"]
    assert sorted(os.listdir(trash / "info")) == ["folder.trashinfo"]
    assert m.pending() == [] and m.chain_keys(bucket) == chain

    # a bucket is no item of the trash: it cannot leave the root
    result = gio("trash", m.path(bucket), check=False)
    assert result.returncode != 0 and "across filesystem boundaries" in result.stderr, result.stderr
    assert m.path(bucket).is_dir()

    # empty the trash: the folder's file is deleted from the chain
    wait_for(lambda: str(m.path(bucket, "folder")) in trashed(session_bus), 30, "gvfs to list the folder")
    session_bus("trash", "--empty")
    wait_for(lambda: not os.listdir(trash / "files"), 30, "the trash to be empty")
    assert os.listdir(trash / "info") == []
    wait_for(lambda: "folder/doc.txt" not in m.chain_keys(bucket), 60, "the chain delete of the emptied file")
    assert m.chain_keys(bucket) == {"note.txt": chain["note.txt"]}
    assert os.listdir(m.path(bucket)) == ["note.txt"]
    log = m.log()
    assert "failed unexpectedly" not in log
    m.wait_durable()
    m.umount()


def test_root_probes_skip_the_chain() -> None:
    """Names deossfs would refuse as buckets are answered at the root without a chain query."""
    never = Operations._never_a_bucket
    for name in (b".hidden", b".directory", b".Trash", b".Trash-1000", b".DS_Store", b"\xff\xfe"):
        assert never(ROOT_INODE, name), name
    for name in (b"autorun.inf", b"desktop.ini", b"photos"):  # could be buckets: re-read the list
        assert not never(ROOT_INODE, name), name
    assert not never(ROOT_INODE + 1, b".hidden")  # below the root: any name may be an object


def test_file_manager_probes_are_quick_enoent(desk: Callable[..., Mounted]) -> None:
    m = desk("a")
    bucket = bucket_name("desk")
    gio("mkdir", m.path(bucket))
    m.path(bucket, "a.txt").write_text("a")
    # remounted, nothing is left to save: a metadata save holds its bucket's lock while it
    # uploads, and a refresh of that bucket (a lookup of an unknown name) waits for it
    m.umount()
    m.mount()
    listing(m.mountpoint)  # a file manager shows a folder, then probes in it
    listing(m.path(bucket))
    time.sleep(2.5)  # past the bucket lists' refresh interval: probes that re-read them
    probes = [".hidden", ".directory", "autorun.inf", ".Trash", f".Trash-{os.getuid()}",
              ".xdg-volume-info", "desktop.ini", ".DS_Store"]
    for folder in (m.mountpoint, m.path(bucket)):
        for name in probes:
            started = time.monotonic()
            if folder == m.mountpoint and name == f".Trash-{os.getuid()}":  # the user's trash
                assert (folder / name).is_dir()
            else:
                with pytest.raises(FileNotFoundError):
                    (folder / name).read_bytes()
            took = time.monotonic() - started
            assert took < QUICK_SECONDS, (folder, name, took)
    assert sorted(os.listdir(m.mountpoint)) == sorted([*buckets_on_chain(m), f".Trash-{os.getuid()}"])
    m.umount()
