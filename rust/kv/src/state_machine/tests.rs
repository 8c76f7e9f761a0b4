//! The KV state machine's unit tests.

use super::*;
use crate::command::test_commands::{put, session};
use crate::session_table::{SESSIONS_MAX, SESSION_RESULTS_MAX};
use nodedb_multiraft::codec::{Writer, FORMAT_VERSION};

fn apply(sm: &mut KvStateMachine, index: u64, cmds: &[KvCommand]) -> Vec<KvResult> {
    let enc: Vec<Vec<u8>> = cmds.iter().map(KvCommand::encode).collect();
    let batch: Vec<Command<'_>> = enc.iter().map(|d| Command { index, data: d }).collect();
    sm.apply_batch(&batch)
        .expect("the KV machine applies")
        .iter()
        .map(|r| KvResult::decode(r).expect("result decodes"))
        .collect()
}

#[test]
fn put_get_delete_cas_each_return_their_result() {
    let mut sm = KvStateMachine::new();
    let k = b"k".to_vec();
    let res = apply(
        &mut sm,
        1,
        &[
            KvCommand::Put {
                key: k.clone(),
                value: b"1".to_vec(),
            },
            KvCommand::Cas {
                key: k.clone(),
                expected: Some(b"0".to_vec()),
                value: b"2".to_vec(),
            },
            KvCommand::Cas {
                key: k.clone(),
                expected: Some(b"1".to_vec()),
                value: b"3".to_vec(),
            },
            KvCommand::Get { key: k.clone() },
            KvCommand::Delete { key: k.clone() },
            KvCommand::Delete { key: k.clone() },
            KvCommand::Cas {
                key: k.clone(),
                expected: None,
                value: b"4".to_vec(),
            },
        ],
    );
    assert_eq!(
        res,
        vec![
            KvResult::Ok { value: None },
            KvResult::CasMismatch {
                current: Some(b"1".to_vec())
            },
            KvResult::Ok { value: None },
            KvResult::Ok {
                value: Some(b"3".to_vec())
            },
            KvResult::Ok { value: None },
            KvResult::NotFound,
            KvResult::Ok { value: None },
        ]
    );
    assert_eq!(sm.reader().get(b"k"), Some(b"4".to_vec()));
}

#[test]
fn garbage_command_gets_an_invalid_result_not_a_panic() {
    let mut sm = KvStateMachine::new();
    let out = sm
        .apply_batch(&[Command {
            index: 1,
            data: &[9, 9, 9],
        }])
        .expect("a bad command is a result, not an error");
    assert!(matches!(
        KvResult::decode(&out[0]),
        Ok(KvResult::Invalid { .. })
    ));
}

#[test]
fn snapshot_restore_preserves_digest() {
    let mut a = KvStateMachine::new();
    for i in 0..100u32 {
        apply(
            &mut a,
            u64::from(i) + 1,
            &[KvCommand::Put {
                key: i.to_le_bytes().to_vec(),
                value: vec![i as u8; 10],
            }],
        );
    }
    let snap = a.snapshot().expect("snapshot");
    let mut b = KvStateMachine::new();
    b.restore(&snap).expect("restore");
    assert_eq!(a.reader().digest(), b.reader().digest());
    assert!(b.restore(&snap[..snap.len() - 1]).is_err());
    assert_eq!(
        a.reader().digest(),
        b.reader().digest(),
        "failed restore keeps state"
    );
}

