//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use nodedb_wal::{RecordRef, Recovered, Wal, WalOptions};

/// Engine-like kinds used by the tests.
pub const KIND_ENTRIES: u8 = 1;
pub const KIND_HARD_STATE: u8 = 2;
pub const KIND_CONF_STATE: u8 = 3;

pub fn options() -> WalOptions {
    WalOptions {
        sticky_kinds: vec![KIND_HARD_STATE, KIND_CONF_STATE],
        ..WalOptions::default()
    }
}

/// `options()` with segments that grow by appending (no preallocation): the layout the
/// byte-exact torn-tail tests reason about, and the roll fallback's layout.
pub fn growing() -> WalOptions {
    WalOptions {
        preallocate: false,
        ..options()
    }
}

pub fn small_segments(segment_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_bytes_max,
        write_buffer_bytes: 4096,
        ..options()
    }
}

/// Owned version of a record for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub group_id: u64,
    pub kind: u8,
    pub index: u64,
    pub payload: Vec<u8>,
}

impl Rec {
    pub fn entry(group_id: u64, index: u64, payload: &[u8]) -> Rec {
        Rec {
            group_id,
            kind: KIND_ENTRIES,
            index,
            payload: payload.to_vec(),
        }
    }
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            group_id: self.group_id,
            kind: self.kind,
            index: self.index,
            payload: &self.payload,
        }
    }
}

pub fn append_all(wal: &mut Wal, recs: &[Rec]) {
    let refs: Vec<RecordRef<'_>> = recs.iter().map(Rec::as_ref).collect();
    wal.append(&refs).unwrap();
}

pub fn owned(recovered: &Recovered) -> Vec<Rec> {
    recovered
        .records
        .iter()
        .map(|r| Rec {
            group_id: r.group_id,
            kind: r.kind,
            index: r.index,
            payload: r.payload.clone(),
        })
        .collect()
}

pub fn open(dir: &Path, options: WalOptions) -> (Wal, Recovered) {
    Wal::open(dir, options).unwrap()
}

pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

/// How many segment preparations (`.wal.prep` files) a directory holds.
pub fn prep_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".wal.prep")
        })
        .count()
}

/// The segment files of a directory, by name, in memory: a crash image to replay from.
pub fn image(dir: &Path) -> Vec<(String, Vec<u8>)> {
    segment_files(dir)
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Writes an image into a fresh temporary directory.
pub fn restore(files: &[(String, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

/// Byte offsets at which each record frame starts in a segment written with `recs` only
/// (no carried records): header, then frames back to back.
pub fn frame_starts(recs: &[Rec]) -> Vec<usize> {
    let mut at = nodedb_wal::SEGMENT_HEADER_BYTES;
    recs.iter()
        .map(|r| {
            let start = at;
            at += nodedb_wal::FRAME_HEADER_BYTES + r.payload.len();
            start
        })
        .collect()
}
