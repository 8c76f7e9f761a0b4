//! Many keys read as of one moment, the copies made after the lock is let go.

use super::*;
use crate::command::{KvCommand, VShardStep};
use crate::routing::VSHARDS;
use crate::state_machine::KvStateMachine;
use nodedb_multiraft::state_machine::{Command, StateMachine};

fn apply(sm: &mut KvStateMachine, index: u64, cmd: KvCommand) {
    let data = cmd.encode();
    sm.apply_batch(&[Command { index, data: &data }])
        .expect("the KV machine applies");
}

fn put(sm: &mut KvStateMachine, index: u64, key: &[u8], value: Vec<u8>) {
    let key = key.to_vec();
    apply(sm, index, KvCommand::Put { key, value });
}

/// A key of a vShard other than `vshards`'.
fn key_outside(vshards: &[usize]) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("outside-{i}").into_bytes())
        .find(|k| !vshards.contains(&vshard_of(k)))
        .expect("a key of another vShard")
}

const BIG: usize = LOCKED_VALUE_BYTES_MAX + 1;

/// A machine holding `small` (1 byte values), `big` (one value past what is copied under the
/// lock), and a paused vShard (incoming for a move) with the key `paused`.
fn fixture(small: usize) -> (KvStateMachine, Vec<Vec<u8>>, Vec<u8>, Vec<u8>) {
    let mut sm = KvStateMachine::new();
    let keys: Vec<Vec<u8>> = (0..small).map(|i| format!("k{i}").into_bytes()).collect();
    for (i, k) in keys.iter().enumerate() {
        put(&mut sm, 1 + i as u64, k, vec![i as u8]);
    }
    let big = key_outside(&[]);
    put(&mut sm, 1 + small as u64, &big, vec![7; BIG]);
    let used: Vec<usize> = keys.iter().chain([&big]).map(|k| vshard_of(k)).collect();
    let paused = key_outside(&used);
    let vshard = vshard_of(&paused) as u32;
    let step = VShardStep::Incoming;
    let (group, move_id) = (2, 1);
    let index = 2 + small as u64;
    apply(
        &mut sm,
        index,
        KvCommand::VShard {
            step,
            vshard,
            group,
            move_id,
        },
    );
    (sm, keys, big, paused)
}

#[test]
fn few_and_many_keys_read_what_a_lookup_reads_and_only_few_under_the_lock() {
    for small in [3, LOCKED_KEYS_MAX + 100] {
        let (sm, keys, big, paused) = fixture(small);
        let reader = sm.reader();
        let absent = b"absent".to_vec();
        let mut asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        asked.extend([big.as_slice(), absent.as_slice(), paused.as_slice()]);
        let mut locked_when = Vec::new();
        let (values, stop) = read_keys(&reader, &asked, |bytes| {
            locked_when.push((bytes, reader.is_locked()));
            Ok::<(), ()>(())
        });
        assert_eq!(stop, None);
        let expected: Vec<Found> = asked.iter().map(|k| reader.lookup(k)).collect();
        assert!(values == expected, "read_keys and lookup disagree");
        assert!(values[small] == Ok(Some(vec![7; BIG])));
        assert_eq!(values[small + 1], Ok(None));
        assert_eq!(values[small + 2], Err(Refusal::Paused));
        // A few keys are looked up (and given room) under the lock; many with it let go.
        let few = asked.len() <= LOCKED_KEYS_MAX;
        assert_eq!(locked_when.len(), asked.len());
        assert!(locked_when.iter().all(|&(_, locked)| locked == few));
        assert_eq!(locked_when[small].0, BIG);
    }
}

#[test]
fn a_read_is_of_its_moment_and_a_write_meanwhile_copies_its_shard() {
    let (mut sm, keys, big, _) = fixture(LOCKED_KEYS_MAX + 1);
    let reader = sm.reader();
    let mut asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    asked.push(&big);
    let mut index = 1000;
    let (values, _) = read_keys(&reader, &asked, |_| {
        // The driver applies while the read copies: it is not held up, and the read still
        // sees the state it began on.
        index += 1;
        put(&mut sm, index, &big, b"new".to_vec());
        put(&mut sm, index, &keys[LOCKED_KEYS_MAX], b"new".to_vec());
        Ok::<(), ()>(())
    });
    assert_eq!(
        values[LOCKED_KEYS_MAX],
        Ok(Some(vec![LOCKED_KEYS_MAX as u8]))
    );
    assert!(
        values[LOCKED_KEYS_MAX + 1] == Ok(Some(vec![7; BIG])),
        "the old big value"
    );
    assert_eq!(sm.reader().get(&big), Some(b"new".to_vec()));
}

#[test]
fn the_first_refused_room_stops_the_read_with_the_values_before_it() {
    let (sm, keys, big, _) = fixture(LOCKED_KEYS_MAX * 2);
    let reader = sm.reader();
    let mut asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    asked.insert(5, &big);
    let (values, stop) = read_keys(&reader, &asked, |bytes| {
        if bytes > 1 {
            Err("no room")
        } else {
            Ok(())
        }
    });
    assert_eq!(stop, Some("no room"));
    assert_eq!(values.len(), 5);
    assert_eq!(values[4], Ok(Some(vec![4])));
}

#[test]
fn a_read_of_every_vshard_holds_each_map_once() {
    let mut sm = KvStateMachine::new();
    let keys: Vec<Vec<u8>> = (0..VSHARDS * 4)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        put(&mut sm, 1 + i as u64, k, b"v".to_vec());
    }
    let reader = sm.reader();
    let asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let (values, stop) = read_keys(&reader, &asked, |_| Ok::<(), ()>(()));
    assert_eq!(stop, None);
    assert!(values.iter().all(|v| v == &Ok(Some(b"v".to_vec()))));
}
