//! Explicit credentials (`Mtls` or `Insecure`, never a silent default), SPKI pins, and a generator
//! (rcgen) for a cluster CA and leaves that carry their identity (`spiffe://<cluster>/<role>/
//! <name>`, see `identity.rs`), with bounded validity, and certificate revocation lists. Key files
//! are 0600 and folders 0700; the CA key lives in a folder of its own that no node needs.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::error::TransportError;
use crate::identity::{check_trust_domain, Identity};
use nodedb_wire::Role;

/// SHA-256 of a SubjectPublicKeyInfo (DER). Stable across certificate renewals with the same key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin(pub [u8; 32]);

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

impl SpkiPin {
    pub fn from_slice(bytes: &[u8]) -> Result<SpkiPin, TransportError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| TransportError::Credentials {
            reason: format!("an SPKI pin is 32 bytes, got {}", bytes.len()),
        })?;
        Ok(SpkiPin(array))
    }
}

/// The pin of an end-entity certificate (DER).
pub fn spki_pin_of_cert(cert_der: &[u8]) -> Result<SpkiPin, TransportError> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| TransportError::Credentials {
        reason: format!("cannot parse certificate to compute its SPKI pin: {e}"),
    })?;
    let spki = cert.subject_public_key_info();
    Ok(SpkiPin(Sha256::digest(spki.as_ref()).into()))
}

/// How this node authenticates itself and its peers.
#[derive(Clone)]
pub enum Credentials {
    /// Mutual TLS: both sides present a leaf issued by the cluster CA.
    Mtls {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
        /// Certificate revocation lists signed by the CA (may be empty).
        crl_pems: Vec<String>,
    },
    /// No authentication (a throwaway self-signed server cert, no verification). Must be asked
    /// for by name; logged and counted.
    Insecure,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Mtls { .. } => f.write_str("Credentials::Mtls{..}"),
            Credentials::Insecure => f.write_str("Credentials::Insecure"),
        }
    }
}

/// Parsed mTLS material, ready for rustls.
pub(crate) struct MtlsMaterial {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

fn bad(what: &str, err: impl fmt::Display) -> TransportError {
    TransportError::Credentials {
        reason: format!("{what}: {err}"),
    }
}

impl Credentials {
    /// Read the three PEM files of an mTLS identity, and check they parse.
    pub fn mtls_from_files(
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Credentials, TransportError> {
        Credentials::mtls_from_files_with_crls(ca, cert, key, &[])
    }

    /// [`Credentials::mtls_from_files`] plus certificate revocation lists (PEM files): peers
    /// whose certificate a CRL revokes are refused in both directions.
    pub fn mtls_from_files_with_crls(
        ca: &Path,
        cert: &Path,
        key: &Path,
        crls: &[PathBuf],
    ) -> Result<Credentials, TransportError> {
        let creds = Credentials::Mtls {
            ca_pem: read_pem(ca)?,
            cert_pem: read_pem(cert)?,
            key_pem: read_pem(key)?,
            crl_pems: read_crl_files(crls)?,
        };
        creds.material()?;
        revoked_serials(creds.crl_pems())?;
        Ok(creds)
    }

    pub(crate) fn material(&self) -> Result<Option<MtlsMaterial>, TransportError> {
        let Credentials::Mtls {
            ca_pem,
            cert_pem,
            key_pem,
            crl_pems,
        } = self
        else {
            return Ok(None);
        };
        let certs =
            |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>, TransportError> {
                let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(&format!("cannot parse {what} PEM"), e))?;
                if certs.is_empty() {
                    return Err(bad(what, "no CERTIFICATE block in the PEM"));
                }
                Ok(certs)
            };
        let ca = certs(ca_pem, "CA certificate")?;
        let chain = certs(cert_pem, "node certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad("cannot parse node private key PEM", e))?;
        let mut crls = Vec::new();
        for pem in crl_pems {
            let parsed = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("cannot parse CRL PEM", e))?;
            if parsed.is_empty() {
                return Err(bad("CRL", "no X509 CRL block in the PEM"));
            }
            crls.extend(parsed);
        }
        Ok(Some(MtlsMaterial {
            ca,
            chain,
            key,
            crls,
        }))
    }

    /// The same identity with `crl_pems` in place of its CRLs, checked to parse as this module
    /// and rustls read them: what a CRL reload swaps in.
    pub fn with_crl_pems(&self, crl_pems: Vec<String>) -> Result<Credentials, TransportError> {
        let Credentials::Mtls {
            ca_pem,
            cert_pem,
            key_pem,
            ..
        } = self
        else {
            return Err(TransportError::Config {
                reason: "an insecure transport checks no certificates, so it takes no CRL".into(),
            });
        };
        revoked_serials(&crl_pems)?;
        let creds = Credentials::Mtls {
            ca_pem: ca_pem.clone(),
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
            crl_pems,
        };
        creds.material()?;
        Ok(creds)
    }

