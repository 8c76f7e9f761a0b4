"""What a client certificate's session ids cost a data group: its replicas' stalls and elections.

    python benches/compare/session_churn.py --rounds 1 \\
        "PYTHONPATH=/path/to/other/python:/path/to/other/core" ""

Each variant (a space-separated list of `NAME=value` settings for the child's environment; ""
for this checkout as installed) runs, in a child process of its own, a local 3-node cluster
(mTLS, one data group) and two attacks from raw `propose_many` requests on the client
certificate, while a `Client` writes one key in a loop:
- new ids: the group's 4096 sessions held, then 3 requests of 20,000 puts, each under a session
  id the group has not seen (every command evicts a session);
- unacknowledged: 4096 sessions that never acknowledge a result, 1,000 results each (4.1M),
  in requests of 20,000 (snapshots meanwhile copy the group's state).
It reports each request's latency, the concurrent writes' p99 / max wait, and the group's
elections. Rounds alternate the variants. Refuses a debug build of the Rust core. Bounded: fixed
sizes, one timeout per child.
"""

from __future__ import annotations

import sys
import time

from attack import group_term, one_group_cluster, probe_main, while_writing

SESSIONS_HELD = 4096
NEW_IDS = 20_000
NEW_ID_REQUESTS = 3
RESULTS_PER_SESSION = 1000
PER_REQUEST = 20_000
CHILD_TIMEOUT_S = 600.0


async def _attack() -> dict[str, object]:
    import msgpack
    import nodedb_cluster_core as core

    from nodedb_cluster import wire
    from nodedb_cluster.client import CLIENT_NODE_ID, Client
    from nodedb_cluster.localcluster import leader_of
    from nodedb_cluster.routing import vshard_for_key
    from nodedb_cluster.transport import Transport

    async with one_group_cluster() as (cluster, statuses, addrs, creds):
        async with Client(addrs, creds) as client:
            group = client.routing.group_for_vshard(vshard_for_key(b"churn"))
        leader = cluster.nodes[leader_of(statuses, group)]
        put = core.kv_command("put", b"churn", b"1")

        async def term() -> int:
            return await group_term(cluster, group)

        async with Transport(CLIENT_NODE_ID, "127.0.0.1:0", creds) as attacker:

            async def propose(cmds: list[bytes]) -> float:
                gs = [group] * len(cmds)
                request = {"op": "propose_many", "gs": gs, "cmds": cmds, "t": 60_000}
                started = time.perf_counter()
                kind, _ = await attacker.send_rpc_to_addr(
                    leader.addr, wire.MessageKind.KV_REQUEST, msgpack.packb(request)
                )
                assert kind == wire.MessageKind.KV_RESPONSE
                return time.perf_counter() - started

            await propose([core.kv_session(1 << 40 | i, 1, 0, put) for i in range(4096)])
            requests: list[float] = []

            async def new_ids() -> None:
                for r in range(NEW_ID_REQUESTS):
                    first = 2 << 40 | r << 32
                    cmds = [core.kv_session(first + i, 1, 0, put) for i in range(NEW_IDS)]
                    requests.append(await propose(cmds))

            async def unacknowledged() -> None:
                total = SESSIONS_HELD * RESULTS_PER_SESSION
                for first in range(0, total, PER_REQUEST):
                    cmds = [
                        core.kv_session(3 << 40 | n % SESSIONS_HELD, n // SESSIONS_HELD + 1, 0, put)
                        for n in range(first, min(total, first + PER_REQUEST))
                    ]
                    await propose(cmds)

            churn = await while_writing(addrs, creds, new_ids, term)
            churn["requests_ms"] = [r * 1000 for r in requests]
            unacked = await while_writing(addrs, creds, unacknowledged, term)
            return {"new_ids": churn, "unacknowledged": unacked}


def _show(name: str, r: dict[str, object]) -> None:
    requests = r.get("requests_ms", [])
    assert isinstance(requests, list)
    extra = "  requests " + ", ".join(f"{ms:.0f}" for ms in requests) + " ms" if requests else ""
    print(
        f"  {name:15} {r['seconds']:6.1f} s  writes p99 {r['p99_ms']:7.1f} ms  "
        f"max {r['max_ms']:7.1f} ms  elections {r['elections']}{extra}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(probe_main(__file__, __doc__ or "", _attack, _show))
