"""A small runner for data-driven test scripts (cockroachdb/datadriven's format).

A script is a sequence of stanzas:

    # comments and blank lines between stanzas are kept as they are
    command arg key=value key=(v1,v2)
    optional input lines
    ----
    expected output, up to the next blank line

An output that itself contains blank lines is written between doubled separators:

    command
    ----
    ----
    first paragraph

    second paragraph
    ----
    ----

`run_file(path, handle)` calls `handle(stanza)` for each stanza in order (so state carries over
within a file) and compares what it returns with the expected output. With `REWRITE=1` in the
environment it writes the actual outputs into the file instead of comparing: review the diff before
committing it, as etcd's `-rewrite` asks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SEPARATOR: Final = "----"
REWRITE_ENV: Final = "REWRITE"


class ScriptError(Exception):
    """The script itself is malformed, or a command's arguments are wrong."""


@dataclass(slots=True)
class Stanza:
    """One command of a script and what it should print."""

    pos: str
    """`file:line` of the command line, for messages."""
    cmd: str
    args: dict[str, tuple[str, ...]]
    """`key=value` -> (value,); `key=(a,b)` -> (a, b); a bare `key` -> ()."""
    input: str
    expected: str
    _out_start: int = field(default=0, repr=False)
    _out_end: int = field(default=0, repr=False)
    _double: bool = field(default=False, repr=False)

    def has(self, key: str) -> bool:
        return key in self.args

    def get(self, key: str, default: str | None = None) -> str:
        values = self.args.get(key)
        if values is None:
            if default is None:
                raise ScriptError(f"{self.pos}: {self.cmd} needs {key}=")
            return default
        if len(values) != 1:
            raise ScriptError(f"{self.pos}: {key} takes one value, got {values}")
        return values[0]

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.args and default is not None:
            return default
        return int(self.get(key))

    def get_ints(self, key: str, default: tuple[str, ...] = ()) -> tuple[int, ...]:
        return tuple(int(v) for v in self.args.get(key, default))

    def flag(self, key: str) -> bool:
        """A bare `key`, or `key=true` / `key=false`."""
        values = self.args.get(key)
        if values is None:
            return False
        return values == () or values == ("true",)


def parse_args(words: list[str], pos: str) -> dict[str, tuple[str, ...]]:
    args: dict[str, tuple[str, ...]] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            args[key] = ()
        elif value.startswith("(") and value.endswith(")"):
            inner = value[1:-1]
            args[key] = tuple(v.strip() for v in inner.split(",")) if inner else ()
        elif value.startswith("(") or value.endswith(")"):
            raise ScriptError(f"{pos}: unbalanced parentheses in {word!r}")
        else:
            args[key] = (value,)
    return args


def parse(text: str, name: str) -> tuple[list[str], list[Stanza]]:
    """The script's lines and its stanzas (with where each expected output sits)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    stanzas: list[Stanza] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        pos = f"{name}:{i + 1}"
        cmd, *words = line.split()
        i += 1
        input_lines: list[str] = []
        while i < len(lines) and lines[i] != SEPARATOR:
            input_lines.append(lines[i])
            i += 1
        if i == len(lines):
            raise ScriptError(f"{pos}: {cmd} has no {SEPARATOR} line")
        i += 1
        double = i < len(lines) and lines[i] == SEPARATOR
        if double:
            i += 1
            start = i
            while i + 1 < len(lines) and not (lines[i] == SEPARATOR and lines[i + 1] == SEPARATOR):
                i += 1
            if i + 1 >= len(lines):
                raise ScriptError(f"{pos}: {cmd}'s output has no closing {SEPARATOR} pair")
            end = i
            i += 2
        else:
            start = i
            while i < len(lines) and lines[i].strip():
                i += 1
            end = i
        stanzas.append(
            Stanza(
                pos,
                cmd,
                parse_args(words, pos),
                "\n".join(input_lines),
                "\n".join(lines[start:end]),
                start,
                end,
                double,
            )
        )
    return lines, stanzas


Handler = Callable[[Stanza], str]


def run_file(path: Path, handle: Handler) -> None:
    """Run every stanza of `path` through `handle`; AssertionError names the first mismatch.
    Under `REWRITE=1` the file is rewritten with the actual outputs instead."""
    lines, stanzas = parse(path.read_text(), path.name)
    rewrite = os.environ.get(REWRITE_ENV) == "1"
    actual: list[str] = []
    for stanza in stanzas:
        out = handle(stanza).rstrip("\n")
        actual.append(out)
        if not rewrite and out != stanza.expected:
            raise AssertionError(
                f"{stanza.pos}: {stanza.cmd} printed\n{out}\n---- but the script expects\n"
                f"{stanza.expected}\n(REWRITE=1 rewrites the script; review the diff)"
            )
    if rewrite:
        path.write_text(render(lines, stanzas, actual))


def render(lines: list[str], stanzas: list[Stanza], outputs: list[str]) -> str:
    """The script with each stanza's expected output replaced by `outputs`."""
    out: list[str] = []
    cursor = 0
    for stanza, text in zip(stanzas, outputs, strict=True):
        head = lines[cursor : stanza._out_start]
        if stanza._double:
            head = head[:-1]  # the second opening separator is written again below
        out.extend(head)
        body = text.split("\n") if text else []
        if any(not b.strip() for b in body):
            out.extend([SEPARATOR, *body, SEPARATOR, SEPARATOR])
        else:
            out.extend(body)
        cursor = stanza._out_end + (2 if stanza._double else 0)
    out.extend(lines[cursor:])
    return "\n".join(out) + "\n"
