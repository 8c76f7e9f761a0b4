//! The QUIC side of a transport's configuration: the endpoint's keys (stable across restarts
//! under mTLS) and each side's connection limits.

use std::sync::Arc;

use quinn::VarInt;

use crate::config::TransportConfig;
use crate::error::TransportError;

/// With a seed (mTLS: derived from the node key), the stateless-reset key and the connection-id
/// validation key survive a restart, so the restarted node answers its peers' stale packets with
/// a stateless reset they accept: they drop the dead connection at once and redial.
pub(super) fn endpoint_config(seed: Option<[u8; 32]>) -> quinn::EndpointConfig {
    let Some(seed) = seed else {
        return quinn::EndpointConfig::default();
    };
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&seed[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    config
}

/// The QUIC limits of one side; `streams_max` is how many streams of each direction the peer
/// may open at once.
pub(super) fn quic_transport_config(
    config: &TransportConfig,
    streams_max: u32,
) -> Result<quinn::TransportConfig, TransportError> {
    let mut tc = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|e| TransportError::Config {
            reason: format!("idle_timeout: {e}"),
        })?;
    tc.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .initial_rtt(config.initial_rtt)
        .max_concurrent_bidi_streams(VarInt::from_u32(streams_max))
        .max_concurrent_uni_streams(VarInt::from_u32(streams_max))
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window_bytes))
        .receive_window(VarInt::from_u32(config.connection_receive_window_bytes))
        .send_window(config.send_window_bytes)
        .mtu_discovery_config(Some({
            let mut mtud = quinn::MtuDiscoveryConfig::default();
            mtud.upper_bound(config.udp_payload_bytes_max);
            mtud
        }));
    Ok(tc)
}
