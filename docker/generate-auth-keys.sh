#!/usr/bin/env bash
# SuperNode authentication keys: one ECDSA P-384 key pair per SuperNode.
#
#   docker/generate-auth-keys.sh [OUT_DIR] [COUNT]
#
# OUT_DIR  where to write (default: docker/keys next to this script)
# COUNT    how many SuperNodes (default 5, one per embedded digit domain)
#
# Writes supernode-<i> (private, OpenSSH format: `--auth-supernode-private-key`; SuperNode
# <i> only) and supernode-<i>.pub (register it with the SuperLink:
# `flwr supernode register supernode-<i>.pub <connection>`).
#
# Only a folder this script creates is made private (700). An existing OUT_DIR keeps its
# mode; the private keys stay readable (644) because the containers' non-root user
# (uid 49999) reads them through single-file bind mounts, so choose a private folder.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/keys}
count=${2:-5}
case "$count" in
  ''|*[!0-9]*|0) echo "error: COUNT must be a positive integer, got '$count'" >&2; exit 2 ;;
esac

if [ ! -d "$out" ]; then
  mkdir -p "$out"
  chmod 700 "$out"
fi
for i in $(seq 1 "$count"); do
  rm -f "$out/supernode-$i" "$out/supernode-$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedmatch supernode-$i" -f "$out/supernode-$i"
  chmod 644 "$out/supernode-$i"
done
echo "wrote $count key pairs to $out (supernode-<i>, supernode-<i>.pub)"