    /// The CRLs (PEM texts) in force; empty when insecure.
    pub(crate) fn crl_pems(&self) -> &[String] {
        match self {
            Credentials::Mtls { crl_pems, .. } => crl_pems,
            Credentials::Insecure => &[],
        }
    }

    /// This node's SPKI pin (`None` when insecure).
    pub fn spki_pin(&self) -> Result<Option<SpkiPin>, TransportError> {
        match self.material()? {
            Some(material) => Ok(Some(spki_pin_of_cert(&material.chain[0])?)),
            None => Ok(None),
        }
    }

    /// Secret bytes from which the stateless-reset key is derived: a restarted node with the same
    /// key can reset its peers' stale connections at once (they then reconnect on next use).
    pub(crate) fn reset_key_seed(&self) -> Option<[u8; 32]> {
        let Credentials::Mtls { key_pem, .. } = self else {
            return None;
        };
        let mut hasher = Sha256::new();
        hasher.update(b"nodedb-cluster/1 stateless reset key\0");
        hasher.update(key_pem.as_bytes());
        Some(hasher.finalize().into())
    }
}

/// Validity of the cluster CA: ten years, so it outlives many rounds of leaf renewal.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Default validity of a leaf: a year, renewed with `gen-certs` / `issue_node_credentials`.
pub const LEAF_VALIDITY_DAYS_DEFAULT: u32 = 365;
/// A leaf never outlives the CA that signs it (peers would refuse it once the CA expired).
pub const LEAF_VALIDITY_DAYS_MAX: u32 = CA_VALIDITY_DAYS;
/// Certificates start this long before they are issued, so a peer whose clock runs a little
/// behind does not refuse a fresh certificate as "not yet valid".
pub const CLOCK_SKEW_ALLOWANCE_SECS: i64 = 3600;
/// The CA certificate, in the credentials folder (nodes need it).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's own folder (0700) inside the credentials folder: never copied to a node.
pub const CA_KEY_DIR: &str = "ca-key";
pub const CA_KEY_FILE: &str = "ca.key";
const SPIFFE_SCHEME: &str = "spiffe://";
const SECS_PER_DAY: i64 = 86_400;

/// The CA files in a credentials folder written by [`generate_cluster_ca`].
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    /// Where [`generate_cluster_ca`] puts them under `dir`: `ca.pem`, `ca-key/ca.key`.
    pub fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_DIR).join(CA_KEY_FILE),
        }
    }
}

/// Files written for one leaf.
#[derive(Debug, Clone)]
pub struct NodeCredentialFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One leaf to issue: its role, the name in its identity, and its IP or DNS SANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub role: Role,
    /// The identity's last segment: the node id in decimal for nodes, the name otherwise.
    pub name: String,
    /// The file stem (`<stem>.pem`, `<stem>.key`): `n<id>` for nodes, the name otherwise.
    pub file_stem: String,
    pub sans: Vec<String>,
}

impl LeafSpec {
    /// A node leaf: identity `node/<id>`, files `n<id>.pem` / `n<id>.key`.
    pub fn node(node_id: u64, sans: Vec<String>) -> Result<LeafSpec, TransportError> {
        if node_id == 0 {
            return Err(bad("node id", "0 is not a node id (ids start at 1)"));
        }
        Ok(LeafSpec {
            role: Role::Node,
            name: node_id.to_string(),
            file_stem: format!("n{node_id}"),
            sans,
        })
    }

    /// A leaf of `role` named `name` (also the file stem); a node's name must be `n<id>`.
    pub fn named(role: Role, name: &str, sans: Vec<String>) -> Result<LeafSpec, TransportError> {
        if role == Role::Node {
            let spec = LeafSpec::from_name(name, sans)?;
            if spec.role != Role::Node {
                return Err(bad(
                    "node name",
                    format!("{name:?}: a node's credential is named n<id> (n1, n2, ...)"),
                ));
            }
            return Ok(spec);
        }
        check_file_stem(name)?;
        Ok(LeafSpec {
            role,
            name: name.to_string(),
            file_stem: name.to_string(),
            sans,
        })
    }

    /// `gen-certs --node NAME=IP`'s rule: `n<id>` (n1, n2, …) is node `<id>`, any other name a
    /// client, so the credentials of a cluster and its CLI user come from one list of names.
    pub fn from_name(name: &str, sans: Vec<String>) -> Result<LeafSpec, TransportError> {
        let Some(digits) = name
            .strip_prefix('n')
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        else {
            return LeafSpec::named(Role::Client, name, sans);
        };
        match digits.parse::<u64>() {
            Ok(id) if id > 0 && !digits.starts_with('0') => LeafSpec::node(id, sans),
            _ => Err(bad(
                "node name",
                format!(
                    "{name:?} looks like a node name but {digits:?} is not a node id (a positive \
                     integer below 2^64 without leading zeros: n1, n2, ...)"
                ),
            )),
        }
    }

