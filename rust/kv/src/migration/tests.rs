//! The vShard copy's unit tests: export, import, and the sessions merged with them.

use nodedb_multiraft::state_machine::{Command, StateMachine};

use super::*;
use crate::command::test_commands::{put, session};
use crate::command::VShardStep;
use crate::session_table::{ClientSession, SessionTable};
use crate::state_machine::KvStateMachine;
use crate::vshard::Refusal;

/// A group's replica with its own log index.
struct Replica {
    sm: KvStateMachine,
    index: u64,
}

impl Replica {
    fn new() -> Self {
        Replica {
            sm: KvStateMachine::new(),
            index: 0,
        }
    }
    fn apply_raw(&mut self, cmds: &[Vec<u8>]) -> Vec<KvResult> {
        self.index += 1;
        let batch: Vec<Command<'_>> = cmds
            .iter()
            .map(|d| Command {
                index: self.index,
                data: d,
            })
            .collect();
        self.sm
            .apply_batch(&batch)
            .expect("the KV machine applies")
            .iter()
            .map(|r| KvResult::decode(r).expect("result decodes"))
            .collect()
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sm.reader().get(key)
    }
    fn reader(&self) -> crate::state_machine::KvReader {
        self.sm.reader()
    }
}

/// Two replicas of one group: every command applied to both, the same results asserted.
struct Group([Replica; 2]);

impl Group {
    fn new() -> Self {
        Group([Replica::new(), Replica::new()])
    }
    fn apply_raw(&mut self, cmds: &[Vec<u8>]) -> Vec<KvResult> {
        let a = self.0[0].apply_raw(cmds);
        assert_eq!(self.0[1].apply_raw(cmds), a, "replicas agree");
        a
    }
    fn one(&mut self, cmd: KvCommand) -> KvResult {
        self.apply_raw(&[cmd.encode()]).remove(0)
    }
    fn step(&mut self, step: VShardStep, vshard: u32, group: u64) -> KvResult {
        self.step_of(step, vshard, group, MOVE)
    }
    fn step_of(&mut self, step: VShardStep, vshard: u32, group: u64, move_id: u64) -> KvResult {
        self.one(KvCommand::VShard {
            step,
            vshard,
            group,
            move_id,
        })
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0[0].get(key)
    }
    fn reader(&self) -> crate::state_machine::KvReader {
        self.0[0].reader()
    }
    fn sm(&self) -> &KvStateMachine {
        &self.0[0].sm
    }
    fn converged(&self) -> bool {
        self.0[0].sm.reader().digest() == self.0[1].sm.reader().digest()
    }
}

const OK: KvResult = KvResult::Ok { value: None };
/// The move id of the moves below.
const MOVE: u64 = 2;

/// Keys of vShard `v` (found by trying), and one key of another vShard.
fn keys_of(v: u32, n: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut mine = Vec::new();
    let mut other = None;
    for i in 0u64.. {
        let k = format!("key-{i}").into_bytes();
        if vshard_of(&k) == v as usize {
            mine.push(k);
        } else if other.is_none() {
            other = Some(k);
        }
        if mine.len() == n && other.is_some() {
            break;
        }
    }
    (mine, other.unwrap_or_default())
}

/// An export is the vShard as it was when the lock was taken (the chunks are built after
/// it is let go, while writes go on), and a vShard past the last is refused, not aliased.
#[test]
fn an_export_is_the_vshard_as_of_its_copy_and_an_unknown_vshard_is_refused() {
    let v = 12;
    let (keys, _) = keys_of(v, 20);
    let mut s = Group::new();
    for k in &keys {
        s.one(put(k, b"before"));
    }
    assert_eq!(s.step(VShardStep::Track, v, 2), OK);
    let export = s.reader().read().vshard_export(v, false);
    for k in &keys {
        s.one(put(k, b"after"));
    }
    let chunks = export.chunks(MOVE, 1 << 20).expect("tracking: exported");
    let mut t = Group::new();
    assert_eq!(t.step(VShardStep::Incoming, v, 1), OK);
    t.apply_raw(&chunks);
    assert!(keys.iter().all(|k| t.get(k) == Some(b"before".to_vec())));
    let past = crate::routing::VSHARDS as u32 + v;
    let refused = s.reader().export_vshard(past, MOVE, false, 1 << 20);
    assert!(refused.is_err_and(|e| e.contains("it is plain")));
}

