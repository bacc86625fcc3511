"""POSIX rules that public test suites (pjdfstest) check, through a real mount.

pjdfstest itself cannot be fetched here; these are its checks that a FUSE file system
decides for itself (the kernel's `default_permissions` makes the others): name length,
times changed by each call, set-group-ID inheritance, privileges dropped by chown and
by writes of other users, and the errnos of refused renames. One mount for the module,
with `allow_other` so that other users (via setpriv) can reach it.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deossfs.store import largest_file

from .. import harness
from ..conftest import Devnet
from .conftest import NEEDS_MOUNT, bucket_name, config_for

pytestmark = [*NEEDS_MOUNT, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other users, chown)")]

NOBODY = 65534
#: the mount's attribute cache is 1 s; times are compared after a pause longer than
#: the clock's step so that "changed" is visible
PAUSE = 0.05


@pytest.fixture(scope="module")
def posix_mount(devnet: Devnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Mounted, Path]]:
    directory = tmp_path_factory.mktemp("posix")
    # the mount point in a directory other users can pass (pytest's are 0700)
    mountpoint = Path(tempfile.mkdtemp(prefix="deossfs-posix-"))
    mountpoint.chmod(0o755)
    mounted = harness.Mounted(config_for(devnet, directory), mountpoint / "mnt")
    mounted.mount("--allow-other")
    try:
        path = mounted.path(bucket_name())
        path.mkdir()
        path.chmod(0o777)
        yield mounted, path
        mounted.umount()
    finally:
        mounted.cleanup()
        shutil.rmtree(mountpoint, ignore_errors=True)


@pytest.fixture(scope="module")
def bucket(posix_mount: tuple[harness.Mounted, Path]) -> Path:
    """The module's bucket on its mount, open to every user."""
    return posix_mount[1]


def as_nobody(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
                          capture_output=True, text=True, timeout=30)


