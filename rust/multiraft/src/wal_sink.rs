//! `LogSink` over `nodedb-wal`: the node's one segmented log under `data_dir/raft/`.

use std::collections::HashMap;
use std::path::Path;

use nodedb_wal::{RecordRef, Wal, WalError, KIND_FORGET_GROUP};

pub use nodedb_wal::WalOptions;

use crate::error::SinkError;
use crate::ids::GroupId;
use crate::log_sink::{LogRecord, LogRepair, LogSink, RecordKind, SpaceStatus, STATE_KINDS};

/// The durable log of a node.
pub struct WalSink {
    wal: Wal,
    replay: Option<Vec<LogRecord>>,
    location: String,
    /// What recovery repaired at open.
    repairs: Vec<LogRepair>,
    /// A segment roll happened since the engine last asked (`take_rolled`).
    rolled: bool,
}

impl WalSink {
    /// Opens (or creates) the log in `dir`, replaying it; a torn tail is truncated, corruption
    /// before the tail is `SinkError::Corrupt` naming file and offset (the node must not start).
    pub fn open(dir: &Path, mut options: WalOptions) -> Result<WalSink, SinkError> {
        options.sticky_kinds = STATE_KINDS.iter().map(|k| *k as u8).collect();
        let (wal, recovered) = Wal::open(dir, options).map_err(map_err)?;
        let location = match &recovered.report.torn_tail {
            Some(t) => format!(
                "{} (recovery cut a torn tail of {} bytes at byte {} of {})",
                dir.display(),
                t.discarded_bytes,
                t.offset_bytes,
                t.path.display()
            ),
            None => dir.display().to_string(),
        };
        let repairs = recovered
            .report
            .torn_tail
            .iter()
            .map(|t| LogRepair {
                file: t.path.clone(),
                offset_bytes: t.offset_bytes,
                discarded_bytes: t.discarded_bytes,
                reason: t.reason.to_string(),
            })
            .collect();
        let mut records = Vec::with_capacity(recovered.records.len());
        for r in recovered.records {
            let kind = if r.kind == KIND_FORGET_GROUP {
                RecordKind::GroupRemoved
            } else {
                RecordKind::from_u8(r.kind)?
            };
            records.push(LogRecord {
                group: GroupId(r.group_id),
                kind,
                index: r.index,
                payload: r.payload,
            });
        }
        Ok(WalSink {
            wal,
            replay: Some(records),
            location,
            repairs,
            rolled: false,
        })
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }
}

fn map_err(e: WalError) -> SinkError {
    match e {
        WalError::Corrupt {
            path,
            offset_bytes,
            reason,
        } => SinkError::Corrupt {
            path,
            offset: offset_bytes,
            reason,
        },
        WalError::NoSpace { ref dir, .. } => SinkError::NoSpace {
            dir: dir.clone(),
            reason: e.to_string(),
        },
        other => SinkError::Backend(other.to_string()),
    }
}

impl LogSink for WalSink {
    fn append(&mut self, records: &[LogRecord]) -> Result<(), SinkError> {
        let refs: Vec<RecordRef<'_>> = records
            .iter()
            .map(|r| RecordRef {
                group_id: r.group.0,
                kind: r.kind as u8,
                index: r.index,
                payload: &r.payload,
            })
            .collect();
        let outcome = self.wal.append(&refs).map_err(map_err)?;
        self.rolled |= outcome.rolled;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.wal.sync().map(|_| ()).map_err(map_err)
    }

    fn compact(&mut self, floors: &[(GroupId, u64)]) -> Result<(), SinkError> {
        let floors: HashMap<u64, u64> = floors.iter().map(|(g, f)| (g.0, *f)).collect();
        self.wal.compact(&floors).map(|_| ()).map_err(map_err)
    }

    fn forget_group(&mut self, group: GroupId) -> Result<(), SinkError> {
        self.wal.forget_group(group.0).map(|_| ()).map_err(map_err)
    }

    fn take_replay(&mut self) -> Result<Vec<LogRecord>, SinkError> {
        Ok(self.replay.take().unwrap_or_default())
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn space(&self) -> Option<SpaceStatus> {
        self.wal.space().ok()
    }

    fn take_rolled(&mut self) -> bool {
        std::mem::take(&mut self.rolled)
    }

    fn release_spare_space(&mut self) -> bool {
        self.wal.release_prepared_segment()
    }

    fn recovery_repairs(&self) -> Vec<LogRepair> {
        self.repairs.clone()
    }
}
