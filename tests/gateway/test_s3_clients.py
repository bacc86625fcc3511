"""Real S3 clients against the gateway, as their users run them: the aws cli, rclone,
restic and s3fs-fuse (installed by `make install`), each with nothing but the gateway's
URL and an access key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from ..harness import wait_for
from .conftest import S3Access, random_bytes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str], cwd: Path | None = None, check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": random_bytes(300_000), "sub/deeper/c.txt": b"gamma",
             "with space.txt": b"spaced", "empty.txt": b""}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_aws_cli(s3_access: S3Access, tmp_path: Path) -> None:
    aws = [str(ROOT / ".venv" / "bin" / "aws"), "--endpoint-url", s3_access.gateway.url]
    env = s3_access.env()
    bucket = f"aws-{uuid.uuid4().hex[:8]}"
    run([*aws, "s3", "mb", f"s3://{bucket}"], env)
    source = tmp_path / "src"
    files = make_tree(source)
    run([*aws, "s3", "sync", str(source), f"s3://{bucket}/tree"], env)
    listed = run([*aws, "s3", "ls", "--recursive", f"s3://{bucket}/"], env).stdout
    assert all(f"tree/{name}" in listed for name in files)
    # a second sync moves nothing
    assert run([*aws, "s3", "sync", str(source), f"s3://{bucket}/tree"], env).stdout.strip() == ""
    back = tmp_path / "back"
    run([*aws, "s3", "cp", "--recursive", f"s3://{bucket}/tree", str(back)], env)
    assert tree(back) == tree(source)
    big = tmp_path / "big.bin"
    big.write_bytes(random_bytes(20 * 1024 * 1024))  # multipart (8 MiB parts) by default
    run([*aws, "s3", "cp", str(big), f"s3://{bucket}/big.bin"], env)
    run([*aws, "s3", "cp", f"s3://{bucket}/big.bin", str(tmp_path / "big-back.bin")], env)
    assert (tmp_path / "big-back.bin").read_bytes() == big.read_bytes()
    # s3api: multipart by hand, and a copy
    upload = json.loads(run([*aws, "s3api", "create-multipart-upload", "--bucket", bucket, "--key",
                             "manual.bin"], env).stdout)["UploadId"]
    part = tmp_path / "part"
    part.write_bytes(b"p" * 1000)
    etag = json.loads(run([*aws, "s3api", "upload-part", "--bucket", bucket, "--key", "manual.bin",
                           "--part-number", "1", "--upload-id", upload, "--body", str(part)], env).stdout)["ETag"]
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps({"Parts": [{"PartNumber": 1, "ETag": etag}]}))
    run([*aws, "s3api", "complete-multipart-upload", "--bucket", bucket, "--key", "manual.bin",
         "--upload-id", upload, "--multipart-upload", f"file://{parts}"], env)
    run([*aws, "s3api", "copy-object", "--bucket", bucket, "--key", "copied.bin", "--copy-source",
         f"{bucket}/manual.bin"], env)
    head = json.loads(run([*aws, "s3api", "head-object", "--bucket", bucket, "--key", "copied.bin"],
                          env).stdout)
    assert head["ContentLength"] == 1000
    run([*aws, "s3", "rm", "--recursive", f"s3://{bucket}"], env)
    run([*aws, "s3", "rb", f"s3://{bucket}"], env)
    assert bucket not in run([*aws, "s3", "ls"], env).stdout


def _rclone_env(s3_access: S3Access, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[gw]\ntype = s3\nprovider = Other\nenv_auth = false\n"
        f"access_key_id = {s3_access.access_key_id}\nsecret_access_key = {s3_access.secret}\n"
        f"endpoint = {s3_access.gateway.url}\nregion = us-east-1\n")
    # Debian's rclone refuses to start when AWS_CA_BUNDLE is set ("HTTPClient's transport
    # unsupported type"); the gateway is plain HTTP here, so no bundle is needed
    env = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}
    return {**env, "RCLONE_CONFIG": str(config)}


def test_rclone(s3_access: S3Access, tmp_path: Path) -> None:
    env = _rclone_env(s3_access, tmp_path)
    bucket = f"rclone-{uuid.uuid4().hex[:8]}"
    source = tmp_path / "src"
    make_tree(source)
    run(["rclone", "mkdir", f"gw:{bucket}"], env)
    run(["rclone", "copy", str(source), f"gw:{bucket}/copy"], env)
    run(["rclone", "check", "--download", str(source), f"gw:{bucket}/copy"], env)
    listed = json.loads(run(["rclone", "lsjson", "-R", f"gw:{bucket}/copy"], env).stdout)
    assert {e["Path"] for e in listed if not e["IsDir"]} == {str(p.relative_to(source))
                                                              for p in source.rglob("*") if p.is_file()}
    (source / "a.txt").write_bytes(b"changed\n")
    (source / "sub" / "b.bin").unlink()
    run(["rclone", "sync", str(source), f"gw:{bucket}/copy"], env)
    run(["rclone", "check", "--download", str(source), f"gw:{bucket}/copy"], env)
    back = tmp_path / "back"
    run(["rclone", "copy", f"gw:{bucket}/copy", str(back)], env)
    assert tree(back) == tree(source)
    run(["rclone", "purge", f"gw:{bucket}"], env)


def test_restic(s3_access: S3Access, tmp_path: Path) -> None:
    env = {**s3_access.env(), "RESTIC_PASSWORD": "a restic password",
           "RESTIC_REPOSITORY": f"s3:{s3_access.gateway.url}/restic-{uuid.uuid4().hex[:8]}",
           "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    source = tmp_path / "data"
    make_tree(source)
    (source / "large.bin").write_bytes(random_bytes(6 * 1024 * 1024))
    run(["restic", "init"], env)
    run(["restic", "backup", str(source)], env)
    run(["restic", "check", "--read-data"], env)
    target = tmp_path / "restored"
    run(["restic", "restore", "latest", "--target", str(target)], env)
    assert tree(target / source.relative_to("/")) == tree(source)


@pytest.mark.mount
def test_s3fs(s3_access: S3Access, tmp_path: Path) -> None:
    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is absent")
    env = s3_access.env()
    bucket = f"s3fs-{uuid.uuid4().hex[:8]}"
    s3_access.client().create_bucket(Bucket=bucket)
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{s3_access.access_key_id}:{s3_access.secret}\n")
    passwd.chmod(0o600)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    run(["s3fs", bucket, str(mountpoint), "-o", f"passwd_file={passwd}", "-o", f"url={s3_access.gateway.url}",
         "-o", "use_path_request_style", "-o", "sigv4", "-o", "endpoint=us-east-1"], env)
    try:
        wait_for(lambda: os.path.ismount(mountpoint), 30, "s3fs to mount")
        data = random_bytes(2 * 1024 * 1024)
        (tmp_path / "f.bin").write_bytes(data)
        shutil.copyfile(tmp_path / "f.bin", mountpoint / "f.bin")
        (mountpoint / "dir").mkdir()
        (mountpoint / "dir" / "g.txt").write_bytes(b"g")
        assert sorted(os.listdir(mountpoint)) == ["dir", "f.bin"]
        assert (mountpoint / "f.bin").read_bytes() == data
        (mountpoint / "f.bin").unlink()
        assert os.listdir(mountpoint) == ["dir"]
    finally:
        subprocess.run(["fusermount", "-u", str(mountpoint)], capture_output=True)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount", "-u", "-z", str(mountpoint)], capture_output=True)
    keys = {o["Key"] for o in s3_access.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "dir/g.txt" in keys and "f.bin" not in keys
