"""Helpers shared by every test layer: cluster harnesses, child-process scripts, fixtures.

Scripts here (raft_node.py, swim_node.py, ...) are started by path, so they import only the
installed package, never each other.
"""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parent
"""This directory: where child-process scripts and `fixtures/` live."""
