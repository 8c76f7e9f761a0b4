"""Runs every script under testdata/<machine>/ through that machine's handler (one fresh handler
per file, so state carries over between the stanzas of one script). `REWRITE=1 pytest
tests/scenario` rewrites the expected outputs; review the diff before committing it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

from scenario.datadriven import Stanza, run_file
from scenario.join import JoinScript
from scenario.placement import PlacementScript
from scenario.rebalance import RebalanceScript
from scenario.reconcile import ReconcileScript
from scenario.swim import SwimScript

TESTDATA: Final = Path(__file__).resolve().parent / "testdata"
MACHINES: Final[dict[str, Callable[[], Callable[[Stanza], str]]]] = {
    "join": lambda: JoinScript().handle,
    "placement": lambda: PlacementScript().handle,
    "rebalance": lambda: RebalanceScript().handle,
    "reconcile": lambda: ReconcileScript().handle,
    "swim": lambda: SwimScript().handle,
}
SCRIPTS: Final = sorted(TESTDATA.glob("*/*.txt"))


def test_every_machine_has_at_least_three_scripts() -> None:
    for machine in MACHINES:
        assert len(list((TESTDATA / machine).glob("*.txt"))) >= 3, machine


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_script(path: Path) -> None:
    run_file(path, MACHINES[path.parent.name]())
