//! The one table of message kinds. Numbers are stable and never reused: a kind that is no longer
//! sent stays in the table as `Retired`, so an old peer gets "retired, upgrade all nodes" instead of
//! a silent misinterpretation.
//!
//! Ranges: 1–15 control messages answered in Python; 16–31 Raft traffic handled in Rust;
//! 32–63 KV forwarding and client requests.
//!
//! Each row also says which certificate roles may send the kind to a node ([`Roles`]): the
//! transport checks it against the peer's verified identity before any handler runs, so this
//! table is the whole authorization policy (docs/ARCHITECTURE.md "Trust boundaries").

/// Whether a kind may still be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindStatus {
    Active,
    /// Decodes to [`crate::FrameError::RetiredKind`].
    Retired,
}

/// The role a certificate's identity gives its holder (`spiffe://<cluster>/<role>/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A cluster member: Raft, formation, metadata.
    Node,
    /// An operator: everything a client may do, plus membership and placement operations.
    Admin,
    /// An application: KV operations, status, routing.
    Client,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "node" => Some(Role::Node),
            "admin" => Some(Role::Admin),
            "client" => Some(Role::Client),
            _ => None,
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Role::Node => 1,
            Role::Admin => 2,
            Role::Client => 4,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Not a role: the [`Roles::MEMBER`] refinement of the node role.
const MEMBER_BIT: u8 = 8;

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// Answers and errors: never a request, so nobody may send them to a node.
    pub const NONE: Roles = Roles(0);
    pub const NODE: Roles = Roles(Role::Node.bit());
    /// A node this node knows as a member (registered from the topology) presenting the key the
    /// topology pinned for it: what a kind that takes part in the cluster's state needs. Any
    /// node certificate the CA issued is not enough (a never-admitted or retired node's, or a
    /// re-issued one with another key); the transport checks registration and key.
    pub const MEMBER: Roles = Roles(Role::Node.bit() | MEMBER_BIT);
    pub const NODE_ADMIN: Roles = Roles(Role::Node.bit() | Role::Admin.bit());
    pub const ADMIN: Roles = Roles(Role::Admin.bit());
    pub const ANY: Roles = Roles(Role::Node.bit() | Role::Admin.bit() | Role::Client.bit());

    pub const fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Only members may send it ([`Roles::MEMBER`]).
    pub const fn members_only(self) -> bool {
        self.0 & MEMBER_BIT != 0
    }

    /// Names of the roles in the set, for refusal texts.
    pub fn names(self) -> Vec<&'static str> {
        [Role::Node, Role::Admin, Role::Client]
            .into_iter()
            .filter(|r| self.contains(*r))
            .map(Role::name)
            .collect()
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindRow {
    pub number: u16,
    pub name: &'static str,
    pub status: KindStatus,
    /// Who may send it to a node.
    pub senders: Roles,
}

/// A known, active message kind. Construct with [`MessageKind::from_u16`] (checks the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKind(u16);

macro_rules! kinds {
    ($( $konst:ident = $num:literal, $name:literal, $status:ident, $senders:ident; )*) => {
        impl MessageKind {
            $( pub const $konst: MessageKind = MessageKind($num); )*
        }
        /// Every kind ever assigned, in number order.
        pub const KINDS: &[KindRow] = &[
            $( KindRow {
                number: $num,
                name: $name,
                status: KindStatus::$status,
                senders: Roles::$senders,
            }, )*
        ];
    };
}