    /// The URI SAN this leaf carries in cluster `trust_domain`, checked by the one identity
    /// parser so that whatever is issued is also accepted.
    pub fn identity(&self, trust_domain: &str) -> Result<Identity, TransportError> {
        check_trust_domain(trust_domain).map_err(|e| bad("cluster name", e))?;
        let uri = format!("{SPIFFE_SCHEME}{trust_domain}/{}/{}", self.role, self.name);
        Identity::parse(&uri).map_err(|e| bad("certificate identity", e))
    }
}

/// A leaf's file stem: a plain file name that cannot shadow the CA's files.
fn check_file_stem(name: &str) -> Result<(), TransportError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !plain {
        return Err(bad(
            "credential name",
            format!("{name:?} must be characters of [A-Za-z0-9._-], not starting with '.'"),
        ));
    }
    if name == "ca" || name == CA_KEY_DIR {
        return Err(bad(
            "credential name",
            format!("{name:?} is reserved for the cluster CA's files"),
        ));
    }
    Ok(())
}

/// Write `contents` to `path` readable by the owner only (0600), even if the file existed.
/// Missing parent directories are created owner-only (0700).
fn write_private(path: &Path, contents: &str) -> Result<(), TransportError> {
    write_private_with(path, contents, false)
}

/// [`write_private`]; with `create_new`, an existing file is refused instead of replaced.
fn write_private_with(path: &Path, contents: &str, create_new: bool) -> Result<(), TransportError> {
    let fail = |e: std::io::Error| bad(&format!("cannot write {}", path.display()), e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let mut file = options.open(path).map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    file.write_all(contents.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    Ok(())
}

/// Create `dir` (and missing parents) owner-only (0700); an existing folder keeps its mode.
fn create_private_dir(dir: &Path) -> Result<(), TransportError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| bad(&format!("cannot create folder {}", dir.display()), e))
}

/// Replace `path` atomically (temporary file, fsync, rename, directory fsync): a node reloading
/// the file at any moment reads the old content or the new, never half of one.
fn replace_private(path: &Path, contents: &str) -> Result<(), TransportError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| bad("output path", format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    write_private(&tmp, contents)?;
    let fail = |e: std::io::Error| bad(&format!("cannot replace {}", path.display()), e);
    std::fs::rename(&tmp, path).map_err(fail)?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    std::fs::File::open(parent.unwrap_or(Path::new(".")))
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

/// The PEM texts of CRL files (e.g. `tls_crl_path`), for [`Credentials::with_crl_pems`].
pub fn read_crl_files(paths: &[PathBuf]) -> Result<Vec<String>, TransportError> {
    paths.iter().map(|p| read_pem(p)).collect()
}

fn rcgen_err(e: rcgen::Error) -> TransportError {
    bad("certificate generation failed", e)
}

fn read_pem(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot read {}", path.display()), e))
}

/// The first certificate (DER) of the PEM file at `path`.
fn read_cert_der(path: &Path) -> Result<CertificateDer<'static>, TransportError> {
    CertificateDer::from_pem_slice(read_pem(path)?.as_bytes()).map_err(|e| {
        bad(
            &format!("cannot parse the certificate in {}", path.display()),
            e,
        )
    })
}

fn parse_x509<'a>(
    der: &'a [u8],
    path: &Path,
) -> Result<x509_parser::certificate::X509Certificate<'a>, TransportError> {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| {
            bad(
                &format!("cannot parse the certificate in {}", path.display()),
                e,
            )
        })
}

/// The current time in whole seconds (certificates carry seconds).
fn now_utc() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn from_unix(secs: i64) -> Result<time::OffsetDateTime, TransportError> {
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| bad("certificate date", e))
}

/// The validity window of a certificate issued at `now` for `days`: it starts an hour early
/// ([`CLOCK_SKEW_ALLOWANCE_SECS`]).
fn validity(
    now: time::OffsetDateTime,
    days: u32,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), TransportError> {
    let now = now.unix_timestamp();
    Ok((
        from_unix(now - CLOCK_SKEW_ALLOWANCE_SECS)?,
        from_unix(now + i64::from(days) * SECS_PER_DAY)?,
    ))
}

/// The CA that signs leaves and CRLs, from its certificate and key files, with its cluster name
/// (trust domain) and the end of its validity.
struct LoadedCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    trust_domain: String,
    /// The CA's subject name (DER), which leaves and CRLs it issued name as their issuer.
    subject_der: Vec<u8>,
    not_after_unix: i64,
}

