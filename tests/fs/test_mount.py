"""Real mounts: `deossfs mount` in the background, cp/rsync/mv through the kernel, kill -9.

Every test mounts with its own config (its own workspace: another "machine" is just
another workspace with the same key) and its own bucket. Durability is waited for
with `deossfs status` or the `user.deossfs.state` xattr, never with a sleep.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deossfs.devnet import process_alive
from deossfs.processing.encryption import PLAINTEXT_CAPACITY

from .. import harness
from ..conftest import Devnet, deossfs
from .conftest import NEEDS_MOUNT, bucket_name, config_for, wait_for

pytestmark = NEEDS_MOUNT

DURABLE_TIMEOUT = 90.0


class Mounted(harness.Mounted):
    """One mount point of one config, driven through the real CLI; stricter checks."""

    def umount(self) -> None:
        """`deossfs umount`: returns once the mount process finished its uploads and exited."""
        pid = self.pid
        super().umount()
        assert not os.path.ismount(self.mountpoint)
        assert pid is not None and not process_alive(pid), "umount returned before the mount exited"

    def kill9(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not process_alive(self.pid), 10, "the killed mount to go")  # type: ignore[arg-type]
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=True)
        self.pid = None

    # ---- the journal and the chain -----------------------------------------------

    def journal_size(self) -> int:
        """Pending uploads, read from the journal as `deossfs status` does (no process spawned)."""
        path = self.config.parent / "workspace" / "mount.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0]
        finally:
            conn.close()

    def wait_durable(self, timeout: float = DURABLE_TIMEOUT) -> None:
        wait_for(lambda: self.journal_size() == 0, timeout, "pending uploads to finish")
        assert self.pending() == []  # and `deossfs status` agrees

    def chain_keys(self, bucket: str) -> dict[str, int]:
        """key -> size of the bucket's objects, from `deossfs ls`."""
        out = self.cli("ls", bucket).stdout
        return {line.split()[2]: int(line.split()[0]) for line in out.splitlines() if line.strip()}


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[..., Mounted]]:
    """mounts(config, name) -> a Mounted; whatever is still mounted is unmounted afterwards."""
    made: list[Mounted] = []

    def make(config: Path, name: str = "mnt") -> Mounted:
        mounted = Mounted(config, tmp_path / name)
        made.append(mounted)
        return mounted

    yield make
    for mounted in made:
        mounted.cleanup()


def machine(devnet: Devnet, tmp_path: Path, name: str) -> Path:
    """The config of another machine: the same key file, its own workspace."""
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    return config_for(devnet, directory)


def sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def state(path: Path) -> str:
    return os.getxattr(path, "user.deossfs.state").decode()


def fid(path: Path) -> str:
    return os.getxattr(path, "user.deossfs.fid").decode()


