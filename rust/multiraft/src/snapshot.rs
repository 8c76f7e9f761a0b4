//! Snapshot files under `data_dir/snapshots/`: writing a state machine's snapshot durably,
//! streaming it to a follower in chunks, and receiving chunks into a `.partial` file that is
//! checksummed and renamed only when complete.
//!
//! File names: `g{group}-i{index:020}-t{term}.snap` (complete), `.partial` (being received),
//! `.tmp` (being written locally). A `.partial`/`.tmp` untouched for `orphan_partial_max_age_secs`
//! belongs to a dead transfer and is removed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use raft::prelude::Message;
use xxhash_rust::xxh3::Xxh3;

use crate::codec::{Frame, Reader, SnapshotChunk, SnapshotKey, Writer, FORMAT_VERSION};
use crate::error::{DecodeError, SnapshotError};
use crate::ids::{GroupId, NodeId};
use crate::network::RaftNetwork;
use crate::state_machine::SnapshotView;

/// What travels in raft's `Snapshot.data`: not the state, just how to check the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotDescriptor {
    pub total_bytes: u64,
    /// xxh3-64 of the file.
    pub checksum: u64,
}

impl SnapshotDescriptor {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(17);
        w.u8(FORMAT_VERSION);
        w.u64(self.total_bytes);
        w.u64(self.checksum);
        w.buf
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        r.version()?;
        let d = SnapshotDescriptor {
            total_bytes: r.u64()?,
            checksum: r.u64()?,
        };
        r.finish()?;
        Ok(d)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn fsync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// A transfer being received. Its chunks may arrive in any order (the transport sends each
/// frame on a stream of its own): each is written at its offset, and the file is complete once
/// distinct chunks cover every byte; the checksum is verified when it is read back.
struct Incoming {
    id: TransferId,
    file: File,
    path: PathBuf,
    /// Offsets of the chunks written, with their lengths.
    chunks: BTreeMap<u64, u64>,
    written_bytes: u64,
    /// Bytes from offset 0 written without a gap.
    contiguous: u64,
    /// Carried by the last chunk.
    message: Option<Message>,
}

/// Which transfer a chunk belongs to: its sender, snapshot and file. Two transfers of the same
/// snapshot from the same sender carry the same bytes, so their chunks mix safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferId {
    pub from: NodeId,
    pub key: SnapshotKey,
    pub total_bytes: u64,
    pub checksum: u64,
}

/// A transfer under way: what has arrived of it.
#[derive(Debug, Clone)]
pub struct Receiving {
    pub id: TransferId,
    /// Bytes from offset 0 on disk without a gap (readable by a decoder now).
    pub contiguous: u64,
    /// Its `.partial` file.
    pub path: PathBuf,
}

/// Result of feeding one chunk.
#[derive(Debug)]
pub enum ChunkOutcome {
    /// More chunks expected.
    InProgress,
    /// Every byte arrived; [`ReceivedSnapshot::seal`] it (off the driver thread: it fsyncs),
    /// read it back (which verifies the checksum), restore it, then step its MsgSnapshot.
    Complete(Box<ReceivedSnapshot>),
}

/// A snapshot whose bytes all arrived, still in its `.partial` file; its checksum is verified
/// when it is read back after [`ReceivedSnapshot::seal`].
#[derive(Debug)]
pub struct ReceivedSnapshot {
    pub from: NodeId,
    pub key: SnapshotKey,
    pub desc: SnapshotDescriptor,
    pub message: Message,
    file: File,
    partial: PathBuf,
}

impl ReceivedSnapshot {
    pub fn id(&self) -> TransferId {
        TransferId {
            from: self.from,
            key: self.key,
            total_bytes: self.desc.total_bytes,
            checksum: self.desc.checksum,
        }
    }

