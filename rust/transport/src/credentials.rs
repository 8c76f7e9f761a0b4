//! Explicit credentials (`Mtls` or `Insecure`, never a silent default) and SPKI pins: what a
//! transport is built from. The generator of a CA and leaves is `issue.rs`; revocation lists
//! are `crl.rs`.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::crl::{read_crl_files, revoked_serials};
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

pub(crate) fn bad(what: &str, err: impl fmt::Display) -> TransportError {
    TransportError::Credentials {
        reason: format!("{what}: {err}"),
    }
}

/// A PEM parse error in words an operator can act on. Why: the library's own text prints its
/// markers as byte lists ("missing section end marker: [67, 69, ...]") for a truncated file.
pub(crate) struct PemReason(pub pem::Error);

impl fmt::Display for PemReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            pem::Error::MissingSectionEnd { end_marker } => write!(
                f,
                "the file ends before its '-----END {}-----' line (cut short?)",
                String::from_utf8_lossy(end_marker).trim()
            ),
            pem::Error::IllegalSectionStart { line } => {
                write!(
                    f,
                    "a malformed BEGIN line: {:?}",
                    String::from_utf8_lossy(line)
                )
            }
            pem::Error::Base64Decode(e) => write!(f, "its base64 body is damaged ({e})"),
            pem::Error::NoItemsFound => write!(f, "no PEM section of the expected kind in it"),
            other => write!(f, "{other}"),
        }
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
                    .map_err(|e| bad(&format!("cannot parse {what} PEM"), PemReason(e)))?;
                if certs.is_empty() {
                    return Err(bad(what, "no CERTIFICATE block in the PEM"));
                }
                Ok(certs)
            };
        let ca = certs(ca_pem, "CA certificate")?;
        let chain = certs(cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad("cannot parse the private key PEM", PemReason(e)))?;
        let mut crls = Vec::new();
        for pem in crl_pems {
            let parsed = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("cannot parse CRL PEM", PemReason(e)))?;
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

pub(crate) fn read_pem(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot read {}", path.display()), e))
}

/// The first certificate (DER) of the PEM file at `path`.
pub(crate) fn read_cert_der(path: &Path) -> Result<CertificateDer<'static>, TransportError> {
    CertificateDer::from_pem_slice(read_pem(path)?.as_bytes()).map_err(|e| {
        bad(
            &format!("cannot parse the certificate in {}", path.display()),
            PemReason(e),
        )
    })
}

pub(crate) fn parse_x509<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_cut_short_certificate_is_named_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut.pem");
        std::fs::write(&cut, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let err = read_cert_der(&cut).unwrap_err().to_string();
        assert!(
            err.contains("ends before its '-----END CERTIFICATE-----' line"),
            "{err}"
        );
        assert!(!err.contains("[45, 45"), "{err}");
    }
}
