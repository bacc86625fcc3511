#!/usr/bin/env bash
# The main job on the devnet: store a file and read it back, byte for byte.
set -euo pipefail
DEVNET=${1:-.devnet}
export DEOSSFS_CONFIG="$(cd "$DEVNET" && pwd)/deossfs.toml"
DEOSSFS=.venv/bin/deossfs
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$DEOSSFS bucket info demo >/dev/null 2>&1 || $DEOSSFS bucket create demo
head -c 100000000 /dev/urandom > "$WORK/sample.bin"
echo "== put 100 MB (encrypted, 12 fragments per segment on 12 nodes)"
$DEOSSFS put "$WORK/sample.bin" demo/sample.bin
echo "== get it back"
$DEOSSFS get demo/sample.bin "$WORK/back.bin"
cmp "$WORK/sample.bin" "$WORK/back.bin" && echo "== identical: $(sha256sum < "$WORK/back.bin" | cut -c1-16)…"
$DEOSSFS ls demo
echo "devnet still running; stop it with: .venv/bin/deossfs devnet down --dir $DEVNET"