fn load_ca(ca_cert: &Path, ca_key: &Path) -> Result<LoadedCa, TransportError> {
    let cert_pem = read_pem(ca_cert)?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
        bad(
            &format!("cannot parse the CA certificate {}", ca_cert.display()),
            e,
        )
    })?;
    let cert = parse_x509(&der, ca_cert)?;
    let trust_domain = ca_trust_domain(&cert).ok_or_else(|| {
        bad(
            &format!("CA certificate {}", ca_cert.display()),
            "it carries no spiffe://<cluster-name> URI SAN (made before certificate identities); \
             make a new CA with `nodedb-cluster gen-certs`",
        )
    })?;
    let key_pair = rcgen::KeyPair::from_pem(&read_pem(ca_key)?)
        .map_err(|e| bad(&format!("cannot parse the CA key {}", ca_key.display()), e))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key_pair) != cert.public_key().raw {
        return Err(bad(
            &format!("CA key {}", ca_key.display()),
            format!(
                "it is not the key of the CA certificate {}",
                ca_cert.display()
            ),
        ));
    }
    let loaded = LoadedCa {
        trust_domain,
        subject_der: cert.subject().as_raw().to_vec(),
        not_after_unix: cert.validity().not_after.timestamp(),
        issuer: rcgen::Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(rcgen_err)?,
    };
    Ok(loaded)
}

/// The trust domain a CA of this generator carries as its URI SAN `spiffe://<cluster-name>`.
fn ca_trust_domain(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri
            .strip_prefix(SPIFFE_SCHEME)
            .filter(|td| check_trust_domain(td).is_ok())
            .map(str::to_string),
        _ => None,
    })
}

/// Generate a cluster CA in `dir`: `ca.pem` and `ca-key/ca.key` (folder 0700, files 0600),
/// valid [`CA_VALIDITY_DAYS`]. The CA carries the URI SAN `spiffe://<cluster_name>`, so leaves
/// issued later get the cluster name from it. An existing CA key is never replaced: a new CA
/// would lock every node issued by the old one out of the cluster.
pub fn generate_cluster_ca(dir: &Path, cluster_name: &str) -> Result<CaFiles, TransportError> {
    check_trust_domain(cluster_name).map_err(|e| bad("cluster name", e))?;
    let files = CaFiles::in_dir(dir);
    if files.key.exists() {
        return Err(bad(
            "cluster CA",
            format!(
                "{} already exists: a new CA would lock out every node issued by it; write \
                 into another folder, or remove it on purpose first",
                files.key.display()
            ),
        ));
    }
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("nodedb-cluster CA {cluster_name}"),
    );
    let uri = format!("{SPIFFE_SCHEME}{cluster_name}");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        uri.try_into().map_err(|e| bad("cluster name", e))?,
    )];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity(now_utc(), CA_VALIDITY_DAYS)?;
    let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    create_private_dir(dir)?;
    let key_dir = dir.join(CA_KEY_DIR);
    create_private_dir(&key_dir)?;
    // Ours alone: tighten it even if it existed.
    std::fs::set_permissions(&key_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| bad(&format!("cannot restrict {}", key_dir.display()), e))?;
    write_private_with(&files.key, &key.serialize_pem(), true)?;
    write_private(&files.cert, &cert.pem())?;
    Ok(files)
}

/// Issue a leaf signed by the CA in `ca_cert`/`ca_key`, valid as TLS server and client for
/// `days` (from an hour ago), carrying the URI SAN `spiffe://<cluster>/<role>/<name>` (the
/// cluster name is the CA's) plus `spec.sans` (IP addresses or DNS names). Writes
/// `<file_stem>.pem` and `<file_stem>.key` (0600) in `dir`.
pub fn issue_node_credentials(
    ca_cert: &Path,
    ca_key: &Path,
    spec: &LeafSpec,
    days: u32,
    dir: &Path,
) -> Result<NodeCredentialFiles, TransportError> {
    let ca = load_ca(ca_cert, ca_key)?;
    issue_leaf(&ca, ca_cert, spec, days, dir, now_utc())
}

