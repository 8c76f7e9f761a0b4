//! `tracing` and `log` routed into the process's [`Sink`](crate::Sink): a minimal subscriber
//! (events only: nothing here opens spans) and a logger, both filtering on the sink's level
//! before a field is formatted.

use std::fmt;
use std::sync::Once;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

use crate::{component_of, emit, enabled, Level, SINK};

static INSTALL: Once = Once::new();

/// Make this crate the process's `tracing` subscriber and `log` logger (once; a process that
/// already set its own keeps it).
pub(crate) fn install() {
    INSTALL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(HostSubscriber);
        let _ = log::set_logger(&HostLogger);
    });
}

/// Re-evaluate every callsite against the new level (the cached interest and the global
/// maximum are what keep a disabled event to one comparison).
pub(crate) fn level_changed(level: Option<Level>) {
    log::set_max_level(match level {
        None => log::LevelFilter::Off,
        Some(Level::Error) => log::LevelFilter::Error,
        Some(Level::Warn) => log::LevelFilter::Warn,
        Some(Level::Info) => log::LevelFilter::Info,
        Some(Level::Debug) => log::LevelFilter::Debug,
        Some(Level::Trace) => log::LevelFilter::Trace,
    });
    tracing::callsite::rebuild_interest_cache();
}

fn from_tracing(level: &tracing::Level) -> Level {
    match *level {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        tracing::Level::DEBUG => Level::Debug,
        _ => Level::Trace,
    }
}

fn from_log(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug => Level::Debug,
        log::Level::Trace => Level::Trace,
    }
}

struct HostSubscriber;

impl Subscriber for HostSubscriber {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match SINK.max_level() {
            None => LevelFilter::OFF,
            Some(Level::Error) => LevelFilter::ERROR,
            Some(Level::Warn) => LevelFilter::WARN,
            Some(Level::Info) => LevelFilter::INFO,
            Some(Level::Debug) => LevelFilter::DEBUG,
            Some(Level::Trace) => LevelFilter::TRACE,
        })
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && enabled(from_tracing(metadata.level()))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &SpanRecord<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        emit(
            from_tracing(metadata.level()),
            component_of(metadata.target()),
            fields.message,
            fields.fields,
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// An event's `message` and its other fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .push((field.name().to_owned(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_owned(), format!("{value:?}")));
        }
    }
}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        enabled(from_log(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            emit(
                from_log(record.level()),
                component_of(record.target()),
                record.args().to_string(),
                Vec::new(),
            );
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use crate::{set_max_level, take, Level};

    /// The only test on the process's sink: `tracing` and `log` both reach it, with fields,
    /// and a level change takes effect on callsites already seen.
    #[test]
    fn tracing_and_log_reach_the_sink() {
        let quiet = |n: u32| tracing::info!(n, "info line");
        set_max_level(Some(Level::Warn));
        quiet(1);
        tracing::warn!(peer = %"127.0.0.1:9", reason = "x", "handshake failed");
        log::warn!(target: "rustls::conn", "fatal alert");
        set_max_level(Some(Level::Info));
        quiet(2);
        let records = take();
        let seen: Vec<_> = records
            .iter()
            .map(|r| (r.component.as_str(), r.message.as_str(), r.fields.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "hostlog",
                    "handshake failed",
                    vec![
                        ("peer".to_owned(), "127.0.0.1:9".to_owned()),
                        ("reason".to_owned(), "x".to_owned()),
                    ]
                ),
                ("rustls", "fatal alert", vec![]),
                (
                    "hostlog",
                    "info line",
                    vec![("n".to_owned(), "2".to_owned())]
                ),
            ]
        );
    }
}