#[test]
fn digest_ignores_insertion_order_and_sees_every_value() {
    let keys: Vec<Vec<u8>> = (0..500u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let mut a = KvStateMachine::new();
    let mut b = KvStateMachine::new();
    let fwd: Vec<KvCommand> = keys.iter().map(|k| put(k, b"v")).collect();
    let rev: Vec<KvCommand> = keys.iter().rev().map(|k| put(k, b"v")).collect();
    apply(&mut a, 1, &fwd);
    apply(&mut b, 1, &rev);
    assert_eq!(a.reader().digest(), b.reader().digest());
    apply(&mut b, 2, &[put(&keys[7], b"w")]);
    apply(&mut a, 2, &[put(&keys[7], b"v")]);
    assert_ne!(
        a.reader().digest(),
        b.reader().digest(),
        "one changed value shows"
    );
    // Swapping two values between keys must show too (not a plain multiset of values).
    apply(&mut a, 3, &[put(&keys[1], b"x"), put(&keys[2], b"y")]);
    apply(
        &mut b,
        3,
        &[
            put(&keys[7], b"v"),
            put(&keys[1], b"y"),
            put(&keys[2], b"x"),
        ],
    );
    assert_ne!(
        a.reader().digest(),
        b.reader().digest(),
        "swapped values show"
    );
}

#[test]
fn a_retried_write_applies_once_and_answers_its_first_result() {
    let mut sm = KvStateMachine::new();
    // Client 1's put, then client 2 overwrites, then client 1's retry of the same seq arrives
    // (the interleaving of the fault harness's seed 1029): the retry must not undo client 2.
    let first = apply(&mut sm, 1, &[session(1, 1, 1, put(b"k", b"a"))]);
    apply(&mut sm, 2, &[session(2, 1, 1, put(b"k", b"b"))]);
    let retry = apply(&mut sm, 3, &[session(1, 1, 1, put(b"k", b"a"))]);
    assert_eq!(first, retry);
    assert_eq!(sm.reader().get(b"k"), Some(b"b".to_vec()));
    // A CAS retried after it applied answers its first result, not a mismatch.
    let cas = || {
        session(
            1,
            2,
            1,
            KvCommand::Cas {
                key: b"k".to_vec(),
                expected: Some(b"b".to_vec()),
                value: b"c".to_vec(),
            },
        )
    };
    assert_eq!(
        apply(&mut sm, 4, &[cas()]),
        vec![KvResult::Ok { value: None }]
    );
    assert_eq!(
        apply(&mut sm, 5, &[cas()]),
        vec![KvResult::Ok { value: None }]
    );
    assert_eq!(sm.reader().get(b"k"), Some(b"c".to_vec()));
}

#[test]
fn a_copy_below_the_acknowledged_floor_is_refused_not_applied() {
    let mut sm = KvStateMachine::new();
    apply(&mut sm, 1, &[session(1, 1, 1, put(b"k", b"a"))]);
    // Seq 2 says the client has seq 1's answer: its result is dropped.
    apply(&mut sm, 2, &[session(1, 2, 2, put(b"x", b"1"))]);
    assert!(!sm.reader().read().sessions[&1].results().contains_key(&1));
    apply(&mut sm, 3, &[put(b"k", b"z")]);
    let late = apply(&mut sm, 4, &[session(1, 1, 1, put(b"k", b"a"))]);
    assert_eq!(late, vec![KvResult::Duplicate]);
    assert_eq!(sm.reader().get(b"k"), Some(b"z".to_vec()));
}

#[test]
fn sessions_survive_snapshot_restore_and_old_snapshots_still_restore() {
    let mut a = KvStateMachine::new();
    apply(&mut a, 1, &[session(5, 1, 1, put(b"k", b"a"))]);
    apply(&mut a, 2, &[put(b"k", b"b")]);
    let snap = a.snapshot().expect("snapshot");
    let mut b = KvStateMachine::new();
    b.restore(&snap).expect("restore");
    assert_eq!(a.reader().digest(), b.reader().digest());
    let retry = apply(&mut b, 3, &[session(5, 1, 1, put(b"k", b"a"))]);
    assert_eq!(retry, vec![KvResult::Ok { value: None }]);
    assert_eq!(
        b.reader().get(b"k"),
        Some(b"b".to_vec()),
        "deduped after restore"
    );

    // A snapshot from before sessions: the map section only.
    let mut old = Writer::default();
    old.u8(FORMAT_VERSION);
    old.u64(9);
    old.u64(9);
    old.u64(1);
    old.bytes(b"k");
    old.bytes(b"v");
    let mut c = KvStateMachine::new();
    c.restore(&old.buf).expect("old snapshot restores");
    assert_eq!(c.reader().get(b"k"), Some(b"v".to_vec()));
    assert!(c.reader().read().sessions.is_empty());
}

#[test]
fn the_least_recently_used_session_is_evicted_at_the_bound() {
    let mut sm = KvStateMachine::new();
    let cmds: Vec<KvCommand> = (0..SESSIONS_MAX as u64)
        .map(|c| session(c + 1, 1, 1, put(b"k", b"v")))
        .collect();
    for (i, c) in cmds.iter().enumerate() {
        apply(&mut sm, i as u64 + 1, std::slice::from_ref(c));
    }
    // Touch client 1 so client 2 is now the least recent.
    apply(&mut sm, 10_000, &[session(1, 2, 1, put(b"k", b"w"))]);
    apply(&mut sm, 10_001, &[session(u64::MAX, 1, 1, put(b"n", b"v"))]);
    let st = sm.reader();
    let st = st.read();
    assert_eq!(st.sessions.len(), SESSIONS_MAX);
    assert!(st.sessions.contains_key(&1));
    assert!(!st.sessions.contains_key(&2));
    assert!(st.sessions.contains_key(&u64::MAX));
}

#[test]
fn a_full_result_window_drops_the_oldest_and_refuses_its_retry() {
    let mut sm = KvStateMachine::new();
    let n = SESSION_RESULTS_MAX as u64 + 1;
    let enc: Vec<Vec<u8>> = (1..=n)
        .map(|seq| session(3, seq, 1, put(&seq.to_le_bytes(), b"v")).encode())
        .collect();
    let batch: Vec<Command<'_>> = enc.iter().map(|d| Command { index: 1, data: d }).collect();
    sm.apply_batch(&batch).expect("the KV machine applies");
    {
        let st = sm.reader();
        let st = st.read();
        assert_eq!(st.sessions[&3].results().len(), SESSION_RESULTS_MAX);
        assert_eq!(st.sessions[&3].floor(), 2);
    }
    sm.apply_batch(&[Command {
        index: 2,
        data: &KvCommand::Delete {
            key: 1u64.to_le_bytes().to_vec(),
        }
        .encode(),
    }])
    .expect("the KV machine applies");
    let again = apply(
        &mut sm,
        3,
        &[session(3, 1, 1, put(&1u64.to_le_bytes(), b"v"))],
    );
    assert_eq!(again, vec![KvResult::Duplicate]);
    assert_eq!(
        sm.reader().get(&1u64.to_le_bytes()),
        None,
        "not applied twice"
    );
}

#[test]
fn a_snapshot_view_is_the_state_when_taken_while_applying_goes_on() {
    fn send_and_sync<T: Send + Sync + 'static>(_: &T) {}
    let mut sm = KvStateMachine::new();
    let keys: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let puts: Vec<KvCommand> = keys.iter().map(|k| put(k, b"old")).collect();
    apply(&mut sm, 1, &puts);
    apply(&mut sm, 2, &[session(4, 1, 1, put(b"s", b"1"))]);
    let digest_then = sm.reader().digest();
    let view = sm.snapshot_view();
    send_and_sync(&view);
    apply(&mut sm, 3, &[put(&keys[0], b"new"), put(b"fresh", b"x")]);
    apply(
        &mut sm,
        4,
        &[KvCommand::Delete {
            key: keys[1].clone(),
        }],
    );
    apply(&mut sm, 5, &[session(4, 2, 1, put(b"s", b"2"))]);
    let encoded = std::thread::spawn(move || view.encode())
        .join()
        .expect("encodes on another thread");
    let mut then = KvStateMachine::new();
    then.restore(&encoded).expect("restore");
    assert_eq!(then.reader().digest(), digest_then);
    assert_eq!(then.reader().get(&keys[0]), Some(b"old".to_vec()));
    assert_eq!(then.reader().get(&keys[1]), Some(b"old".to_vec()));
    assert_eq!(then.reader().get(b"fresh"), None);
    assert_eq!(sm.reader().get(&keys[0]), Some(b"new".to_vec()));
    assert_eq!(sm.reader().get(&keys[1]), None);
    assert_eq!(sm.reader().len(), 3000 + 1);
    // The streamed form is the same bytes, and the size is announced exactly.
    let view = sm.snapshot_view();
    let mut streamed = Vec::new();
    view.write_to(&mut streamed).expect("write");
    assert_eq!(streamed, view.encode());
    assert_eq!(streamed.len(), view.encoded_len());
    assert_eq!(sm.snapshot().expect("snapshot"), streamed);
}

fn cas(key: &[u8], expected: &[u8], value: &[u8]) -> KvCommand {
    KvCommand::Cas {
        key: key.to_vec(),
        expected: Some(expected.to_vec()),
        value: value.to_vec(),
    }
}

#[test]
fn a_large_result_is_answered_once_and_kept_only_as_applied() {
    // A client that never acknowledges (acked_below 0) used to make every replica keep one
    // copy of a large value per compare-and-set it lost.
    let mut sm = KvStateMachine::new();
    let big = vec![7u8; 1 << 20];
    apply(&mut sm, 1, &[put(b"k", &big)]);
    let base = sm.reader().usage_bytes();
    for seq in 1..=32 {
        let lost = apply(
            &mut sm,
            1 + seq,
            &[session(9, seq, 0, cas(b"k", b"no", b"x"))],
        );
        assert_eq!(
            lost,
            vec![KvResult::CasMismatch {
                current: Some(big.clone())
            }]
        );
    }
    let grown = sm.reader().usage_bytes() - base;
    assert!(grown < 32 * 64, "32 lost CAS kept {grown} bytes");
    // Its retry is not applied again: refused, which the client reports as an unknown outcome.
    let retry = apply(&mut sm, 40, &[session(9, 5, 0, cas(b"k", b"no", b"x"))]);
    assert_eq!(retry, vec![KvResult::Duplicate]);
    // A small result is still answered again from the cache.
    apply(&mut sm, 41, &[put(b"s", b"1")]);
    let small = apply(&mut sm, 42, &[session(9, 33, 0, cas(b"s", b"no", b"x"))]);
    let again = apply(&mut sm, 43, &[session(9, 33, 0, cas(b"s", b"no", b"x"))]);
    assert_eq!(small, again);
    assert_eq!(
        again,
        vec![KvResult::CasMismatch {
            current: Some(b"1".to_vec())
        }]
    );
}

#[test]
fn usage_counts_keys_values_and_sessions_as_they_change() {
    let mut sm = KvStateMachine::new();
    let check = |sm: &KvStateMachine| {
        let st = sm.reader();
        let st = st.read();
        assert_eq!(st.sessions.bytes(), st.sessions.count_bytes());
        let map: usize = st.map.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(st.usage_bytes(), map + st.sessions.bytes());
    };
    let mut index = 0;
    for round in 0..200u64 {
        let client = round % 7 + 1;
        let key = (round % 13).to_le_bytes();
        let value = vec![1u8; (round % 5) as usize * 700];
        index += 1;
        // Seqs per client climb; the floor follows some of them, skips others.
        let seq = round / 7 + 1;
        let floor = if round % 3 == 0 {
            seq
        } else {
            seq.saturating_sub(4)
        };
        let cmd = match round % 4 {
            0 => session(client, seq, floor, put(&key, &value)),
            1 => session(client, seq, floor, cas(&key, b"?", &value)),
            2 => session(client, seq, floor, KvCommand::Delete { key: key.to_vec() }),
            _ => session(client, seq, floor, KvCommand::Get { key: key.to_vec() }),
        };
        apply(&mut sm, index, &[cmd]);
        check(&sm);
    }
    let n = SESSIONS_MAX as u64 + 3;
    for c in 0..n {
        index += 1;
        apply(&mut sm, index, &[session(100 + c, 1, 0, put(b"e", b"v"))]);
    }
    check(&sm);
    let mut restored = KvStateMachine::new();
    let buf = sm.snapshot().expect("snapshot encodes");
    restored.restore(&buf).expect("snapshot restores");
    check(&restored);
    assert_eq!(restored.reader().usage_bytes(), sm.reader().usage_bytes());
}

#[test]
fn large_results_of_one_batch_are_bounded_and_the_state_stays_the_same() {
    let mut sm = KvStateMachine::new();
    let big = vec![3u8; 4 << 20];
    apply(&mut sm, 1, &[put(b"k", &big)]);
    let lost = |n: usize| vec![cas(b"k", b"no", b"x"); n];
    // 40 x 4 MiB in one batch: the first carry the value up to the bound, the rest are
    // answered Duplicate.
    let results = apply(&mut sm, 2, &lost(40));
    let carried = results
        .iter()
        .filter(|r| matches!(r, KvResult::CasMismatch { current: Some(v) } if *v == big))
        .count();
    assert_eq!(carried, RESULT_BATCH_BYTES_MAX / (big.len() + 1 + 4 + 1));
    assert!(results[carried..].iter().all(|r| *r == KvResult::Duplicate));
    // Batch boundaries change answers only: another replica applying them one by one ends in
    // the same state.
    let mut other = KvStateMachine::new();
    apply(&mut other, 1, &[put(b"k", &big)]);
    for cmd in lost(40) {
        apply(&mut other, 2, &[cmd]);
    }
    assert_eq!(other.reader().digest(), sm.reader().digest());
}

#[test]
fn a_copy_of_an_applied_write_is_answered_from_the_cache_while_its_vshard_is_served_here() {
    let mut sm = KvStateMachine::new();
    let write = session(1, 1, 1, put(b"k", b"a"));
    let first = apply(&mut sm, 1, std::slice::from_ref(&write));
    let copy = write.encode();
    assert_eq!(
        sm.reader().read().copy_answer(&copy),
        Some(first[0].encode()),
        "what applying the copy would answer"
    );
    let unseen = [
        session(1, 2, 1, put(b"k", b"a")).encode(),
        session(2, 1, 1, put(b"k", b"a")).encode(),
        put(b"k", b"a").encode(),
    ];
    for cmd in unseen {
        assert_eq!(
            sm.reader().read().copy_answer(&cmd),
            None,
            "not applied: proposed"
        );
    }
    let vshard = crate::routing::vshard_of(b"k") as u32;
    for step in [VShardStep::Track, VShardStep::Freeze] {
        let step = KvCommand::VShard {
            step,
            vshard,
            group: 2,
            move_id: 1,
        };
        apply(&mut sm, 2, &[step]);
    }
    assert_eq!(
        apply(&mut sm, 3, std::slice::from_ref(&write)),
        vec![KvResult::Paused],
        "applying the copy now answers Paused"
    );
    assert_eq!(
        sm.reader().read().copy_answer(&copy),
        None,
        "so it is proposed"
    );
}

#[test]
fn a_summary_is_the_replica_s_numbers_at_one_moment() {
    let mut sm = KvStateMachine::new();
    apply(
        &mut sm,
        1,
        &[session(1, 1, 1, put(b"k", b"a")), put(b"x", b"yy")],
    );
    let reader = sm.reader();
    let summary = reader.summary();
    let st = reader.read();
    assert_eq!(
        summary,
        KvSummary {
            applied_index: 1,
            keys: 2,
            digest: st.digest(),
            usage_bytes: st.usage_bytes(),
            sessions: 1,
            sessions_evicted: 0,
        }
    );
}
