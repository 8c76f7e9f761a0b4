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
