#!/usr/bin/env bash
# SuperNode authentication keys: one ECDSA P-384 key pair per SuperNode.
#
#   docker/generate-auth-keys.sh [OUT_DIR] [COUNT]
#
# OUT_DIR  where to write (default: docker/keys next to this script)
# COUNT    how many SuperNodes, 1..1000 (default 5, one per embedded digit domain)
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
# An explicit empty argument (an unset variable, say) is refused, not taken as the default.
out=${1-$here/keys}
count=${2-5}

die() { echo "error: $*" >&2; exit 2; }

# Leading zeros are allowed; the length check comes first because bash arithmetic silently
# wraps past 2^63.
case "$count" in ''|*[!0-9]*) die "COUNT must be a positive integer (1..1000), got '$count'" ;; esac
if [ "${#count}" -gt 9 ] || [ $((10#$count)) -lt 1 ] || [ $((10#$count)) -gt 1000 ]; then
  die "COUNT must be a positive integer (1..1000), got '$count'"
fi
count=$((10#$count))

[ -n "$out" ] || die "OUT_DIR is empty: omit it for $here/keys, or name a folder"
if { [ -e "$out" ] || [ -L "$out" ]; } && [ ! -d "$out" ]; then
  die "OUT_DIR '$out' exists and is not a folder"
fi
# mkdir, rm and ssh-keygen would read a leading '-' as an option.
case "$out" in -*) out=./$out ;; esac

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
