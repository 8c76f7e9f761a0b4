//! Certificate revocation lists: `revoke` adds leaves to the cluster CRL (keeping earlier
//! entries), and what a node checks its live connections against when it reloads one.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;

use crate::credentials::{bad, parse_x509, read_cert_der, read_pem, PemReason};
use crate::error::TransportError;
use crate::issue::{from_unix, issued_by, load_ca, now_utc, rcgen_err, replace_private, LoadedCa};

/// The PEM texts of CRL files (e.g. `tls_crl_path`), for [`Credentials::with_crl_pems`].
pub fn read_crl_files(paths: &[PathBuf]) -> Result<Vec<String>, TransportError> {
    paths.iter().map(|p| read_pem(p)).collect()
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
        if !issued_by(&cert, &ca_x509) {
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
    let der =
        CertificateRevocationListDer::from_pem_slice(pem).map_err(|e| bad(&what, PemReason(e)))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::issue::{generate_cluster_credentials, CaFiles};

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