    /// Deletes its file (a restore refused it).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.partial);
    }

    /// fsync → rename to `.snap` → fsync of the directory: **the durability point** of a
    /// received snapshot is that rename (a crash before it leaves a `.partial` the orphan sweep
    /// removes). Returns the `.snap` path.
    pub fn seal(self, files: &SnapshotFiles) -> Result<PathBuf, SnapshotError> {
        let fin = files.path(&self.key, "snap");
        let sealed = seal_file(&self.file, &self.partial, &fin, files.dir());
        if sealed.is_err() {
            let _ = fs::remove_file(&self.partial);
        }
        sealed.map(|()| fin)
    }

    /// Seals the file ([`ReceivedSnapshot::seal`]) on a thread of its own while this one reads
    /// it back, verifies its checksum and hands its bytes to `use_data` (with the `.snap` path,
    /// for messages): the restore costs the longer of the two, not their sum. Ok only if both
    /// succeed; on failure no file of this snapshot is left.
    pub fn seal_and_use<T>(
        self,
        files: &SnapshotFiles,
        use_data: impl FnOnce(Vec<u8>, &Path) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let fin = files.path(&self.key, "snap");
        let r = (|| {
            let reader = File::open(&self.partial).map_err(io_err(&self.partial))?;
            std::thread::scope(|s| {
                let seal = || seal_file(&self.file, &self.partial, &fin, files.dir());
                let sealing = std::thread::Builder::new()
                    .name("snap-seal".into())
                    .spawn_scoped(s, seal);
                let used = read_verified(reader, fin.clone(), &self.desc)
                    .and_then(|data| use_data(data, &fin));
                let sealed = match sealing {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(SnapshotError::Missing(format!(
                            "{} (seal panicked)",
                            fin.display()
                        )))
                    }),
                    Err(_) => seal_file(&self.file, &self.partial, &fin, files.dir()),
                };
                sealed.and(used)
            })
        })();
        if r.is_err() {
            let _ = fs::remove_file(&self.partial);
            let _ = fs::remove_file(&fin);
        }
        r
    }
}

fn seal_file(file: &File, partial: &Path, fin: &Path, dir: &Path) -> Result<(), SnapshotError> {
    file.sync_all().map_err(io_err(partial))?;
    fs::rename(partial, fin).map_err(io_err(fin))?;
    fsync_dir(dir)
}

/// Counts and checksums what a snapshot writer writes, on its way to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Xxh3,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writer buffer of a snapshot file: big writes, few syscalls.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The files of the node's snapshot directory, by name: cheap to clone into the engine's
/// snapshot thread, which writes, seals and reads them off the driver thread.
#[derive(Clone, Debug)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, key: &SnapshotKey, ext: &str) -> PathBuf {
        self.dir.join(format!(
            "g{}-i{:020}-t{}.{ext}",
            key.group.0, key.index, key.term
        ))
    }

    /// Writes a snapshot from `view` durably and returns its descriptor: `.tmp` → fsync →
    /// rename to `.snap` → fsync of the directory. **The durability point is the rename after
    /// the fsync** (made durable by the directory's fsync): a crash before it leaves only a
    /// `.tmp`, which nothing reads (the orphan sweep removes it) and the previous `.snap` with
    /// its log mark stays the group's snapshot.
    pub fn write_view(
        &self,
        key: &SnapshotKey,
        view: Box<dyn SnapshotView>,
    ) -> Result<SnapshotDescriptor, SnapshotError> {
        self.write_with(key, |out| view.write_to(out).map_err(SnapshotError::from))
    }

    /// [`SnapshotFiles::write_view`] of bytes already serialized.
    pub fn write(
        &self,
        key: &SnapshotKey,
        data: &[u8],
    ) -> Result<SnapshotDescriptor, SnapshotError> {
        let tmp = self.path(key, "tmp");
        self.write_with(key, |out| out.write_all(data).map_err(io_err(&tmp)))
    }

    fn write_with(
        &self,
        key: &SnapshotKey,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), SnapshotError>,
    ) -> Result<SnapshotDescriptor, SnapshotError> {
        let tmp = self.path(key, "tmp");
        let fin = self.path(key, "snap");
        let written = (|| {
            let file = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut out = HashingWriter {
                inner: std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
                hasher: Xxh3::new(),
                bytes: 0,
            };
            fill(&mut out)?;
            let file = out
                .inner
                .into_inner()
                .map_err(|e| io_err(&tmp)(e.into_error()))?;
            file.sync_all().map_err(io_err(&tmp))?;
            Ok(SnapshotDescriptor {
                total_bytes: out.bytes,
                checksum: out.hasher.digest(),
            })
        })();
        let desc = match written {
            Ok(d) => d,
            Err(e) => {
                // A full disk must not keep the partial file (the space is what the node lacks).
                let _ignored = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Durability point (see `write_view`): the rename of the fsynced file, then the
        // directory's fsync.
        fs::rename(&tmp, &fin).map_err(io_err(&fin))?;
        fsync_dir(&self.dir)?;
        Ok(desc)
    }

    /// Reads a complete snapshot, verifying it against its descriptor.
    pub fn read(
        &self,
        key: &SnapshotKey,
        desc: &SnapshotDescriptor,
    ) -> Result<Vec<u8>, SnapshotError> {
        let path = self.path(key, "snap");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::Missing(path.display().to_string()))
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        read_verified(file, path, desc)
    }
}

