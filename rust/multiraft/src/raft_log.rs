//! raft-rs's own log (elections, votes, lease rejections) on stderr when `NODEDB_RAFT_LOG` is
//! set: one line per record, `raft <unix seconds> <level> <message> key=value ...`, for
//! diagnosing elections on real nodes. Off (slog `Discard`) otherwise, costing nothing.

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use slog::{Drain, Level, OwnedKVList, Record, Serializer, KV};

/// Environment variable: any value turns raft-rs's info-level log on (`debug` for debug).
pub const RAFT_LOG_ENV: &str = "NODEDB_RAFT_LOG";

struct StderrDrain {
    max: Level,
}

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
        if !record.level().is_at_least(self.max) {
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
    match std::env::var(RAFT_LOG_ENV) {
        Ok(level) => {
            let max = if level.eq_ignore_ascii_case("debug") {
                Level::Debug
            } else {
                Level::Info
            };
            slog::Logger::root(StderrDrain { max }.fuse(), slog::o!("node" => node))
        }
        Err(_) => slog::Logger::root(slog::Discard, slog::o!()),
    }
}
