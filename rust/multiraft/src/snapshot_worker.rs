//! The engine's snapshot threads: a snapshot is written to its file, and a received one is
//! sealed and decoded, off the driver thread, so a large state never stalls the heartbeats of
//! every group on the node (issue 16: a 64 MiB state serialized on the driver thread made
//! check-quorum step leaders down). The driver hands a job over and picks its outcome up at
//! the start of a later round (`MultiRaftCore::collect_snapshot_work`); the core allows one
//! build and one restore per group at a time.
//!
//! Two threads per engine, started on first use: one builds, one restores, so a follower's
//! restore never waits behind the node's own builds.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::prelude::{Message, SnapshotMetadata};

use crate::codec::SnapshotKey;
use crate::error::SnapshotError;
use crate::ids::NodeId;
use crate::snapshot::{ReceivedSnapshot, SnapshotDescriptor, SnapshotFiles};
use crate::state_machine::{DecodedState, SnapshotDecoder, SnapshotView};

/// Work for a snapshot thread.
pub(crate) enum SnapshotJob {
    /// Write `view` (the state at `meta.index`) to the `.snap` of `key`.
    Build {
        key: SnapshotKey,
        meta: SnapshotMetadata,
        view: Box<dyn SnapshotView>,
    },
    /// Seal a received snapshot and decode it for its state machine.
    Restore {
        received: Box<ReceivedSnapshot>,
        decoder: SnapshotDecoder,
    },
}

/// A finished job.
pub(crate) enum SnapshotDone {
    Built {
        key: SnapshotKey,
        meta: SnapshotMetadata,
        result: Result<SnapshotDescriptor, SnapshotError>,
        /// How long the file took to write.
        took: Duration,
    },
    Restored {
        from: NodeId,
        key: SnapshotKey,
        message: Message,
        result: Result<DecodedState, SnapshotError>,
        /// How long sealing, reading and decoding took.
        took: Duration,
    },
}

/// Runs one job (on a snapshot thread, or inline in deterministic tests).
pub(crate) fn run_job(files: &SnapshotFiles, job: SnapshotJob) -> SnapshotDone {
    let started = Instant::now();
    match job {
        SnapshotJob::Build { key, meta, view } => SnapshotDone::Built {
            key,
            meta,
            result: files.write_view(&key, view),
            took: started.elapsed(),
        },
        SnapshotJob::Restore { received, decoder } => {
            let (from, key) = (received.from, received.key);
            let message = received.message.clone();
            let result = received.seal_and_use(files, |data, path| {
                decoder(&data).map_err(|source| SnapshotError::Restore {
                    path: path.to_path_buf(),
                    source,
                })
            });
            SnapshotDone::Restored {
                from,
                key,
                message,
                result,
                took: started.elapsed(),
            }
        }
    }
}

/// The two snapshot threads of an engine and the outcomes they report.
pub(crate) struct SnapshotWorkers {
    files: SnapshotFiles,
    name: String,
    build: Option<Sender<SnapshotJob>>,
    restore: Option<Sender<SnapshotJob>>,
    done: Arc<Mutex<Vec<SnapshotDone>>>,
    /// Run jobs on the calling thread (deterministic tests).
    pub(crate) inline: bool,
}

impl SnapshotWorkers {
    pub(crate) fn new(files: SnapshotFiles, name: String) -> Self {
        SnapshotWorkers {
            files,
            name,
            build: None,
            restore: None,
            done: Arc::default(),
            inline: false,
        }
    }

    /// Hands `job` over. Returns it back if no thread could be started.
    pub(crate) fn submit(&mut self, job: SnapshotJob) -> Result<(), SnapshotJob> {
        if self.inline {
            let done = run_job(&self.files, job);
            self.push(done);
            return Ok(());
        }
        let (slot, kind) = match job {
            SnapshotJob::Build { .. } => (&mut self.build, "build"),
            SnapshotJob::Restore { .. } => (&mut self.restore, "restore"),
        };
        if slot.is_none() {
            let (tx, rx) = channel::<SnapshotJob>();
            let files = self.files.clone();
            let done = Arc::clone(&self.done);
            let spawned = std::thread::Builder::new()
                .name(format!("snap-{kind}-{}", self.name))
                .spawn(move || {
                    // Ends when the engine drops its sender.
                    while let Ok(job) = rx.recv() {
                        let outcome = run_job(&files, job);
                        done.lock().unwrap_or_else(|p| p.into_inner()).push(outcome);
                    }
                });
            if spawned.is_err() {
                return Err(job);
            }
            *slot = Some(tx);
        }
        match slot.as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                *slot = None; // the thread ended (a panic in a state machine's writer)
                Err(e.0)
            }
            None => Ok(()),
        }
    }

    fn push(&self, done: SnapshotDone) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(done);
    }

    pub(crate) fn has_done(&self) -> bool {
        !self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub(crate) fn take_done(&self) -> Vec<SnapshotDone> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SnapshotChunk;
    use crate::error::SmError;
    use crate::ids::GroupId;
    use crate::snapshot::{ChunkOutcome, SnapshotStore};

    fn received(st: &mut SnapshotStore, data: &[u8]) -> Box<ReceivedSnapshot> {
        let chunk = SnapshotChunk {
            from: NodeId(1),
            key: SnapshotKey {
                group: GroupId(3),
                index: 42,
                term: 2,
            },
            offset_bytes: 0,
            total_bytes: data.len() as u64,
            checksum: xxhash_rust::xxh3::xxh3_64(data),
            data: data.to_vec(),
            message: Some(Message::default()),
        };
        match st.receive(chunk).expect("chunk") {
            ChunkOutcome::Complete(r) => r,
            ChunkOutcome::InProgress => panic!("one chunk holds it all"),
        }
    }

    #[test]
    fn a_snapshot_its_state_machine_cannot_decode_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut st = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
        let r = received(&mut st, b"not a state");
        let decoder: SnapshotDecoder =
            Box::new(|_: &[u8]| Err(SmError::Decode("truncated map".into())));
        let done = run_job(
            st.files(),
            SnapshotJob::Restore {
                received: r,
                decoder,
            },
        );
        let SnapshotDone::Restored { result, .. } = done else {
            panic!("a restore");
        };
        let Err(e) = result else {
            panic!("refused");
        };
        let text = e.to_string();
        assert!(
            text.contains("g3-i00000000000000000042-t2.snap") && text.contains("truncated map"),
            "{text}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(left.is_empty(), "no file of it is left: {left:?}");
    }

    #[test]
    fn a_received_snapshot_is_sealed_and_decoded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut st = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
        let r = received(&mut st, b"a state");
        let key = r.key;
        let decoder: SnapshotDecoder = Box::new(|d: &[u8]| Ok(Box::new(d.len()) as DecodedState));
        let SnapshotDone::Restored { result, .. } = run_job(
            st.files(),
            SnapshotJob::Restore {
                received: r,
                decoder,
            },
        ) else {
            panic!("a restore");
        };
        let state = result.expect("decoded");
        assert_eq!(state.downcast::<usize>().ok().map(|b| *b), Some(7));
        assert!(st.path(&key, "snap").exists(), "sealed");
        assert!(!st.path(&key, "partial").exists());
    }
}
