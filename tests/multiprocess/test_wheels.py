"""The release wheels as a user gets them: tags, sizes and licenses of the files in dist/, then per
supported CPython a fresh venv outside the source tree, `pip install` of the wheels (dependencies
from PyPI) and `nodedb-cluster demo` run from that venv.

CI's install step builds dist/ with scripts/build-wheels.sh; a missing wheel is built here.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
PYTHONS = os.environ.get("NODEDB_WHEEL_PYTHONS", "3.11 3.12 3.13").split()
MAX_WHEEL_BYTES = 10 * 1024 * 1024
BUILD_TIMEOUT_S = 1800.0
INSTALL_TIMEOUT_S = 300.0
DEMO_TIMEOUT_S = 180.0


def _core_wheel() -> Path | None:
    found = sorted(DIST.glob("nodedb_cluster_core-*-cp311-abi3-*manylinux_2_17_x86_64*.whl"))
    return found[-1] if found else None


def _package_wheel(version: str) -> Path | None:
    tag = "cp" + version.replace(".", "")
    found = sorted(DIST.glob(f"nodedb_cluster-*-{tag}-{tag}-*manylinux_2_17_x86_64*.whl"))
    return found[-1] if found else None


def _find_python(version: str) -> str:
    """python3.X on PATH if it runs, else pyenv's latest 3.X (the build script's rule)."""
    on_path = shutil.which(f"python{version}")
    candidates = [on_path] if on_path else []
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=True)
        versions = Path(root.stdout.strip()) / "versions"
        found = sorted(
            versions.glob(f"{version}.*/bin/python{version}"),
            key=lambda p: [int(part) for part in p.parts[-3].split(".")[:3] if part.isdigit()],
        )
        candidates += [str(p) for p in reversed(found)]
    for candidate in candidates:
        if subprocess.run([candidate, "-c", ""], capture_output=True, check=False).returncode == 0:
            return candidate
    pytest.fail(f"no Python {version} (python{version} on PATH, or pyenv)")


@pytest.fixture(scope="module")
def wheels() -> dict[str, Path]:
    """{"core": core wheel, "3.X": package wheel for CPython 3.X}, built when one is missing."""
    if _core_wheel() is None or any(_package_wheel(v) is None for v in PYTHONS):
        subprocess.run(
            [str(ROOT / "scripts" / "build-wheels.sh")], timeout=BUILD_TIMEOUT_S, check=True
        )
    core = _core_wheel()
    assert core is not None, "build-wheels.sh made no abi3 manylinux_2_17 core wheel"
    found: dict[str, Path] = {"core": core}
    for version in PYTHONS:
        wheel = _package_wheel(version)
        assert wheel is not None, f"build-wheels.sh made no manylinux_2_17 wheel for {version}"
        found[version] = wheel
    return found


def _elf_section_names(elf: bytes) -> set[str]:
    """The section names of a 64-bit little-endian ELF file (a string search would also find the
    names that Rust's backtrace code carries as data)."""
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [shoff + i * shentsize for i in range(shnum)]
    strtab_offset, strtab_size = struct.unpack_from("<QQ", elf, headers[shstrndx] + 0x18)
    strtab = elf[strtab_offset : strtab_offset + strtab_size]
    names = set()
    for header in headers:
        (name_at,) = struct.unpack_from("<I", elf, header)
        names.add(strtab[name_at : strtab.index(b"\0", name_at)].decode())
    return names


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user's shell with the venv activated: nothing of this test's venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_wheels_are_small_tagged_and_licensed(wheels: dict[str, Path]) -> None:
    for name, wheel in wheels.items():
        assert wheel.stat().st_size <= MAX_WHEEL_BYTES, f"{wheel.name}: over 10 MB"
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), wheel.name
            tags = zf.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
            libraries = [zf.read(n) for n in names if n.endswith(".so")]
        assert len(libraries) == 1, wheel.name
        # Stripped: the core's debug line tables were 85 % of its library.
        sections = _elf_section_names(libraries[0])
        assert ".text" in sections, sections
        assert not {s for s in sections if s.startswith(".debug") or s == ".symtab"}, sections
        if name == "core":
            assert "Tag: cp311-abi3-manylinux_2_17_x86_64" in tags, tags
        else:
            tag = "cp" + name.replace(".", "")
            assert f"Tag: {tag}-{tag}-manylinux_2_17_x86_64" in tags, tags


@pytest.mark.timeout(BUILD_TIMEOUT_S + INSTALL_TIMEOUT_S + DEMO_TIMEOUT_S + 120)
@pytest.mark.parametrize("version", PYTHONS)
def test_wheels_install_into_a_fresh_venv_and_run_the_demo(
    version: str, wheels: dict[str, Path], tmp_path: Path
) -> None:
    assert not tmp_path.resolve().is_relative_to(ROOT)
    venv = tmp_path / "venv"
    subprocess.run([_find_python(version), "-m", "venv", str(venv)], timeout=120, check=True)
    env = _clean_env(venv)
    python = str(venv / "bin" / "python")

    start = time.monotonic()
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(wheels["core"]), str(wheels[version])],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    install_s = time.monotonic() - start
    assert install.returncode == 0, install.stderr
    print(f"wheels: Python {version} install {install_s:.1f} s", file=sys.stderr)

    where = subprocess.run(
        [python, "-c", "import nodedb_cluster, nodedb_cluster_core as c, nodedb_cluster.routing."
         "_kernels as k; print(nodedb_cluster.__file__); print(c.__file__); print(k.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for module_file in where.stdout.split():
        assert Path(module_file).resolve().is_relative_to(venv.resolve()), module_file

    demo = subprocess.run(
        [str(venv / "bin" / "nodedb-cluster"), "demo"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo OK" in demo.stdout
