//! The snapshot store's transfers: chunks in any order, resent, replaced, damaged, empty.

use super::*;

fn key() -> SnapshotKey {
    SnapshotKey {
        group: GroupId(3),
        index: 42,
        term: 2,
    }
}

fn chunks(data: &[u8], size: usize, from: NodeId) -> Vec<SnapshotChunk> {
    let checksum = xxhash_rust::xxh3::xxh3_64(data);
    let n = data.len().div_ceil(size);
    (0..n)
        .map(|i| SnapshotChunk {
            from,
            key: key(),
            offset_bytes: (i * size) as u64,
            total_bytes: data.len() as u64,
            checksum,
            data: data[i * size..((i + 1) * size).min(data.len())].to_vec(),
            message: (i + 1 == n).then(Message::default),
        })
        .collect()
}

#[test]
fn chunks_assemble_verify_and_rename() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut st = SnapshotStore::open(dir.path().join("snapshots")).expect("open");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let cs = chunks(&data, 1000, NodeId(1));
    let n = cs.len();
    for (i, c) in cs.into_iter().enumerate() {
        let out = st.receive(c).expect("chunk");
        assert_eq!(matches!(out, ChunkOutcome::Complete(_)), i + 1 == n);
        if let ChunkOutcome::Complete(r) = out {
            assert!(!st.path(&key(), "snap").exists(), "sealed only by seal()");
            let fin = r.seal(st.files()).expect("seal");
            assert_eq!(fin, st.path(&key(), "snap"));
        }
    }
    let desc = SnapshotDescriptor {
        total_bytes: data.len() as u64,
        checksum: xxhash_rust::xxh3::xxh3_64(&data),
    };
    assert_eq!(st.read(&key(), &desc).expect("read"), data);
    assert!(!st.path(&key(), "partial").exists());
}

fn desc_of(data: &[u8]) -> SnapshotDescriptor {
    SnapshotDescriptor {
        total_bytes: data.len() as u64,
        checksum: xxhash_rust::xxh3::xxh3_64(data),
    }
}

/// A state machine whose state encodes to no byte (a host's empty state at formation) is
/// sent as one empty chunk. Its receiver used to loop for good on the driver thread.
#[test]
fn an_empty_snapshot_assembles_from_its_one_empty_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut st = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let empty = SnapshotChunk {
        from: NodeId(1),
        key: key(),
        offset_bytes: 0,
        total_bytes: 0,
        checksum: xxhash_rust::xxh3::xxh3_64(b""),
        data: Vec::new(),
        message: Some(Message::default()),
    };
    let ChunkOutcome::Complete(r) = st.receive(empty.clone()).expect("chunk") else {
        panic!("no byte to wait for: complete");
    };
    r.seal(st.files()).expect("seal");
    assert_eq!(st.read(&key(), &desc_of(b"")).expect("read"), b"");
    let stray = SnapshotChunk {
        total_bytes: 10,
        message: None,
        ..empty
    };
    assert!(matches!(
        st.receive(stray).expect("an empty chunk of a larger one"),
        ChunkOutcome::InProgress
    ));
}

/// The transport sends every frame on a stream of its own, so chunks arrive in any order
/// (and a retried transfer resends some): before, one chunk out of order failed the whole
/// transfer, and the leader's retry storm held re-replication at ~5 MiB/s.
#[test]
fn chunks_in_any_order_with_resent_copies_assemble() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut st = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 241) as u8).collect();
    let cs = chunks(&data, 1000, NodeId(1));
    let order = [4usize, 2, 2, 0, 3, 0];
    for i in order {
        assert!(matches!(
            st.receive(cs[i].clone()).expect("chunk"),
            ChunkOutcome::InProgress
        ));
    }
    let ChunkOutcome::Complete(r) = st.receive(cs[1].clone()).expect("last gap") else {
        panic!("every byte arrived: complete");
    };
    r.seal(st.files()).expect("seal");
    assert_eq!(st.read(&key(), &desc_of(&data)).expect("read"), data);
}

#[test]
fn a_transfer_of_another_snapshot_replaces_an_unfinished_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut st = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let old = chunks(&[7u8; 3000], 1000, NodeId(1));
    st.receive(old[0].clone()).expect("old first");
    let data = vec![9u8; 2000];
    let new = chunks(&data, 1000, NodeId(1));
    st.receive(new[1].clone())
        .expect("new, its last chunk first");
    let ChunkOutcome::Complete(r) = st.receive(new[0].clone()).expect("new") else {
        panic!("the new transfer completes on its own chunks");
    };
    r.seal(st.files()).expect("seal");
    assert_eq!(st.read(&key(), &desc_of(&data)).expect("read"), data);
    // A chunk past the declared size fails the transfer and leaves no partial.
    let mut bad = old[2].clone();
    bad.offset_bytes = 2500;
    assert!(matches!(
        st.receive(bad),
        Err(SnapshotError::Overflow { .. })
    ));
    assert!(!st.path(&key(), "partial").exists());
}

#[test]
fn corrupted_chunk_fails_checksum_on_read_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut st = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let data = vec![1u8; 3000];
    let mut cs = chunks(&data, 1000, NodeId(1));
    cs[1].data[10] ^= 0xFF;
    let mut last = None;
    for c in cs {
        last = Some(st.receive(c).expect("chunk"));
    }
    let Some(ChunkOutcome::Complete(r)) = last else {
        panic!("every byte arrived");
    };
    r.seal(st.files()).expect("seal");
    let err = st.read(&key(), &desc_of(&data)).expect_err("corrupt");
    assert!(matches!(err, SnapshotError::Checksum { .. }));
    assert!(
        err.to_string().contains("g3-i00000000000000000042-t2.snap"),
        "{err}"
    );
}

#[test]
fn orphan_partials_are_removed_after_max_age_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut st = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let cs = chunks(&[5u8; 3000], 1000, NodeId(1));
    st.receive(cs[0].clone()).expect("first");
    assert_eq!(
        st.remove_orphans(Duration::from_secs(300)).expect("sweep"),
        0
    );
    assert!(st.path(&key(), "partial").exists());
    assert_eq!(st.remove_orphans(Duration::ZERO).expect("sweep"), 1);
    assert!(!st.path(&key(), "partial").exists());
    // The transfer it belonged to is gone too: its other chunks alone never complete.
    assert!(matches!(
        st.receive(cs[1].clone()).expect("chunk"),
        ChunkOutcome::InProgress
    ));
    assert!(matches!(
        st.receive(cs[2].clone()).expect("chunk"),
        ChunkOutcome::InProgress
    ));
}
