//! The built-in KV state machine: put / delete / compare-and-set / get, applied in batches with
//! one result per command, a digest for convergence checks, snapshot and restore.
//!
//! The map sits behind a shared lock so reads (after a ReadIndex) are served from any thread
//! through `KvReader` without a round trip to the driver.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::codec::{Reader, Writer, FORMAT_VERSION};
use crate::error::{DecodeError, SmError};
use crate::state_machine::{Command, StateMachine};

/// Keys above 64 KiB are refused (as an error result) so one entry cannot bloat every snapshot.
pub const KEY_BYTES_MAX: usize = 64 << 10;

/// A KV operation. Encoding: `op u8` then length-prefixed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// op 1: set `key` to `value`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// op 2: remove `key`.
    Delete { key: Vec<u8> },
    /// op 3: set `key` to `value` iff its current value is `expected` (`None` = absent).
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    /// op 4: read through the log (linearizable without ReadIndex, at the cost of an entry).
    Get { key: Vec<u8> },
}

/// A KV result. Encoding: `status u8` then an optional length-prefixed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvResult {
    /// status 0: done; `value` for Get.
    Ok { value: Option<Vec<u8>> },
    /// status 1: Delete/Get of an absent key.
    NotFound,
    /// status 2: Cas lost; `current` is the value it found.
    CasMismatch { current: Option<Vec<u8>> },
    /// status 255: the command did not decode; every node answers the same.
    Invalid { reason: String },
}

impl KvCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            KvCommand::Put { key, value } => {
                w.u8(1);
                w.bytes(key);
                w.bytes(value);
            }
            KvCommand::Delete { key } => {
                w.u8(2);
                w.bytes(key);
            }
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                w.u8(3);
                w.bytes(key);
                opt(&mut w, expected.as_deref());
                w.bytes(value);
            }
            KvCommand::Get { key } => {
                w.u8(4);
                w.bytes(key);
            }
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let cmd = match r.u8()? {
            1 => KvCommand::Put {
                key: key(&mut r)?,
                value: r.bytes("value")?.to_vec(),
            },
            2 => KvCommand::Delete { key: key(&mut r)? },
            3 => KvCommand::Cas {
                key: key(&mut r)?,
                expected: read_opt(&mut r)?,
                value: r.bytes("value")?.to_vec(),
            },
            4 => KvCommand::Get { key: key(&mut r)? },
            tag => return Err(DecodeError::UnknownTag { what: "kv op", tag }),
        };
        r.finish()?;
        Ok(cmd)
    }
}

impl KvResult {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            KvResult::Ok { value } => {
                w.u8(0);
                opt(&mut w, value.as_deref());
            }
            KvResult::NotFound => w.u8(1),
            KvResult::CasMismatch { current } => {
                w.u8(2);
                opt(&mut w, current.as_deref());
            }
            KvResult::Invalid { reason } => {
                w.u8(255);
                w.bytes(reason.as_bytes());
            }
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let res = match r.u8()? {
            0 => KvResult::Ok {
                value: read_opt(&mut r)?,
            },
            1 => KvResult::NotFound,
            2 => KvResult::CasMismatch {
                current: read_opt(&mut r)?,
            },
            255 => KvResult::Invalid {
                reason: String::from_utf8_lossy(r.bytes("reason")?).into_owned(),
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kv result",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(res)
    }
}

fn opt(w: &mut Writer, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            w.u8(1);
            w.bytes(v);
        }
        None => w.u8(0),
    }
}

fn read_opt(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.bytes("value")?.to_vec())),
        tag => Err(DecodeError::UnknownTag {
            what: "kv option flag",
            tag,
        }),
    }
}

fn key(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let k = r.bytes("key")?;
    if k.len() > KEY_BYTES_MAX {
        return Err(DecodeError::TooLong {
            what: "key",
            len: k.len() as u64,
            limit: KEY_BYTES_MAX as u64,
        });
    }
    Ok(k.to_vec())
}

/// The KV map and the index of the last command applied to it.
#[derive(Default, Debug)]
pub struct KvState {
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
    pub applied_index: u64,
    pub applied_commands: u64,
}

