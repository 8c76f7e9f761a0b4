//! Who a peer is: the SPIFFE-style URI SAN of its verified certificate,
//! `spiffe://<cluster>/<role>/<name>` (for nodes, `<name>` is the node id), and the one decision
//! of what a peer may send ([`authorize`], over the kind table's `senders` column).
//!
//! The identity comes from the certificate the TLS handshake verified against the cluster CA;
//! nothing in a payload can change it.

use std::fmt;

use std::path::Path;

use nodedb_wire::{MessageKind, Role};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::credentials::{read_cert_der, Credentials, SpkiPin};
use crate::error::TransportError;

const SCHEME: &str = "spiffe://";
const NAME_BYTES_MAX: usize = 128;
const TRUST_DOMAIN_BYTES_MAX: usize = 255;

/// A verified certificate identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The cluster name (SPIFFE trust domain).
    pub trust_domain: String,
    pub role: Role,
    /// The node id in decimal for nodes; the operator's or application's name otherwise.
    pub name: String,
    /// Set exactly when `role` is [`Role::Node`].
    pub node_id: Option<u64>,
}

impl Identity {
    /// The URI form, as written in the certificate.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}/{}", self.trust_domain, self.role, self.name)
    }

    /// Parse `spiffe://<trust-domain>/<role>/<name>`.
    pub fn parse(uri: &str) -> Result<Identity, String> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("{uri:?} is not a spiffe:// URI"))?;
        let mut parts = rest.split('/');
        let (Some(trust_domain), Some(role), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{uri:?} is not of the form spiffe://<cluster>/<role>/<name>"
            ));
        };
        check_trust_domain(trust_domain)?;
        let role = Role::from_name(role).ok_or_else(|| {
            format!("{uri:?}: unknown role {role:?} (one of node, admin, client)")
        })?;
        if name.is_empty()
            || name.len() > NAME_BYTES_MAX
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(format!(
                "{uri:?}: the name must be 1..{NAME_BYTES_MAX} characters of [A-Za-z0-9._-]"
            ));
        }
        let node_id = match role {
            Role::Node => match name.parse::<u64>() {
                Ok(id) if id > 0 && !name.starts_with('0') => Some(id),
                _ => {
                    return Err(format!(
                        "{uri:?}: a node's name is its id, a positive integer"
                    ))
                }
            },
            Role::Admin | Role::Client => None,
        };
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            role,
            name: name.to_string(),
            node_id,
        })
    }

    /// The identity in an end-entity certificate (DER): its one `spiffe://` URI SAN.
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("cannot parse the certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("malformed subjectAltName extension: {e}"))?;
        let mut uris = san
            .into_iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(SCHEME) => Some(*uri),
                _ => None,
            });
        let (Some(uri), None) = (uris.next(), uris.next()) else {
            return Err(MISSING_IDENTITY.to_string());
        };
        Identity::parse(uri)
    }
}

impl Identity {
    /// The identity of the first certificate in a PEM file; errors name the file.
    pub fn from_cert_pem_file(path: &Path) -> Result<Identity, TransportError> {
        let der = read_cert_der(path)?;
        Identity::from_cert_der(&der).map_err(|reason| TransportError::Credentials {
            reason: format!("{}: {reason}", path.display()),
        })
    }
}

/// Why a certificate has no usable identity, and what to do about it.
pub const MISSING_IDENTITY: &str =
    "the certificate carries no single spiffe://<cluster>/<role>/<name> URI \
     SAN (issued before roles existed, or by another tool); issue it again with \
     `nodedb-cluster gen-certs`";

/// Check a cluster name usable as a SPIFFE trust domain.
pub fn check_trust_domain(trust_domain: &str) -> Result<(), String> {
    if trust_domain.is_empty()
        || trust_domain.len() > TRUST_DOMAIN_BYTES_MAX
        || !trust_domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
    {
        return Err(format!(
            "cluster name {trust_domain:?} must be 1..{TRUST_DOMAIN_BYTES_MAX} characters of \
             [a-z0-9._-] (it is the trust domain of every certificate identity)"
        ));
    }
    Ok(())
}

/// This node's own identity, from its credentials (`None` when insecure, or when its certificate
/// has none: the node's start path refuses that with [`MISSING_IDENTITY`]).
pub fn own_identity(credentials: &Credentials) -> Option<Identity> {
    let material = credentials.material().ok()??;
    Identity::from_cert_der(material.chain.first()?).ok()
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// What the transport knows of a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// An insecure transport: nobody is authenticated, so nothing is checked (asked for by name,
    /// logged and counted at bind).
    Unauthenticated,
    /// A certificate verified against the cluster CA, with its identity.
    Verified(Identity),
    /// A certificate from the cluster CA without a usable identity (or of another cluster):
    /// may send nothing.
    Unidentified(String),
}

