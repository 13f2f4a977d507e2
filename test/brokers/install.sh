#!/usr/bin/env bash
# Installs the brokers the tests run as private instances (test/brokers/ctl.sh)
# and their command-line clients, from Debian, when missing. Debian's packages
# would start a system-wide server each; the tests never use those, so they
# are kept from starting: policy-rc.d answering 101 ("action forbidden") is
# what invoke-rc.d and deb-systemd-invoke ask before starting a service.
set -euo pipefail

PACKAGES=(redis-server redis-tools postgresql postgresql-client rabbitmq-server amqp-tools)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0

((EUID == 0)) || {
  echo "install.sh: need root to install ${missing[*]} (or set YGG_SKIP_BROKERS=1)" >&2
  exit 1
}

echo "==> installing brokers from Debian (services not started): ${missing[*]}"
POLICY=/usr/sbin/policy-rc.d
saved=""
if [[ -e $POLICY ]]; then
  saved=$(mktemp)
  cp -p "$POLICY" "$saved"
fi
restore_policy() {
  if [[ -n $saved ]]; then mv -f "$saved" "$POLICY"; else rm -f "$POLICY"; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' >"$POLICY"
chmod 755 "$POLICY"

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