/// Reads a snapshot file to its end, verifying it against its descriptor; errors name `path`.
fn read_verified(
    mut file: File,
    path: PathBuf,
    desc: &SnapshotDescriptor,
) -> Result<Vec<u8>, SnapshotError> {
    {
        // Sized from the file on disk, never from a descriptor received from a peer.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut data).map_err(io_err(&path))?;
        let actual = xxhash_rust::xxh3::xxh3_64(&data);
        if actual != desc.checksum || data.len() as u64 != desc.total_bytes {
            return Err(SnapshotError::Checksum {
                path,
                expected: desc.checksum,
                actual,
            });
        }
        Ok(data)
    }
}

/// The node's snapshot directory.
pub struct SnapshotStore {
    files: SnapshotFiles,
    dir: PathBuf,
    incoming: HashMap<GroupId, Incoming>,
}

impl SnapshotStore {
    pub fn open(dir: PathBuf) -> Result<Self, SnapshotError> {
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(SnapshotStore {
            files: SnapshotFiles { dir: dir.clone() },
            dir,
            incoming: HashMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory's files, for the snapshot thread.
    pub fn files(&self) -> &SnapshotFiles {
        &self.files
    }

    pub fn path(&self, key: &SnapshotKey, ext: &str) -> PathBuf {
        self.files.path(key, ext)
    }

    /// See [`SnapshotFiles::write`].
    pub fn write(
        &self,
        key: &SnapshotKey,
        data: &[u8],
    ) -> Result<SnapshotDescriptor, SnapshotError> {
        self.files.write(key, data)
    }

    /// See [`SnapshotFiles::read`].
    pub fn read(
        &self,
        key: &SnapshotKey,
        desc: &SnapshotDescriptor,
    ) -> Result<Vec<u8>, SnapshotError> {
        self.files.read(key, desc)
    }

    /// Deletes complete snapshots of `group` older than `keep_index`.
    pub fn remove_older(&self, group: GroupId, keep_index: u64) -> Result<(), SnapshotError> {
        self.remove_matching(|g, i| g == group && i < keep_index)
    }

    /// Deletes every file of `group` (the group was removed from this node).
    pub fn remove_group(&mut self, group: GroupId) -> Result<(), SnapshotError> {
        self.incoming.remove(&group);
        self.remove_matching(|g, _| g == group)
    }

    fn remove_matching(&self, pred: impl Fn(GroupId, u64) -> bool) -> Result<(), SnapshotError> {
        let rd = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some((g, i)) = parse_name(&name.to_string_lossy()) else {
                continue;
            };
            if pred(g, i) {
                let p = ent.path();
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        Ok(())
    }

    /// Removes `.partial`/`.tmp` files untouched for `max_age`; returns how many.
    pub fn remove_orphans(&mut self, max_age: Duration) -> Result<usize, SnapshotError> {
        let now = SystemTime::now();
        let mut removed = 0;
        let rd = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for ent in rd.flatten() {
            let p = ent.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "partial" && ext != "tmp" {
                continue;
            }
            let age = ent
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age >= max_age {
                fs::remove_file(&p).map_err(io_err(&p))?;
                self.incoming.retain(|_, inc| inc.path != p);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Feeds one received chunk, in any order. A chunk of another transfer than the one under
    /// way for its group (another sender, snapshot or file) starts that one over: the newest
    /// transfer wins, and the leader retries the one it lost after its ack timeout. A chunk
    /// that does not fit the declared size, or a file that cannot be written, fails the
    /// transfer (the leader starts over after our failure ack).
    pub fn receive(&mut self, c: SnapshotChunk) -> Result<ChunkOutcome, SnapshotError> {
        let group = c.key.group;
        let r = self.receive_inner(c);
        if r.is_err() {
            if let Some(inc) = self.incoming.remove(&group) {
                // Best effort: an undeletable partial is collected by the orphan sweep.
                let _ = fs::remove_file(&inc.path);
            }
        }
        r
    }

    /// The transfer under way for `group`, if any.
    pub fn receiving(&self, group: GroupId) -> Option<Receiving> {
        self.incoming.get(&group).map(|inc| Receiving {
            id: inc.id,
            contiguous: inc.contiguous,
            path: inc.path.clone(),
        })
    }

    fn receive_inner(&mut self, c: SnapshotChunk) -> Result<ChunkOutcome, SnapshotError> {
        let group = c.key.group;
        let id = TransferId {
            from: c.from,
            key: c.key,
            total_bytes: c.total_bytes,
            checksum: c.checksum,
        };
        let same = self.incoming.get(&group).is_some_and(|inc| inc.id == id);
        if !same {
            if let Some(old) = self.incoming.remove(&group) {
                let _ = fs::remove_file(&old.path);
            }
            let path = self.path(&c.key, "partial");
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.incoming.insert(
                group,
                Incoming {
                    id,
                    file,
                    path,
                    chunks: BTreeMap::new(),
                    written_bytes: 0,
                    contiguous: 0,
                    message: None,
                },
            );
        }
        let Some(inc) = self.incoming.get_mut(&group) else {
            return Ok(ChunkOutcome::InProgress);
        };
        let len = c.data.len() as u64;
        let end = c.offset_bytes.checked_add(len);
        if end.is_none_or(|e| e > inc.id.total_bytes) {
            return Err(SnapshotError::Overflow {
                total_bytes: inc.id.total_bytes,
            });
        }
        if let Some(m) = c.message {
            inc.message = Some(m);
        }
        match inc.chunks.get(&c.offset_bytes) {
            Some(&had) if had == len => {} // a resent copy of a chunk we hold
            Some(_) => {
                return Err(SnapshotError::OutOfOrder {
                    expected: inc.written_bytes,
                    got: c.offset_bytes,
                })
            }
            // An empty chunk carries no byte (an empty snapshot is sent as one): nothing to
            // write or to count, and a zero-length entry would stall the walk below for good.
            None if len == 0 => {}
            None => {
                inc.file
                    .write_all_at(&c.data, c.offset_bytes)
                    .map_err(io_err(&inc.path))?;
                inc.chunks.insert(c.offset_bytes, len);
                inc.written_bytes += len;
                while let Some(n) = inc.chunks.get(&inc.contiguous) {
                    inc.contiguous += n;
                }
            }
        }
        if inc.written_bytes < inc.id.total_bytes || inc.message.is_none() {
            return Ok(ChunkOutcome::InProgress);
        }
        let Some(inc) = self.incoming.remove(&group) else {
            return Ok(ChunkOutcome::InProgress);
        };
        // Distinct chunks inside the size summing to it cover every byte only if they do not
        // overlap: checked, since a sender could cut chunks differently on a retry.
        let mut next = 0u64;
        for (&off, &n) in &inc.chunks {
            if off != next {
                let _ = fs::remove_file(&inc.path);
                return Err(SnapshotError::OutOfOrder {
                    expected: next,
                    got: off,
                });
            }
            next = off + n;
        }
        let Some(message) = inc.message else {
            return Ok(ChunkOutcome::InProgress);
        };
        Ok(ChunkOutcome::Complete(Box::new(ReceivedSnapshot {
            from: inc.id.from,
            key: inc.id.key,
            desc: SnapshotDescriptor {
                total_bytes: inc.id.total_bytes,
                checksum: inc.id.checksum,
            },
            message,
            file: inc.file,
            partial: inc.path,
        })))
    }
}

fn parse_name(name: &str) -> Option<(GroupId, u64)> {
    let rest = name.strip_prefix('g')?;
    let (g, rest) = rest.split_once("-i")?;
    let (i, _) = rest.split_once("-t")?;
    Some((GroupId(g.parse().ok()?), i.parse().ok()?))
}

/// Streams one snapshot file to a peer from its own thread (so a large transfer never stalls
/// the driver), waiting for queue space per chunk. The last chunk carries the MsgSnapshot.
/// Returns whether every chunk was queued.
pub struct TransferJob {
    pub net: Arc<dyn RaftNetwork>,
    pub from: NodeId,
    pub to: NodeId,
    pub key: SnapshotKey,
    pub path: PathBuf,
    pub desc: SnapshotDescriptor,
    pub chunk_bytes: usize,
    pub message: Message,
    pub chunk_timeout: Duration,
    /// Set when the engine gave up on this transfer (failed, timed out): the rest is not sent,
    /// so it does not compete with the retry for the peer's queue.
    pub cancelled: Arc<std::sync::atomic::AtomicBool>,
}

impl TransferJob {
    /// Every chunk but the last is sent as read; the last only if the file's xxh3 is still the
    /// one recorded when it was written (else `Checksum`: damaged at rest since, never sent).
    pub fn run(self) -> Result<u64, SnapshotError> {
        let mut f = File::open(&self.path).map_err(io_err(&self.path))?;
        let mut hasher = Xxh3::new();
        let mut offset = 0u64;
        let mut sent_chunks = 0u64;
        let mut message = Some(self.message);
        loop {
            if self.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(SnapshotError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::other("transfer cancelled"),
                });
            }
            let want = (self.desc.total_bytes - offset).min(self.chunk_bytes as u64) as usize;
            let mut data = vec![0u8; want];
            f.read_exact(&mut data).map_err(io_err(&self.path))?;
            hasher.update(&data);
            let last = offset + want as u64 >= self.desc.total_bytes;
            if last && hasher.digest() != self.desc.checksum {
                return Err(SnapshotError::Checksum {
                    path: self.path.clone(),
                    expected: self.desc.checksum,
                    actual: hasher.digest(),
                });
            }
            let chunk = SnapshotChunk {
                from: self.from,
                key: self.key,
                offset_bytes: offset,
                total_bytes: self.desc.total_bytes,
                checksum: self.desc.checksum,
                data,
                message: if last { message.take() } else { None },
            };
            self.net
                .send_blocking(self.to, Frame::Chunk(Box::new(chunk)), self.chunk_timeout)
                .map_err(|e| SnapshotError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            sent_chunks += 1;
            offset += want as u64;
            if last {
                return Ok(sent_chunks);
            }
        }
    }
}

#[cfg(test)]
mod tests;