def errno_of(call: object, *args: object) -> int:
    try:
        call(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno  # type: ignore[return-value]
    return 0


def times(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_mtime_ns, st.st_ctime_ns


def test_name_max_is_enametoolong_in_every_call(bucket: Path) -> None:
    """A 256-byte component: ENAMETOOLONG from every call that takes a name, never ENOENT."""
    base = bucket / "name-max"
    base.mkdir()
    (base / "file").write_bytes(b"x")
    (base / "dir").mkdir()
    long = "l" * 256
    calls = {
        "stat": lambda: os.stat(base / long),
        "lstat": lambda: os.lstat(base / long),
        "open": lambda: os.open(base / long, os.O_RDONLY),
        "create": lambda: os.open(base / long, os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: os.mkdir(base / long),
        "mknod": lambda: os.mkfifo(base / long),
        "symlink": lambda: os.symlink("file", base / long),
        "link": lambda: os.link(base / "file", base / long),
        "rename from": lambda: os.rename(base / long, base / "other"),
        "rename to": lambda: os.rename(base / "file", base / long),
        "unlink": lambda: os.unlink(base / long),
        "rmdir": lambda: os.rmdir(base / long),
        "chmod": lambda: os.chmod(base / long, 0o600),
        "truncate": lambda: os.truncate(base / long, 0),
        "setxattr": lambda: os.setxattr(base / long, "user.a", b"1"),
        "getxattr": lambda: os.getxattr(base / long, "user.a"),
        "a directory in the middle": lambda: os.stat(base / long / "file"),
        "mkdir below": lambda: os.mkdir(base / long / "sub"),
    }
    for what, call in calls.items():
        assert errno_of(call) == errno.ENAMETOOLONG, what
    assert sorted(os.listdir(base)) == ["dir", "file"]
    assert os.statvfs(base).f_namemax == 255


def test_a_4000_byte_path_through_every_call(posix_mount: tuple[harness.Mounted, Path], devnet: Devnet,
                                            tmp_path: Path) -> None:
    """Deep trees of 255-byte names, as ext4 takes them: a path of about 4,000 bytes below
    the mount point works in every call, is uploaded, and another machine sees it."""
    mounted, bucket = posix_mount
    top = bucket / "deep"
    components = [f"{i:02d}" + "d" * 253 for i in range(15)]
    deep = top.joinpath(*components)
    file = deep / ("f" * 100)
    assert 3950 < len(str(file.relative_to(bucket.parent))) < 4095 - len(str(bucket.parent))
    os.makedirs(deep)
    file.write_bytes(b"deep content")
    assert file.stat().st_size == 12
    os.chmod(file, 0o640)
    os.chown(file, 0, 4321)
    os.utime(file, ns=(1_000_000_000, 2_000_000_000))
    os.setxattr(file, "user.where", b"deep")
    assert os.getxattr(file, "user.where") == b"deep"
    os.truncate(file, 4)
    with open(file, "ab") as handle:
        handle.write(b" more")
    assert file.read_bytes() == b"deep more"
    os.link(file, deep / "hard")
    os.symlink(file.name, deep / "soft")
    assert os.readlink(deep / "soft") == file.name and (deep / "soft").read_bytes() == b"deep more"
    os.rename(file, deep / "renamed")
    assert sorted(os.listdir(deep)) == ["hard", "renamed", "soft"]
    # a rename of the top directory moves the whole deep tree
    os.rename(top, bucket / "deep2")
    deep = (bucket / "deep2").joinpath(*components)
    st = (deep / "renamed").stat()
    assert (st.st_mode & 0o777, st.st_gid, st.st_nlink) == (0o640, 4321, 2)
    harness.wait_for(lambda: os.getxattr(deep / "renamed", "user.deossfs.state") == b"stored", 120,
                     "the deep file to be uploaded")
    # another machine with the same key sees the deep tree once the metadata is saved
    (tmp_path / "other").mkdir()
    other = harness.Mounted(config_for(devnet, tmp_path / "other"), tmp_path / "mnt")
    try:
        harness.wait_for(lambda: _saved(mounted, bucket.name), 60, "the bucket's metadata to be saved")
        other.mount()
        seen = other.path(bucket.name, "deep2", *components)
        assert (seen / "renamed").read_bytes() == b"deep more"
        assert os.getxattr(seen / "renamed", "user.where") == b"deep"
        assert os.readlink(seen / "soft") == file.name
        other.umount()
    finally:
        other.cleanup()
    # and everything can be removed again
    os.unlink(deep / "soft")
    os.unlink(deep / "hard")
    os.unlink(deep / "renamed")
    shutil.rmtree(bucket / "deep2")
    assert not (bucket / "deep2").exists()


def _saved(mounted: harness.Mounted, bucket: str) -> bool:
    """The mount has no unsaved metadata change in `bucket` (its database says so)."""
    conn = sqlite3.connect(f"file:{mounted.config.parent / 'workspace' / 'mount.sqlite'}?mode=ro",
                           uri=True, timeout=30)
    try:
        row = conn.execute("SELECT dirty FROM buckets WHERE name=?", (bucket,)).fetchone()
    finally:
        conn.close()
    return row is not None and row[0] == 0


def test_name_max(bucket: Path) -> None:
    assert os.statvfs(bucket).f_namemax == 255
    (bucket / ("n" * 255)).write_bytes(b"")
    assert errno_of((bucket / ("n" * 256)).write_bytes, b"") == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, bucket / ("d" * 256)) == errno.ENAMETOOLONG
    assert errno_of(os.symlink, "x", bucket / ("s" * 256)) == errno.ENAMETOOLONG
    assert errno_of(os.rename, bucket / ("n" * 255), bucket / ("r" * 256)) == errno.ENAMETOOLONG
    # a symlink target may be as long as a path (PATH_MAX - 1)
    target = "t/" * 2047
    os.symlink(target, bucket / "long-target")
    assert os.readlink(bucket / "long-target") == target


def test_each_user_has_their_own_trash(bucket: Path) -> None:
    """`gio trash` by two users of an --allow-other mount: each item goes to its user's
    `.Trash-$UID` (mode 0700, theirs), which the other cannot look into."""
    home = Path(tempfile.mkdtemp(prefix="deossfs-nobody-"))
    os.chown(home, NOBODY, NOBODY)
    try:
        theirs = bucket / "trash-theirs.txt"
        as_nobody("sh", "-c", f"echo theirs > {theirs}")
        mine = bucket / "trash-mine.txt"
        mine.write_text("mine")
        env = ["env", f"HOME={home}", "GIO_USE_VFS=local", "LC_ALL=C", "gio", "trash"]
        result = as_nobody(*env, str(theirs))
        assert result.returncode == 0, result.stderr
        result = subprocess.run([*env, str(mine)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        root = bucket.parent
        their_trash, my_trash = root / f".Trash-{NOBODY}", root / f".Trash-{os.getuid()}"
        st = their_trash.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o700)
        assert "trash-theirs.txt" in as_nobody("ls", str(their_trash / "files")).stdout
        assert "trash-theirs.txt" not in os.listdir(my_trash / "files")
        assert "trash-mine.txt" in os.listdir(my_trash / "files")
        assert "Permission denied" in as_nobody("ls", str(my_trash / "files")).stderr
        assert not theirs.exists() and not mine.exists()
        # nobody makes anyone else's trash directory
        assert "Permission denied" in as_nobody("mkdir", str(root / ".Trash-4242")).stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_o_trunc_changes_mtime_and_ctime(bucket: Path) -> None:
    for name, content in (("empty-trunc", b""), ("full-trunc", b"content")):
        path = bucket / name
        path.write_bytes(content)
        before = times(path)
        time.sleep(PAUSE)
        os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
        after = times(path)
        assert after[0] > before[0] and after[1] > before[1], name


def test_calls_change_the_times_they_should(bucket: Path) -> None:
    directory = bucket / "times"
    directory.mkdir()
    path = directory / "file"
    path.write_bytes(b"x")
    mtime, ctime = times(path)
    time.sleep(PAUSE)
    os.chmod(path, 0o600)
    assert times(path)[0] == mtime and times(path)[1] > ctime  # chmod: ctime only
    _, ctime = times(path)
    dir_before = times(directory)
    time.sleep(PAUSE)
    os.link(path, directory / "other")
    assert times(path)[1] > ctime  # link: the inode's ctime
    assert all(a > b for a, b in zip(times(directory), dir_before, strict=True))  # and the directory's
    _, ctime = times(path)
    time.sleep(PAUSE)
    os.unlink(directory / "other")
    assert times(path)[1] > ctime and path.stat().st_nlink == 1
    _, ctime = times(path)
    time.sleep(PAUSE)
    os.rename(path, directory / "renamed")
    assert times(directory / "renamed")[1] > ctime
    mtime, ctime = times(directory / "renamed")
    time.sleep(PAUSE)
    os.utime(directory / "renamed", ns=(1_000_000_000, 2_000_000_000))
    assert times(directory / "renamed") [0] == 2_000_000_000 and times(directory / "renamed")[1] > ctime
    _, ctime = times(directory / "renamed")
    time.sleep(PAUSE)
    os.truncate(directory / "renamed", 10)  # truncate: both
    assert all(a > b for a, b in zip(times(directory / "renamed"), (2_000_000_000, ctime), strict=True))
    assert (directory / "renamed").read_bytes() == b"x" + bytes(9)


def test_set_group_id_directories_pass_on_their_group(bucket: Path) -> None:
    shared = bucket / "shared"
    shared.mkdir()
    os.chown(shared, 0, 4321)
    os.chmod(shared, 0o2777)
    (shared / "file").write_bytes(b"")
    (shared / "sub").mkdir()
    os.mkfifo(shared / "fifo")
    os.symlink("file", shared / "link")
    for name in ("file", "sub", "fifo", "link"):
        assert (shared / name).lstat().st_gid == 4321, name
    assert (shared / "sub").stat().st_mode & stat.S_ISGID
    assert not (shared / "file").stat().st_mode & stat.S_ISGID


def test_privileges_dropped_by_chown_and_by_other_users_writes(bucket: Path) -> None:
    path = bucket / "setuid"
    path.write_bytes(b"#!/bin/sh\n")
    os.chmod(path, 0o6777)
    os.chown(path, 0, 0)  # chown of a regular file clears set-user-ID and set-group-ID
    assert stat.S_IMODE(path.stat().st_mode) == 0o777
    os.chmod(path, 0o4777)
    result = as_nobody("sh", "-c", f"echo more >> {path}")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o777  # a write by another user clears it


def test_permissions_are_the_kernels(bucket: Path) -> None:
    private = bucket / "private"
    private.write_bytes(b"secret")
    os.chmod(private, 0o600)
    assert as_nobody("cat", str(private)).returncode != 0
    assert "Permission denied" in as_nobody("cat", str(private)).stderr
    assert "Operation not permitted" in as_nobody("chmod", "777", str(private)).stderr
    sticky = bucket / "sticky"
    sticky.mkdir(mode=0o777)
    os.chmod(sticky, 0o1777)
    (sticky / "roots").write_bytes(b"")
    assert as_nobody("rm", "-f", str(sticky / "roots")).returncode != 0
    assert (sticky / "roots").exists()
    assert as_nobody("touch", str(sticky / "mine")).returncode == 0
    assert (sticky / "mine").stat().st_uid == NOBODY


def test_refused_renames(bucket: Path) -> None:
    base = bucket / "renames"
    (base / "full" / "inner").mkdir(parents=True)
    (base / "empty").mkdir()
    (base / "file").write_bytes(b"")
    assert errno_of(os.rename, base / "empty", base / "full") in (errno.ENOTEMPTY, errno.EEXIST)
    assert errno_of(os.rename, base / "file", base / "empty") == errno.EISDIR
    assert errno_of(os.rename, base / "empty", base / "file") == errno.ENOTDIR
    assert errno_of(os.rename, base / "full", base / "full" / "inner" / "deeper") == errno.EINVAL
    assert errno_of(os.rmdir, base / "full") == errno.ENOTEMPTY
    assert errno_of(os.mkdir, base / "empty") == errno.EEXIST
    assert errno_of(os.link, base / "empty", base / "dirlink") == errno.EPERM
    os.rename(base / "empty", base / "full" / "inner")  # a directory replaces an empty one
    assert sorted(os.listdir(base / "full")) == ["inner"]


def test_directory_link_counts(bucket: Path) -> None:
    """2 plus one per subdirectory, as on ext4 (find's leaf optimisation trusts it)."""
    top = bucket / "counts"
    top.mkdir()
    assert top.stat().st_nlink == 2
    for name in ("a", "b", "c"):
        (top / name).mkdir()
    (top / "file").write_bytes(b"")
    assert top.stat().st_nlink == 5
    os.rmdir(top / "a")
    os.rename(top / "b", bucket / "moved-out")
    assert top.stat().st_nlink == 3
    found = subprocess.run(["find", str(top), "-type", "d"], capture_output=True, text=True, check=True)
    assert sorted(found.stdout.split()) == [str(top), str(top / "c")]


def test_absurd_sizes_are_efbig(bucket: Path) -> None:
    path = bucket / "huge"
    path.write_bytes(b"")
    assert errno_of(os.truncate, path, 999_999_999_999_999_999) == errno.EFBIG
    with open(path, "r+b") as handle:
        assert errno_of(os.pwrite, handle.fileno(), b"x", 2**51) == errno.EFBIG
    assert path.stat().st_size == 0


def test_the_largest_file_and_one_byte_more(devnet: Devnet, tmp_path: Path) -> None:
    """A file ends where one CESS storage order ends (1,000 segments): truncate and write
    up to there work, one byte more is EFBIG (a territory big enough, so that ENOSPC does
    not come first; nothing of that size is uploaded)."""
    territory = f"big-{os.urandom(3).hex()}"
    devnet.cli("territory", "mint", territory, "--gib", "100", "--days", "30")
    mounted = harness.Mounted(config_for(devnet, tmp_path, territory=territory), tmp_path / "mnt")
    mounted.mount()
    try:
        path = mounted.path(bucket_name("big"))
        path.mkdir()
        largest = largest_file(encrypted=True)
        with open(path / "huge", "w+b") as handle:
            fd = handle.fileno()
            assert errno_of(os.ftruncate, fd, largest + 1) == errno.EFBIG
            assert errno_of(os.pwrite, fd, b"x", largest) == errno.EFBIG
            os.ftruncate(fd, largest)
            assert os.fstat(fd).st_size == largest
            os.ftruncate(fd, 0)
            assert os.pwrite(fd, b"xy", largest - 1) == 1  # a short write up to the limit
            assert os.fstat(fd).st_size == largest
            assert os.pread(fd, 4, largest - 2) == b"\0x"
            os.ftruncate(fd, 0)
        assert errno_of(os.truncate, path / "huge", largest + 1) == errno.EFBIG
        assert (path / "huge").stat().st_size == 0
        assert "holds at most" in mounted.log()
        mounted.umount()
    finally:
        mounted.cleanup()


def test_an_open_file_unlinked_has_no_links_and_still_works(bucket: Path) -> None:
    path = bucket / "unlinked-open"
    path.write_bytes(b"before")
    with open(path, "r+b") as handle:
        os.unlink(path)
        assert os.fstat(handle.fileno()).st_nlink == 0
        handle.seek(0, os.SEEK_END)
        handle.write(b" and after")
        handle.flush()
        handle.seek(0)
        assert handle.read() == b"before and after"
    assert not path.exists()
