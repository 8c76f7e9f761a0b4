"""What every comparison script checks before it runs: a release build of the Rust core (figures
from a debug build would mislead) and bounded runs; and how a script runs itself once per build
it compares."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator

import nodedb_cluster_core

REFUSAL = "refusing to benchmark a debug build of nodedb_cluster_core"
ROUNDS_MAX = 10
DURATION_S_RANGE = (2.0, 60.0)


def is_debug_build() -> bool:
    """True, with the refusal printed on stderr, unless the installed core is a release build."""
    if nodedb_cluster_core.build_profile() == "release":
        return False
    print(REFUSAL, file=sys.stderr)
    return True


def _within(low: float, high: float, convert: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in {low:g}..{high:g}")
        return value

    return parse


def add_rounds_and_duration(ap: argparse.ArgumentParser, duration_s: float, rounds: int) -> None:
    """`--rounds` (1..10) and `--duration` seconds per run (2..60), refused by argparse outside."""
    ap.add_argument(
        "--rounds", type=_within(1, ROUNDS_MAX, int), default=rounds, help=f"1..{ROUNDS_MAX}"
    )
    low, high = DURATION_S_RANGE
    ap.add_argument(
        "--duration",
        type=_within(low, high, float),
        default=duration_s,
        help=f"seconds per run ({low:g}..{high:g})",
    )


def run_variant(script: str, args: list[str], variant: str, timeout_s: float) -> dict[str, object]:
    """`script args` in a child process whose environment adds `variant`'s space-separated
    `NAME=value` settings ("" for this checkout as installed); the JSON object it printed last,
    or RuntimeError with the end of its stderr."""
    env = dict(os.environ)
    for setting in shlex.split(variant):
        name, _, value = setting.partition("=")
        env[name] = value
    out = subprocess.run(
        [sys.executable, script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if out.returncode != 0:
        tail = out.stderr.strip()[-3000:]
        raise RuntimeError(f"{script} with {variant!r} exited {out.returncode}:\n{tail}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def variant_rounds(
    script: str, args: list[str], variants: list[str], rounds: int, timeout_s: float
) -> Iterator[tuple[str, dict[str, object]]]:
    """Each variant's result (`run_variant`), rounds alternating the variants; the title of
    each names its round and variant."""
    for round_ in range(rounds):
        for variant in variants:
            result = run_variant(script, args, variant, timeout_s)
            yield f"round {round_ + 1} {variant or '(this checkout)'}", result
