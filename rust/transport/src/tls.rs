//! rustls (ring provider, TLS 1.3 only) configurations for quinn, and the classification of
//! handshake failures into messages that say what went wrong.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::credentials::Credentials;
use crate::error::TransportError;
use crate::ALPN;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str, err: impl std::fmt::Display) -> TransportError {
    TransportError::Credentials {
        reason: format!("{what}: {err}"),
    }
}

/// Server and client crypto for `credentials`, with the QUIC limits of each side.
pub(crate) fn build(
    credentials: &Credentials,
    quic: &QuicConfigs,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let provider = provider();
    let (server, client) = match credentials.material()? {
        Some(material) => {
            let mut roots = RootCertStore::empty();
            for ca in &material.ca {
                roots
                    .add(ca.clone())
                    .map_err(|e| tls_err("CA certificate rejected", e))?;
            }
            let roots = Arc::new(roots);
            let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .with_crls(material.crls.clone())
            .build()
            .map_err(|e| tls_err("cannot build client verifier", e))?;
            let server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| tls_err("TLS 1.3", e))?
                .with_client_cert_verifier(client_verifier)
                .with_single_cert(material.chain.clone(), material.key.clone_key())
                .map_err(|e| tls_err("the certificate and its private key were refused (a key of another certificate?)", e))?;
            let client = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| tls_err("TLS 1.3", e))?
                .with_webpki_verifier(
                    rustls::client::WebPkiServerVerifier::builder_with_provider(
                        roots,
                        provider.clone(),
                    )
                    .with_crls(material.crls)
                    .build()
                    .map_err(|e| tls_err("cannot build server verifier", e))?,
                )
                .with_client_auth_cert(material.chain, material.key)
                .map_err(|e| tls_err("the certificate and its private key were refused (a key of another certificate?)", e))?;
            (server, client)
        }
        None => {
            let throwaway = rcgen::generate_simple_self_signed(vec!["nodedb-insecure".to_string()])
                .map_err(|e| tls_err("cannot generate the insecure throwaway certificate", e))?;
            let key = PrivateKeyDer::Pkcs8(throwaway.signing_key.serialize_der().into());
            let server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| tls_err("TLS 1.3", e))?
                .with_no_client_auth()
                .with_single_cert(vec![throwaway.cert.der().clone()], key)
                .map_err(|e| tls_err("throwaway certificate rejected", e))?;
            let client = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| tls_err("TLS 1.3", e))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
                .with_no_client_auth();
            (server, client)
        }
    };
    let (mut server, mut client) = (server, client);
    server.alpn_protocols = vec![ALPN.to_vec()];
    client.alpn_protocols = vec![ALPN.to_vec()];
    let server =
        QuicServerConfig::try_from(server).map_err(|e| tls_err("QUIC server config", e))?;
    let client =
        QuicClientConfig::try_from(client).map_err(|e| tls_err("QUIC client config", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(Arc::clone(&quic.server));
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(Arc::clone(&quic.client));
    Ok((server, client))
}

/// The QUIC limits of inbound connections (streams start at the client allowance) and of
/// outbound ones.
pub(crate) struct QuicConfigs {
    pub server: Arc<quinn::TransportConfig>,
    pub client: Arc<quinn::TransportConfig>,
}

/// Insecure mode only: accepts any server certificate (signatures are still checked so the
/// handshake is well-formed).
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Words for a TLS alert number (RFC 8446 §6), with what it usually means in this cluster.
fn alert_meaning(alert: u64) -> &'static str {
    match alert {
        40 => "handshake failure",
        42 | 43 | 46 => "bad certificate: the peer does not accept our certificate (another CA?)",
        44 => "certificate revoked: the cluster CRL revokes the certificate",
        45 => "certificate expired",
        51 => "decrypt error: a signature did not verify",
        48 => "unknown CA: the certificate is not issued by the cluster CA",
        116 => {
            "certificate required: the peer runs mTLS and this node presented no client \
             certificate (is this node insecure?)"
        }
        120 => "no application protocol: the peer does not speak nodedb-cluster/1",
        _ => "TLS alert",
    }
}