fn issue_leaf(
    ca: &LoadedCa,
    ca_cert: &Path,
    spec: &LeafSpec,
    days: u32,
    dir: &Path,
    now: time::OffsetDateTime,
) -> Result<NodeCredentialFiles, TransportError> {
    check_file_stem(&spec.file_stem)?;
    if !(1..=LEAF_VALIDITY_DAYS_MAX).contains(&days) {
        return Err(bad(
            "validity",
            format!("{days} days; a leaf is valid 1..={LEAF_VALIDITY_DAYS_MAX} days"),
        ));
    }
    let identity = spec.identity(&ca.trust_domain)?;
    let mut params = rcgen::CertificateParams::new(spec.sans.clone()).map_err(rcgen_err)?;
    params.subject_alt_names.push(rcgen::SanType::URI(
        identity
            .uri()
            .try_into()
            .map_err(|e| bad("certificate identity", e))?,
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, spec.file_stem.clone());
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    (params.not_before, params.not_after) = validity(now, days)?;
    if params.not_after.unix_timestamp() > ca.not_after_unix {
        let ca_end = from_unix(ca.not_after_unix)?;
        return Err(bad(
            "validity",
            format!(
                "{days} days would outlive the CA (valid until {}); peers refuse a leaf whose \
                 CA expired: issue fewer days, or make a new CA",
                ca_end.date()
            ),
        ));
    }
    let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
    // The serial is derived from the key's SPKI: unique per leaf without a counter to keep.
    let pin = SpkiPin(Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into());
    params.serial_number = Some(serial_for_pin(&pin));
    let cert = params.signed_by(&key, &ca.issuer).map_err(rcgen_err)?;
    let files = NodeCredentialFiles {
        ca_cert: ca_cert.to_path_buf(),
        cert: dir.join(format!("{}.pem", spec.file_stem)),
        key: dir.join(format!("{}.key", spec.file_stem)),
    };
    write_private(&files.key, &key.serialize_pem())?;
    write_private(&files.cert, &cert.pem())?;
    Ok(files)
}

/// Serial number of a leaf this generator issues: 16 bytes of its SPKI pin, positive.
fn serial_for_pin(pin: &SpkiPin) -> rcgen::SerialNumber {
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&pin.0[..16]);
    serial[0] = (serial[0] & 0x7F) | 0x01;
    rcgen::SerialNumber::from_slice(&serial)
}

/// What [`revoke_node_credentials`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// The new CRL's number (the previous one's plus one; 1 for a first CRL).
    pub crl_number: u64,
    /// Certificates the CRL revokes, the earlier entries included.
    pub revoked_total: usize,
    /// Of `revoked`, those that were not revoked already.
    pub newly_revoked: usize,
}

/// Revoke the leaf certificates `revoked` (issued by the CA in `ca_cert`/`ca_key`) in the CRL at
/// `crl` (PEM), keeping every certificate an existing CRL there already revokes: the CRL is
/// re-signed with `crl_number` + 1 and `this_update` now, and replaced atomically. Nodes loading
/// it (`tls_crl_path`, reloaded on SIGHUP) refuse those leaves.
pub fn revoke_node_credentials(
    ca_cert: &Path,
    ca_key: &Path,
    revoked: &[PathBuf],
    crl: &Path,
) -> Result<CrlSummary, TransportError> {
    let ca = load_ca(ca_cert, ca_key)?;
    let ca_der = read_cert_der(ca_cert)?;
    let ca_x509 = parse_x509(&ca_der, ca_cert)?;
    let now = now_utc();
    let (mut entries, previous_number) = match std::fs::read(crl) {
        Ok(pem) => existing_crl_entries(&pem, crl, &ca, &ca_x509)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return Err(bad(&format!("cannot read {}", crl.display()), e)),
    };
    let mut newly_revoked = 0;
    for path in revoked {
        let der = read_cert_der(path)?;
        let cert = parse_x509(&der, path)?;
        if cert.issuer().as_raw() != ca.subject_der.as_slice()
            || cert.verify_signature(Some(ca_x509.public_key())).is_err()
        {
            return Err(bad(
                &format!("cannot revoke {}", path.display()),
                format!("it was not issued by the CA {}", ca_cert.display()),
            ));
        }
        let serial = cert.raw_serial();
        if entries.iter().any(|e| e.serial_number.as_ref() == serial) {
            continue;
        }
        entries.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(serial),
            revocation_time: now,
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
        newly_revoked += 1;
    }
    let crl_number = previous_number
        .checked_add(1)
        .ok_or_else(|| bad("CRL number", "the existing CRL's number is at its maximum"))?;
    let revoked_total = entries.len();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now,
        // Nothing fetches a newer CRL on a schedule (operators run `revoke` and SIGHUP), so the
        // CRL stays current as long as the CA that signs it.
        next_update: from_unix(ca.not_after_unix)?,
        crl_number: rcgen::SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let signed = params.signed_by(&ca.issuer).map_err(rcgen_err)?;
    replace_private(crl, &signed.pem().map_err(rcgen_err)?)?;
    Ok(CrlSummary {
        crl_number,
        revoked_total,
        newly_revoked,
    })
}