impl PeerIdentity {
    /// Of a connection's verified leaf (`None`: no certificate, i.e. an insecure transport).
    /// `trust_domain` is this node's own; a peer of another trust domain is unidentified.
    pub fn of_peer_cert(cert_der: Option<&[u8]>, trust_domain: Option<&str>) -> PeerIdentity {
        let Some(der) = cert_der else {
            return PeerIdentity::Unauthenticated;
        };
        match Identity::from_cert_der(der) {
            Ok(id) => match trust_domain {
                Some(ours) if ours != id.trust_domain => PeerIdentity::Unidentified(format!(
                    "{id} belongs to cluster {:?}, this node to {ours:?}",
                    id.trust_domain
                )),
                _ => PeerIdentity::Verified(id),
            },
            Err(reason) => PeerIdentity::Unidentified(reason),
        }
    }

    /// The node id a node-role peer proved; `None` for every other peer.
    pub fn node_id(&self) -> Option<u64> {
        match self {
            PeerIdentity::Verified(id) => id.node_id,
            _ => None,
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Unauthenticated => f.write_str("unauthenticated"),
            PeerIdentity::Verified(id) => write!(f, "{id}"),
            PeerIdentity::Unidentified(_) => f.write_str("unidentified"),
        }
    }
}

/// Why a frame was refused before its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable label for metrics: `role`, `no_identity`, `sender_mismatch`, `bench_load_disabled`.
    pub reason: &'static str,
    pub message: String,
}

/// May `peer` send `kind` to this node? The kind table's `senders` column is the whole policy.
pub fn authorize(peer: &PeerIdentity, kind: MessageKind) -> Result<(), Refusal> {
    match peer {
        PeerIdentity::Unauthenticated => Ok(()),
        PeerIdentity::Unidentified(why) => Err(Refusal {
            reason: "no_identity",
            message: format!("{kind} refused: {why}"),
        }),
        PeerIdentity::Verified(id) if kind.senders().contains(id.role) => Ok(()),
        PeerIdentity::Verified(id) => {
            let allowed = kind.senders().names();
            let who = if allowed.is_empty() {
                "nobody (it is an answer, not a request)".to_string()
            } else {
                format!("the {} role", allowed.join(" or "))
            };
            Err(Refusal {
                reason: "role",
                message: format!("{kind} refused for {id}: only {who} may send it"),
            })
        }
    }
}

