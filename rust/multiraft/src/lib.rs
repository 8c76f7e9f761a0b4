//! Multi-Raft engine.
