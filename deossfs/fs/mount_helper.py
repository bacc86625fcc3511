"""`mount.deossfs`: the mount(8) helper, so `mount -t deossfs` and /etc/fstab work.

mount(8) runs `/sbin/mount.deossfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`; SOURCE is the
deossfs config file. The helper turns that into
`python -m deossfs --config SOURCE mount [flags] MOUNTPOINT` and execs it, so the exit
status is deossfs's own. docs/mounting.md has the fstab line.

This module must stay importable without pyfuse3 (it only builds a command line).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

PROG = "mount.deossfs"

#: options that become flags of `deossfs mount`
FLAG_OPTIONS = {
    "allow_other": "--allow-other",
    "no_wait": "--no-wait",
    "foreground": "--foreground",
}
#: options with a value that become `deossfs mount` options
VALUE_OPTIONS = {"log_file": "--log-file"}
#: options meant for mount(8), systemd or fstab itself; nothing for deossfs to do.
#: nosuid and nodev are always in force on a FUSE mount.
IGNORED_OPTIONS = {"_netdev", "rw", "defaults", "nofail", "noauto", "auto", "user", "users",
                   "nosuid", "nodev"}
#: prefixes of ignored options: `x-systemd.*` and other userspace-only `x-*`, `comment=`,
#: and `user=NAME` (added by mount(8) when a user mounts a `user` entry)
IGNORED_PREFIXES = ("x-", "comment=", "user=")
#: options that are understood but refused, with why
REFUSED_OPTIONS = {
    "ro": "deossfs has no read-only mode; mount it rw (the default)",
}

USAGE = f"usage: {PROG} CONFIG_FILE MOUNTPOINT [-sfnv] [-o opt[,opt...]]"


class UsageError(Exception):
    """A bad invocation: one line for stderr, exit status 1."""


@dataclass
class Invocation:
    source: str
    mountpoint: str
    #: arguments of `deossfs mount` before MOUNTPOINT
    mount_args: list[str] = field(default_factory=list)
    verbose: bool = False
    fake: bool = False
    #: options ignored although unknown (sloppy mode, -s)
    warnings: list[str] = field(default_factory=list)

    def command(self, python: str = sys.executable) -> list[str]:
        """The deossfs command line this invocation runs."""
        args = [python, "-m", "deossfs", "--config", os.path.abspath(self.source)]
        if self.verbose:
            args.append("-v")
        return [*args, "mount", *self.mount_args, self.mountpoint]


def parse_options(options: Sequence[str], sloppy: bool = False) -> tuple[list[str], list[str]]:
    """`-o` option strings → (`deossfs mount` arguments, warnings). Raises UsageError."""
    flags: list[str] = []
    warnings: list[str] = []
    for text in options:
        for option in text.split(","):
            option = option.strip()
            if not option or option in IGNORED_OPTIONS or option.startswith(IGNORED_PREFIXES):
                continue
            name, has_value, value = option.partition("=")
            if name in FLAG_OPTIONS and not has_value:
                if FLAG_OPTIONS[name] not in flags:
                    flags.append(FLAG_OPTIONS[name])
            elif name in VALUE_OPTIONS:
                if not value:
                    raise UsageError(f"option {name!r} needs a value: {name}=PATH")
                flags += [VALUE_OPTIONS[name], value]
            elif option in REFUSED_OPTIONS:
                raise UsageError(f"option {option!r}: {REFUSED_OPTIONS[option]}")
            elif sloppy:
                warnings.append(f"ignoring unknown option {option!r}")
            else:
                known = ", ".join([*FLAG_OPTIONS, *(f"{n}=PATH" for n in VALUE_OPTIONS)])
                raise UsageError(f"unknown mount option {option!r} (deossfs takes {known}; "
                                 "fstab's _netdev, nofail, noauto, user, x-systemd.* are ignored)")
    return flags, warnings


def parse_args(argv: Sequence[str]) -> Invocation:
    """mount(8)'s helper arguments (without the program name) → Invocation."""
    positional: list[str] = []
    options: list[str] = []
    sloppy = verbose = fake = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional += args[i:]
            break
        if arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg == "-o" or arg == "-t":
            if i >= len(args):
                raise UsageError(f"{arg} needs a value")
            if arg == "-o":
                options.append(args[i])
            # -t TYPE[.SUBTYPE]: mount(8) tells us the type; we are deossfs whatever it says
            i += 1
        elif arg.startswith("-") and len(arg) > 1:
            for letter in arg[1:]:
                if letter == "s":
                    sloppy = True
                elif letter == "f":
                    fake = True
                elif letter == "v":
                    verbose = True
                elif letter == "n":
                    pass  # no /etc/mtab to write: the kernel's table is the only one
                else:
                    raise UsageError(f"unknown flag -{letter}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError(USAGE)
    source, mountpoint = positional
    flags, warnings = parse_options(options, sloppy=sloppy)
    return Invocation(source, mountpoint, flags, verbose=verbose, fake=fake, warnings=warnings)


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        print("  CONFIG_FILE  the deossfs config file (e.g. /etc/deossfs/config.toml)")
        print("  options      allow_other, no_wait, foreground, log_file=PATH; ignored: "
              "_netdev, rw, defaults, nofail, noauto, auto, user, x-*")
        sys.exit(0)
    try:
        invocation = parse_args(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    for warning in invocation.warnings:
        print(f"{PROG}: {warning}", file=sys.stderr)
    if not os.path.isfile(invocation.source):
        print(f"{PROG}: error: config file {invocation.source} does not exist (the fstab source "
              "is the deossfs config file)", file=sys.stderr)
        sys.exit(1)
    command = invocation.command()
    if invocation.verbose or invocation.fake:
        print(" ".join(command), file=sys.stderr)
    if invocation.fake:
        sys.exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
