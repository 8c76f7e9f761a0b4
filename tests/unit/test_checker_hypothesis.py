"""Generated histories: a real sequential KV model under random concurrent overlap must always
check as linearizable; mutated ones must get exactly the verdict of a brute-force oracle, and a
read of a value nobody wrote must always be caught."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodedb_cluster.checker import Op, OpKind, Outcome, Verdict, check, check_key
from support.checker_histories import brute_force_linearizable, generate

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(seed=st.integers(0, 2**32), unique=st.booleans(), info=st.sampled_from([0.0, 0.2]))
def test_model_generated_histories_are_linearizable(seed: int, unique: bool, info: float) -> None:
    rng = random.Random(seed)
    kinds = (OpKind.PUT, OpKind.GET) if unique else tuple(OpKind)
    ops = generate(rng, 60, 5, ["a", "b", "c"], unique=unique, kinds=kinds, info_rate=info)
    assert check(ops).verdict is Verdict.OK


def _mutate(rng: random.Random, ops: list[Op]) -> list[Op]:
    """Change one op: a read's value, a cas's result, or an op's timing."""
    i = rng.randrange(len(ops))
    o = ops[i]
    fields = {s: getattr(o, s) for s in Op.__slots__}
    choice = rng.randrange(3)
    if choice == 0 and o.kind is OpKind.GET:
        fields["output"] = rng.choice([None, *[x.value for x in ops if x.kind is OpKind.PUT]])
    elif choice == 1 and o.kind is OpKind.CAS and o.outcome is Outcome.OK:
        fields["output"] = not o.output
    elif o.complete_ms is not None:
        shift = rng.randint(-30, 30)
        fields["invoke_ms"] = max(0.0, o.invoke_ms + shift)
        fields["complete_ms"] = fields["invoke_ms"] + (o.complete_ms - o.invoke_ms)
    return [*ops[:i], Op(**fields), *ops[i + 1 :]]


@SETTINGS
@given(seed=st.integers(0, 2**32), unique=st.booleans())
def test_mutated_histories_match_the_brute_force_oracle(seed: int, unique: bool) -> None:
    rng = random.Random(seed)
    kinds = (OpKind.PUT, OpKind.GET) if unique else tuple(OpKind)
    ops = generate(rng, 7, 3, ["x"], unique=unique, kinds=kinds, info_rate=0.15)
    for _ in range(rng.randint(1, 2)):
        ops = _mutate(rng, ops)
    expected = Verdict.OK if brute_force_linearizable(ops) else Verdict.ILLEGAL
    assert check_key(ops).verdict is expected


@SETTINGS
@given(seed=st.integers(0, 2**32))
def test_a_read_of_an_unwritten_value_is_always_caught(seed: int) -> None:
    rng = random.Random(seed)
    ops = generate(rng, 40, 4, ["a", "b"], unique=rng.random() < 0.5)
    reads = [o for o in ops if o.kind is OpKind.GET and o.outcome is Outcome.OK]
    if not reads:
        return
    r = rng.choice(reads)
    fields = {s: getattr(r, s) for s in Op.__slots__}
    fields["output"] = "never-written"
    bad = [Op(**fields) if o is r else o for o in ops]
    assert check(bad).verdict is Verdict.ILLEGAL
