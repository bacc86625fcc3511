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
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import harness
from ..conftest import Devnet
from .conftest import NEEDS_MOUNT, bucket_name, config_for

pytestmark = [*NEEDS_MOUNT, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other users, chown)")]

NOBODY = 65534
#: the mount's attribute cache is 1 s; times are compared after a pause longer than
#: the clock's step so that "changed" is visible
PAUSE = 0.05


@pytest.fixture(scope="module")
def bucket(devnet: Devnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
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
        yield path
        mounted.umount()
    finally:
        mounted.cleanup()
        shutil.rmtree(mountpoint, ignore_errors=True)


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