#[test]
fn a_move_with_writes_during_the_copy_ends_with_the_target_holding_the_vshard() {
    let v = 77;
    let (keys, other) = keys_of(v, 50);
    let (s_group, t_group) = (1, 2);
    let mut s = Group::new();
    let mut t = Group::new();
    for (i, k) in keys.iter().enumerate() {
        s.one(session(9, i as u64 + 1, 1, put(k, b"v1")));
    }
    s.one(put(&other, b"stays"));
    // Leftovers of an earlier aborted move at T are cleared (Drop; Incoming too).
    let earlier = MOVE - 1;
    assert_eq!(t.step_of(VShardStep::Incoming, v, s_group, earlier), OK);
    let leftover = KvCommand::Import(Import {
        vshard: v,
        move_id: earlier,
        entries: vec![(keys[0].clone(), Some(b"stale".to_vec()))],
        sessions: vec![],
    });
    assert_eq!(t.one(leftover), OK);
    assert_eq!(t.step_of(VShardStep::Drop, v, 0, earlier), OK);
    assert_eq!(t.get(&keys[0]), None, "drop deletes the vshard's keys");
    assert_eq!(t.step(VShardStep::Incoming, v, s_group), OK);
    // T pauses v until active; other vShards are unaffected.
    assert_eq!(t.one(put(&keys[1], b"x")), KvResult::Paused);
    assert_eq!(t.reader().lookup(&keys[1]), Err(Refusal::Paused));
    assert!(matches!(
        t.step(VShardStep::Track, v, 0),
        KvResult::Invalid { .. }
    ));
    assert_eq!(s.step(VShardStep::Track, v, t_group), OK);
    let bulk = s
        .reader()
        .export_vshard(v, MOVE, false, 256)
        .expect("bulk export");
    assert!(bulk.len() > 1, "chunked: {} chunks", bulk.len());
    assert!(bulk.iter().all(|c| c.len() <= 256));
    assert!(
        s.reader().export_vshard(v, MOVE, true, 256).is_err(),
        "a delta needs the source frozen"
    );
    // Writes while the bulk copy runs: an overwrite, a delete, a session write.
    s.one(put(&keys[2], b"v2"));
    s.one(KvCommand::Delete {
        key: keys[3].clone(),
    });
    let late = session(9, 100, 1, put(&keys[4], b"v2"));
    let late_result = s.one(late.clone());
    assert_eq!(late_result, OK);
    for c in bulk {
        assert_eq!(t.apply_raw(&[c]), vec![OK]);
    }
    assert_eq!(s.step(VShardStep::Freeze, v, t_group), OK);
    // Frozen: refused, not applied, not recorded in the session.
    let paused = session(9, 101, 1, put(&keys[5], b"v3"));
    assert_eq!(s.one(paused.clone()), KvResult::Paused);
    assert_eq!(s.one(late.clone()), KvResult::Paused);
    assert!(!s.reader().read().sessions[&9].results().contains_key(&101));
    assert_eq!(s.get(&keys[5]), Some(b"v1".to_vec()));
    assert_eq!(s.one(put(&other, b"still")), OK, "other vShards go on");
    for c in s
        .reader()
        .export_vshard(v, MOVE, true, 1 << 20)
        .expect("delta")
    {
        assert_eq!(t.apply_raw(&[c]), vec![OK]);
    }
    // The sessions imported with it count in the target's usage (the quota's) as applied.
    for g in [&s, &t] {
        let st = g.reader();
        let st = st.read();
        assert!(st.sessions.contains_key(&9));
        assert_eq!(st.sessions.bytes(), st.sessions.count_bytes());
    }
    // The flip (group 0), then activate / release.
    assert_eq!(t.step(VShardStep::Activate, v, 0), OK);
    assert_eq!(s.step(VShardStep::Release, v, t_group), OK);
    assert_eq!(
        s.one(put(&keys[1], b"x")),
        KvResult::Moved { group: t_group }
    );
    assert_eq!(s.reader().lookup(&keys[1]), Err(Refusal::Moved(t_group)));
    assert!(s.reader().read().map.shard(v as usize).is_empty());
    assert_eq!(s.get(&other), Some(b"still".to_vec()));
    // T holds S's last values, deletions included.
    assert_eq!(t.get(&keys[2]), Some(b"v2".to_vec()));
    assert_eq!(t.get(&keys[3]), None);
    assert_eq!(t.get(&keys[4]), Some(b"v2".to_vec()));
    assert_eq!(t.get(&keys[0]), Some(b"v1".to_vec()));
    assert_eq!(t.reader().read().map.shard(v as usize).len(), 49);
    assert_eq!(t.get(&other), None, "only the vshard moved");
    // A retry of a write S applied gets its first result at T, not a second apply.
    t.one(put(&keys[4], b"newer"));
    assert_eq!(t.one(late), late_result);
    assert_eq!(t.get(&keys[4]), Some(b"newer".to_vec()));
    // A write S paused applies at T.
    assert_eq!(t.one(paused), OK);
    assert_eq!(t.get(&keys[5]), Some(b"v3".to_vec()));
    assert!(t.converged() && s.converged());
}