/// A member-only kind ([`nodedb_wire::Roles::MEMBER`]) from a node certificate: is its node
/// a member this node knows, presenting the key the topology pinned for it? `registered` is
/// the transport's peer table (`Some(pin)` for a registered node, its pinned key if known).
/// Only the verified certificate and the connection's key are read, never the payload.
pub fn authorize_member(
    peer: &PeerIdentity,
    peer_pin: Option<SpkiPin>,
    kind: MessageKind,
    registered: impl FnOnce(u64) -> Option<Option<SpkiPin>>,
) -> Result<(), Refusal> {
    let PeerIdentity::Verified(id) = peer else {
        return Ok(()); // insecure: nothing to check; unidentified: refused by `authorize`
    };
    let Some(node) = id.node_id.filter(|_| kind.senders().members_only()) else {
        return Ok(());
    };
    match registered(node) {
        None => Err(Refusal {
            reason: "unknown_sender",
            message: format!(
                "{kind} refused for {id}: node {node} is not a member this node knows"
            ),
        }),
        Some(Some(pin)) if peer_pin != Some(pin) => Err(Refusal {
            reason: "unknown_sender",
            message: format!(
                "{kind} refused for {id}: node {node} presented another key than the one the \
                 topology pinned for it"
            ),
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_sans(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(text: &str) -> rcgen::SanType {
        rcgen::SanType::URI(text.try_into().unwrap())
    }

    #[test]
    fn parses_the_three_roles() {
        let node = Identity::parse("spiffe://prod-eu/node/42").unwrap();
        assert_eq!((node.role, node.node_id), (Role::Node, Some(42)));
        assert_eq!(node.uri(), "spiffe://prod-eu/node/42");
        let admin = Identity::parse("spiffe://prod-eu/admin/alice").unwrap();
        assert_eq!(
            (admin.role, admin.node_id, admin.name.as_str()),
            (Role::Admin, None, "alice")
        );
        assert_eq!(
            Identity::parse("spiffe://c/client/app.1").unwrap().role,
            Role::Client
        );
    }

    #[test]
    fn refuses_malformed_uris() {
        for bad in [
            "https://c/node/1",
            "spiffe://c/node",
            "spiffe://c/node/1/extra",
            "spiffe://c/root/x",
            "spiffe://c/node/0",
            "spiffe://c/node/01",
            "spiffe://c/node/n1",
            "spiffe://c/node/18446744073709551616",
            "spiffe://Upper/node/1",
            "spiffe:///node/1",
            "spiffe://c/client/",
            "spiffe://c/client/a b",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_the_uri_san_of_a_certificate() {
        let der = cert_with_sans(vec![
            rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
            uri("spiffe://c/node/3"),
        ]);
        assert_eq!(Identity::from_cert_der(&der).unwrap().node_id, Some(3));
    }

    #[test]
    fn a_certificate_without_one_spiffe_uri_has_no_identity() {
        let none = cert_with_sans(vec![rcgen::SanType::IpAddress(
            "127.0.0.1".parse().unwrap(),
        )]);
        let err = Identity::from_cert_der(&none).unwrap_err();
        assert!(err.contains("gen-certs"), "{err}");
        let two = cert_with_sans(vec![uri("spiffe://c/node/3"), uri("spiffe://c/admin/x")]);
        assert!(Identity::from_cert_der(&two).is_err());
        assert!(Identity::from_cert_der(b"junk").is_err());
    }

    #[test]
    fn another_cluster_is_unidentified() {
        let der = cert_with_sans(vec![uri("spiffe://other/node/3")]);
        assert!(matches!(
            PeerIdentity::of_peer_cert(Some(&der), Some("mine")),
            PeerIdentity::Unidentified(_)
        ));
        assert!(matches!(
            PeerIdentity::of_peer_cert(Some(&der), Some("other")),
            PeerIdentity::Verified(_)
        ));
        assert_eq!(
            PeerIdentity::of_peer_cert(None, Some("mine")),
            PeerIdentity::Unauthenticated
        );
    }

    #[test]
    fn authorization_follows_the_kind_table() {
        let peer = |uri: &str| PeerIdentity::Verified(Identity::parse(uri).unwrap());
        let client = peer("spiffe://c/client/app");
        let node = peer("spiffe://c/node/2");
        let admin = peer("spiffe://c/admin/ops");
        assert!(authorize(&client, MessageKind::KV_REQUEST).is_ok());
        let refused = authorize(&client, MessageKind::RAFT_BATCH).unwrap_err();
        assert_eq!(refused.reason, "role");
        assert!(
            refused.message.contains("spiffe://c/client/app"),
            "{}",
            refused.message
        );
        assert!(authorize(&client, MessageKind::METADATA_PROPOSE).is_err());
        assert!(authorize(&client, MessageKind::JOIN_REQUEST).is_err());
        assert!(authorize(&client, MessageKind::BENCH_LOAD).is_err());
        assert!(authorize(&admin, MessageKind::JOIN_TOKEN_REQUEST).is_ok());
        assert!(authorize(&admin, MessageKind::RAFT_BATCH).is_err());
        assert!(authorize(&node, MessageKind::RAFT_BATCH).is_ok());
        assert!(authorize(&node, MessageKind::AUDIT_REQUEST).is_err());
        assert!(authorize(&node, MessageKind::PONG).is_err());
        let unidentified = PeerIdentity::Unidentified("no SAN".into());
        assert_eq!(
            authorize(&unidentified, MessageKind::PING)
                .unwrap_err()
                .reason,
            "no_identity"
        );
        assert!(authorize(&PeerIdentity::Unauthenticated, MessageKind::RAFT_BATCH).is_ok());
    }

    #[test]
    fn member_kinds_need_a_registered_node_with_its_pinned_key() {
        let peer = |uri: &str| PeerIdentity::Verified(Identity::parse(uri).unwrap());
        let node5 = peer("spiffe://c/node/5");
        let pinned = SpkiPin([1; 32]);
        let other = SpkiPin([2; 32]);
        let members = |node: u64| match node {
            5 => Some(Some(pinned)),
            6 => Some(None), // registered with no pin (an insecure peer then): nothing to compare
            _ => None,
        };
        for kind in [
            MessageKind::METADATA_PROPOSE,
            MessageKind::RAFT_BATCH,
            MessageKind::SNAPSHOT_CHUNK,
            MessageKind::VSHARD_STEP,
            MessageKind::HOST_PROPOSE,
            MessageKind::PEER_ADDRESS,
        ] {
            assert!(authorize_member(&node5, Some(pinned), kind, members).is_ok());
            let wrong_key = authorize_member(&node5, Some(other), kind, members).unwrap_err();
            assert_eq!(wrong_key.reason, "unknown_sender");
            assert!(
                wrong_key.message.contains("another key"),
                "{}",
                wrong_key.message
            );
            let stranger = peer("spiffe://c/node/7");
            let refused = authorize_member(&stranger, Some(pinned), kind, members).unwrap_err();
            assert_eq!(refused.reason, "unknown_sender");
            assert!(
                refused.message.contains("node 7 is not a member"),
                "{}",
                refused.message
            );
            assert!(authorize_member(&peer("spiffe://c/node/6"), None, kind, members).is_ok());
        }
        // A joiner is no member yet; an insecure transport has no identities to check.
        let stranger = peer("spiffe://c/node/7");
        assert!(authorize_member(&stranger, None, MessageKind::JOIN_REQUEST, members).is_ok());
        let insecure = PeerIdentity::Unauthenticated;
        assert!(authorize_member(&insecure, None, MessageKind::RAFT_BATCH, |_| None).is_ok());
        let admin = peer("spiffe://c/admin/ops");
        assert!(authorize_member(&admin, None, MessageKind::KV_REQUEST, |_| None).is_ok());
    }
}