impl KvState {
    /// xxh3 over (applied index, every key and value in order): equal digests on two nodes mean
    /// equal state at the same index.
    pub fn digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.applied_index.to_le_bytes());
        for (k, v) in &self.map {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k);
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v);
        }
        h.digest()
    }

    fn apply(&mut self, c: &Command<'_>) -> KvResult {
        self.applied_index = c.index;
        self.applied_commands += 1;
        let cmd = match KvCommand::decode(c.data) {
            Ok(cmd) => cmd,
            Err(e) => {
                return KvResult::Invalid {
                    reason: e.to_string(),
                }
            }
        };
        match cmd {
            KvCommand::Put { key, value } => {
                self.map.insert(key, value);
                KvResult::Ok { value: None }
            }
            KvCommand::Delete { key } => match self.map.remove(&key) {
                Some(_) => KvResult::Ok { value: None },
                None => KvResult::NotFound,
            },
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                let current = self.map.get(&key);
                if current.map(Vec::as_slice) == expected.as_deref() {
                    self.map.insert(key, value);
                    KvResult::Ok { value: None }
                } else {
                    KvResult::CasMismatch {
                        current: current.cloned(),
                    }
                }
            }
            KvCommand::Get { key } => match self.map.get(&key) {
                Some(v) => KvResult::Ok {
                    value: Some(v.clone()),
                },
                None => KvResult::NotFound,
            },
        }
    }
}

/// The built-in KV state machine of a group.
#[derive(Default, Clone)]
pub struct KvStateMachine {
    state: Arc<RwLock<KvState>>,
}

/// A read handle on a group's KV state, usable from any thread.
#[derive(Clone)]
pub struct KvReader {
    state: Arc<RwLock<KvState>>,
}

impl KvStateMachine {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn reader(&self) -> KvReader {
        KvReader {
            state: Arc::clone(&self.state),
        }
    }
    fn write(&self) -> RwLockWriteGuard<'_, KvState> {
        // Apply never panics while holding the lock; a poisoned lock still holds valid data.
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl KvReader {
    pub fn read(&self) -> RwLockReadGuard<'_, KvState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read().map.get(key).cloned()
    }
    pub fn applied_index(&self) -> u64 {
        self.read().applied_index
    }
    pub fn digest(&self) -> u64 {
        self.read().digest()
    }
    pub fn len(&self) -> usize {
        self.read().map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.read().map.is_empty()
    }
}

impl StateMachine for KvStateMachine {
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Vec<Vec<u8>> {
        let mut st = self.write();
        commands.iter().map(|c| st.apply(c).encode()).collect()
    }

    /// `version u8, applied_index u64, applied_commands u64, count u64, (key, value)*`.
    fn snapshot(&self) -> Result<Vec<u8>, SmError> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let bytes: usize = st.map.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let mut w = Writer::with_capacity(25 + bytes);
        w.u8(FORMAT_VERSION);
        w.u64(st.applied_index);
        w.u64(st.applied_commands);
        w.u64(st.map.len() as u64);
        for (k, v) in &st.map {
            w.bytes(k);
            w.bytes(v);
        }
        Ok(w.buf)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), SmError> {
        let decode = || -> Result<KvState, DecodeError> {
            let mut r = Reader::new(data);
            r.version()?;
            let applied_index = r.u64()?;
            let applied_commands = r.u64()?;
            let n = r.u64()?;
            let mut map = BTreeMap::new();
            for _ in 0..n {
                let k = r.bytes("key")?.to_vec();
                let v = r.bytes("value")?.to_vec();
                map.insert(k, v);
            }
            r.finish()?;
            Ok(KvState {
                map,
                applied_index,
                applied_commands,
            })
        };
        let fresh = decode().map_err(|e| SmError::Decode(e.to_string()))?;
        *self.write() = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(sm: &mut KvStateMachine, index: u64, cmds: &[KvCommand]) -> Vec<KvResult> {
        let enc: Vec<Vec<u8>> = cmds.iter().map(KvCommand::encode).collect();
        let batch: Vec<Command<'_>> = enc.iter().map(|d| Command { index, data: d }).collect();
        sm.apply_batch(&batch)
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
        let out = sm.apply_batch(&[Command {
            index: 1,
            data: &[9, 9, 9],
        }]);
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
}
