"""Large values over a slow link, on real processes: a node and client namespace whose loopback
is limited to 200 Mbit/s (`tests/support/slow_link_probe.py`, under `unshare --net`)."""

from __future__ import annotations

import pytest

import support
from nodedb_cluster.faults.netfault import can_make_private_netns

pytestmark = pytest.mark.multiprocess


@pytest.mark.skipif(
    not can_make_private_netns(),
    reason="a rate-limited loopback needs root, unshare and ip/tc (util-linux, iproute2)",
)
@pytest.mark.timeout(180)
def test_a_32_mib_value_crosses_a_200_mbit_link_without_an_election() -> None:
    """Heartbeats are not held behind a 32 MiB append (before: every group elected again and
    again while it crossed, and no put finished in 60 s); a retried put gets a longer bound
    each time it runs out, and its copies never become entries; a read is given its reply's
    size (before: a 32 MiB reply always outlasted the 1 s attempt bound, and every attempt
    marked the leader down)."""
    result = support.run_in_private_netns("slow_link_probe.py", 170)
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["after"] == result["before"], "a group changed leader or term"
    assert result["put_s"] < 40.0
    # However many requests the put took, its retries' copies were answered without another
    # 32 MiB entry (before: each copy was proposed and replicated again).
    assert result["put_entries"] == 1, result
    for took_s, _, equal in result["gets"]:
        assert equal
        assert took_s < 40.0
    # The second read, on a connection already warm: one attempt, however long its reply.
    took_s, requests, _ = result["gets"][1]
    assert requests == 1, result["gets"]
    assert took_s > 1.0, "not a reply larger than the attempt bound: the test proves nothing"
