#!/usr/bin/env bash
# The main job on the devnet: store a file and read it back, byte for byte, first with the
# CLI, then through the HTTP gateway (DeOSS's REST API, with curl), then through the FUSE
# mount, which is left mounted at DEVNET/mnt.
# Idempotent: a second run reuses the bucket and the mount.
#   usage: contrib/demo.sh [DEVNET_DIR]   (after `deossfs devnet up --dir DEVNET_DIR`)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVNET_ARG=${1:-.devnet}
DEVNET=$(cd "$DEVNET_ARG" && pwd)
export DEOSSFS_CONFIG="$DEVNET/deossfs.toml"
DEOSSFS=$ROOT/.venv/bin/deossfs
PY=$ROOT/.venv/bin/python
MNT=$DEVNET/mnt
READER_MNT=$DEVNET/mnt-reader
DURABLE_TIMEOUT=${DURABLE_TIMEOUT:-300}
WORK=$(mktemp -d)

mounted() {  # a live deossfs mount at $1
  grep -qs " $1 fuse.deossfs " /proc/self/mounts && ls "$1" >/dev/null 2>&1
}
cleanup() {
  if grep -qs " $READER_MNT fuse.deossfs " /proc/self/mounts; then
    "$DEOSSFS" umount "$READER_MNT" >/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
millis() { date +%s%3N; }
# an S3 access key to sign in to the web console with: made once, kept (0600) for the next run
CONSOLE_KEY=$DEVNET/gateway/console-key.json
console_key() {
  if [ ! -s "$CONSOLE_KEY" ] || ! $DEOSSFS gateway key ls | grep -q "^$("$PY" -c \
      'import json, sys; print(json.load(open(sys.argv[1]))["access_key_id"])' "$CONSOLE_KEY") "; then
    (umask 077 && $DEOSSFS gateway key create --json > "$CONSOLE_KEY")
  fi
  "$PY" -c 'import json, sys; k = json.load(open(sys.argv[1]))
print("access key id", k["access_key_id"], " secret", k["secret_access_key"])' "$CONSOLE_KEY"
}
xattr() { "$PY" -c 'import os, sys; print(os.getxattr(sys.argv[1], sys.argv[2]).decode())' "$@"; }

$DEOSSFS bucket info demo >/dev/null 2>&1 || $DEOSSFS bucket create demo
head -c 100000000 /dev/urandom > "$WORK/sample.bin"
echo "== put 100 MB (encrypted, 12 fragments per segment on 12 nodes)"
$DEOSSFS put "$WORK/sample.bin" demo/sample.bin
echo "== get it back"
$DEOSSFS get demo/sample.bin "$WORK/back.bin"
cmp "$WORK/sample.bin" "$WORK/back.bin" && echo "== identical: $(sha256sum < "$WORK/back.bin" | cut -c1-16)…"
$DEOSSFS ls demo

echo
GW=$(cat "$DEVNET/gateway/url" 2>/dev/null || true)
if [ -n "$GW" ] && curl -sf "$GW/version" >/dev/null; then
  echo "== the HTTP gateway at $GW (DeOSS's REST API; docs/gateway.md)"
  head -c 50000000 /dev/urandom > "$WORK/via-gateway.bin"
  start=$(millis)
  answer=$(curl -sS -X PUT "$GW/file" $($DEOSSFS gateway sign --curl) -H "Bucket: demo" \
           -F "file=@$WORK/via-gateway.bin")
  fid=$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["data"]["fid"])' <<<"$answer")
  echo "   PUT /file of 50 MB: durable after $(( $(millis) - start )) ms, fid ${fid:0:16}…"
  curl -sSf "$GW/file/download/$fid" $($DEOSSFS gateway sign --curl) -o "$WORK/gateway-back.bin"
  cmp "$WORK/via-gateway.bin" "$WORK/gateway-back.bin" && echo "   GET /file/download: identical"
  curl -sSf "$GW/file/download/$fid" $($DEOSSFS gateway sign --curl) -H "Range: bytes=1000-1999" \
    -o "$WORK/range.bin"
  cmp <(tail -c +1001 "$WORK/via-gateway.bin" | head -c 1000) "$WORK/range.bin" \
    && echo "   a 1000-byte Range: identical (206, one segment fetched)"
  echo "   the mount and the CLI see it too: $($DEOSSFS ls demo | grep -c via-gateway.bin) object named via-gateway.bin in demo/"
  console_key >/dev/null
  echo "   the web console: $GW/console/ (docs/console.md); its sign-in key is printed at the end"
