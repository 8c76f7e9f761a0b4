//! Durable segmented log.
