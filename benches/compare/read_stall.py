"""What a client certificate's large reads cost a data group's writes, and whether they are
answered.

    python benches/compare/read_stall.py --rounds 1 \\
        "PYTHONPATH=/path/to/other/python:/path/to/other/core" ""

Each variant (a space-separated list of `NAME=value` settings for the child's environment; ""
for this checkout as installed) runs, in a child process of its own, a local 3-node cluster
(mTLS, one data group) and three reads while a `Client` writes one key in a loop:
- million: 4 raw `read_many` requests of 1M absent keys to the group's leader (refused as
  decoded since session 22: a request lists at most 65,536 items);
- many: 20 `get_many` of 65,536 absent keys (the client's requests of 4096);
- large: 4 concurrent callers each `get` a 48 MiB value 3 times (the client puts concurrent
  reads in one request: over one reply before session 22, each was refused).
It reports each read's seconds or its refusal, the concurrent writes' p99 / max wait, and the
group's elections. Rounds alternate the variants. Refuses a debug build of the Rust core.
Bounded: fixed sizes, one timeout per child.
"""

from __future__ import annotations

import asyncio
import sys
import time

from attack import group_term, one_group_cluster, probe_main, while_writing

MILLION = 1_000_000
MILLION_REQUESTS = 4
MANY = 65_536
MANY_CALLS = 20
LARGE = 48 << 20
LARGE_CALLERS = 4
LARGE_CALLS = 3
CHILD_TIMEOUT_S = 600.0


async def _reads() -> dict[str, object]:
    import msgpack

    from nodedb_cluster import wire
    from nodedb_cluster.client import CLIENT_NODE_ID, Client
    from nodedb_cluster.localcluster import leader_of
    from nodedb_cluster.routing import vshard_for_key
    from nodedb_cluster.transport import Transport

    async with (
        one_group_cluster() as (cluster, statuses, addrs, creds),
        Client(addrs, creds, timeout_s=120.0) as reader,
    ):
        group = reader.routing.group_for_vshard(vshard_for_key(b"large"))
        await reader.put(b"large", b"v" * LARGE)
        leader = cluster.nodes[leader_of(statuses, group)]

        async def term() -> int:
            return await group_term(cluster, group)

        seconds: list[float] = []
        refusals: list[str] = []

        async def timed(read: object) -> None:
            started = time.perf_counter()
            try:
                await read  # type: ignore[misc]
                seconds.append(time.perf_counter() - started)
            except Exception as e:  # the refusal is the result
                refusals.append(f"{type(e).__name__}: {str(e)[:120]}")

        async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", creds) as raw:
            keys = [b"%d" % i for i in range(MILLION)]
            payload = msgpack.packb(
                {"op": "read_many", "gs": [group] * MILLION, "keys": keys, "t": 60_000}
            )

            async def million() -> None:
                for _ in range(MILLION_REQUESTS):
                    await timed(
                        raw.send_rpc_to_addr(leader.addr, wire.MessageKind.KV_REQUEST, payload)
                    )

            async def many() -> None:
                for _ in range(MANY_CALLS):
                    await timed(reader.get_many(keys[:MANY]))

            async def large() -> None:
                async def caller() -> None:
                    for _ in range(LARGE_CALLS):
                        await timed(reader.get(b"large"))

                await asyncio.gather(*(caller() for _ in range(LARGE_CALLERS)))

            out: dict[str, object] = {}
            for name, attack in (("million", million), ("many", many), ("large", large)):
                seconds.clear()
                refusals.clear()
                doc = await while_writing(addrs, creds, attack, term)
                doc["reads_s"] = [round(s, 3) for s in seconds]
                doc["refusals"] = sorted(set(refusals))
                out[name] = doc
            return out


def _show(name: str, r: dict[str, object]) -> None:
    reads = r["reads_s"]
    assert isinstance(reads, list)
    answered = f"{len(reads)} answered, {min(reads):.2f}-{max(reads):.2f} s" if reads else ""
    print(
        f"  {name:8} writes p99 {r['p99_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms  "
        f"elections {r['elections']}  {answered}  refused {r['refusals'] or 'none'}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(probe_main(__file__, __doc__ or "", _reads, _show))
