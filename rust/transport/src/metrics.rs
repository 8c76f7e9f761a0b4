//! Counters (relaxed atomics; read as a snapshot).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Instant;

use nodedb_obs::{Histogram, HistogramSnapshot};
use nodedb_wire::{FrameError, MessageKind, KINDS};

use crate::error::TransportError;

/// Insecure transports created in this process (all instances).
pub static INSECURE_TRANSPORTS_TOTAL: AtomicU64 = AtomicU64::new(0);

const FRAME_ERROR_CODES: usize = 9;
/// Kind numbers below this get a served-latency histogram of their own (every kind assigned so
/// far is below 64: the Control, Raft and KV ranges).
const LATENCY_KINDS: usize = 64;
const TRANSPORT_ERROR_LABELS: [&str; 12] = [
    "timeout",
    "unreachable",
    "handshake",
    "unknown_peer",
    "frame",
    "peer_rejected_frame",
    "remote",
    "permission_denied",
    "closed",
    "bind",
    "credentials",
    "config",
];

pub struct Metrics {
    pub rpcs_sent: AtomicU64,
    pub rpcs_received: AtomicU64,
    pub oneway_sent: AtomicU64,
    pub oneway_received: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_accepted: AtomicU64,
    /// Pooled outbound connections closed because their peer dialled this node again (it
    /// restarted): the next send dials the new process.
    pub connections_replaced_on_redial: AtomicU64,
    pub inbound_handshake_failures: AtomicU64,
    /// Inbound connections closed because `client_connections_max` (or
    /// `admin_connections_max`) were open.
    pub inbound_connections_refused_full: AtomicU64,
    pub streams_reset: AtomicU64,
    /// Inbound streams reset because their frame did not arrive (or fit the connection's
    /// buffer budget) within `rpc_timeout`.
    pub inbound_stream_timeouts: AtomicU64,
    /// Replies not written within `rpc_timeout` plus their size at `frame_bytes_per_s_min`
    /// (the peer did not read them): their stream was reset with `0x302`.
    pub reply_write_timeouts: AtomicU64,
    pub handler_errors: AtomicU64,
    /// Inbound requests refused before their handler (the kind table, or a handler's own
    /// identity rule); by kind and reason in [`crate::RefusalLog`].
    pub requests_refused: AtomicU64,
    pub insecure: AtomicU64,
    decode_errors: [AtomicU64; FRAME_ERROR_CODES],
    errors: [AtomicU64; TRANSPORT_ERROR_LABELS.len()],
    /// Inbound requests served, by kind number: frame read until the reply was written (a
    /// one-way frame: until its handler returned).
    served: [Histogram; LATENCY_KINDS],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rpcs_sent: AtomicU64::new(0),
            rpcs_received: AtomicU64::new(0),
            oneway_sent: AtomicU64::new(0),
            oneway_received: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_replaced_on_redial: AtomicU64::new(0),
            inbound_handshake_failures: AtomicU64::new(0),
            inbound_connections_refused_full: AtomicU64::new(0),
            streams_reset: AtomicU64::new(0),
            inbound_stream_timeouts: AtomicU64::new(0),
            reply_write_timeouts: AtomicU64::new(0),
            handler_errors: AtomicU64::new(0),
            requests_refused: AtomicU64::new(0),
            insecure: AtomicU64::new(0),
            decode_errors: Default::default(),
            errors: Default::default(),
            served: [const { Histogram::new() }; LATENCY_KINDS],
        }
    }
}

pub type MetricsSnapshot = BTreeMap<String, u64>;

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A malformed inbound frame (by its code).
    pub fn decode_error(&self, err: &FrameError) {
        let index = err.number() as usize;
        if let Some(counter) = self.decode_errors.get(index) {
            Metrics::inc(counter);
        }
    }

    /// An outbound operation failed.
    pub fn error(&self, err: &TransportError) {
        if let Some(index) = TRANSPORT_ERROR_LABELS
            .iter()
            .position(|label| *label == err.label())
        {
            Metrics::inc(&self.errors[index]);
        }
    }

    /// An inbound request of `kind` served since `started`.
    pub fn served(&self, kind: MessageKind, started: Instant) {
        if let Some(h) = self.served.get(usize::from(kind.number())) {
            h.observe_since(started);
        }
    }

    /// Served-latency histograms by kind name, for kinds served at least once.
    pub fn served_histograms(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        KINDS
            .iter()
            .filter_map(|row| {
                let h = self.served.get(usize::from(row.number))?.snapshot();
                (h.count > 0).then_some((row.name, h))
            })
            .collect()
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = BTreeMap::new();
        out.insert("rpcs_sent".into(), get(&self.rpcs_sent));
        out.insert("rpcs_received".into(), get(&self.rpcs_received));
        out.insert("oneway_sent".into(), get(&self.oneway_sent));
        out.insert("oneway_received".into(), get(&self.oneway_received));
        out.insert("connections_opened".into(), get(&self.connections_opened));
        out.insert(
            "connections_accepted".into(),
            get(&self.connections_accepted),
        );
        out.insert(
            "connections_replaced_on_redial".into(),
            get(&self.connections_replaced_on_redial),
        );
        out.insert(
            "inbound_handshake_failures".into(),
            get(&self.inbound_handshake_failures),
        );
        out.insert(
            "inbound_connections_refused_full".into(),
            get(&self.inbound_connections_refused_full),
        );
        out.insert("streams_reset".into(), get(&self.streams_reset));
        out.insert(
            "inbound_stream_timeouts".into(),
            get(&self.inbound_stream_timeouts),
        );
        out.insert(
            "reply_write_timeouts".into(),
            get(&self.reply_write_timeouts),
        );
        out.insert("handler_errors".into(), get(&self.handler_errors));
        out.insert("requests_refused".into(), get(&self.requests_refused));
        out.insert("insecure".into(), get(&self.insecure));
        out.insert(
            "insecure_transports_total".into(),
            get(&INSECURE_TRANSPORTS_TOTAL),
        );
        let mut decode_total = 0;
        for number in 1..FRAME_ERROR_CODES as u32 {
            let value = get(&self.decode_errors[number as usize]);
            decode_total += value;
            if let Some(code) = FrameError::code_for_number(number) {
                out.insert(format!("decode_errors.{code}"), value);
            }
        }
        out.insert("decode_errors".into(), decode_total);
        for (label, counter) in TRANSPORT_ERROR_LABELS.iter().zip(&self.errors) {
            out.insert(format!("errors.{label}"), get(counter));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_requests_are_timed_by_kind_and_only_served_kinds_are_listed() {
        let m = Metrics::default();
        assert!(m.served_histograms().is_empty());
        let started = Instant::now();
        m.served(MessageKind::KV_REQUEST, started);
        m.served(MessageKind::KV_REQUEST, started);
        m.served(MessageKind::RAFT_BATCH, started);
        let served = m.served_histograms();
        let names: Vec<&str> = served.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["RaftBatch", "KvRequest"]);
        assert_eq!(served[0].1.count, 1);
        assert_eq!(served[1].1.count, 2);
    }
}