/// The entries and number of the CRL already at `path`, which must be signed by this CA.
fn existing_crl_entries(
    pem: &[u8],
    path: &Path,
    ca: &LoadedCa,
    ca_x509: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(Vec<rcgen::RevokedCertParams>, u64), TransportError> {
    let what = format!("existing CRL {}", path.display());
    let der = CertificateRevocationListDer::from_pem_slice(pem).map_err(|e| bad(&what, e))?;
    let parsed = parse_crl(&der).map_err(|e| bad(&what, e))?;
    if parsed.issuer().as_raw() != ca.subject_der.as_slice()
        || parsed.verify_signature(ca_x509.public_key()).is_err()
    {
        return Err(bad(
            &what,
            "it is not signed by this CA; refusing to replace it (give another --crl path)",
        ));
    }
    let number = match parsed.crl_number() {
        None => 0,
        Some(n) => {
            let bytes = n.to_bytes_be();
            if bytes.len() > 8 {
                return Err(bad(&what, "its CRL number does not fit in 64 bits"));
            }
            bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }
    };
    let entries = parsed
        .iter_revoked_certificates()
        .map(|entry| {
            Ok(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(entry.raw_serial()),
                revocation_time: from_unix(entry.revocation_date.timestamp())?,
                reason_code: entry.reason_code().and_then(|(_, code)| reason(code.0)),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, TransportError>>()?;
    Ok((entries, number))
}

fn parse_crl<'a>(
    der: &'a [u8],
) -> Result<x509_parser::revocation_list::CertificateRevocationList<'a>, String> {
    use x509_parser::prelude::FromDer;
    x509_parser::revocation_list::CertificateRevocationList::from_der(der)
        .map(|(_, crl)| crl)
        .map_err(|e| format!("cannot parse the CRL: {e}"))
}

/// RFC 5280 §5.3.1 reason codes, as rcgen names them.
fn reason(code: u8) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    Some(match code {
        0 => R::Unspecified,
        1 => R::KeyCompromise,
        2 => R::CaCompromise,
        3 => R::AffiliationChanged,
        4 => R::Superseded,
        5 => R::CessationOfOperation,
        6 => R::CertificateHold,
        8 => R::RemoveFromCrl,
        9 => R::PrivilegeWithdrawn,
        10 => R::AaCompromise,
        _ => return None,
    })
}

/// A certificate as a CRL names it: (issuer name DER, serial number).
pub(crate) type IssuerAndSerial = (Vec<u8>, Vec<u8>);

/// (issuer name DER, serial) of every certificate the CRLs (PEM texts) revoke: what a reload
/// checks live connections against.
pub(crate) fn revoked_serials(
    crl_pems: &[String],
) -> Result<std::collections::HashSet<IssuerAndSerial>, TransportError> {
    let mut revoked = std::collections::HashSet::new();
    for pem in crl_pems {
        for der in CertificateRevocationListDer::pem_slice_iter(pem.as_bytes()) {
            let der = der.map_err(|e| bad("cannot parse CRL PEM", e))?;
            let crl = parse_crl(&der).map_err(|e| bad("CRL", e))?;
            let issuer = crl.issuer().as_raw().to_vec();
            for entry in crl.iter_revoked_certificates() {
                revoked.insert((issuer.clone(), entry.raw_serial().to_vec()));
            }
        }
    }
    Ok(revoked)
}

/// (issuer name DER, serial) of a certificate (DER), to look up in [`revoked_serials`].
pub(crate) fn issuer_and_serial(cert_der: &[u8]) -> Option<IssuerAndSerial> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    Some((cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec()))
}

/// When the first certificate in the PEM file at `path` expires, in seconds since the Unix
/// epoch (the node exports the time left as a metric and warns ahead of it).
pub fn certificate_not_after(path: &Path) -> Result<i64, TransportError> {
    let der = read_cert_der(path)?;
    Ok(parse_x509(&der, path)?.validity().not_after.timestamp())
}

