//! Renewal of a leaf: a new certificate for the key it already has.
//!
//! Peers pin a node's key: the topology records the SPKI pin its join proved, and a node that
//! presents another key is refused (`unknown_sender`), so a node given a fresh key pair is cut
//! off from its cluster. Renewal keeps the key, the identity and the name, and gives a new
//! validity; it keeps the addresses too unless given new ones (a node moved to another host
//! address: peers verify the address they dial against the certificate). The serial is
//! derived from the key, so it stays too: revoking either certificate revokes both, which is
//! right for the one thing that gets compromised, a key.

use std::net::IpAddr;
use std::path::Path;

use x509_parser::extensions::GeneralName;

use crate::credentials::{bad, parse_x509, read_cert_der, read_pem};
use crate::error::TransportError;
use crate::identity::Identity;
use crate::issue::{
    issued_by, load_ca, now_utc, replace_private, sign_leaf, LeafSpec, NodeCredentialFiles,
};

/// Renew the certificate at `cert` (PEM) over its key at `key`, signed by the CA in
/// `ca_cert`/`ca_key`, valid `days` from now. The certificate file is replaced atomically;
/// the key file is only read. Refused, naming the file: a certificate of another cluster or
/// CA, a key that is not the certificate's, a certificate without an identity. `sans`: the
/// addresses (IPs or DNS names) the new certificate names instead of the old one's.
pub fn renew_node_credentials(
    ca_cert: &Path,
    ca_key: &Path,
    cert: &Path,
    key: &Path,
    days: u32,
    sans: Option<Vec<String>>,
) -> Result<NodeCredentialFiles, TransportError> {
    let ca = load_ca(ca_cert, ca_key)?;
    let ca_der = read_cert_der(ca_cert)?;
    let ca_x509 = parse_x509(&ca_der, ca_cert)?;
    let der = read_cert_der(cert)?;
    let old = parse_x509(&der, cert)?;
    let what = format!("certificate {}", cert.display());
    let identity = Identity::from_cert_der(&der).map_err(|reason| bad(&what, reason))?;
    if identity.trust_domain != ca.trust_domain || !issued_by(&old, &ca_x509) {
        return Err(bad(
            &what,
            format!(
                "it was not issued by the CA {} (cluster {:?}; the certificate is {})",
                ca_cert.display(),
                ca.trust_domain,
                identity.uri()
            ),
        ));
    }
    let key_pair = rcgen::KeyPair::from_pem(&read_pem(key)?)
        .map_err(|e| bad(&format!("cannot parse the key {}", key.display()), e))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key_pair) != old.public_key().raw {
        return Err(bad(
            &format!("key {}", key.display()),
            format!("it is not the key of {}", cert.display()),
        ));
    }
    let sans = match sans {
        Some(sans) if sans.is_empty() => {
            return Err(bad(
                &what,
                "a renewal with new addresses needs at least one",
            ))
        }
        Some(sans) => sans,
        None => addresses(&old).map_err(|reason| bad(&what, reason))?,
    };
    let spec = LeafSpec {
        role: identity.role,
        name: identity.name,
        file_stem: common_name(&old).unwrap_or_else(|| file_stem(cert)),
        sans,
    };
    let pem = sign_leaf(&ca, &spec, days, &key_pair, now_utc())?;
    replace_private(cert, &pem)?;
    Ok(NodeCredentialFiles {
        ca_cert: ca_cert.to_path_buf(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    })
}

/// The IP addresses and DNS names the certificate in `path` (PEM) names: a peer dialling
/// an address the certificate does not name refuses it.
pub fn certificate_addresses(path: &Path) -> Result<Vec<String>, TransportError> {
    let der = read_cert_der(path)?;
    addresses(&parse_x509(&der, path)?)
        .map_err(|reason| bad(&format!("certificate {}", path.display()), reason))
}

/// The IP addresses and DNS names a peer's verified certificate (DER) names; empty when it
/// cannot be read (such a certificate has no identity either, and may send nothing).
pub fn certificate_der_addresses(der: &[u8]) -> Vec<String> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, cert)| addresses(&cert).ok())
        .unwrap_or_default()
}