kinds! {
    // 1–15: control, answered by the Python handler.
    PING = 1, "Ping", Active, ANY;
    PONG = 2, "Pong", Active, NONE;
    JOIN_REQUEST = 3, "JoinRequest", Active, NODE;
    JOIN_RESPONSE = 4, "JoinResponse", Active, NONE;
    ERROR = 5, "Error", Active, NONE;
    STATUS_REQUEST = 6, "StatusRequest", Active, ANY;
    STATUS_RESPONSE = 7, "StatusResponse", Active, NONE;
    METADATA_PROPOSE = 8, "MetadataPropose", Active, MEMBER;
    METADATA_PROPOSE_RESPONSE = 9, "MetadataProposeResponse", Active, NONE;
    JOIN_TOKEN_REQUEST = 10, "JoinTokenRequest", Active, ADMIN;
    JOIN_TOKEN_RESPONSE = 11, "JoinTokenResponse", Active, NONE;
    AUDIT_REQUEST = 12, "AuditRequest", Active, ADMIN;
    AUDIT_RESPONSE = 13, "AuditResponse", Active, NONE;
    // Placement operations (decommission, rebalance now or as a dry run): admins only.
    PLACEMENT_REQUEST = 14, "PlacementRequest", Active, ADMIN;
    PLACEMENT_RESPONSE = 15, "PlacementResponse", Active, NONE;
    // 16–31: Raft traffic, handled inside Rust.
    RAFT_BATCH = 16, "RaftBatch", Active, MEMBER;
    SNAPSHOT_CHUNK = 17, "SnapshotChunk", Active, MEMBER;
    SNAPSHOT_ACK = 18, "SnapshotAck", Active, MEMBER;
    // 32–63: KV forwarding and client requests.
    KV_REQUEST = 32, "KvRequest", Active, ANY;
    KV_RESPONSE = 33, "KvResponse", Active, NONE;
    // Load generation on the node itself (`nodedb-cluster bench --placement embedded`): the
    // bench tool holds an admin certificate; also refused unless the node allows bench load.
    BENCH_LOAD = 34, "BenchLoad", Active, NODE_ADMIN;
    BENCH_LOAD_RESPONSE = 35, "BenchLoadResponse", Active, NONE;
    // A command for a data group that runs the embedding host's state machine, forwarded to
    // its leader (host.rs): nodes only, since the host's state machine trusts its log.
    HOST_PROPOSE = 36, "HostPropose", Active, MEMBER;
    HOST_PROPOSE_RESPONSE = 37, "HostProposeResponse", Active, NONE;
    // A vShard move's step (placement commands of the KV state machine) for a data group,
    // sent by the mover to that group's leader: nodes only, since the commands freeze, import
    // and delete a vShard's keys.
    VSHARD_STEP = 38, "VShardStep", Active, MEMBER;
    VSHARD_STEP_RESPONSE = 39, "VShardStepResponse", Active, NONE;
    // One-way, answered inside the transport: a node restarted at another address tells a
    // peer where it listens now (the payload, "ip:port", must be the address its connection
    // comes from), before the cluster's topology records it. Nodes only.
    PEER_ADDRESS = 40, "PeerAddress", Active, MEMBER;
}

/// Which side answers a kind by default (docs/ARCHITECTURE.md).
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
        self.row().map_or("?", |row| row.name)
    }

    /// The roles that may send this kind to a node (none for answers).
    pub fn senders(self) -> Roles {
        self.row().map_or(Roles::NONE, |row| row.senders)
    }

    fn row(self) -> Option<&'static KindRow> {
        KINDS.iter().find(|row| row.number == self.0)
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
        assert_eq!(MessageKind::PLACEMENT_REQUEST.number(), 14);
        assert_eq!(MessageKind::from_u16(19), Err(None));
        assert_eq!(MessageKind::BENCH_LOAD.number(), 34);
    }

    #[test]
    fn answers_have_no_senders_and_requests_have_some() {
        for row in KINDS {
            let is_answer =
                row.name.ends_with("Response") || row.name == "Pong" || row.name == "Error";
            assert_eq!(row.senders == Roles::NONE, is_answer, "{}", row.name);
        }
    }

    #[test]
    fn the_policy() {
        use Role::*;
        let may = |kind: MessageKind, role: Role| kind.senders().contains(role);
        for kind in [
            MessageKind::RAFT_BATCH,
            MessageKind::SNAPSHOT_CHUNK,
            MessageKind::SNAPSHOT_ACK,
            MessageKind::METADATA_PROPOSE,
            MessageKind::JOIN_REQUEST,
            MessageKind::HOST_PROPOSE,
            MessageKind::VSHARD_STEP,
            MessageKind::PEER_ADDRESS,
        ] {
            assert!(
                may(kind, Node) && !may(kind, Admin) && !may(kind, Client),
                "{kind}"
            );
            // Every kind of a node's but the join itself changes the cluster's state: members
            // only.
            assert_eq!(
                kind.senders().members_only(),
                kind != MessageKind::JOIN_REQUEST,
                "{kind}"
            );
        }
        for row in KINDS {
            let members_only = row.senders.members_only();
            assert!(!members_only || row.senders.contains(Node), "{}", row.name);
        }
        for kind in [
            MessageKind::JOIN_TOKEN_REQUEST,
            MessageKind::AUDIT_REQUEST,
            MessageKind::PLACEMENT_REQUEST,
        ] {
            assert!(
                !may(kind, Node) && may(kind, Admin) && !may(kind, Client),
                "{kind}"
            );
        }
        for kind in [
            MessageKind::KV_REQUEST,
            MessageKind::STATUS_REQUEST,
            MessageKind::PING,
        ] {
            assert!(
                may(kind, Node) && may(kind, Admin) && may(kind, Client),
                "{kind}"
            );
        }
        assert!(!may(MessageKind::BENCH_LOAD, Client));
        assert_eq!(Role::from_name("admin"), Some(Admin));
        assert_eq!(Role::from_name("root"), None);
    }

    #[test]
    fn retired_rows_are_refused() {
        let table = [KindRow {
            number: 9,
            name: "Old",
            status: KindStatus::Retired,
            senders: Roles::NONE,
        }];
        assert!(matches!(lookup(&table, 9), Err(Some(row)) if row.name == "Old"));
    }
}
