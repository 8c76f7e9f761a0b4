//! The engine's snapshot threads: a snapshot is written to its file, and a received one is
//! sealed and decoded, off the driver thread, so a large state never stalls the heartbeats of
//! every group on the node (issue 16: a 64 MiB state serialized on the driver thread made
//! check-quorum step leaders down). The driver hands a job over and picks its outcome up at
//! the start of a later round (`MultiRaftCore::collect_snapshot_work`); the core allows one
//! build and one restore per group at a time.
//!
//! Two threads per engine, started on first use: one builds, one restores, so a follower's
//! restore never waits behind the node's own builds. A snapshot arriving in several chunks is
//! decoded while it arrives, on a thread of its own ([`RestoreStream`]): it reads the
//! `.partial` file's gapless prefix as the driver writes chunks into it and feeds the state
//! machine's decoder, so the restore costs about the transfer's time, not that plus a decode.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3;

use raft::prelude::{Message, SnapshotMetadata};

use crate::codec::SnapshotKey;
use crate::error::SnapshotError;
use crate::ids::NodeId;
use crate::snapshot::{ReceivedSnapshot, SnapshotDescriptor, SnapshotFiles, TransferId};
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
        decoder: Box<dyn SnapshotDecoder>,
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
                let mut decoder = decoder;
                decoder
                    .feed(&data)
                    .and_then(|()| decoder.finish())
                    .map_err(|source| SnapshotError::Restore {
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

    /// Starts decoding the transfer `id` while it arrives into `partial` (None in inline mode,
    /// or if no thread starts: the whole file is then decoded once complete).
    pub(crate) fn start_stream(
        &self,
        id: TransferId,
        partial: PathBuf,
        decoder: Box<dyn SnapshotDecoder>,
    ) -> Option<RestoreStream> {
        if self.inline {
            return None;
        }
        let shared = Arc::new(StreamShared::default());
        let feed = StreamFeed {
            files: self.files.clone(),
            id,
            partial,
            decoder,
            shared: Arc::clone(&shared),
            done: Arc::clone(&self.done),
        };
        std::thread::Builder::new()
            .name(format!("snap-stream-{}", self.name))
            .spawn(move || feed.run())
            .ok()?;
        Some(RestoreStream { id, shared })
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

/// Bytes read from the `.partial` file per feed of the decoder.
const STREAM_READ_BYTES: usize = 4 << 20;
/// A stream that gets no byte for this long belongs to a transfer that died: its thread ends
/// (the engine drops it too when the transfer's file is swept).
const STREAM_IDLE_MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
struct StreamState {
    /// Bytes from offset 0 the driver wrote without a gap.
    contiguous: u64,
    /// Every byte arrived: seal it and finish.
    complete: Option<Box<ReceivedSnapshot>>,
    cancelled: bool,
}

#[derive(Default)]
struct StreamShared {
    state: Mutex<StreamState>,
    cv: Condvar,
}

impl StreamShared {
    fn update(&self, f: impl FnOnce(&mut StreamState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.cv.notify_all();
    }
}

/// The driver's end of a snapshot decoded while it arrives. Dropped before completion, it
/// cancels the decode (the transfer failed or was replaced).
pub(crate) struct RestoreStream {
    pub(crate) id: TransferId,
    shared: Arc<StreamShared>,
}

impl RestoreStream {
    /// The driver wrote the file gapless up to `contiguous` bytes.
    pub(crate) fn advance(&self, contiguous: u64) {
        self.shared
            .update(|st| st.contiguous = st.contiguous.max(contiguous));
    }

    /// Every byte is written: the stream's thread seals the file, finishes the decoder and
    /// reports [`SnapshotDone::Restored`].
    pub(crate) fn complete(self, received: Box<ReceivedSnapshot>) {
        let total = received.desc.total_bytes;
        self.shared.update(|st| {
            st.contiguous = total;
            st.complete = Some(received);
        });
    }
}

impl Drop for RestoreStream {
    fn drop(&mut self) {
        self.shared.update(|st| {
            if st.complete.is_none() {
                st.cancelled = true;
            }
        });
    }
}

/// The stream's thread.
struct StreamFeed {
    files: SnapshotFiles,
    id: TransferId,
    partial: PathBuf,
    decoder: Box<dyn SnapshotDecoder>,
    shared: Arc<StreamShared>,
    done: Arc<Mutex<Vec<SnapshotDone>>>,
}

impl StreamFeed {
    fn run(mut self) {
        let started = Instant::now();
        let done = Arc::clone(&self.done);
        let fin = self.files.path(&self.id.key, "snap");
        let file = File::open(&self.partial).map_err(|source| SnapshotError::Io {
            path: self.partial.clone(),
            source,
        });
        let mut failed: Option<SnapshotError> = file.as_ref().err().map(|e| SnapshotError::Io {
            path: self.partial.clone(),
            source: std::io::Error::other(e.to_string()),
        });
        let mut fed = 0u64;
        let mut hasher = Xxh3::new();
        let mut buf = vec![0u8; STREAM_READ_BYTES];
        loop {
            let Some((target, complete)) = self.wait(fed) else {
                return; // cancelled or abandoned: the driver reports nothing for it
            };
            while fed < target && failed.is_none() {
                let n = (target - fed).min(buf.len() as u64) as usize;
                let piece = &mut buf[..n];
                let read = match &file {
                    Ok(f) => f
                        .read_exact_at(piece, fed)
                        .map_err(|source| SnapshotError::Io {
                            path: self.partial.clone(),
                            source,
                        }),
                    Err(_) => Ok(()),
                };
                if let Err(e) = read {
                    failed = Some(e);
                    break;
                }
                hasher.update(piece);
                if let Err(source) = self.decoder.feed(piece) {
                    failed = Some(SnapshotError::Restore {
                        path: fin.clone(),
                        source,
                    });
                }
                fed += n as u64;
            }
            fed = fed.max(target);
            if let Some(received) = complete {
                let from = received.from;
                let key = received.key;
                let message = received.message.clone();
                let result = match failed {
                    Some(e) => {
                        received.discard();
                        Err(e)
                    }
                    None => self.finish(received, hasher.digest(), fin),
                };
                let outcome = SnapshotDone::Restored {
                    from,
                    key,
                    message,
                    result,
                    took: started.elapsed(),
                };
                done.lock().unwrap_or_else(|p| p.into_inner()).push(outcome);
                return;
            }
        }
    }

    /// Waits until more bytes are written than `fed`, or the file is complete; None once
    /// cancelled or idle for `STREAM_IDLE_MAX`.
    fn wait(&self, fed: u64) -> Option<(u64, Option<Box<ReceivedSnapshot>>)> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.cancelled {
                return None;
            }
            if st.contiguous > fed || st.complete.is_some() {
                return Some((st.contiguous, st.complete.take()));
            }
            let (next, waited) = self
                .shared
                .cv
                .wait_timeout(st, STREAM_IDLE_MAX)
                .unwrap_or_else(|p| p.into_inner());
            st = next;
            if waited.timed_out() && st.contiguous <= fed && st.complete.is_none() {
                return None;
            }
        }
    }

    /// Every byte was fed: check the checksum, seal the file, finish the decoder.
    fn finish(
        self,
        received: Box<ReceivedSnapshot>,
        digest: u64,
        fin: PathBuf,
    ) -> Result<DecodedState, SnapshotError> {
        if digest != received.desc.checksum {
            let expected = received.desc.checksum;
            received.discard();
            return Err(SnapshotError::Checksum {
                path: fin,
                expected,
                actual: digest,
            });
        }
        received.seal(&self.files)?;
        self.decoder.finish().map_err(|source| {
            let _ = std::fs::remove_file(&fin);
            SnapshotError::Restore { path: fin, source }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SnapshotChunk;
    use crate::error::SmError;
    use crate::ids::GroupId;
    use crate::snapshot::{ChunkOutcome, SnapshotStore};

    /// Refuses every snapshot.
    struct Failing;
    impl SnapshotDecoder for Failing {
        fn feed(&mut self, _: &[u8]) -> Result<(), SmError> {
            Err(SmError::Decode("truncated map".into()))
        }
        fn finish(self: Box<Self>) -> Result<DecodedState, SmError> {
            Err(SmError::Decode("never fed".into()))
        }
    }

    /// Its state is the number of bytes fed.
    struct Counting(usize);
    impl SnapshotDecoder for Counting {
        fn feed(&mut self, b: &[u8]) -> Result<(), SmError> {
            self.0 += b.len();
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<DecodedState, SmError> {
            Ok(Box::new(self.0))
        }
    }

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
        let decoder: Box<dyn SnapshotDecoder> = Box::new(Failing);
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
        let decoder: Box<dyn SnapshotDecoder> = Box::new(Counting(0));
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

    /// Records what it is fed (telling how much after each piece), and sends it all when
    /// finished.
    struct Recording {
        fed: Vec<u8>,
        pieces: usize,
        progress: std::sync::mpsc::Sender<usize>,
        finished: std::sync::mpsc::Sender<(Vec<u8>, usize)>,
    }
    impl SnapshotDecoder for Recording {
        fn feed(&mut self, b: &[u8]) -> Result<(), SmError> {
            self.fed.extend_from_slice(b);
            self.pieces += 1;
            let _ = self.progress.send(self.fed.len());
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<DecodedState, SmError> {
            let _ = self.finished.send((self.fed.clone(), self.pieces));
            Ok(Box::new(self.fed.len()))
        }
    }

    /// What a stream's decoder was fed (and in how many pieces), its outcome, the store.
    type Streamed = (
        Option<(Vec<u8>, usize)>,
        Result<DecodedState, SnapshotError>,
        SnapshotStore,
    );

    /// Feeds `data` in 10,000-byte chunks, in `order` (chunk indexes), through the store and a
    /// stream the way the engine does; returns what the decoder was fed (and in how many
    /// pieces) and the outcome.
    fn stream_in_order(data: &[u8], order: &[usize], corrupt: Option<usize>) -> Streamed {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let mut st = SnapshotStore::open(dir).expect("open");
        let workers = SnapshotWorkers::new(st.files().clone(), "test".into());
        let key = SnapshotKey {
            group: GroupId(3),
            index: 42,
            term: 2,
        };
        let size = 10_000;
        let n = data.len().div_ceil(size);
        let checksum = xxhash_rust::xxh3::xxh3_64(data);
        let (tx, rx) = std::sync::mpsc::channel();
        let (progress_tx, progress) = std::sync::mpsc::channel();
        let mut stream: Option<RestoreStream> = None;
        let mut fed_up_to = 0;
        for &i in order {
            let mut part = data[i * size..((i + 1) * size).min(data.len())].to_vec();
            if corrupt == Some(i) {
                part[7] ^= 0xFF;
            }
            let chunk = SnapshotChunk {
                from: NodeId(1),
                key,
                offset_bytes: (i * size) as u64,
                total_bytes: data.len() as u64,
                checksum,
                data: part,
                message: (i + 1 == n).then(Message::default),
            };
            match st.receive(chunk).expect("chunk") {
                ChunkOutcome::InProgress => {
                    let r = st.receiving(key.group).expect("receiving");
                    let s = stream.get_or_insert_with(|| {
                        let decoder = Box::new(Recording {
                            fed: Vec::new(),
                            pieces: 0,
                            progress: progress_tx.clone(),
                            finished: tx.clone(),
                        });
                        workers
                            .start_stream(r.id, r.path.clone(), decoder)
                            .expect("stream thread")
                    });
                    s.advance(r.contiguous);
                    // The next chunk goes only once the stream decoded what is gapless now.
                    while fed_up_to < r.contiguous as usize {
                        fed_up_to = progress.recv_timeout(WAIT).expect("fed");
                    }
                }
                ChunkOutcome::Complete(r) => {
                    stream.take().expect("a stream").complete(r);
                }
            }
        }
        let fed = if corrupt.is_none() {
            rx.recv_timeout(WAIT).ok()
        } else {
            None
        };
        let deadline = Instant::now() + WAIT;
        let result = loop {
            // The outcome is pushed right after the decoder finishes.
            if let Some(SnapshotDone::Restored { result, .. }) = workers.take_done().pop() {
                break result;
            }
            assert!(Instant::now() < deadline, "no outcome");
            std::thread::yield_now();
        };
        (fed, result, st)
    }

    const WAIT: Duration = Duration::from_secs(20);

    #[test]
    fn a_snapshot_arriving_out_of_order_is_decoded_while_it_arrives() {
        let data: Vec<u8> = (0..95_000u32).map(|i| (i % 251) as u8).collect();
        let (fed, result, st) = stream_in_order(&data, &[1, 0, 3, 2, 5, 4, 9, 6, 7, 8], None);
        let (fed, pieces) = fed.expect("finished");
        assert!(fed == data, "fed in order, every byte once");
        // Gapless after chunks 1+0, 3+2, 5+4, 6, 7, then the last two complete it.
        assert!(pieces >= 5, "decoded as it arrived: {pieces} piece(s)");
        assert_eq!(
            result
                .expect("restored")
                .downcast::<usize>()
                .ok()
                .map(|b| *b),
            Some(data.len())
        );
        let key = SnapshotKey {
            group: GroupId(3),
            index: 42,
            term: 2,
        };
        assert!(st.path(&key, "snap").exists(), "sealed");
        let _ = std::fs::remove_dir_all(st.dir());
    }

    #[test]
    fn a_streamed_snapshot_with_a_corrupt_chunk_is_refused_naming_the_file() {
        let data: Vec<u8> = (0..45_000u32).map(|i| (i % 13) as u8).collect();
        let (_, result, st) = stream_in_order(&data, &[0, 1, 2, 3, 4], Some(2));
        let Err(e) = result else {
            panic!("refused");
        };
        assert!(matches!(e, SnapshotError::Checksum { .. }), "{e}");
        assert!(
            e.to_string().contains("g3-i00000000000000000042-t2.snap"),
            "{e}"
        );
        let left: Vec<_> = std::fs::read_dir(st.dir()).expect("dir").collect();
        assert!(left.is_empty(), "no file of it is left: {left:?}");
        let _ = std::fs::remove_dir_all(st.dir());
    }
}
