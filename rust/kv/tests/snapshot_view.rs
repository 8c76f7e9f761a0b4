//! The KV state machine's snapshot off the driver thread: its view writes the state at the
//! moment it was taken in `snapshot()`'s format, its decoder reads it back into the same state,
//! and the state is swapped in whole.

use nodedb_kv::state_machine::KvStateMachine;
use nodedb_kv::KvCommand;
use nodedb_multiraft::state_machine::{Command, StateMachine};

fn put_all(sm: &mut KvStateMachine, index: u64, n: u32) {
    let enc: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            KvCommand::Put {
                key: format!("k{i}").into_bytes(),
                value: vec![b'v'; 100 + (i % 7) as usize],
            }
            .encode()
        })
        .collect();
    let batch: Vec<Command<'_>> = enc.iter().map(|d| Command { index, data: d }).collect();
    sm.apply_batch(&batch).expect("the KV machine applies");
}

/// Feeds `data` to the machine's decoder in pieces of the given sizes, in turn.
fn decode_in_pieces(
    sm: &KvStateMachine,
    mut data: &[u8],
    sizes: &[usize],
) -> Result<nodedb_multiraft::DecodedState, nodedb_multiraft::error::SmError> {
    let mut d = sm.snapshot_decoder();
    for n in sizes.iter().cycle() {
        if data.is_empty() {
            break;
        }
        let (piece, rest) = data.split_at((*n).min(data.len()));
        d.feed(piece)?;
        data = rest;
    }
    d.finish()
}

#[test]
fn the_view_writes_a_snapshot_the_decoder_restores_to_the_same_digest() {
    let mut a = KvStateMachine::new();
    put_all(&mut a, 5, 5000); // more than one 1 MiB flush of the encoder
    let view = StateMachine::snapshot_view(&a).expect("view");
    // Applied after the view was taken: not in it.
    put_all(&mut a, 6, 1);
    let mut written = Vec::new();
    view.write_to(&mut written).expect("write");
    let mut at_view = KvStateMachine::new();
    put_all(&mut at_view, 5, 5000);
    // Map order differs between maps (random seeds): the same length, and (below) the same
    // state once read back.
    assert_eq!(written.len(), at_view.snapshot().expect("snapshot").len());

    let mut b = KvStateMachine::new();
    put_all(&mut b, 1, 3); // replaced whole
    let decoded = decode_in_pieces(&b, &written, &[1, 3, 7, 100, 4096, 65536]).expect("decode");
    b.install_decoded(decoded).expect("install");
    assert_eq!(b.reader().digest(), at_view.reader().digest());
    assert_eq!(b.reader().len(), 5000);

    assert!(decode_in_pieces(&b, &written[..written.len() - 1], &[4096]).is_err());
    assert!(
        decode_in_pieces(&b, &written[..20], &[1]).is_err(),
        "cut in the header"
    );
    let other: nodedb_multiraft::DecodedState = Box::new(7u32);
    assert!(b.install_decoded(other).is_err(), "another machine's state");
    assert_eq!(b.reader().len(), 5000, "a refused install keeps the state");
}
