#!/usr/bin/env bash
# Debian packages the build needs; a no-op when they are already present.
set -euo pipefail
needed=()
pkgs=(build-essential pkg-config)
# promtool (`promtool check metrics` / `check rules` in tests/multiprocess/test_metrics_promtool.py):
# Debian ships it only in the server's package.
pkgs+=(prometheus)
# `cargo test` links the pyo3 binding's unit tests against libpython: Debian's interpreter needs
# its development package for that (pyenv/venv interpreters built shared ship the library).
py_lib=$(python3 -c 'import os, sysconfig as s; print(os.path.join(s.get_config_var("LIBDIR") or "", s.get_config_var("LDLIBRARY") or ""))')
[ -e "$py_lib" ] || pkgs+=(python3-dev)
# `ip`, `tc` and `unshare`: the chaos harness's partitions and the slow-link test's rate limit,
# in network namespaces of their own (tests/multiprocess/test_faults_chaos.py, test_slow_link.py).
pkgs+=(iproute2 util-linux)
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
