"""Issue 14's size rules, kept: no hand-written file over 800 lines, and `rust/py` (the binding,
which only translates) under 3.5k lines. The files are the ones git tracks, read from the
checkout the tests run in; vendored code, fixtures and generated locks are not hand-written.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
LINES_MAX: Final = 800
BINDING_LINES_MAX: Final = 3500
NOT_HAND_WRITTEN: Final = ("cython/third_party/", "tests/fixtures/", "tests/support/fixtures/")
GENERATED: Final = ("Cargo.lock",)


def _tracked() -> list[Path]:
    git = shutil.which("git")
    assert git is not None, "git is needed to list the tracked files"
    out = subprocess.run(
        [git, "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True
    ).stdout
    names = [n for n in out.decode().split("\0") if n]
    assert names, f"git lists no tracked file under {REPO}"
    return [
        REPO / n
        for n in names
        if not n.startswith(NOT_HAND_WRITTEN) and Path(n).name not in GENERATED
    ]


def _lines(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def test_no_hand_written_file_is_over_800_lines() -> None:
    over = {
        str(p.relative_to(REPO)): n
        for p in _tracked()
        if p.is_file() and (n := _lines(p)) > LINES_MAX
    }
    assert not over, f"over {LINES_MAX} lines (split by concept): {over}"


def test_the_binding_stays_a_translation_layer() -> None:
    binding = [p for p in _tracked() if p.is_relative_to(REPO / "rust" / "py" / "src")]
    assert binding, "rust/py/src has no tracked file"
    total = sum(_lines(p) for p in binding if p.suffix == ".rs")
    assert total < BINDING_LINES_MAX, f"rust/py/src is {total} lines"
