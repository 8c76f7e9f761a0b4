"""Data-driven scenario scripts for the pure machines (join decision, placement, reconcile
planner, SWIM), in the format of cockroachdb/datadriven as etcd raft's `testdata/*.txt` use it."""
