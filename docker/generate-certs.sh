#!/usr/bin/env bash
# A CA and one server certificate for Flower's TLS (SuperLink, and SuperNode Runtime APIs).
#
#   docker/generate-certs.sh [OUT_DIR] [SAN ...]
#
# OUT_DIR  where to write (default: docker/certs next to this script)
# SAN      extra subjectAltName entries for the machines' real names, for example
#          DNS:superlink.example.org IP:10.0.0.5
#
# Writes ca.crt (give it to every SuperNode and `flwr` user), ca.key (keep it
# offline), server.pem and server.key (for the SuperLink). The certificate names
# localhost, 127.0.0.1, ::1 and the docker-compose.yml service names (superlink,
# supernode-1..5), so the compose TLS overlay and loopback deployments work as is.
# Keys are ECDSA P-256; CERT_DAYS (default 365) sets the validity.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/certs}
if [ "$#" -gt 0 ]; then shift; fi
days=${CERT_DAYS:-365}

sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:superlink"
for i in 1 2 3 4 5; do sans="$sans,DNS:supernode-$i"; done
for extra in "$@"; do
  case "$extra" in
    DNS:?*|IP:?*) sans="$sans,$extra" ;;
    *) echo "error: SAN '$extra' must look like DNS:<name> or IP:<address>" >&2; exit 2 ;;
  esac
done

mkdir -p "$out"
# The folder keeps other users of this machine out; the files inside stay readable
# so that the containers' non-root user (uid 49999) can read the bind-mounted key.
chmod 700 "$out"
cd "$out"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.crt -days "$days" -subj "/CN=fedmatch CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout server.key -out server.csr -subj "/CN=superlink" 2>/dev/null

extfile=$(mktemp)
trap 'rm -f "$extfile" server.csr ca.srl' EXIT
cat > "$extfile" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out server.pem -days "$days" -extfile "$extfile" 2>/dev/null

chmod 600 ca.key
chmod 644 ca.crt server.pem server.key
echo "wrote $out/{ca.crt,ca.key,server.pem,server.key} for $sans"