/// The certificate's IP and DNS names, as `sign_leaf` takes them (its identity URI apart).
fn addresses(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("malformed subjectAltName extension: {e}"))?;
    let mut out = Vec::new();
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => out.push((*dns).to_string()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                    _ => None,
                };
                out.push(
                    ip.ok_or_else(|| format!("an IP address SAN of {} bytes", bytes.len()))?
                        .to_string(),
                );
            }
            _ => {}
        }
    }
    Ok(out)
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::credentials::Credentials;
    use crate::issue::{certificate_not_after, generate_cluster_credentials_with, CaFiles};

    fn cluster(dir: &Path, name: &str) -> Vec<NodeCredentialFiles> {
        let leaves = [
            LeafSpec::node(3, vec!["127.0.0.3".into(), "db3.example".into()]).unwrap(),
            LeafSpec::node(4, vec!["::1".into()]).unwrap(),
        ];
        generate_cluster_credentials_with(dir, name, &leaves, 30).unwrap()
    }

    fn pin(files: &NodeCredentialFiles) -> Vec<u8> {
        let creds = Credentials::mtls_from_files(&files.ca_cert, &files.cert, &files.key).unwrap();
        creds.spki_pin().unwrap().unwrap().0.to_vec()
    }

    #[test]
    fn a_renewed_leaf_keeps_its_key_identity_and_addresses_and_gets_the_new_validity() {
        let dir = tempfile::tempdir().unwrap();
        let files = cluster(dir.path(), "c");
        let ca = CaFiles::in_dir(dir.path());
        let (pin_before, key_before) = (pin(&files[0]), std::fs::read(&files[0].key).unwrap());
        let old_der = read_cert_der(&files[0].cert).unwrap();
        let old_addrs = addresses(&parse_x509(&old_der, &files[0].cert).unwrap()).unwrap();
        let before = certificate_not_after(&files[0].cert).unwrap();
        let renewed =
            renew_node_credentials(&ca.cert, &ca.key, &files[0].cert, &files[0].key, 400, None)
                .unwrap();
        assert_eq!(renewed.cert, files[0].cert, "renewed in place");
        assert_eq!(
            pin(&renewed),
            pin_before,
            "the pin peers hold still matches"
        );
        assert_eq!(
            std::fs::read(&renewed.key).unwrap(),
            key_before,
            "key untouched"
        );
        let der = read_cert_der(&renewed.cert).unwrap();
        assert_ne!(der, old_der, "a new certificate");
        let identity = Identity::from_cert_der(&der).unwrap();
        assert_eq!(identity.uri(), "spiffe://c/node/3");
        let cert = parse_x509(&der, &renewed.cert).unwrap();
        assert_eq!(addresses(&cert).unwrap(), old_addrs);
        assert_eq!(old_addrs, ["127.0.0.3", "db3.example"]);
        assert_eq!(common_name(&cert).as_deref(), Some("n3"));
        let after = certificate_not_after(&renewed.cert).unwrap();
        assert!(after - before > 360 * 86_400, "{before} -> {after}");
        let v6 = renew_node_credentials(&ca.cert, &ca.key, &files[1].cert, &files[1].key, 1, None);
        let der = read_cert_der(&v6.unwrap().cert).unwrap();
        assert_eq!(
            addresses(&parse_x509(&der, Path::new("n4")).unwrap()).unwrap(),
            ["::1"]
        );
    }

    #[test]
    fn a_leaf_renewed_with_new_addresses_names_them_over_the_same_key_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let files = cluster(dir.path(), "c");
        let ca = CaFiles::in_dir(dir.path());
        let pin_before = pin(&files[0]);
        let moved = Some(vec!["10.1.2.3".to_string(), "db3.example".to_string()]);
        let renewed =
            renew_node_credentials(&ca.cert, &ca.key, &files[0].cert, &files[0].key, 30, moved)
                .unwrap();
        assert_eq!(
            pin(&renewed),
            pin_before,
            "the pin peers hold still matches"
        );
        assert_eq!(
            certificate_addresses(&renewed.cert).unwrap(),
            ["10.1.2.3", "db3.example"]
        );
        let der = read_cert_der(&renewed.cert).unwrap();
        assert_eq!(
            Identity::from_cert_der(&der).unwrap().uri(),
            "spiffe://c/node/3"
        );
        let before = std::fs::read(&renewed.cert).unwrap();
        let none = renew_node_credentials(
            &ca.cert,
            &ca.key,
            &files[0].cert,
            &files[0].key,
            30,
            Some(vec![]),
        );
        assert!(none.unwrap_err().to_string().contains("needs at least one"));
        assert_eq!(
            std::fs::read(&renewed.cert).unwrap(),
            before,
            "nothing written"
        );
    }

    #[test]
    fn another_key_or_another_clusters_certificate_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = cluster(dir.path(), "c");
        let other_dir = tempfile::tempdir().unwrap();
        let other = cluster(other_dir.path(), "other");
        let ca = CaFiles::in_dir(dir.path());
        let cases: [(&PathBuf, &PathBuf, &str); 3] = [
            (&files[0].cert, &files[1].key, "is not the key of"),
            (&other[0].cert, &other[0].key, "was not issued by the CA"),
            (&files[0].cert, &files[0].cert, "cannot parse the key"),
        ];
        for (cert, key, words) in cases {
            let before = std::fs::read(cert).unwrap();
            let err = renew_node_credentials(&ca.cert, &ca.key, cert, key, 30, None).unwrap_err();
            assert!(err.to_string().contains(words), "{err}");
            assert_eq!(std::fs::read(cert).unwrap(), before, "{}", cert.display());
        }
        let same_name = cluster(other_dir.path().join("c").as_path(), "c");
        let err = renew_node_credentials(
            &ca.cert,
            &ca.key,
            &same_name[0].cert,
            &same_name[0].key,
            30,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("was not issued by the CA"),
            "another CA of the same name: {err}"
        );
        let days =
            renew_node_credentials(&ca.cert, &ca.key, &files[0].cert, &files[0].key, 0, None);
        assert!(days.unwrap_err().to_string().contains("validity"));
    }
}
