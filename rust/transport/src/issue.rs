//! The credential generator (rcgen): a cluster CA and leaves that carry their identity
//! (`spiffe://<cluster>/<role>/<name>`, see `identity.rs`), with bounded validity. Key files are
//! 0600 and folders 0700; the CA key lives in a folder of its own that no node needs.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nodedb_wire::Role;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::credentials::{bad, parse_x509, read_cert_der, read_pem, PemReason, SpkiPin};
use crate::error::TransportError;
use crate::identity::{check_trust_domain, Identity};

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

    /// A leaf by role name: `node`, `admin`, `client`, or `auto` ([`LeafSpec::from_name`]'s
    /// rule, what `gen-certs --node` does).
    pub fn with_role(
        role: &str,
        name: &str,
        sans: Vec<String>,
    ) -> Result<LeafSpec, TransportError> {
        if role == "auto" {
            return LeafSpec::from_name(name, sans);
        }
        let role = Role::from_name(role).ok_or_else(|| {
            bad(
                "role",
                format!("unknown role {role:?} (auto, node, admin or client)"),
            )
        })?;
        LeafSpec::named(role, name, sans)
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
pub(crate) fn replace_private(path: &Path, contents: &str) -> Result<(), TransportError> {
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

pub(crate) fn rcgen_err(e: rcgen::Error) -> TransportError {
    bad("certificate generation failed", e)
}

/// The current time in whole seconds (certificates carry seconds).
pub(crate) fn now_utc() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

pub(crate) fn from_unix(secs: i64) -> Result<time::OffsetDateTime, TransportError> {
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
pub(crate) struct LoadedCa {
    pub(crate) issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) trust_domain: String,
    /// The CA's subject name (DER), which leaves and CRLs it issued name as their issuer.
    pub(crate) subject_der: Vec<u8>,
    pub(crate) not_after_unix: i64,
}

pub(crate) fn load_ca(ca_cert: &Path, ca_key: &Path) -> Result<LoadedCa, TransportError> {
    let cert_pem = read_pem(ca_cert)?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
        bad(
            &format!("cannot parse the CA certificate {}", ca_cert.display()),
            PemReason(e),
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

/// Whether the CA `ca` (its certificate) issued `cert`: the issuer's name and the signature.
pub(crate) fn issued_by(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    ca: &x509_parser::certificate::X509Certificate<'_>,
) -> bool {
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
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
    let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
    let cert = sign_leaf(ca, spec, days, &key, now)?;
    let files = NodeCredentialFiles {
        ca_cert: ca_cert.to_path_buf(),
        cert: dir.join(format!("{}.pem", spec.file_stem)),
        key: dir.join(format!("{}.key", spec.file_stem)),
    };
    write_private(&files.key, &key.serialize_pem())?;
    write_private(&files.cert, &cert)?;
    Ok(files)
}

/// The certificate (PEM) of `spec` over `key`, signed by `ca`, valid `days` from `now` (an
/// hour early) and never past the CA.
pub(crate) fn sign_leaf(
    ca: &LoadedCa,
    spec: &LeafSpec,
    days: u32,
    key: &rcgen::KeyPair,
    now: time::OffsetDateTime,
) -> Result<String, TransportError> {
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
    // The serial is derived from the key's SPKI: unique per key without a counter to keep (a
    // renewed certificate keeps its key, so its serial too: revoking one revokes both).
    let pin = SpkiPin(Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(key)).into());
    params.serial_number = Some(serial_for_pin(&pin));
    let cert = params.signed_by(key, &ca.issuer).map_err(rcgen_err)?;
    Ok(cert.pem())
}

/// Serial number of a leaf this generator issues: 16 bytes of its SPKI pin, positive.
fn serial_for_pin(pin: &SpkiPin) -> rcgen::SerialNumber {
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&pin.0[..16]);
    serial[0] = (serial[0] & 0x7F) | 0x01;
    rcgen::SerialNumber::from_slice(&serial)
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
    use crate::credentials::Credentials;

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
}
