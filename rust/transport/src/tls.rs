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
                .map_err(|e| tls_err("node certificate/key rejected", e))?;
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
                .map_err(|e| tls_err("node certificate/key rejected", e))?;
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
    let (code, reason) = match err {
        quinn::ConnectionError::TransportError(te) => (u64::from(te.code), te.reason.clone()),
        quinn::ConnectionError::ConnectionClosed(close) => (
            u64::from(close.error_code),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        _ => return None,
    };
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    let alert = code - 0x100;
    let side = if matches!(err, quinn::ConnectionError::TransportError(_)) {
        "we refused the peer"
    } else {
        "the peer refused us"
    };
    let mut text = format!("{side}: {} (alert {alert})", alert_meaning(alert));
    if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        text.push_str(
            "; the peer's certificate is not issued by this cluster's CA (another CA, or an \
             insecure peer)",
        );
    }
    if reason.contains("Revoked") {
        text.push_str("; the peer's certificate is revoked by the cluster CRL");
    }
    if !reason.is_empty() {
        text.push_str(&format!(" [{reason}]"));
    }
    Some(text)
}
