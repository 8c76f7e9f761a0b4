"""SWIM membership: a pure failure-detector machine (`machine`) and its asyncio UDP `shell`."""

from nodedb_cluster.membership.codec import Codec, MemberState, SwimDatagramError
from nodedb_cluster.membership.config import SwimConfig
from nodedb_cluster.membership.machine import Member, MemberChanged, Send, SwimMachine
from nodedb_cluster.membership.shell import SwimError, SwimNode, bind_udp

__all__ = [
    "Codec",
    "Member",
    "MemberChanged",
    "MemberState",
    "Send",
    "SwimConfig",
    "SwimDatagramError",
    "SwimError",
    "SwimMachine",
    "SwimNode",
    "bind_udp",
]
