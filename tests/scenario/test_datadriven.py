"""The script runner itself: parsing, comparing, and rewriting in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenario.datadriven import ScriptError, Stanza, parse, parse_args, render, run_file

SCRIPT = """\
# a comment
echo a=1 b=(2,3) flag
some input
----
a=1

# an output with a blank line in it
echo
----
----
first

second
----
----
"""


def echo(st: Stanza) -> str:
    return st.expected  # a machine that prints exactly what the script expects


def test_arguments_are_values_lists_and_flags() -> None:
    args = parse_args(["a=1", "b=(2,3)", "flag", "empty=()"], "x:1")
    assert args == {"a": ("1",), "b": ("2", "3"), "flag": (), "empty": ()}
    with pytest.raises(ScriptError, match="unbalanced"):
        parse_args(["b=(2,3"], "x:1")


def test_stanzas_carry_command_input_and_expected_output() -> None:
    _, stanzas = parse(SCRIPT, "s.txt")
    assert [(s.cmd, s.input, s.expected) for s in stanzas] == [
        ("echo", "some input", "a=1"),
        ("echo", "", "first\n\nsecond"),
    ]
    assert stanzas[0].pos == "s.txt:2"
    assert stanzas[0].get_ints("b") == (2, 3)
    assert stanzas[0].flag("flag")


def test_rendering_the_same_outputs_gives_back_the_script() -> None:
    lines, stanzas = parse(SCRIPT, "s.txt")
    assert render(lines, stanzas, [s.expected for s in stanzas]) == SCRIPT


def test_a_different_output_fails_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text(SCRIPT)
    with pytest.raises(AssertionError, match=r"s\.txt:2: echo printed\nwrong"):
        run_file(path, lambda st: "wrong")


def test_rewrite_replaces_outputs_and_keeps_comments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.txt"
    path.write_text(SCRIPT)
    monkeypatch.setenv("REWRITE", "1")
    outputs = iter(["b=2", "one line now"])
    run_file(path, lambda st: next(outputs))
    assert path.read_text() == (
        "# a comment\necho a=1 b=(2,3) flag\nsome input\n----\nb=2\n\n"
        "# an output with a blank line in it\necho\n----\none line now\n"
    )
    monkeypatch.delenv("REWRITE")
    run_file(path, echo)  # the rewritten script passes as it stands


def test_a_stanza_without_separator_is_a_script_error(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("echo\nno separator\n")
    with pytest.raises(ScriptError, match="no ----"):
        run_file(path, echo)