else
  echo "== no gateway on this devnet (start one with: deossfs devnet up --dir $DEVNET_ARG --gateway)"
fi

echo
if mounted "$MNT"; then
  echo "== $DEVNET_ARG/mnt is mounted already: reusing it"
else
  # a dead mount left by a killed mount process is cleared by `deossfs mount` itself
  grep -qs " $MNT " /proc/self/mounts || mkdir -p "$MNT"
  echo "== mount the devnet at $DEVNET_ARG/mnt (buckets are directories, objects are files)"
  $DEOSSFS mount "$MNT"
fi
ls -l "$MNT"
df -h "$MNT" | sed 's/^/   /'

head -c 100000000 /dev/urandom > "$WORK/mounted.bin"
echo "== cp a 100 MB file into $DEVNET_ARG/mnt/demo/"
start=$(millis)
cp "$WORK/mounted.bin" "$MNT/demo/mounted.bin"
echo "   cp returned after $(( $(millis) - start )) ms: journaled, state $(xattr "$MNT/demo/mounted.bin" user.deossfs.state); the upload runs in the background"
$DEOSSFS status | sed 's/^/   /'

echo "== wait until deossfs status shows nothing pending (at most ${DURABLE_TIMEOUT}s)"
deadline=$(( $(date +%s) + DURABLE_TIMEOUT ))
# (the output is captured first: with pipefail, grep -q closing the pipe early could fail it)
until status=$($DEOSSFS status) && grep -q "^no pending uploads" <<<"$status"; do
  if (( $(date +%s) > deadline )); then
    echo "uploads still pending after ${DURABLE_TIMEOUT}s:" >&2
    $DEOSSFS status >&2
    echo "see $DEVNET/workspace/mount.log" >&2
    exit 1
  fi
  sleep 1
done
echo "   durable after $(( $(millis) - start )) ms: state $(xattr "$MNT/demo/mounted.bin" user.deossfs.state), fid $(xattr "$MNT/demo/mounted.bin" user.deossfs.fid | cut -c1-16)…"

echo "== read it back through the mount"
cmp "$WORK/mounted.bin" "$MNT/demo/mounted.bin"
echo "   identical: $(sha256sum < "$MNT/demo/mounted.bin" | cut -c1-16)… (this mount still holds the staged copy, so this read is local)"

# The same key on another machine: a second mount with an empty workspace and cache reads
# the file lazily from the network, segment by segment.
echo "== read it as another machine would: a second mount with an empty workspace and cache"
rm -rf "$DEVNET/workspace-reader"
"$PY" - "$DEOSSFS_CONFIG" "$DEVNET/reader.toml" "$DEVNET/workspace-reader" <<'EOF'
import sys
from pathlib import Path

from deossfs.config import load_config, write_config

config = load_config(sys.argv[1])
config.workspace = Path(sys.argv[3])
config.cache.dir = Path(sys.argv[3]) / "cache"
write_config(config, Path(sys.argv[2]))
EOF
mkdir -p "$READER_MNT"
$DEOSSFS --config "$DEVNET/reader.toml" mount "$READER_MNT" >/dev/null
start=$(millis)
cmp "$WORK/mounted.bin" "$READER_MNT/demo/mounted.bin"
echo "   identical, read cold from the network in $(( $(millis) - start )) ms"
$DEOSSFS umount "$READER_MNT" >/dev/null
rmdir "$READER_MNT"

echo
echo "devnet running, mounted at $DEVNET_ARG/mnt (log: $DEVNET_ARG/workspace/mount.log)"
if [ -n "$GW" ]; then
  echo "gateway at $GW (log: $DEVNET_ARG/gateway/gateway.log); sign requests with: deossfs gateway sign --curl"
  echo "web console at $GW/console/ - sign in with $(console_key)"
  echo "   (kept in $DEVNET_ARG/gateway/console-key.json; more keys: deossfs gateway key create)"
fi
echo "unmount with: .venv/bin/deossfs umount $DEVNET_ARG/mnt   (waits for pending uploads)"
echo "stop everything with: make devnet-down   (unmounts, then stops the nodes)"
