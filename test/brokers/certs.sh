#!/usr/bin/env bash
# Test certificates for the TLS modes of ctl.sh, made with the openssl CLI
# (EC P-256: fast). Nothing here is secret; they live for one test run.
#
#   certs.sh DIR      makes in DIR (created if missing):
#
#   ca.pem ca.key                      the test CA
#   server.pem server.key              a server cert signed by the CA:
#                                      CN localhost, SAN DNS:localhost IP:127.0.0.1
#   untrusted-ca.pem untrusted-ca.key  another CA, trusted by nobody
#   untrusted.pem untrusted.key        a server cert signed by that other CA
#                                      (same names as server.pem)
#   wrong-name.pem wrong-name.key      signed by the CA, for other.example only
#                                      (SAN DNS:other.example, no IP)
#   client.pem client.key              a client cert signed by the CA
#                                      (CN postgres: PostgreSQL's user name)
#
# Every cert is valid for 30 days from now. Keys are 0600. As root,
# the server keys (server, untrusted, wrong-name) belong to the `postgres`
# user, as PostgreSQL demands of its key file; client.key and the CA keys
# stay with the caller (libpq wants a client key owned by the user running
# it, or root). DIR is opened to everyone (a+rx): the certs are public and
# PostgreSQL must reach them.
set -euo pipefail

die() {
  echo "certs.sh: $*" >&2
  exit 1
}

[[ $# -eq 1 ]] || {
  sed -n '2,19p' "$0" >&2
  exit 2
}
command -v openssl >/dev/null || die "openssl not installed (apt-get install openssl)"

dir=$1
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
work=$(mktemp -d "$dir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

key() { # FILE
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null) ||
    die "cannot make a key in $1"
}

ca() { # NAME CN
  key "$dir/$1.key"
  openssl req -new -x509 -key "$dir/$1.key" -out "$dir/$1.pem" -days 30 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ||
    die "cannot make CA $1"
}

# signed NAME CA CN EXTENSIONS...: a leaf certificate NAME.pem/NAME.key
# signed by CA.pem/CA.key with the given extension lines.
signed() {
  local name=$1 issuer=$2 cn=$3
  shift 3
  key "$dir/$name.key"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" "$@" \
    >"$work/$name.ext"
  openssl req -new -key "$dir/$name.key" -subj "/CN=$cn" -out "$work/$name.csr" 2>/dev/null ||
    die "cannot make the request of $name"
  # A random serial: certs of several runs never share issuer and serial.
  openssl x509 -req -in "$work/$name.csr" -CA "$dir/$issuer.pem" -CAkey "$dir/$issuer.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$work/$name.ext" \
    -out "$dir/$name.pem" 2>/dev/null ||
    die "cannot sign $name"
}

ca ca "Yggdrasil test CA"
ca untrusted-ca "Yggdrasil untrusted test CA"
server_ext=("extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1")
signed server ca localhost "${server_ext[@]}"
signed untrusted untrusted-ca localhost "${server_ext[@]}"
signed wrong-name ca other.example "extendedKeyUsage=serverAuth" "subjectAltName=DNS:other.example"
signed client ca postgres "extendedKeyUsage=clientAuth"

chmod 644 "$dir"/*.pem
chmod 600 "$dir"/*.key
chmod a+rx "$dir"
if ((EUID == 0)) && id postgres >/dev/null 2>&1; then
  chown postgres: "$dir/server.key" "$dir/untrusted.key" "$dir/wrong-name.key"
fi

# What the tests rely on.
openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" "$dir/wrong-name.pem" "$dir/client.pem" >/dev/null ||
  die "the CA does not verify its own certs"
if openssl verify -CAfile "$dir/ca.pem" "$dir/untrusted.pem" >/dev/null 2>&1; then
  die "untrusted.pem verifies against ca.pem"
fi
