"""Fault injection against real node processes: a recorded KV workload, a seeded nemesis
(kills, leader kills, pauses, whole-cluster restarts, partitions with real packets), and the
checks after each run (linearizable per key, no acknowledged write lost, replicas converge)."""