#[test]
fn an_aborted_move_leaves_the_source_serving_everything() {
    let v = 5;
    let (keys, _) = keys_of(v, 10);
    let mut s = Group::new();
    let mut t = Group::new();
    for k in &keys {
        s.one(put(k, b"a"));
    }
    assert_eq!(t.step(VShardStep::Incoming, v, 1), OK);
    assert_eq!(s.step(VShardStep::Track, v, 2), OK);
    for c in s
        .reader()
        .export_vshard(v, MOVE, false, 1 << 20)
        .expect("bulk")
    {
        assert_eq!(t.apply_raw(&[c]), vec![OK]);
    }
    assert_eq!(s.step(VShardStep::Freeze, v, 2), OK);
    assert_eq!(s.one(put(&keys[0], b"b")), KvResult::Paused);
    assert_eq!(s.step(VShardStep::Unfreeze, v, 0), OK);
    assert_eq!(t.step(VShardStep::Drop, v, 0), OK);
    assert_eq!(s.one(put(&keys[0], b"b")), OK);
    assert_eq!(s.reader().lookup(&keys[1]), Ok(Some(b"a".to_vec())));
    assert!(s.reader().vshard_states().is_empty());
    assert!(t.reader().read().map.is_empty());
    assert!(t.reader().vshard_states().is_empty());
    // A late chunk of the aborted move is refused, never applied.
    let late = KvCommand::Import(Import {
        vshard: v,
        move_id: MOVE,
        entries: vec![(keys[0].clone(), Some(b"late".to_vec()))],
        sessions: vec![],
    });
    assert!(matches!(t.one(late), KvResult::Invalid { .. }));
    assert!(t.reader().read().map.is_empty());
    // Nor is a chunk of another move while a new one is incoming.
    t.step(VShardStep::Incoming, v, 1);
    let other_move = KvCommand::Import(Import {
        vshard: v,
        move_id: MOVE + 1,
        entries: vec![(keys[0].clone(), Some(b"other".to_vec()))],
        sessions: vec![],
    });
    match t.one(other_move) {
        KvResult::Invalid { reason } => assert!(reason.contains("for that move"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(s.reader().export_vshard(v, MOVE + 1, false, 100).is_err());
}

#[test]
fn sessions_merge_by_max_floor_and_union_with_the_targets_own_winning() {
    let mine = ClientSession::new(3, 4, [(3, b"t3".to_vec()), (5, b"t5".to_vec())]);
    let mut table = SessionTable::from_sessions([(1, mine)]);
    let theirs = [
        (4, b"s4".to_vec()),
        (5, b"s5".to_vec()),
        (6, b"s6".to_vec()),
    ];
    table.merge(99, 1, 4, theirs);
    let merged = &table[&1];
    assert_eq!(merged.floor(), 4);
    let results: Vec<(u64, Vec<u8>)> = merged.results().clone().into_iter().collect();
    assert_eq!(
        results,
        [
            (4, b"s4".to_vec()),
            (5, b"t5".to_vec()),
            (6, b"s6".to_vec())
        ]
    );
    assert_eq!(merged.last_index(), 99);
    assert_eq!(table.bytes(), table.count_bytes());
}

#[test]
fn an_import_with_a_key_of_another_vshard_is_refused_whole() {
    let (keys, other) = keys_of(9, 1);
    let mut t = Group::new();
    t.step(VShardStep::Incoming, 9, 1);
    let bad = KvCommand::Import(Import {
        vshard: 9,
        move_id: MOVE,
        entries: vec![
            (keys[0].clone(), Some(b"a".to_vec())),
            (other, Some(b"b".to_vec())),
        ],
        sessions: vec![],
    });
    assert!(matches!(t.one(bad), KvResult::Invalid { .. }));
    assert!(t.reader().read().map.is_empty());
}

#[test]
fn a_key_larger_than_the_chunk_gets_its_own_chunk() {
    let (keys, _) = keys_of(3, 3);
    let mut s = Group::new();
    s.one(put(&keys[0], &[1; 1000]));
    s.one(put(&keys[1], b"small"));
    s.one(put(&keys[2], b"small"));
    s.step(VShardStep::Track, 3, 0);
    let chunks = s
        .reader()
        .export_vshard(3, MOVE, false, 100)
        .expect("export");
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    let entries: Vec<usize> = chunks
        .iter()
        .map(|c| match KvCommand::decode(c) {
            Ok(KvCommand::Import(i)) => i.entries.len(),
            other => panic!("not an import: {other:?}"),
        })
        .collect();
    // In map order: the two small keys share a chunk unless the large one lies between.
    assert!(chunks.len() <= 3, "{sizes:?}");
    for (size, n) in sizes.iter().zip(&entries) {
        assert!(
            *size <= 100 || *n == 1,
            "only a lone key exceeds the budget: {sizes:?}"
        );
    }
    assert_eq!(sizes.iter().filter(|&&n| n > 100).count(), 1, "{sizes:?}");
    let entries: usize = entries.iter().sum();
    assert_eq!(entries, 3);
}

#[test]
fn vshard_states_survive_a_snapshot_and_show_in_the_digest() {
    let (keys, _) = keys_of(11, 4);
    let mut a = Group::new();
    for k in &keys {
        a.one(put(k, b"v"));
    }
    let plain = a.sm().snapshot().expect("snapshot");
    assert_eq!(
        plain[0],
        nodedb_multiraft::codec::FORMAT_VERSION,
        "no move: old format"
    );
    let before = a.sm().reader().digest();
    a.step(VShardStep::Track, 11, 4);
    a.one(put(&keys[0], b"w"));
    a.step(VShardStep::Freeze, 11, 4);
    a.step(VShardStep::Incoming, 12, 6);
    a.step(VShardStep::Track, 13, 2);
    a.step(VShardStep::Freeze, 13, 2);
    a.step(VShardStep::Release, 13, 2);
    let snap = a.sm().snapshot().expect("snapshot");
    assert_eq!(snap[0], 3, "states and fences: version 3");
    let mut b = KvStateMachine::new();
    b.restore(&snap).expect("restore");
    assert_eq!(b.reader().digest(), a.sm().reader().digest());
    assert_eq!(
        b.reader().vshard_states(),
        vec![
            (11, "frozen", 4, MOVE),
            (12, "incoming", 6, MOVE),
            (13, "moved", 2, MOVE)
        ]
    );
    assert_eq!(
        b.reader().read().vshards[&11]
            .state
            .dirty()
            .map(|d| d.len()),
        Some(1)
    );
    assert!(b.restore(&snap[..snap.len() - 1]).is_err());
    // The states are in the digest: the same map without them differs.
    let mut c = Group::new();
    for k in &keys {
        c.one(put(k, b"v"));
    }
    assert_eq!(c.sm().reader().digest(), before);
    assert_ne!(a.sm().reader().digest(), before);
    let mut d = KvStateMachine::new();
    d.restore(&plain).expect("an old-format snapshot restores");
    assert_eq!(d.reader().digest(), before);
}
/// `result` is a refusal as stale.
fn stale(result: &KvResult) -> bool {
    matches!(result, KvResult::Invalid { reason } if reason.contains("refused as stale"))
}

#[test]
fn a_stale_incoming_after_a_later_move_leaves_the_owners_data() {
    let (keys, _) = keys_of(21, 3);
    // Group T is the target of move 2 of vShard 21 from group 5: marked, activated (T owns
    // it now), then written to.
    let mut t = Group::new();
    assert_eq!(t.step_of(VShardStep::Incoming, 21, 5, 2), OK);
    assert_eq!(t.step_of(VShardStep::Activate, 21, 0, 2), OK);
    for k in &keys {
        t.one(put(k, b"v"));
    }
    // Move 1's incoming (aborted long ago), its Raft entry committed only now.
    let late = t.step_of(VShardStep::Incoming, 21, 5, 1);
    assert!(stale(&late), "{late:?}");
    for k in &keys {
        assert_eq!(t.get(k), Some(b"v".to_vec()), "the data stays");
    }
    assert_eq!(t.reader().read().refusal(21), None, "still served here");
    assert!(t.reader().vshard_states().is_empty());
    assert_eq!(t.reader().vshard_fences(), vec![(21, 2)]);
    // Every other step of the old move is refused the same way.
    for step in [VShardStep::Drop, VShardStep::Track, VShardStep::Release] {
        assert!(stale(&t.step_of(step, 21, 5, 1)), "{step:?}");
    }
    assert!(t.converged());
}

#[test]
fn retries_of_the_same_step_pass_the_fence_and_a_refused_step_leaves_it() {
    let (keys, _) = keys_of(22, 2);
    let mut s = Group::new();
    for k in &keys {
        s.one(put(k, b"v"));
    }
    assert_eq!(s.step_of(VShardStep::Track, 22, 4, 3), OK);
    for _ in 0..2 {
        assert_eq!(s.step_of(VShardStep::Freeze, 22, 4, 3), OK);
    }
    for _ in 0..2 {
        assert_eq!(s.step_of(VShardStep::Release, 22, 4, 3), OK);
    }
    assert_eq!(s.reader().vshard_states(), vec![(22, "moved", 4, 3)]);
    assert_eq!(s.reader().vshard_fences(), vec![(22, 3)]);
    // A step of a later move refused for its state (freeze of a moved vShard) raises no
    // fence: move 3's convergence steps still apply.
    let refused = s.step_of(VShardStep::Freeze, 22, 4, 9);
    assert!(matches!(refused, KvResult::Invalid { .. }) && !stale(&refused));
    assert_eq!(s.reader().vshard_fences(), vec![(22, 3)]);
    assert_eq!(
        s.step_of(VShardStep::Release, 22, 6, 3),
        OK,
        "moved on since"
    );
    // A later move into this group passes it (the vShard comes back).
    assert_eq!(s.step_of(VShardStep::Incoming, 22, 6, 4), OK);
    assert_eq!(s.reader().vshard_fences(), vec![(22, 4)]);
    assert!(s.converged());
}

#[test]
fn fences_survive_a_snapshot_show_in_the_digest_and_older_snapshots_read_as_none() {
    let (keys, _) = keys_of(23, 2);
    let mut a = Group::new();
    assert_eq!(a.step_of(VShardStep::Incoming, 23, 5, 7), OK);
    assert_eq!(a.step_of(VShardStep::Activate, 23, 0, 7), OK);
    for k in &keys {
        a.one(put(k, b"v"));
    }
    // No mark left, only the fence: version 3 with an empty state section.
    assert!(a.reader().vshard_states().is_empty());
    let snap = a.sm().snapshot().expect("snapshot");
    assert_eq!(snap[0], 3);
    let view = a.sm().snapshot_view();
    assert_eq!(snap.len(), view.encoded_len());
    let mut b = KvStateMachine::new();
    b.restore(&snap).expect("restore");
    assert_eq!(b.reader().digest(), a.sm().reader().digest());
    assert_eq!(b.reader().vshard_fences(), vec![(23, 7)]);
    assert!(
        b.restore(&snap[..snap.len() - 1]).is_err(),
        "cut in the fences"
    );
    // The restored replica refuses the stale step too, and keeps the data.
    let mut restored = Replica {
        sm: b,
        index: a.0[0].index,
    };
    let late = restored.apply_raw(&[KvCommand::VShard {
        step: VShardStep::Incoming,
        vshard: 23,
        group: 5,
        move_id: 6,
    }
    .encode()]);
    assert!(stale(&late[0]), "{late:?}");
    assert_eq!(restored.get(&keys[0]), Some(b"v".to_vec()));
    // The fence is in the digest: the same map and index without it differ.
    let mut plain = KvState::default();
    let mut fenced = KvState::default();
    fenced.fences.insert(23, 7);
    assert_ne!(plain.digest(), fenced.digest());
    // Snapshots of older builds (version 2: marks, no fences; version 1) read as fence 0.
    plain.vshards.insert(
        23,
        crate::vshard::VShardMark {
            state: crate::vshard::VShardState::Moved { to: 4 },
            move_id: 7,
        },
    );
    let v2 = plain.snapshot_view().encode();
    assert_eq!(v2[0], 2);
    let back = KvState::from_snapshot(&v2).expect("a version-2 snapshot");
    assert!(back.fences.is_empty());
    assert_eq!(back.vshards, plain.vshards);
    let v1 = KvState::default().snapshot_view().encode();
    assert_eq!(v1[0], 1);
    assert!(KvState::from_snapshot(&v1).expect("v1").fences.is_empty());
}