/// If `err` is a handshake/TLS failure, a message that says so; `None` for other losses.
pub(crate) fn describe_tls_failure(err: &quinn::ConnectionError) -> Option<String> {
    match err {
        quinn::ConnectionError::TransportError(te) => {
            describe_alert(Side::WeRefused, u64::from(te.code), &te.reason)
        }
        quinn::ConnectionError::ConnectionClosed(close) => describe_alert(
            Side::PeerRefused,
            u64::from(close.error_code),
            &String::from_utf8_lossy(&close.reason),
        ),
        _ => None,
    }
}

/// Which end of a handshake refused it: whose certificate `reason` speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Our TLS stack refused: `reason` is about the peer's certificate.
    WeRefused,
    /// The peer closed with an alert: `reason` is its verdict on *our* certificate.
    PeerRefused,
}

/// Words for a QUIC close `code` carrying a TLS alert (0x100 + alert), `None` for other codes.
fn describe_alert(side: Side, code: u64, reason: &str) -> Option<String> {
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    let alert = code - 0x100;
    let (who, whose) = match side {
        Side::WeRefused => ("we refused the peer", "the peer's certificate"),
        Side::PeerRefused => ("the peer refused us", "our certificate"),
    };
    let mut text = format!("{who}: {} (alert {alert})", alert_meaning(alert));
    if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        text.push_str(&format!(
            "; {whose} is not issued by the CA {} (another CA, or an insecure node)",
            match side {
                Side::WeRefused => "we trust",
                Side::PeerRefused => "the peer trusts",
            }
        ));
    }
    if reason.contains("Revoked") {
        text.push_str(&format!("; {whose} is revoked by the cluster CRL"));
    }
    if reason.contains("Expired") {
        text.push_str(&format!("; {whose} has expired"));
    }
    if !reason.is_empty() {
        text.push_str(&format!(" [{reason}]"));
    }
    Some(text)
}

#[cfg(test)]
mod alert_tests {
    use super::{describe_alert, Side};

    const BAD_SIGNATURE: &str = "invalid peer certificate: BadSignature";

    #[test]
    fn another_ca_is_named_from_the_side_that_saw_it() {
        let ours = describe_alert(Side::WeRefused, 0x100 + 51, BAD_SIGNATURE).unwrap();
        assert!(
            ours.starts_with("we refused the peer: decrypt error"),
            "{ours}"
        );
        assert!(ours.contains("the peer's certificate is not issued by the CA we trust"));
        let theirs = describe_alert(Side::PeerRefused, 0x100 + 51, BAD_SIGNATURE).unwrap();
        assert!(theirs.starts_with("the peer refused us"), "{theirs}");
        assert!(theirs.contains("our certificate is not issued by the CA the peer trusts"));
        assert!(!theirs.contains("the peer's certificate"), "{theirs}");
    }

    #[test]
    fn revoked_and_expired_say_whose() {
        let revoked = describe_alert(
            Side::PeerRefused,
            0x100 + 44,
            "invalid peer certificate: Revoked",
        )
        .unwrap();
        assert!(revoked.contains("our certificate is revoked"), "{revoked}");
        let expired = describe_alert(
            Side::WeRefused,
            0x100 + 45,
            "invalid peer certificate: Expired",
        )
        .unwrap();
        assert!(
            expired.contains("the peer's certificate has expired"),
            "{expired}"
        );
    }

    #[test]
    fn codes_outside_the_tls_range_are_not_handshake_failures() {
        assert_eq!(
            describe_alert(Side::WeRefused, 0x0a, "protocol violation"),
            None
        );
        assert_eq!(describe_alert(Side::PeerRefused, 0x200, ""), None);
        assert_eq!(
            describe_alert(Side::PeerRefused, 0x100 + 120, "").unwrap(),
            "the peer refused us: no application protocol: the peer does not speak \
             nodedb-cluster/1 (alert 120)"
        );
    }
}
