//! What applying lost compare-and-sets and logged gets on a large value allocates: a value is
//! copied once per result that carries it, and never past one batch's room for large
//! results. Its own binary, so its global allocator counts only this test's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nodedb_kv::command::{KvCommand, KvResult};
use nodedb_kv::state_machine::{KvStateMachine, RESULT_BATCH_BYTES_MAX};
use nodedb_multiraft::state_machine::{Command, StateMachine};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to System; the counter is a thread-local Cell (no allocation to reach it).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> usize {
    ALLOCATED.with(Cell::get)
}

const BIG: usize = 16 << 20;

/// The batch's results, and the bytes its apply allocated.
fn apply(sm: &mut KvStateMachine, index: u64, cmds: &[Vec<u8>]) -> (Vec<KvResult>, usize) {
    let batch: Vec<Command<'_>> = cmds.iter().map(|d| Command { index, data: d }).collect();
    let before = allocated();
    let results = sm.apply_batch(&batch).expect("the KV machine applies");
    let bytes = allocated() - before;
    let results = results
        .iter()
        .map(|r| KvResult::decode(r).expect("result decodes"))
        .collect();
    (results, bytes)
}

fn session(seq: u64, inner: &KvCommand) -> Vec<u8> {
    KvCommand::Session {
        client: 7,
        seq,
        acked_below: 0,
        inner: Box::new(inner.clone()),
    }
    .encode()
}

#[test]
fn a_large_value_is_copied_once_per_answer_and_never_past_a_batchs_room() {
    let mut sm = KvStateMachine::new();
    let key = b"large".to_vec();
    apply(
        &mut sm,
        1,
        &[KvCommand::Put {
            key: key.clone(),
            value: vec![b'x'; BIG],
        }
        .encode()],
    );
    let lost = KvCommand::Cas {
        key: key.clone(),
        expected: Some(b"y".to_vec()),
        value: b"z".to_vec(),
    };
    let get = KvCommand::Get { key: key.clone() };
    let carried = RESULT_BATCH_BYTES_MAX / (BIG + 6);
    assert_eq!(carried, 1);
    for (name, cmds) in [
        ("bare lost CASes", vec![lost.encode(); 400]),
        (
            "lost CASes in a session",
            (1..=400).map(|s| session(s, &lost)).collect(),
        ),
        ("logged gets", vec![get.encode(); 400]),
    ] {
        let (results, bytes) = apply(&mut sm, 2, &cmds);
        // One copy per carried answer, plus the batch's small bookkeeping; the old form copied
        // the value two or three times per command (~13-19 GiB here).
        assert!(
            bytes < carried * BIG + (4 << 20),
            "{name}: {bytes} bytes allocated"
        );
        let answered = results
            .iter()
            .filter(|r| **r != KvResult::Duplicate)
            .count();
        assert_eq!(answered, carried, "{name}");
        assert!(
            results[carried..].iter().all(|r| *r == KvResult::Duplicate),
            "{name}"
        );
    }
}
