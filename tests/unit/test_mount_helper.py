"""mount.deossfs: mount(8)'s helper arguments → the `deossfs mount` command (no mount)."""

from __future__ import annotations

import os

import pytest

from deossfs.fs.mount_helper import UsageError, main, parse_args, parse_options


def test_fstab_line_options() -> None:
    inv = parse_args(["/etc/deossfs/config.toml", "/mnt/cess", "-o", "rw,_netdev,allow_other"])
    assert inv.source == "/etc/deossfs/config.toml"
    assert inv.mountpoint == "/mnt/cess"
    assert inv.mount_args == ["--allow-other"]
    assert inv.command("/venv/bin/python") == [
        "/venv/bin/python", "-m", "deossfs", "--config", "/etc/deossfs/config.toml",
        "mount", "--allow-other", "/mnt/cess",
    ]


def test_all_deossfs_options() -> None:
    inv = parse_args(["cfg.toml", "/mnt/x", "-o", "no_wait,foreground,allow_other,log_file=/var/log/d.log"])
    assert inv.mount_args == ["--no-wait", "--foreground", "--allow-other", "--log-file", "/var/log/d.log"]


@pytest.mark.parametrize("option", [
    "_netdev", "rw", "defaults", "nofail", "noauto", "auto", "user", "users", "user=alice",
    "x-systemd.automount", "x-systemd.mount-timeout=30", "x-systemd.requires=network-online.target",
    "nosuid", "nodev", "comment=cess",
])
def test_ignored_options(option: str) -> None:
    assert parse_args(["c.toml", "/m", "-o", option]).mount_args == []


def test_no_options_and_empty_items() -> None:
    assert parse_args(["c.toml", "/m"]).mount_args == []
    assert parse_args(["c.toml", "/m", "-o", ",allow_other,,"]).mount_args == ["--allow-other"]


def test_repeated_option_given_once() -> None:
    assert parse_args(["c.toml", "/m", "-o", "allow_other", "-o", "allow_other"]).mount_args == ["--allow-other"]


def test_attached_o_and_flags_anywhere() -> None:
    inv = parse_args(["-n", "c.toml", "-oallow_other", "/m", "-v"])
    assert (inv.source, inv.mountpoint, inv.mount_args, inv.verbose) == ("c.toml", "/m", ["--allow-other"], True)
    assert inv.command("py")[:6] == ["py", "-m", "deossfs", "--config", os.path.abspath("c.toml"), "-v"]


def test_type_argument_is_accepted() -> None:
    assert parse_args(["c.toml", "/m", "-t", "fuse.deossfs", "-o", "rw"]).mount_args == []


def test_combined_flags() -> None:
    inv = parse_args(["c.toml", "/m", "-fnv"])
    assert inv.fake and inv.verbose


def test_relative_source_becomes_absolute() -> None:
    cmd = parse_args(["conf/deossfs.toml", "/m"]).command("py")
    assert cmd[4] == os.path.abspath("conf/deossfs.toml")


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(UsageError, match="unknown mount option 'noexec'"):
        parse_args(["c.toml", "/m", "-o", "allow_other,noexec"])


def test_sloppy_mode_ignores_unknown_options() -> None:
    inv = parse_args(["c.toml", "/m", "-s", "-o", "noexec,allow_other"])
    assert inv.mount_args == ["--allow-other"]
    assert inv.warnings == ["ignoring unknown option 'noexec'"]


def test_read_only_is_refused_even_when_sloppy() -> None:
    with pytest.raises(UsageError, match="read-only"):
        parse_args(["c.toml", "/m", "-s", "-o", "ro"])


def test_value_option_needs_a_value() -> None:
    with pytest.raises(UsageError, match="needs a value"):
        parse_options(["log_file"])
    with pytest.raises(UsageError, match="unknown mount option 'allow_other=1'"):
        parse_options(["allow_other=1"])


@pytest.mark.parametrize("argv", [[], ["c.toml"], ["c.toml", "/m", "extra"], ["c.toml", "/m", "-o"],
                                  ["c.toml", "/m", "-x"]])
def test_bad_invocations(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_main_prints_one_error_line_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["c.toml", "/m", "-o", "bogus"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("mount.deossfs: error: unknown mount option 'bogus'")


def test_main_missing_config_file(tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([os.path.join(tmp_path, "none.toml"), "/m"])
    assert exit_info.value.code == 1
    assert "does not exist" in capsys.readouterr().err


def test_main_fake_mount_prints_the_command(tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]) -> None:
    config = os.path.join(tmp_path, "config.toml")
    open(config, "w").close()
    with pytest.raises(SystemExit) as exit_info:
        main([config, "/mnt/cess", "-f", "-o", "_netdev,allow_other"])
    assert exit_info.value.code == 0
    err = capsys.readouterr().err
    assert f"-m deossfs --config {config} mount --allow-other /mnt/cess" in err