/// A CA plus one leaf per `(name, sans)` in `dir`, by `gen-certs --node`'s rule
/// ([`LeafSpec::from_name`]), valid [`LEAF_VALIDITY_DAYS_DEFAULT`] (tests and first deployments).
pub fn generate_cluster_credentials(
    dir: &Path,
    cluster_name: &str,
    nodes: &[(String, Vec<String>)],
) -> Result<Vec<NodeCredentialFiles>, TransportError> {
    let leaves = nodes
        .iter()
        .map(|(name, sans)| LeafSpec::from_name(name, sans.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    generate_cluster_credentials_with(dir, cluster_name, &leaves, LEAF_VALIDITY_DAYS_DEFAULT)
}

/// A CA plus one leaf per spec in `dir`, each valid `days`. Everything is checked (names unique,
/// identities well-formed, days in range) before the first file is written.
pub fn generate_cluster_credentials_with(
    dir: &Path,
    cluster_name: &str,
    leaves: &[LeafSpec],
    days: u32,
) -> Result<Vec<NodeCredentialFiles>, TransportError> {
    check_trust_domain(cluster_name).map_err(|e| bad("cluster name", e))?;
    if !(1..=LEAF_VALIDITY_DAYS_MAX).contains(&days) {
        return Err(bad(
            "validity",
            format!("{days} days; a leaf is valid 1..={LEAF_VALIDITY_DAYS_MAX} days"),
        ));
    }
    let mut stems = std::collections::HashSet::new();
    for leaf in leaves {
        check_file_stem(&leaf.file_stem)?;
        leaf.identity(cluster_name)?;
        if !stems.insert(leaf.file_stem.as_str()) {
            return Err(bad(
                "credential name",
                format!(
                    "{:?} is given twice (its files would overwrite each other)",
                    leaf.file_stem
                ),
            ));
        }
    }
    let ca_files = generate_cluster_ca(dir, cluster_name)?;
    let ca = load_ca(&ca_files.cert, &ca_files.key)?;
    let now = now_utc();
    leaves
        .iter()
        .map(|leaf| issue_leaf(&ca, &ca_files.cert, leaf, days, dir, now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_private_and_pinnable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("not/yet/there");
        let files = generate_cluster_credentials(
            &dir,
            "t",
            &[
                ("n1".into(), vec!["127.0.0.1".into()]),
                ("n2".into(), vec!["127.0.0.2".into()]),
            ],
        )
        .unwrap();
        for folder in [&dir, &dir.join(CA_KEY_DIR)] {
            let dir_mode = std::fs::metadata(folder).unwrap().permissions().mode() & 0o777;
            assert_eq!(dir_mode, 0o700, "created directories are owner-only");
        }
        assert!(
            !dir.join("ca.key").exists(),
            "the CA key is not beside the leaves"
        );
        for path in [
            &files[0].ca_cert,
            &files[0].cert,
            &files[0].key,
            &dir.join("ca-key/ca.key"),
        ] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let creds1 =
            Credentials::mtls_from_files(&files[0].ca_cert, &files[0].cert, &files[0].key).unwrap();
        let creds2 =
            Credentials::mtls_from_files(&files[1].ca_cert, &files[1].cert, &files[1].key).unwrap();
        let pin1 = creds1.spki_pin().unwrap().unwrap();
        assert_ne!(pin1, creds2.spki_pin().unwrap().unwrap());
        assert_eq!(
            creds1.spki_pin().unwrap(),
            Some(pin1),
            "pin is deterministic"
        );
        assert_eq!(Credentials::Insecure.spki_pin().unwrap(), None);
    }

    #[test]
    fn bad_pem_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        let err = Credentials::mtls_from_files(&junk, &junk, &junk).unwrap_err();
        assert!(matches!(err, TransportError::Credentials { .. }), "{err}");
        let missing = Credentials::mtls_from_files(&dir.path().join("nope"), &junk, &junk);
        assert!(missing.unwrap_err().to_string().contains("cannot read"));
    }

    fn x509_of(path: &Path) -> (Vec<String>, Vec<std::net::IpAddr>, i64, i64) {
        use x509_parser::extensions::GeneralName;
        let der = read_cert_der(path).unwrap();
        let cert = parse_x509(&der, path).unwrap();
        let (mut uris, mut ips) = (Vec::new(), Vec::new());
        for name in &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
        {
            match name {
                GeneralName::URI(uri) => uris.push(uri.to_string()),
                GeneralName::IPAddress(ip) => {
                    let octets: [u8; 4] = (*ip).try_into().unwrap();
                    ips.push(std::net::IpAddr::from(octets));
                }
                _ => {}
            }
        }
        let validity = cert.validity();
        (
            uris,
            ips,
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        )
    }

    #[test]
    fn leaves_carry_their_identity_and_a_bounded_validity() {
        let dir = tempfile::tempdir().unwrap();
        let leaves = [
            LeafSpec::from_name("n3", vec!["127.0.0.3".into()]).unwrap(),
            LeafSpec::from_name("app", vec!["127.0.0.1".into()]).unwrap(),
            LeafSpec::named(Role::Admin, "ops", vec!["127.0.0.1".into()]).unwrap(),
        ];
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let files =
            generate_cluster_credentials_with(dir.path(), "prod.eu-1", &leaves, 30).unwrap();
        let expected = [
            "spiffe://prod.eu-1/node/3",
            "spiffe://prod.eu-1/client/app",
            "spiffe://prod.eu-1/admin/ops",
        ];
        for (file, uri) in files.iter().zip(expected) {
            let (uris, ips, not_before, not_after) = x509_of(&file.cert);
            assert_eq!(uris, [uri]);
            assert_eq!(ips.len(), 1);
            assert!((not_before - (now - CLOCK_SKEW_ALLOWANCE_SECS)).abs() <= 5);
            assert!((not_after - (now + 30 * SECS_PER_DAY)).abs() <= 5);
            let parsed = Identity::from_cert_der(&read_cert_der(&file.cert).unwrap()).unwrap();
            assert_eq!(
                parsed.uri(),
                uri,
                "the identity parser reads what was issued"
            );
        }
        assert_eq!(files[0].cert, dir.path().join("n3.pem"));
        let (ca_uris, _, _, ca_not_after) = x509_of(&dir.path().join(CA_CERT_FILE));
        assert_eq!(ca_uris, ["spiffe://prod.eu-1"]);
        assert!((ca_not_after - (now + i64::from(CA_VALIDITY_DAYS) * SECS_PER_DAY)).abs() <= 5);
        assert_eq!(
            certificate_not_after(&files[0].cert).unwrap(),
            x509_of(&files[0].cert).3
        );
    }

    #[test]
    fn names_follow_the_node_rule_and_bad_input_is_refused() {
        let spec = |name: &str| LeafSpec::from_name(name, vec![]);
        assert_eq!(spec("n12").unwrap().role, Role::Node);
        assert_eq!(spec("n12").unwrap().name, "12");
        assert_eq!(spec("client").unwrap().role, Role::Client);
        assert_eq!(spec("node1").unwrap().role, Role::Client);
        assert!(LeafSpec::named(Role::Node, "web", vec![]).is_err());
        assert_eq!(
            LeafSpec::named(Role::Admin, "n1", vec![]).unwrap().role,
            Role::Admin
        );
        for bad_name in [
            "n0",
            "n01",
            "n99999999999999999999",
            "",
            ".hidden",
            "a/b",
            "ca",
            "a b",
        ] {
            assert!(spec(bad_name).is_err(), "{bad_name:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let n1 = || spec("n1").unwrap();
        for (cluster, leaves, days) in [
            ("Upper", vec![n1()], 1),
            ("", vec![n1()], 1),
            ("ok", vec![n1(), n1()], 1),
            ("ok", vec![n1()], 0),
            ("ok", vec![n1()], LEAF_VALIDITY_DAYS_MAX + 1),
        ] {
            let err = generate_cluster_credentials_with(dir.path(), cluster, &leaves, days);
            assert!(
                matches!(err, Err(TransportError::Credentials { .. })),
                "{cluster} {days}"
            );
        }
        assert!(
            !dir.path().join(CA_CERT_FILE).exists(),
            "nothing written before the checks"
        );
    }

    #[test]
    fn an_existing_ca_is_never_replaced_and_leaves_never_outlive_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_cluster_ca(dir.path(), "c").unwrap();
        let err = generate_cluster_ca(dir.path(), "c").unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let loaded = load_ca(&ca.cert, &ca.key).unwrap();
        assert_eq!(loaded.trust_domain, "c");
        let spec = LeafSpec::node(1, vec!["127.0.0.1".into()]).unwrap();
        let tomorrow = now_utc() + time::Duration::days(1);
        let err = issue_leaf(
            &loaded,
            &ca.cert,
            &spec,
            LEAF_VALIDITY_DAYS_MAX,
            dir.path(),
            tomorrow,
        )
        .unwrap_err();
        assert!(err.to_string().contains("outlive the CA"), "{err}");
        issue_node_credentials(&ca.cert, &ca.key, &spec, 365, dir.path()).unwrap();
    }

    #[test]
    fn revoking_keeps_earlier_entries_and_counts_up() {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<(String, Vec<String>)> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| (n.to_string(), vec!["127.0.0.1".to_string()]))
            .collect();
        let files = generate_cluster_credentials(dir.path(), "c", &nodes).unwrap();
        let ca = CaFiles::in_dir(dir.path());
        let crl = dir.path().join("crl.pem");
        let first = revoke_node_credentials(&ca.cert, &ca.key, &[files[0].cert.clone()], &crl);
        assert_eq!(
            first.unwrap(),
            CrlSummary {
                crl_number: 1,
                revoked_total: 1,
                newly_revoked: 1
            }
        );
        let again = [files[0].cert.clone(), files[1].cert.clone()];
        let second = revoke_node_credentials(&ca.cert, &ca.key, &again, &crl).unwrap();
        assert_eq!(
            second,
            CrlSummary {
                crl_number: 2,
                revoked_total: 2,
                newly_revoked: 1
            }
        );
        let revoked = revoked_serials(&[std::fs::read_to_string(&crl).unwrap()]).unwrap();
        let key = |i: usize| issuer_and_serial(&read_cert_der(&files[i].cert).unwrap()).unwrap();
        assert!(revoked.contains(&key(0)) && revoked.contains(&key(1)));
        assert!(!revoked.contains(&key(2)));
        let mode = std::fs::metadata(&crl).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A CRL or a leaf of another CA is refused, and the CRL is left as it was.
        let other = tempfile::tempdir().unwrap();
        let theirs = generate_cluster_credentials(other.path(), "c", &nodes).unwrap();
        let err = revoke_node_credentials(&ca.cert, &ca.key, &[theirs[0].cert.clone()], &crl);
        assert!(err.unwrap_err().to_string().contains("not issued by"));
        let other_ca = CaFiles::in_dir(other.path());
        let err = revoke_node_credentials(&other_ca.cert, &other_ca.key, &[], &crl).unwrap_err();
        assert!(err.to_string().contains("not signed by this CA"), "{err}");
        let Err(err) = load_ca(&ca.cert, &other_ca.key) else {
            panic!("another CA's key was accepted");
        };
        assert!(err.to_string().contains("not the key of the CA"), "{err}");
        std::fs::write(&crl, "garbage").unwrap();
        assert!(revoke_node_credentials(&ca.cert, &ca.key, &[], &crl).is_err());
    }
}
