#!/usr/bin/env bash
# A CA, the SuperLink's server certificate, and one Runtime API certificate per SuperNode.
#
#   docker/generate-certs.sh [OUT_DIR] [SAN ...]
#
# OUT_DIR  where to write (default: docker/certs next to this script)
# SAN      extra subjectAltName entries of the SuperLink certificate, for the name or address
#          other machines use to reach it: DNS:<name> (letters, digits, '.', '-') or
#          IP:<IPv4 or IPv6 address>, e.g. DNS:superlink.example.org IP:10.0.0.5
#
# Writes
#   ca.crt                     the CA: give it to every SuperNode, SuperExec and `flwr` user
#   ca.key                     the CA's key: keep it offline (mode 600)
#   server.pem, server.key     the SuperLink only (names superlink, localhost, 127.0.0.1, ::1)
#   supernode-<i>-runtime.pem, supernode-<i>-runtime.key
#                              SuperNode <i> only: its Runtime API, which its ClientApp
#                              SuperExec reaches (names supernode-<i>, localhost, 127.0.0.1, ::1)
# Keys are ECDSA P-256. CERT_DAYS (1..36500, default 365) sets the validity in days,
# SUPERNODES (0..1000, default 5, one per embedded digit domain) how many SuperNode certificates.
#
# Only a folder this script creates is made private (700). An existing OUT_DIR keeps its
# mode; the key files stay readable (644) because the containers' non-root user (uid 49999)
# reads them through single-file bind mounts, so choose a private folder.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# An explicit empty OUT_DIR (an unset variable, say) is refused, not taken as the default.
out=${1-$here/certs}
if [ "$#" -gt 0 ]; then shift; fi
days=${CERT_DAYS:-365}
supernodes=${SUPERNODES:-5}

die() { echo "error: $*" >&2; exit 2; }

# in_range NAME VALUE MIN MAX: VALUE is a decimal integer in MIN..MAX (leading zeros allowed;
# the length check comes first because bash arithmetic silently wraps past 2^63).
in_range() {
  case "$2" in ''|*[!0-9]*) die "$1 must be an integer in $3..$4, got '$2'" ;; esac
  if [ "${#2}" -gt 9 ] || [ $((10#$2)) -lt "$3" ] || [ $((10#$2)) -gt "$4" ]; then
    die "$1 must be an integer in $3..$4, got '$2'"
  fi
}
in_range CERT_DAYS "$days" 1 36500
in_range SUPERNODES "$supernodes" 0 1000
days=$((10#$days))
supernodes=$((10#$supernodes))

[ -n "$out" ] || die "OUT_DIR is empty: omit it for $here/certs, or name a folder"
if { [ -e "$out" ] || [ -L "$out" ]; } && [ ! -d "$out" ]; then
  die "OUT_DIR '$out' exists and is not a folder"
fi
# mkdir and cd would read a leading '-' as an option.
case "$out" in -*) out=./$out ;; esac

# Every SAN is checked before anything is written: the entries go into an openssl config
# file, where a ',' or a newline would add names or directives the user did not ask for.
dns_label='[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?'
valid_ip() {
  # Digits, hex, ':' and '.' only, so that an IPv6 scope ("%...") cannot smuggle text in.
  [[ $1 =~ ^[0-9A-Fa-f:.]+$ ]] || return 1
  python3 -c 'import ipaddress, sys; ipaddress.ip_address(sys.argv[1])' "$1" 2>/dev/null
}
link_sans="DNS:superlink,DNS:localhost,IP:127.0.0.1,IP:::1"
for extra in "$@"; do
  case "$extra" in
    DNS:*)
      name=${extra#DNS:}
      if [[ ${#name} -gt 253 || ! $name =~ ^${dns_label}(\.${dns_label})*$ ]]; then
        die "SAN '$extra': a DNS name has labels of letters, digits and '-' separated by '.'"
      fi
      IFS=. read -ra labels <<< "$name"
      for label in "${labels[@]}"; do
        [ "${#label}" -le 63 ] || die "SAN '$extra': a DNS label has at most 63 characters"
      done ;;
    IP:*)
      valid_ip "${extra#IP:}" || die "SAN '$extra': not an IPv4 or IPv6 address" ;;
    *) die "SAN '$extra' must look like DNS:<name> or IP:<address>" ;;
  esac
  link_sans="$link_sans,$extra"
done

if [ ! -d "$out" ]; then
  mkdir -p "$out"
  chmod 700 "$out"
fi
cd "$out"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.crt -days "$days" -subj "/CN=fedmatch CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
chmod 600 ca.key
chmod 644 ca.crt

# sign NAME CN SANS: NAME.key and NAME.pem, a server certificate signed by the CA.
sign() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$tmp/$1.csr" -subj "/CN=$2" 2>/dev/null
  cat > "$tmp/$1.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$3
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EXT
  openssl x509 -req -in "$tmp/$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -CAserial "$tmp/ca.srl" -out "$1.pem" -days "$days" -extfile "$tmp/$1.ext" 2>/dev/null
  chmod 644 "$1.key" "$1.pem"
}

sign server superlink "$link_sans"
for i in $(seq 1 "$supernodes"); do
  sign "supernode-$i-runtime" "supernode-$i" "DNS:supernode-$i,DNS:localhost,IP:127.0.0.1,IP:::1"
done
echo "wrote $out: ca.crt, ca.key, server.pem/.key ($link_sans)," \
  "supernode-<i>-runtime.pem/.key for i = 1..$supernodes"