def snapshot(root: Path) -> dict[str, tuple]:
    """What cp -a and rsync -a must keep: type, mode, owner, size, mtime, symlink target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            # symlink mtimes are kept by rsync -a and cp -a too
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode) if not target else None,
                        st.st_uid, st.st_gid, size, st.st_mtime_ns, target)
    return out


def make_tree(root: Path) -> None:
    """Files of several sizes and modes, empty files and dirs, symlinks, a FIFO, owners,
    old mtimes."""
    (root / "docs" / "deep" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "private").mkdir(mode=0o700)
    (root / "docs" / "readme.txt").write_text("hello from deossfs\n")
    (root / "docs" / "deep" / "deeper" / "data.bin").write_bytes(os.urandom(300_000))
    (root / "docs" / "empty.txt").write_bytes(b"")
    (root / "private" / "secret.key").write_bytes(os.urandom(64))
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "x1").write_bytes(b"one")  # short names (CESS file names are 3..63 bytes)
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "private" / "secret.key", 0o600)
    os.chmod(root / "docs" / "empty.txt", 0o640)
    if os.geteuid() == 0:  # owners other than ours need root (the mount keeps them)
        os.chown(root / "docs" / "readme.txt", 1234, 5678)
    os.symlink("docs/readme.txt", root / "link-rel")
    os.symlink("/etc/hostname", root / "link-abs")
    os.symlink("does/not/exist", root / "link-dangling")
    os.symlink("docs/deep", root / "link-dir")
    os.mkfifo(root / "docs" / "pipe", 0o620)  # rsync -a and cp -a copy FIFOs as FIFOs
    when = 1_600_000_000
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root, topdown=False))):
        for j, name in enumerate(dirnames + filenames):
            ns = (when + i * 1000 + j) * 10**9 + 123_456_789 * (j % 2)
            os.utime(Path(dirpath) / name, ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(when * 10**9, when * 10**9))


def rsync(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def transferred(stats: str) -> int:
    match = re.search(r"Number of regular files transferred: (\d+)", stats)
    assert match, stats
    return int(match.group(1))


# ---- copies in and out ----------------------------------------------------------------


def test_cp_in_and_out_byte_exact(devnet: Devnet, tmp_path: Path, mounts: Callable[..., Mounted]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"empty.bin": 0, "tiny.bin": 1, "page.bin": 4096, "odd.bin": 1_000_003,
             "two-segments.bin": PLAINTEXT_CAPACITY + 5000}
    for name, size in sizes.items():
        (src / name).write_bytes(os.urandom(size))
    a = mounts(machine(devnet, tmp_path, "a"), "mnt-a").mount()
    bucket = bucket_name()
    a.path(bucket).mkdir()
    subprocess.run(["cp", *[str(src / n) for n in sizes], str(a.path(bucket))], check=True)
    for name in sizes:  # read back at once (from the staged copy)
        assert sha(a.path(bucket, name)) == sha(src / name), name
    a.wait_durable()
    for name, size in sizes.items():
        assert state(a.path(bucket, name)) == "stored"
        assert a.path(bucket, name).stat().st_size == size
    # CESS holds every non-empty file (an empty one lives in the bucket's metadata)
    on_chain = a.chain_keys(bucket)
    assert {k: v for k, v in on_chain.items() if not k.startswith(".deossfs/")} == \
        {n: s for n, s in sizes.items() if s}
    a.umount()
    # another machine reads them from the nodes (its workspace never held them)
    b = mounts(machine(devnet, tmp_path, "b"), "mnt-b").mount()
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cp", "-r", str(b.path(bucket)) + "/.", str(out)], check=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(sizes)
    for name in sizes:
        assert sha(out / name) == sha(src / name), name
    b.umount()


def test_rsync_twice_and_persistence_on_another_machine(devnet: Devnet, tmp_path: Path,
                                                       mounts: Callable[..., Mounted]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    config_a = machine(devnet, tmp_path, "a")
    a = mounts(config_a, "mnt-a").mount()
    bucket = bucket_name()
    a.path(bucket).mkdir()
    dest = a.path(bucket, "tree")
    first = rsync("-a", "--stats", f"{src}/", f"{dest}/")
    assert transferred(first.stdout) == 6
    assert snapshot(dest) == snapshot(src)
    second = rsync("-a", "-i", "--stats", f"{src}/", f"{dest}/")
    assert transferred(second.stdout) == 0, second.stdout
    changes = [line for line in second.stdout.splitlines() if re.match(r"^[<>ch.*][fdLDS]", line)]
    assert changes == [], changes
    os.setxattr(dest / "docs" / "readme.txt", "user.origin", b"rsync test")
    os.setxattr(dest / "empty-dir", "user.kind", b"empty")
    a.wait_durable()
    # rsync writes `.name.XXXXXX` and renames it at once: the upload waits out the rename
    # (storage.upload_delay), so the chain's names are the files' own, as other CESS tools see them
    on_chain = {k for k in a.chain_keys(bucket) if not k.startswith(".deossfs/")}
    assert on_chain == {f"tree/{p.relative_to(src)}" for p in src.rglob("*")
                        if p.is_file() and not p.is_symlink() and p.stat().st_size}, on_chain
    a.umount()

    def check(mounted: Mounted) -> None:
        tree = mounted.path(bucket, "tree")
        assert snapshot(tree) == snapshot(src)
        assert os.getxattr(tree / "docs" / "readme.txt", "user.origin") == b"rsync test"
        assert os.getxattr(tree / "empty-dir", "user.kind") == b"empty"
        assert list((tree / "empty-dir").iterdir()) == []
        assert (tree / "docs" / "deep" / "deeper" / "data.bin").read_bytes() == \
            (src / "docs" / "deep" / "deeper" / "data.bin").read_bytes()
        again = rsync("-a", "-i", "--stats", f"{src}/", f"{tree}/")
        assert transferred(again.stdout) == 0, again.stdout

    # the same machine after a remount
    a = mounts(config_a, "mnt-a2").mount()
    check(a)
    a.umount()
    # another machine with the same key
    b = mounts(machine(devnet, tmp_path, "b"), "mnt-b").mount()
    check(b)
    b.umount()


def test_cp_a_keeps_modes_times_symlinks(devnet: Devnet, tmp_path: Path,
                                         mounts: Callable[..., Mounted]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    m = mounts(machine(devnet, tmp_path, "a")).mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    subprocess.run(["cp", "-a", str(src), str(m.path(bucket, "copy"))], check=True)
    assert snapshot(m.path(bucket, "copy")) == snapshot(src)
    # within the mount and back out again
    result = subprocess.run(["cp", "-a", str(m.path(bucket, "copy")), str(m.path(bucket, "copy2"))],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert snapshot(m.path(bucket, "copy2")) == snapshot(src)
    subprocess.run(["cp", "-a", str(m.path(bucket, "copy2")), str(tmp_path / "back")], check=True)
    assert snapshot(tmp_path / "back") == snapshot(src)
    m.wait_durable()
    m.umount()


def link_groups(root: Path) -> list[list[str]]:
    """Names under `root` that share an inode, as sorted groups (hard links)."""
    by_inode: dict[int, list[str]] = {}
    for path in root.rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            by_inode.setdefault(st.st_ino, []).append(str(path.relative_to(root)))
    return sorted(sorted(names) for names in by_inode.values())


def test_hard_links_kept_by_cp_a_and_rsync_H(devnet: Devnet, tmp_path: Path,
                                           mounts: Callable[..., Mounted]) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "data.bin").write_bytes(os.urandom(300_000))
    os.link(src / "a" / "data.bin", src / "a" / "alias.bin")
    os.link(src / "a" / "data.bin", src / "b" / "alias.bin")
    (src / "lone.txt").write_text("one name\n")
    expected = [["a/alias.bin", "a/data.bin", "b/alias.bin"]]
    assert link_groups(src) == expected
    config_a = machine(devnet, tmp_path, "a")
    m = mounts(config_a, "mnt-a").mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    subprocess.run(["cp", "-a", f"{src}/.", str(m.path(bucket, "copy"))], check=True)
    assert link_groups(m.path(bucket, "copy")) == expected
    assert m.path(bucket, "copy", "b", "alias.bin").stat().st_nlink == 3
    first = rsync("-aH", "--stats", f"{src}/", f"{m.path(bucket, 'rs')}/")
    assert transferred(first.stdout) == 2
    assert link_groups(m.path(bucket, "rs")) == expected
    second = rsync("-aH", "-i", "--stats", f"{src}/", f"{m.path(bucket, 'rs')}/")
    assert transferred(second.stdout) == 0, second.stdout
    m.wait_durable()
    m.umount()
    # another machine: one inode under the three names, read from the nodes
    b = mounts(machine(devnet, tmp_path, "b"), "mnt-b").mount()
    for tree in ("copy", "rs"):
        assert link_groups(b.path(bucket, tree)) == expected
        assert sha(b.path(bucket, tree, "b", "alias.bin")) == sha(src / "a" / "data.bin")
    b.umount()


def test_fifo_in_the_mount_is_a_kernel_pipe(devnet: Devnet, tmp_path: Path,
                                           mounts: Callable[..., Mounted]) -> None:
    """mkfifo works (rsync -a and tar create them); the kernel serves the pipe. The mount
    is nodev and nosuid: device nodes and set-user-ID bits from other machines are kept,
    not honoured."""
    m = mounts(machine(devnet, tmp_path, "a")).mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    fifo = m.path(bucket, "pipe")
    os.mkfifo(fifo, 0o600)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    writer = subprocess.Popen(["sh", "-c", f"echo through the pipe > {fifo}"])
    assert fifo.read_text() == "through the pipe\n"
    assert writer.wait(timeout=10) == 0
    options = next(line.split()[3] for line in Path("/proc/mounts").read_text().splitlines()
                   if line.split()[1] == str(m.mountpoint))
    assert {"nodev", "nosuid"} <= set(options.split(",")), options
    m.umount()


# ---- changing files -------------------------------------------------------------------


def test_mv_needs_no_reupload(devnet: Devnet, tmp_path: Path, mounts: Callable[..., Mounted]) -> None:
    m = mounts(machine(devnet, tmp_path, "a")).mount()
    bucket, other = bucket_name(), bucket_name()
    m.path(bucket).mkdir()
    m.path(other).mkdir()
    (m.path(bucket, "dir", "sub")).mkdir(parents=True)
    data = os.urandom(500_000)
    m.path(bucket, "file.bin").write_bytes(data)
    m.path(bucket, "dir", "sub", "inner.txt").write_text("inside")
    m.wait_durable()
    fids = {"file": fid(m.path(bucket, "file.bin")), "inner": fid(m.path(bucket, "dir", "sub", "inner.txt"))}
    subprocess.run(["mv", str(m.path(bucket, "file.bin")), str(m.path(bucket, "dir", "renamed.bin"))], check=True)
    subprocess.run(["mv", str(m.path(bucket, "dir")), str(m.path(bucket, "moved"))], check=True)
    assert m.pending() == []  # nothing was queued for upload
    assert fid(m.path(bucket, "moved", "renamed.bin")) == fids["file"]
    assert fid(m.path(bucket, "moved", "sub", "inner.txt")) == fids["inner"]
    assert state(m.path(bucket, "moved", "renamed.bin")) == "stored"
    assert m.path(bucket, "moved", "renamed.bin").read_bytes() == data
    assert sorted(os.listdir(m.path(bucket))) == ["moved"]
    # between buckets mv copies (EXDEV): a new upload, and the old bucket lets go of it
    subprocess.run(["mv", str(m.path(bucket, "moved", "renamed.bin")), str(m.path(other, "across.bin"))],
                   check=True)
    assert m.path(other, "across.bin").read_bytes() == data
    m.wait_durable()
    assert fid(m.path(other, "across.bin")) != fids["file"]
    wait_for(lambda: "file.bin" not in m.chain_keys(bucket), 30, "the old copy to leave the chain")
    m.umount()
    # the new names are what another machine sees
    b = mounts(machine(devnet, tmp_path, "b"), "mnt-b").mount()
    assert b.path(bucket, "moved", "sub", "inner.txt").read_text() == "inside"
    assert fid(b.path(bucket, "moved", "sub", "inner.txt")) == fids["inner"]
    assert b.path(other, "across.bin").read_bytes() == data
    assert not b.path(bucket, "moved", "renamed.bin").exists()
    b.umount()


def test_overwrite_append_truncate_random_writes(devnet: Devnet, tmp_path: Path,
                                                 mounts: Callable[..., Mounted]) -> None:
    m = mounts(machine(devnet, tmp_path, "a")).mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    path = m.path(bucket, "edited.bin")
    model = bytearray(os.urandom(3_000_000))
    path.write_bytes(model)
    m.wait_durable()
    first_fid = fid(path)
    rng = __import__("random").Random(7)
    with open(path, "r+b") as handle:  # random writes into the stored file
        for _ in range(50):
            offset = rng.randrange(0, len(model) + 100_000)
            piece = os.urandom(rng.randrange(1, 70_000))
            handle.seek(offset)
            handle.write(piece)
            if offset > len(model):
                model.extend(bytes(offset - len(model)))
            model[offset : offset + len(piece)] = piece
    assert path.read_bytes() == model
    with open(path, "ab") as handle:
        handle.write(b"appended")
    model += b"appended"
    assert path.read_bytes() == model
    os.truncate(path, 1_234_567)
    del model[1_234_567:]
    assert path.read_bytes() == model
    os.truncate(path, 2_000_000)
    model.extend(bytes(2_000_000 - len(model)))
    assert path.read_bytes() == model
    m.wait_durable()
    assert fid(path) != first_fid
    # an overwrite through O_TRUNC (shell redirection)
    other = m.path(bucket, "overwritten.txt")
    other.write_text("a first version that is longer\n")
    subprocess.run(["sh", "-c", f"echo second > '{other}'"], check=True)
    assert other.read_text() == "second\n"
    m.wait_durable()
    wait_for(lambda: m.chain_keys(bucket).get("edited.bin") == len(model), 30,
             "only the latest version on the chain")
    m.umount()
    b = mounts(machine(devnet, tmp_path, "b"), "mnt-b").mount()
    assert b.path(bucket, "edited.bin").read_bytes() == model
    assert b.path(bucket, "overwritten.txt").read_text() == "second\n"
    b.umount()


def test_the_cli_sees_the_mounts_names(devnet: Devnet, tmp_path: Path,
                                       mounts: Callable[..., Mounted]) -> None:
    """The chain keeps the name a file was uploaded with and stores no empty file; the
    CLI, like the mount and S3, reads names from the bucket's metadata object: a renamed
    file under its new name, an empty one, and a key the chain hashes."""
    m = mounts(machine(devnet, tmp_path, "a")).mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    m.path(bucket, "draft.txt").write_bytes(b"version 1")
    m.path(bucket, "e").write_bytes(b"")
    m.path(bucket, "d1").mkdir()
    m.path(bucket, "d1", "n").write_bytes(b"short name, deep path")
    m.wait_durable()
    os.rename(m.path(bucket, "draft.txt"), m.path(bucket, "final.txt"))
    # published with the mount's next metadata save (5 s after the bucket's last change)
    wait_for(lambda: "final.txt" in m.chain_keys(bucket), 60, "the new name in `deossfs ls`")
    keys = m.chain_keys(bucket)
    assert "draft.txt" not in keys and keys["e"] == 0 and keys["d1/n"] == 21, keys
    out = tmp_path / "out"
    m.cli("get", f"{bucket}/final.txt", str(out))
    assert out.read_bytes() == b"version 1"
    m.cli("get", f"{bucket}/e", str(out))
    assert out.read_bytes() == b""
    assert m.cli("get", f"{bucket}/draft.txt", str(out), check=False).returncode != 0
    # `deossfs verify` finds and labels them so too (it used the chain's names)
    report = json.loads(m.cli("verify", "--json", f"{bucket}/final.txt").stdout)
    assert [f["name"] for f in report["files"]] == [f"{bucket}/final.txt"], report
    assert report["fragments"] > 0 and report["problems"] == 0, report
    assert json.loads(m.cli("verify", "--json", f"{bucket}/e").stdout)["files"] == []
    checked = {f["name"] for f in json.loads(m.cli("verify", "--json", bucket).stdout)["files"]}
    assert {f"{bucket}/final.txt", f"{bucket}/d1/n"} <= checked, checked
    assert not any("draft" in name or "~" in name for name in checked), checked
    # bytes put over the new name replace the renamed file for everyone
    newer = tmp_path / "newer"
    newer.write_bytes(b"version 2")
    m.cli("put", str(newer), f"{bucket}/final.txt")
    m.cli("get", f"{bucket}/final.txt", str(out))
    assert out.read_bytes() == b"version 2"

    def in_the_mount() -> bytes:
        os.listdir(m.path(bucket))  # a listing reads the bucket's metadata object again
        return m.path(bucket, "final.txt").read_bytes()

    wait_for(lambda: in_the_mount() == b"version 2", 30, "the CLI's put in the mount")
    # a CLI rm is published too: the mount drops the file at its next listing
    m.cli("rm", f"{bucket}/final.txt")
    wait_for(lambda: "final.txt" not in os.listdir(m.path(bucket)), 30, "the CLI's rm in the mount")
    assert sorted(os.listdir(m.path(bucket))) == ["d1", "e"]
    m.umount()


def test_unlink_removes_the_file_from_the_chain(devnet: Devnet, tmp_path: Path,
                                                mounts: Callable[..., Mounted]) -> None:
    m = mounts(machine(devnet, tmp_path, "a")).mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    m.path(bucket, "doomed.bin").write_bytes(os.urandom(20_000))
    m.path(bucket, "kept.bin").write_bytes(os.urandom(20_000))
    m.wait_durable()
    doomed = fid(m.path(bucket, "doomed.bin"))
    assert {"doomed.bin", "kept.bin"} <= set(m.chain_keys(bucket))
    m.path(bucket, "doomed.bin").unlink()
    assert sorted(os.listdir(m.path(bucket))) == ["kept.bin"]
    wait_for(lambda: "doomed.bin" not in m.chain_keys(bucket), 30, "doomed.bin to leave the chain")
    assert "kept.bin" in m.chain_keys(bucket)
    result = m.cli("stat", f"{bucket}/doomed.bin", check=False)
    assert result.returncode != 0 and "no object" in result.stderr
    assert doomed not in m.cli("ls", bucket).stdout
    # rm -rf of a whole bucket
    subprocess.run(["rm", "-rf", str(m.path(bucket))], check=True)
    assert not m.path(bucket).exists()
    assert f"{bucket}/" not in m.cli("ls").stdout.splitlines()
    m.umount()


# ---- crashes, failures and unmounting ---------------------------------------------------


def test_kill_9_loses_no_closed_file(devnet: Devnet, tmp_path: Path, mounts: Callable[..., Mounted]) -> None:
    config = machine(devnet, tmp_path, "a")
    m = mounts(config).mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    files = {f"file-{i}.bin": os.urandom(6_000_000 + i) for i in range(6)}
    files["empty.txt"] = b""
    for name, data in files.items():
        with open(m.path(bucket, name), "wb") as handle:
            handle.write(data)
    m.kill9()  # right after the last close
    pending = m.pending()
    assert pending, "every upload finished before the kill; the test proves nothing"
    assert {p["path"] for p in pending} <= {f"{bucket}/{n}" for n in files}
    m = mounts(config, "mnt-again").mount()
    m.wait_durable()
    for name, data in files.items():
        assert m.path(bucket, name).read_bytes() == data, name
        assert state(m.path(bucket, name)) == "stored", (name, m.log()[-3000:])
    assert {k for k in m.chain_keys(bucket) if not k.startswith(".deossfs/")} == \
        {n for n, d in files.items() if d}
    m.umount()
    # the chain has them byte for byte (read by another machine)
    b = mounts(machine(devnet, tmp_path, "b"), "mnt-b").mount()
    for name, data in files.items():
        assert b.path(bucket, name).read_bytes() == data, name
    b.umount()


def test_umount_waits_for_pending_uploads(devnet: Devnet, tmp_path: Path,
                                          mounts: Callable[..., Mounted]) -> None:
    m = mounts(machine(devnet, tmp_path, "a")).mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    files = {f"late-{i}.bin": os.urandom(5_000_000) for i in range(4)}
    for name, data in files.items():
        m.path(bucket, name).write_bytes(data)
    assert m.pending(), "nothing was pending at unmount; the test proves nothing"
    m.umount()
    assert m.pending() == []
    assert {k: v for k, v in m.chain_keys(bucket).items() if not k.startswith(".deossfs/")} == \
        {n: len(d) for n, d in files.items()}


def test_umount_no_wait_leaves_uploads_journaled(devnet: Devnet, tmp_path: Path,
                                                 mounts: Callable[..., Mounted]) -> None:
    config = machine(devnet, tmp_path, "a")
    m = mounts(config).mount("--no-wait")
    bucket = bucket_name()
    m.path(bucket).mkdir()
    files = {f"left-{i}.bin": os.urandom(6_000_000) for i in range(4)}
    for name, data in files.items():
        m.path(bucket, name).write_bytes(data)
    m.umount()
    left = m.pending()
    assert left, "every upload finished before the unmount; the test proves nothing"
    assert "resume at the next mount" in m.log()
    m = mounts(config, "mnt-again").mount()
    m.wait_durable()
    for name, data in files.items():
        assert m.path(bucket, name).read_bytes() == data
    assert {k for k in m.chain_keys(bucket) if not k.startswith(".deossfs/")} == set(files)
    m.umount()


def test_status_shows_a_failing_upload_until_nodes_return(scratch_devnet: Devnet, tmp_path: Path,
                                                          mounts: Callable[..., Mounted]) -> None:
    directory = tmp_path / "a"
    directory.mkdir()
    config = config_for(scratch_devnet, directory, penalty=1.0)
    m = mounts(config).mount()
    bucket = bucket_name()
    m.path(bucket).mkdir()
    m.path(bucket, "before.txt").write_text("nodes up")
    m.wait_durable()
    deossfs("devnet", "down", "--dir", str(scratch_devnet.dir))
    try:
        data = os.urandom(1_500_000)
        m.path(bucket, "waiting.bin").write_bytes(data)
        failing = wait_for(lambda: [p for p in m.pending() if p["error"]], 60,
                           "status to show the failed upload")
        assert failing[0]["path"] == f"{bucket}/waiting.bin"
        text = m.cli("status").stdout
        assert f"{bucket}/waiting.bin" in text and "retry in" in text, text
        # the data stays staged and readable
        assert m.path(bucket, "waiting.bin").read_bytes() == data
        assert state(m.path(bucket, "waiting.bin")) in ("staged", "failed", "uploading")
    finally:
        deossfs("devnet", "up", "--dir", str(scratch_devnet.dir), timeout=180)
    m.wait_durable(timeout=120)
    assert state(m.path(bucket, "waiting.bin")) == "stored"
    assert m.chain_keys(bucket)["waiting.bin"] == len(data)
    got = tmp_path / "got.bin"
    m.cli("get", f"{bucket}/waiting.bin", str(got))
    assert got.read_bytes() == data
    m.umount()
