#!/usr/bin/env bash
# Debian packages the build needs; a no-op when they are already present.
set -euo pipefail
needed=()
pkgs=(build-essential pkg-config)
# benches/compare (etcd 3.4 + the Go gRPC load generator built against Debian's client sources):
[ "${NODEDB_BENCH_DEPS:-0}" = 1 ] && pkgs+=(etcd-server etcd-client golang-go golang-etcd-server-dev)
for pkg in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || needed+=("$pkg")
done
if [ ${#needed[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${needed[@]}"
fi
