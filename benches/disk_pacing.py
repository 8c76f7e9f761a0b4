"""fdatasync latency back-to-back versus paced, as a 3-node cluster on one disk meets it.

    python benches/disk_pacing.py --dir /tmp --syncs 2000 --runs 3 [--processes 3] [--idle spin]

`--processes` (default 3, one per node of a local cluster) each overwrite a pre-written file,
`--bytes` (default 10 KiB, one W64 wave's records) per fdatasync, with one of these gaps between
their syncs: none (back-to-back), then 0.5, 1 and 2 ms (a cluster's sync rhythm is one per wave,
~1 ms at 64 writers). Some virtual disks answer a flush that follows an idle gap several times
slower than one in a steady stream; on such a disk the write path's latency and W64 throughput
depend on the sync rhythm, not only on the work per write. `--idle spin` spends the gaps
spinning instead of sleeping: on a virtual machine whose idle vCPU halts (no cpuidle driver),
part of the difference is the vCPU's wake-up. Prints one line per (gap, run) and the medians of
the processes' p50/p99 in microseconds.

Measures the disk only (no nodedb code runs), so it has no debug build to refuse. Bounded:
`--syncs` per process per case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from multiprocessing import Process, Queue
from pathlib import Path

GAPS_MS = (0.0, 0.5, 1.0, 2.0)
FILE_BYTES = 64 << 20


def syncer(path: Path, syncs: int, size: int, gap_s: float, spin: bool, out: Queue) -> None:  # type: ignore[type-arg]
    """One node's log: overwrite `size` bytes at the next offset, fdatasync, wait out the gap."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"\0" * FILE_BYTES)  # pre-written: a sync never changes the file size
        os.fsync(fd)
        data, offset, lat = os.urandom(size), 0, []
        due = time.perf_counter()
        for _ in range(syncs):
            os.pwrite(fd, data, offset)
            offset = (offset + size) % (FILE_BYTES - size)
            started = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - started)
            due += gap_s
            if spin:
                while time.perf_counter() < due:
                    pass
            elif (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    lat.sort()
    out.put((lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6))


def one_case(
    directory: Path, processes: int, syncs: int, size: int, gap_ms: float, spin: bool
) -> dict[str, float]:
    out: Queue = Queue()  # type: ignore[type-arg]
    procs = [
        Process(
            target=syncer,
            args=(directory / f"pacing-{i}.dat", syncs, size, gap_ms / 1e3, spin, out),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    results = [out.get(timeout=10) for _ in procs]
    return {
        "gap_ms": gap_ms,
        "p50_us": statistics.median(r[0] for r in results),
        "p99_us": statistics.median(r[1] for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="a dir on the data disk")
    parser.add_argument("--syncs", type=int, default=2000, help="syncs per process and case")
    parser.add_argument("--bytes", type=int, default=10 << 10, help="bytes written per sync")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=3, help="syncing processes (nodes)")
    parser.add_argument("--idle", choices=("sleep", "spin"), default="sleep", help="the gaps")
    args = parser.parse_args()
    if not 1 <= args.syncs <= 100_000 or not 1 <= args.runs <= 20 or not 1 <= args.processes <= 8:
        parser.error("--syncs must be in 1..100000, --runs in 1..20, --processes in 1..8")
    by_gap: dict[float, list[dict[str, float]]] = {g: [] for g in GAPS_MS}
    for run in range(args.runs):  # cases interleaved: the disk's drift falls on all alike
        for gap in GAPS_MS:
            r = one_case(args.dir, args.processes, args.syncs, args.bytes, gap, args.idle == "spin")
            by_gap[gap].append(r)
            print(json.dumps({"run": run, **r}), flush=True)
    for gap, rs in by_gap.items():
        p50 = statistics.median(r["p50_us"] for r in rs)
        p99 = statistics.median(r["p99_us"] for r in rs)
        print(
            f"gap {gap:3.1f} ms: fdatasync p50 {p50:6.0f} us  p99 {p99:6.0f} us  ({len(rs)} runs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
