//! The one table of message kinds. Numbers are stable and never reused: a kind that is no longer
//! sent stays in the table as `Retired`, so an old peer gets "retired, upgrade all nodes" instead of
//! a silent misinterpretation.
//!
//! Ranges: 1–15 control messages answered in Python; 16–31 Raft traffic handled in Rust;
//! 32–63 KV forwarding and client requests.

/// Whether a kind may still be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindStatus {
    Active,
    /// Decodes to [`crate::FrameError::RetiredKind`].
    Retired,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindRow {
    pub number: u16,
    pub name: &'static str,
    pub status: KindStatus,
}

/// A known, active message kind. Construct with [`MessageKind::from_u16`] (checks the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKind(u16);

macro_rules! kinds {
    ($( $konst:ident = $num:literal, $name:literal, $status:ident; )*) => {
        impl MessageKind {
            $( pub const $konst: MessageKind = MessageKind($num); )*
        }
        /// Every kind ever assigned, in number order.
        pub const KINDS: &[KindRow] = &[
            $( KindRow { number: $num, name: $name, status: KindStatus::$status }, )*
        ];
    };
}

kinds! {
    // 1–15: control, answered by the Python handler.
    PING = 1, "Ping", Active;
    PONG = 2, "Pong", Active;
    JOIN_REQUEST = 3, "JoinRequest", Active;
    JOIN_RESPONSE = 4, "JoinResponse", Active;
    ERROR = 5, "Error", Active;
    STATUS_REQUEST = 6, "StatusRequest", Active;
    STATUS_RESPONSE = 7, "StatusResponse", Active;
    METADATA_PROPOSE = 8, "MetadataPropose", Active;
    METADATA_PROPOSE_RESPONSE = 9, "MetadataProposeResponse", Active;
    // 16–31: Raft traffic, handled inside Rust.
    RAFT_BATCH = 16, "RaftBatch", Active;
    SNAPSHOT_CHUNK = 17, "SnapshotChunk", Active;
    SNAPSHOT_ACK = 18, "SnapshotAck", Active;
    // 32–63: KV forwarding and client requests.
    KV_REQUEST = 32, "KvRequest", Active;
    KV_RESPONSE = 33, "KvResponse", Active;
}

/// Which side answers a kind by default (ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindRange {
    Control,
    Raft,
    Kv,
    Unassigned,
}

impl MessageKind {
    /// Look `number` up in [`KINDS`]: `Ok` for active kinds, `Err(row)` for retired ones,
    /// `Err(None)` for numbers never assigned.
    pub fn from_u16(number: u16) -> Result<MessageKind, Option<KindRow>> {
        lookup(KINDS, number)
    }

    pub const fn number(self) -> u16 {
        self.0
    }

    pub fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|row| row.number == self.0)
            .map_or("?", |row| row.name)
    }

    pub const fn range(self) -> KindRange {
        match self.0 {
            1..=15 => KindRange::Control,
            16..=31 => KindRange::Raft,
            32..=63 => KindRange::Kv,
            _ => KindRange::Unassigned,
        }
    }
}

/// Table lookup over any table (tests use a table with a retired row).
pub fn lookup(table: &[KindRow], number: u16) -> Result<MessageKind, Option<KindRow>> {
    match table.iter().find(|row| row.number == number) {
        Some(row) if row.status == KindStatus::Active => Ok(MessageKind(number)),
        Some(row) => Err(Some(*row)),
        None => Err(None),
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_sorted() {
        for pair in KINDS.windows(2) {
            assert!(pair[0].number < pair[1].number, "{pair:?}");
        }
    }

    #[test]
    fn stable_numbers() {
        assert_eq!(MessageKind::PING.number(), 1);
        assert_eq!(MessageKind::ERROR.number(), 5);
        assert_eq!(MessageKind::RAFT_BATCH.number(), 16);
        assert_eq!(MessageKind::KV_REQUEST.number(), 32);
        assert_eq!(MessageKind::from_u16(3), Ok(MessageKind::JOIN_REQUEST));
        assert_eq!(MessageKind::METADATA_PROPOSE_RESPONSE.number(), 9);
        assert_eq!(MessageKind::from_u16(10), Err(None));
    }

    #[test]
    fn retired_rows_are_refused() {
        let table = [KindRow {
            number: 9,
            name: "Old",
            status: KindStatus::Retired,
        }];
        assert!(matches!(lookup(&table, 9), Err(Some(row)) if row.name == "Old"));
    }
}
