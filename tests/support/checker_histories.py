"""Test helper: histories for the checker — a builder for hand-made ones, a generator that runs a
real sequential KV model under random concurrent overlap (linearizable by construction), and a
brute-force oracle for small histories."""

from __future__ import annotations

import itertools
import random

from nodedb_cluster.checker import Op, OpKind, Outcome, Value
from nodedb_cluster.checker.model import step


class H:
    """Hand-made history: `h.put(p, "x", 1, 0, 10)` = process p put 1 during [0, 10]."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def _add(self, **kw: object) -> H:
        self.ops.append(Op(op_id=len(self.ops), **kw))  # type: ignore[arg-type]
        return self

    def put(
        self,
        p: int,
        v: Value,
        inv: float,
        ret: float | None,
        key: str = "x",
        outcome: Outcome = Outcome.OK,
    ) -> H:
        if ret is None:
            outcome = Outcome.INFO
        return self._add(
            process=p,
            kind=OpKind.PUT,
            key=key,
            value=v,
            outcome=outcome,
            invoke_ms=inv,
            complete_ms=ret,
        )

    def get(
        self,
        p: int,
        out: Value,
        inv: float,
        ret: float | None,
        key: str = "x",
        outcome: Outcome = Outcome.OK,
    ) -> H:
        if ret is None:
            outcome = Outcome.INFO
        return self._add(
            process=p,
            kind=OpKind.GET,
            key=key,
            output=out,
            outcome=outcome,
            invoke_ms=inv,
            complete_ms=ret,
        )

    def delete(self, p: int, inv: float, ret: float | None, key: str = "x") -> H:
        outcome = Outcome.INFO if ret is None else Outcome.OK
        return self._add(
            process=p, kind=OpKind.DELETE, key=key, outcome=outcome, invoke_ms=inv, complete_ms=ret
        )

    def cas(
        self,
        p: int,
        expected: Value,
        new: Value,
        ok: bool | None,
        inv: float,
        ret: float | None,
        key: str = "x",
    ) -> H:
        outcome = Outcome.INFO if ret is None or ok is None else Outcome.OK
        return self._add(
            process=p,
            kind=OpKind.CAS,
            key=key,
            expected=expected,
            value=new,
            output=ok,
            outcome=outcome,
            invoke_ms=inv,
            complete_ms=ret,
        )


def generate(
    rng: random.Random,
    n_ops: int,
    n_procs: int,
    keys: list[str],
    unique: bool,
    kinds: tuple[OpKind, ...] = tuple(OpKind),
    info_rate: float = 0.0,
) -> list[Op]:
    """Run a sequential KV model; each op takes effect at a random point inside its interval.

    Processes run one op at a time. An INFO write either took effect (at its point) or not at all
    (chosen at random): both are linearizable. The result is linearizable by construction."""
    proc_free_ms = [0.0] * n_procs
    plans = []
    for i in range(n_ops):
        p = rng.randrange(n_procs)
        inv = proc_free_ms[p] + rng.randint(0, 5)
        ret = inv + rng.randint(0, 20)
        point = rng.uniform(inv, ret)
        proc_free_ms[p] = ret + 1
        kind = rng.choice(kinds)
        key = rng.choice(keys)
        value: Value = f"v{i}" if unique else rng.randrange(3)
        plans.append((point, i, p, kind, key, value, inv, ret))
    plans.sort()
    state: dict[str, Value] = {}
    ops: list[Op] = []
    for point, i, p, kind, key, value, inv, ret in plans:
        del point
        cur = state.get(key)
        info = kind is not OpKind.GET and rng.random() < info_rate
        took_effect = not info or rng.random() < 0.5
        expected: Value = None
        output: Value | bool = None
        if kind is OpKind.CAS:
            expected = rng.choice([cur, rng.randrange(3)])
            output = cur == expected
        probe = Op(i, p, kind, key, value, expected, output, Outcome.OK, inv, ret)
        legal, new = step(cur, probe)
        assert legal or kind is OpKind.GET
        if kind is OpKind.GET:
            probe = Op(i, p, kind, key, None, None, cur, Outcome.OK, inv, ret)
        elif took_effect:
            state[key] = new
        if info:
            probe = Op(i, p, kind, key, value, expected, None, Outcome.INFO, inv, None)
        ops.append(probe)
    ops.sort(key=lambda o: o.op_id)
    return ops


def brute_force_linearizable(ops: list[Op], initial: Value = None) -> bool:
    """Every order consistent with real time, tried one by one (small histories only)."""
    live = [o for o in ops if o.outcome is Outcome.OK or (o.outcome is Outcome.INFO and o.is_write)]
    assert len(live) <= 8
    end = {o.op_id: float("inf") if o.complete_ms is None else o.complete_ms for o in live}
    for order in itertools.permutations(live):
        ok = True
        for a, b in itertools.combinations(order, 2):
            if end[b.op_id] < a.invoke_ms:  # b finished before a began, yet a is placed first
                ok = False
                break
        if not ok:
            continue
        state = initial
        for o in order:
            legal, state = step(state, o)
            if not legal:
                ok = False
                break
        if ok:
            return True
    return False
