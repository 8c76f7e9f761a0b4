//! Explicit credentials (`Mtls` or `Insecure`, never a silent default), SPKI pins, and a generator
//! (rcgen) for a cluster CA and node leaves, written with 0600 permissions.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::error::TransportError;

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
            crl_pems: crls.iter().map(|p| read_pem(p)).collect::<Result<_, _>>()?,
        };
        creds.material()?;
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

/// Files written by the generator.
#[derive(Debug, Clone)]
pub struct NodeCredentialFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Write `contents` to `path` readable by the owner only (0600), even if the file existed.
/// Missing parent directories are created owner-only (0700).
fn write_private(path: &Path, contents: &str) -> Result<(), TransportError> {
    let fail = |e: std::io::Error| bad(&format!("cannot write {}", path.display()), e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(fail)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    file.write_all(contents.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    Ok(())
}

fn rcgen_err(e: rcgen::Error) -> TransportError {
    bad("certificate generation failed", e)
}

fn read_pem(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot read {}", path.display()), e))
}

/// The CA that signs leaves and CRLs, from its certificate and key files.
fn load_ca(
    ca_cert: &Path,
    ca_key: &Path,
) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, TransportError> {
    let key_pair = rcgen::KeyPair::from_pem(&read_pem(ca_key)?).map_err(rcgen_err)?;
    rcgen::Issuer::from_ca_cert_pem(&read_pem(ca_cert)?, key_pair).map_err(rcgen_err)
}

/// Generate a cluster CA (`ca.pem`, `ca.key`) in `dir`.
pub fn generate_cluster_ca(
    dir: &Path,
    cluster_name: &str,
) -> Result<(PathBuf, PathBuf), TransportError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("nodedb-cluster CA {cluster_name}"),
    );
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    write_private(&cert_path, &cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// Issue a node leaf signed by the CA in `ca_cert`/`ca_key`, valid as TLS server and client,
/// with `sans` (IP addresses or DNS names) as subject alternative names. Writes
/// `<node_name>.pem` and `<node_name>.key` in `dir`.
pub fn issue_node_credentials(
    ca_cert: &Path,
    ca_key: &Path,
    node_name: &str,
    sans: &[String],
    dir: &Path,
) -> Result<NodeCredentialFiles, TransportError> {
    let issuer = load_ca(ca_cert, ca_key)?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(rcgen_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_name.to_string());
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
    // The serial is derived from the key's SPKI, so a CRL can name a certificate from its file
    // alone (see `revoke_node_credentials`).
    let pin = SpkiPin(Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into());
    params.serial_number = Some(serial_for_pin(&pin));
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_err)?;
    if node_name.is_empty() || node_name.contains(['/', '\\', '\0']) || node_name.starts_with('.') {
        return Err(bad(
            "node name",
            format!("{node_name:?} is not a plain file name"),
        ));
    }
    let files = NodeCredentialFiles {
        ca_cert: ca_cert.to_path_buf(),
        cert: dir.join(format!("{node_name}.pem")),
        key: dir.join(format!("{node_name}.key")),
    };
    write_private(&files.cert, &cert.pem())?;
    write_private(&files.key, &key.serialize_pem())?;
    Ok(files)
}

/// Serial number of a leaf this generator issues: 16 bytes of its SPKI pin, positive.
fn serial_for_pin(pin: &SpkiPin) -> rcgen::SerialNumber {
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&pin.0[..16]);
    serial[0] = (serial[0] & 0x7F) | 0x01;
    rcgen::SerialNumber::from_slice(&serial)
}

/// Write a CRL signed by the CA that revokes the leaves in `revoked` (certificates issued by
/// [`issue_node_credentials`]) to `out` (PEM). Peers loading it refuse those leaves.
pub fn revoke_node_credentials(
    ca_cert: &Path,
    ca_key: &Path,
    revoked: &[PathBuf],
    out: &Path,
) -> Result<(), TransportError> {
    let issuer = load_ca(ca_cert, ca_key)?;
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for path in revoked {
        let pem = read_pem(path)?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad(&format!("cannot parse {}", path.display()), e))?;
        revoked_certs.push(rcgen::RevokedCertParams {
            serial_number: serial_for_pin(&spki_pin_of_cert(&der)?),
            revocation_time: rcgen::date_time_ymd(2020, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer).map_err(rcgen_err)?;
    write_private(out, &crl.pem().map_err(rcgen_err)?)
}

/// A CA plus one leaf per `(node_name, sans)` in `dir` (tests and first deployments).
pub fn generate_cluster_credentials(
    dir: &Path,
    cluster_name: &str,
    nodes: &[(String, Vec<String>)],
) -> Result<Vec<NodeCredentialFiles>, TransportError> {
    let (ca_cert, ca_key) = generate_cluster_ca(dir, cluster_name)?;
    nodes
        .iter()
        .map(|(name, sans)| issue_node_credentials(&ca_cert, &ca_key, name, sans, dir))
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
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "created directories are owner-only");
        for path in [
            &files[0].ca_cert,
            &files[0].cert,
            &files[0].key,
            &dir.join("ca.key"),
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
}
