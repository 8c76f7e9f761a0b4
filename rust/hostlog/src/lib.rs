//! Rust log records queued for the host: the `tracing` events of every crate, the `log` records
//! of rustls, and raft-rs's slog records (`nodedb-multiraft`'s drain calls [`emit`]).
//!
//! The host drains the queue ([`take`]) from its event loop and writes the records into its own
//! log. The threads that emit (the Raft driver, the QUIC I/O workers) never call into the host,
//! so none of them ever waits for its interpreter lock. A record below the level costs an atomic
//! load, checked before anything is formatted; WARN and ERROR records are rate-limited per
//! (component, message, peer) ([`RateLimiter`], one line per [`WARN_INTERVAL`] with the count
//! left out); the queue is bounded and drops its oldest record, counted, if the host falls
//! behind. Nothing is queued until the host sets a level ([`set_max_level`]).

pub mod bounded;
mod bridge;
pub mod limiter;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use bounded::Bounded;
pub use limiter::RateLimiter;

/// At most one WARN or ERROR line per (component, message, peer) per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Records waiting for the host; the oldest is dropped (and counted) past this.
pub const QUEUE_MAX: usize = 4096;
/// Distinct rate-limit keys remembered before quiet ones are forgotten.
const KEYS_MAX: usize = 4096;
/// The fields that name the other side of an event, in the order looked for (rate-limit key).
const PEER_FIELDS: [&str; 3] = ["peer", "addr", "remote"];

/// Severity, most severe first (the order `tracing` and `log` use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    /// The host's (Python `logging`'s) number for this level.
    pub fn host_number(self) -> u32 {
        match self {
            Level::Error => 40,
            Level::Warn => 30,
            Level::Info => 20,
            Level::Debug => 10,
            Level::Trace => 5,
        }
    }

    /// The most verbose level a host logger at `number` (Python `logging`'s numbering) shows;
    /// None (nothing) above CRITICAL.
    pub fn from_host_number(number: i64) -> Option<Level> {
        match number {
            n if n > 50 => None,
            n if n > 30 => Some(Level::Error),
            n if n > 20 => Some(Level::Warn),
            n if n > 10 => Some(Level::Info),
            n if n > 5 => Some(Level::Debug),
            _ => Some(Level::Trace),
        }
    }

    fn from_u8(n: u8) -> Option<Level> {
        [
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ]
        .into_iter()
        .find(|l| *l as u8 == n)
    }
}

/// One record for the host's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Seconds since the Unix epoch when it was emitted.
    pub unix_time: f64,
    pub level: Level,
    /// What emitted it: `transport`, `multiraft`, `raft` (raft-rs), `rustls`, `quinn`, ...
    pub component: String,
    pub message: String,
    /// Structured fields (`peer`, `group`, `term`, ...), in the order given.
    pub fields: Vec<(String, String)>,
    /// Records of the same (component, message, peer) left out since the previous one.
    pub suppressed: u64,
}

#[derive(Debug)]
struct Queue {
    records: Bounded<Record>,
    limiter: RateLimiter<(String, String, String)>,
}

/// The bounded, rate-limited queue (one per process: [`emit`], [`take`]; apart in tests).
#[derive(Debug)]
pub struct Sink {
    max_level: AtomicU8,
    queue: Mutex<Queue>,
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            max_level: AtomicU8::new(0),
            queue: Mutex::new(Queue {
                records: Bounded::new(QUEUE_MAX),
                limiter: RateLimiter::new(WARN_INTERVAL, KEYS_MAX),
            }),
        }
    }
}

impl Sink {
    pub fn max_level(&self) -> Option<Level> {
        Level::from_u8(self.max_level.load(Ordering::Relaxed))
    }

    pub fn set_max_level(&self, level: Option<Level>) {
        self.max_level
            .store(level.map_or(0, |l| l as u8), Ordering::Relaxed);
    }

    pub fn enabled(&self, level: Level) -> bool {
        (level as u8) <= self.max_level.load(Ordering::Relaxed)
    }

    /// Queue a record (if its level is on and, for WARN and ERROR, the rate limit lets it).
    pub fn emit(
        &self,
        level: Level,
        component: &str,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        if self.enabled(level) {
            self.emit_at(Instant::now(), level, component, message, fields);
        }
    }

