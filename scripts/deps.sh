#!/usr/bin/env bash
# Install the Debian packages tollgate needs to build, run and test, when
# missing.  Needs root (or sudo) only when something is missing.
set -euo pipefail
pkgs=(gcc make pkg-config ca-certificates curl openssl
      libevent-dev libssl-dev libcjson-dev libpq-dev libhiredis-dev libpcre2-dev libopenblas-dev
      postgresql redis-server python3 python3-psycopg2 chromium)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq || true
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the system-wide services on install; tollgate runs its own
# private ones under var/, so leave the system's alone (they use other ports).
