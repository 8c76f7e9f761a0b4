"""SWIM wired into a node: started with the cluster secret, seeded from the topology, and its
verdicts fanned out to whoever acts on them (the KV router's peer health, status, hooks).

The failure detector itself is `nodedb_cluster.membership` (a pure machine and its UDP shell);
this module only connects it to the rest of a node, which never sees a `MemberChanged` itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from nodedb_cluster.config import ClusterConfig
from nodedb_cluster.membership import MemberChanged, MemberState, SwimNode
from nodedb_cluster.membership.secret import read_cluster_secret
from nodedb_cluster.status import SwimView
from nodedb_cluster.topology import Topology

log = logging.getLogger(__name__)

MemberObserver = Callable[[MemberChanged], None]
DeadHook = Callable[[int], None]


class SwimWiring:
    """This node's SWIM member (None until started, and when `swim_udp_addr` is unset)."""

    def __init__(
        self, config: ClusterConfig, stored_secret: Callable[[], Awaitable[bytes | None]]
    ) -> None:
        self._config = config
        self._stored_secret = stored_secret
        """The catalog's cluster secret (`cluster_secret_path` overrides it)."""
        self.swim: SwimNode | None = None
        self._observers: list[MemberObserver] = []
        self._dead_hooks: list[DeadHook] = []

    async def start(
        self, topology: Callable[[], Topology], sock: socket.socket | None = None
    ) -> None:
        """Run SWIM on config.swim_udp_addr (on `sock` when the caller bound it already) with
        config.swim's timings (no-op when the address is unset or SWIM already runs), seeded
        from the topology as it is once SWIM runs (a change applied while it started is not
        seeded again: the node seeds on changes)."""
        config = self._config
        if config.swim_udp_addr is None or self.swim is not None:
            if sock is not None:
                sock.close()
            return
        try:
            stored = await self._stored_secret()
            secret = await asyncio.to_thread(read_cluster_secret, config, stored)
            swim = SwimNode(config.node_id, config.swim_udp_addr, config.swim, secret)
            swim.subscribe(self._on_member_changed)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        await swim.start(sock=sock)  # closes `sock` if it fails
        self.swim = swim
        self.seed(topology())

    def seed(self, topology: Topology) -> None:
        """Probe every other node of the topology that has a SWIM address."""
        if self.swim is None:
            return
        for node in topology.nodes():
            if node.node_id != self._config.node_id and node.swim_addr is not None:
                self.swim.add_member(node.node_id, node.swim_addr)

    def observe(self, observer: MemberObserver) -> None:
        """Call `observer(event)` on the loop for every state change SWIM reports."""
        self._observers.append(observer)

    def add_dead_hook(self, hook: DeadHook) -> None:
        """Call `hook(node_id)` on the loop whenever SWIM declares a node dead (must not block);
        hooks run in the order they were added."""
        self._dead_hooks.append(hook)

    def view(self) -> tuple[SwimView, ...]:
        """(node id, state name, incarnation, ms since its last datagram) per other member, as
        status reports it; () without SWIM."""
        if self.swim is None:
            return ()
        now_ms = self.swim.now_ms()
        return tuple(
            (
                m.node_id,
                m.state.name,
                m.incarnation,
                None if m.last_contact_ms is None else max(0, now_ms - m.last_contact_ms),
            )
            for m in self.swim.members()
        )

    def _on_member_changed(self, event: MemberChanged) -> None:
        log.info(
            "swim: node %d is %s (incarnation %d)",
            event.node_id,
            event.state.name,
            event.incarnation,
            extra={"peer": event.node_id, "swim_state": event.state.name},
        )
        for observer in self._observers:
            observer(event)
        if event.state is MemberState.DEAD:
            for hook in self._dead_hooks:
                try:
                    hook(event.node_id)
                except Exception:  # one observer's bug must not stop the others
                    log.exception("member-dead hook %r failed for node %d", hook, event.node_id)

    async def close(self, *, leave: bool = True) -> None:
        """Stop SWIM; `leave`: announce the departure (a graceful stop), else peers find the
        node DEAD."""
        if self.swim is not None:
            await self.swim.close(leave=leave)
