"""Field docstrings of a dataclass, read from its source: the text under each field is the one
description of a setting, and the CLI's `--help` shows it rather than keeping a second copy.

Python keeps no attribute docstrings at run time, so they are read with `ast` from the class's
source (shipped in the wheel beside the bytecode). Without the source, help is just shorter.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap


def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring, whitespace collapsed} for every documented field of `cls`."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    if not tree.body or not isinstance(tree.body[0], ast.ClassDef):
        return {}
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def first_sentence(text: str) -> str:
    """The text up to its first '.' or ';' outside parentheses and backquotes that ends a word
    (a one-line help)."""
    depth, quoted = 0, False
    for i, ch in enumerate(text):
        if ch == "`":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch in ".;" and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i]
    return text
