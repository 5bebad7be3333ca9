#!/usr/bin/env bash
# `make demo`: start a local cluster from the release build, store a file, list it, read it
# back, verify it, show status, and say how to go on and how to stop.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/release/collective"
DIR="$PWD/demo"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

if [ -f "$DIR/cluster.json" ]; then
  "$BIN" dev down --dir "$DIR" >/dev/null 2>&1 || true
fi
# Certificates live under certs/ (git-ignored), the rest of the cluster under demo/.
mkdir -p certs
rm -rf "$DIR"
mkdir -p "$DIR"
echo "== starting a local cluster: 1 coordinator, 3 storage nodes, 2 copies of every chunk"
"$BIN" dev up --dir "$DIR" --nodes 3 --replication 2
ln -sfn "$DIR/certs" certs/demo
ln -sfn "$DIR/ca" certs/demo-ca
export COLLECTIVE_CONFIG="$DIR/client.toml"

SAMPLE="$DIR/sample.bin"
head -c $((20 * 1024 * 1024)) /dev/urandom > "$SAMPLE"
echo
echo "== storing a 20 MiB file"
"$BIN" put "$SAMPLE" /demo/sample.bin
echo
echo "== listing"
"$BIN" ls -l /demo
echo
echo "== reading it back and verifying"
"$BIN" get /demo/sample.bin "$DIR/sample.back"
if cmp -s "$SAMPLE" "$DIR/sample.back"; then
  echo "verified: the copy read back is byte-for-byte identical"
else
  echo "MISMATCH: the copy read back differs" >&2
  exit 1
fi
echo
echo "== status"
"$BIN" status
cat <<EOT

The cluster keeps running. Go on with:
  export COLLECTIVE_CONFIG=$DIR/client.toml
  $BIN put -r ~/Pictures /pictures
  $BIN ls -l /
  $BIN status
Certificates are in $DIR/certs (linked from certs/demo), logs in $DIR/logs.
Stop it with:
  make demo-down        (or: $BIN dev down --dir $DIR)
EOT
