//! raft-rs's own log (elections, votes, lease rejections) into the host's log: a slog drain that
//! queues each record at the host's level in `nodedb-hostlog` under the component `raft`, with
//! its key-values (`node`, `group`, `term`, ...) as fields. The Raft driver thread that emits
//! only takes the queue's lock; below the level a record costs one atomic load (and slog itself
//! compiles its debug records out of release builds).

use std::fmt;

use nodedb_hostlog::Level;
use slog::{Drain, OwnedKVList, Record, Serializer, KV};

/// The component raft-rs's records are logged under (`nodedb_cluster_core.raft`).
pub const COMPONENT: &str = "raft";

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
        let level = level_of(record.level());
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