    fn emit_at(
        &self,
        now: Instant,
        level: Level,
        component: &str,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let suppressed = if level <= Level::Warn {
            let peer = PEER_FIELDS
                .iter()
                .find_map(|name| fields.iter().find(|(k, _)| k == name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let key = (component.to_owned(), message.clone(), peer);
            match queue.limiter.admit(key, now) {
                Some(left_out) => left_out,
                None => return,
            }
        } else {
            0
        };
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        queue.records.push(Record {
            unix_time,
            level,
            component: component.to_owned(),
            message,
            fields,
            suppressed,
        });
    }

    /// Every queued record, oldest first.
    pub fn take(&self) -> Vec<Record> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.records.take()
    }

    /// Records dropped because the host did not drain them in time.
    pub fn dropped(&self) -> u64 {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.records.dropped()
    }
}

static SINK: LazyLock<Sink> = LazyLock::new(Sink::default);

/// Whether a record at `level` would be queued (check before formatting one).
pub fn enabled(level: Level) -> bool {
    SINK.enabled(level)
}

/// Queue a record of `component` (the process's sink).
pub fn emit(level: Level, component: &str, message: String, fields: Vec<(String, String)>) {
    SINK.emit(level, component, message, fields);
}

/// Queue records at `level` and more severe from now on (None: none), and route `tracing` and
/// `log` here (the first call installs both, unless the process already has its own).
pub fn set_max_level(level: Option<Level>) {
    bridge::install();
    SINK.set_max_level(level);
    bridge::level_changed(level);
}

/// Every queued record, oldest first.
pub fn take() -> Vec<Record> {
    SINK.take()
}

/// Records dropped because the host did not drain them in time.
pub fn dropped() -> u64 {
    SINK.dropped()
}

/// The component of a `tracing`/`log` target: its crate, without the `nodedb_` prefix
/// (`nodedb_transport::transport::inbound` -> `transport`, `rustls::conn` -> `rustls`).
pub fn component_of(target: &str) -> &str {
    let krate = target.split("::").next().unwrap_or(target);
    krate.strip_prefix("nodedb_").unwrap_or(krate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str) -> Vec<(String, String)> {
        vec![("peer".into(), addr.into()), ("reason".into(), "x".into())]
    }

    #[test]
    fn nothing_is_queued_below_the_level_or_before_one_is_set() {
        let sink = Sink::default();
        sink.emit(Level::Error, "transport", "a".into(), vec![]);
        assert!(sink.take().is_empty(), "off until the host sets a level");
        sink.set_max_level(Some(Level::Info));
        sink.emit(Level::Debug, "transport", "b".into(), vec![]);
        sink.emit(Level::Info, "transport", "c".into(), vec![]);
        let records = sink.take();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].message, "c");
        assert_eq!(records[0].level.host_number(), 20);
    }

    #[test]
    fn warnings_are_rate_limited_per_peer_and_info_is_not() {
        let sink = Sink::default();
        sink.set_max_level(Some(Level::Info));
        let t0 = Instant::now();
        for i in 0..5 {
            let at = t0 + Duration::from_millis(i);
            sink.emit_at(
                at,
                Level::Warn,
                "transport",
                "handshake failed".into(),
                peer("a:1"),
            );
            sink.emit_at(at, Level::Info, "raft", "became leader".into(), vec![]);
        }
        sink.emit_at(
            t0,
            Level::Warn,
            "transport",
            "handshake failed".into(),
            peer("b:1"),
        );
        let records = sink.take();
        let warns: Vec<_> = records.iter().filter(|r| r.level == Level::Warn).collect();
        assert_eq!(warns.len(), 2, "one per peer: {warns:?}");
        assert_eq!(records.len(), 7);
        sink.emit_at(
            t0 + WARN_INTERVAL,
            Level::Warn,
            "transport",
            "handshake failed".into(),
            peer("a:1"),
        );
        let again = sink.take();
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].suppressed, 4,
            "the four left out in the first interval"
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let sink = Sink::default();
        sink.set_max_level(Some(Level::Info));
        for i in 0..QUEUE_MAX + 3 {
            sink.emit(Level::Info, "raft", format!("{i}"), vec![]);
        }
        let records = sink.take();
        assert_eq!(records.len(), QUEUE_MAX);
        assert_eq!(records[0].message, "3", "the oldest went first");
        assert_eq!(sink.dropped(), 3);
    }

    #[test]
    fn host_levels_and_components() {
        assert_eq!(Level::from_host_number(20), Some(Level::Info));
        assert_eq!(Level::from_host_number(30), Some(Level::Warn));
        assert_eq!(Level::from_host_number(40), Some(Level::Error));
        assert_eq!(Level::from_host_number(50), Some(Level::Error));
        assert_eq!(Level::from_host_number(10), Some(Level::Debug));
        assert_eq!(Level::from_host_number(0), Some(Level::Trace));
        assert_eq!(Level::from_host_number(60), None);
        assert_eq!(
            component_of("nodedb_transport::transport::inbound"),
            "transport"
        );
        assert_eq!(component_of("rustls::conn"), "rustls");
        assert_eq!(component_of("raft"), "raft");
    }
}
