//! raft-rs's own log (elections, votes, lease rejections) into the host's log: a slog drain that
//! queues each record at the host's level in `nodedb-hostlog` under the component `raft`, with
//! its key-values (`node`, `group`, `term`, ...) as fields. The Raft driver thread that emits
//! only takes the queue's lock; below the level a record costs one atomic load (and slog itself
//! compiles its debug records out of release builds).

use std::cell::Cell;
use std::fmt;

use nodedb_hostlog::Level;
use slog::{Drain, OwnedKVList, Record, Serializer, KV};

/// The component raft-rs's records are logged under (`nodedb_cluster_core.raft`).
pub const COMPONENT: &str = "raft";

thread_local! {
    /// Set while the engine re-sends a pre-candidate's pre-votes (`group::resend_pre_votes`,
    /// every tick): raft-rs logs each re-send as a new election at INFO, which made a
    /// partitioned or stranded replica log ten election lines a second for as long as it
    /// campaigned. Those records go out at DEBUG; raft-rs's own campaigns stay at INFO.
    static REPEATING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the raft-rs records it emits on this thread demoted from INFO to DEBUG (see
/// `REPEATING`).
pub(crate) fn as_repeat<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REPEATING.with(|r| r.set(false));
        }
    }
    REPEATING.with(|r| r.set(true));
    let _reset = Reset;
    f()
}

struct HostDrain;

struct Fields(Vec<(String, String)>);

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        self.0.push((key.to_string(), val.to_string()));
        Ok(())
    }
}

fn level_of(level: slog::Level) -> Level {
    match level {
        slog::Level::Critical | slog::Level::Error => Level::Error,
        slog::Level::Warning => Level::Warn,
        slog::Level::Info => Level::Info,
        slog::Level::Debug => Level::Debug,
        slog::Level::Trace => Level::Trace,
    }
}

impl Drain for HostDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut level = level_of(record.level());
        if level == Level::Info && REPEATING.with(Cell::get) {
            level = Level::Debug;
        }
        if !nodedb_hostlog::enabled(level) {
            return Ok(());
        }
        let mut fields = Fields(Vec::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        nodedb_hostlog::emit(level, COMPONENT, record.msg().to_string(), fields.0);
        Ok(())
    }
}

/// The root logger of an engine: raft-rs's records go to the host's log, tagged with `node`.
pub fn root_logger(node: u64) -> slog::Logger {
    slog::Logger::root(HostDrain.fuse(), slog::o!("node" => node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels_of(records: &[nodedb_hostlog::Record], message: &str) -> Vec<Level> {
        records
            .iter()
            .filter(|r| r.component == COMPONENT && r.message == message)
            .map(|r| r.level)
            .collect()
    }

    #[test]
    fn a_repeat_logs_at_debug_and_everything_else_as_raft_rs_says() {
        nodedb_hostlog::set_max_level(Some(Level::Trace));
        let log = root_logger(7);
        slog::info!(log, "repeat-test first");
        as_repeat(|| {
            slog::info!(log, "repeat-test again");
            slog::warn!(log, "repeat-test warning");
        });
        slog::info!(log, "repeat-test after");
        let records = nodedb_hostlog::take();
        assert_eq!(levels_of(&records, "repeat-test first"), vec![Level::Info]);
        assert_eq!(levels_of(&records, "repeat-test again"), vec![Level::Debug]);
        assert_eq!(
            levels_of(&records, "repeat-test warning"),
            vec![Level::Warn]
        );
        assert_eq!(levels_of(&records, "repeat-test after"), vec![Level::Info]);
    }
}
