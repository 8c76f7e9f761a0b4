//! raft-rs's own log (elections, votes, lease rejections) on stderr when `NODEDB_RAFT_LOG` is
//! set: one line per record, `raft <unix seconds> <level> <message> key=value ...`, for
//! diagnosing elections on real nodes. Off (slog `Discard`) otherwise, costing nothing.

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use slog::{Drain, Level, OwnedKVList, Record, Serializer, KV};

/// Environment variable: any value turns raft-rs's info-level log on (slog compiles out its
/// debug records in release builds).
pub const RAFT_LOG_ENV: &str = "NODEDB_RAFT_LOG";

struct StderrDrain;

struct Line(String);

impl Serializer for Line {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        use fmt::Write as _;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !record.level().is_at_least(Level::Info) {
            return Ok(());
        }
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut line = Line(format!(
            "raft {t:.4} {} {}",
            record.level().as_short_str(),
            record.msg()
        ));
        let _ = record.kv().serialize(record, &mut line);
        let _ = values.serialize(record, &mut line);
        line.0.push('\n');
        let _ = std::io::stderr().lock().write_all(line.0.as_bytes());
        Ok(())
    }
}

/// The root logger of an engine: stderr if `NODEDB_RAFT_LOG` is set, else discarded.
pub fn root_logger(node: u64) -> slog::Logger {
    if std::env::var_os(RAFT_LOG_ENV).is_some() {
        slog::Logger::root(StderrDrain.fuse(), slog::o!("node" => node))
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}
