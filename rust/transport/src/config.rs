//! Every limit of the transport, each with its reason. Durations are `Duration`, sizes end in
//! `_bytes`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Bound on establishing a connection (handshake included). docs/JOIN.md default rpc timeout.
    pub connect_timeout: Duration,
    /// Bound on a whole request/response (connect, write, peer handler, read); also bounds how
    /// long an inbound handler may take before the peer gets an Error reply. A frame's payload
    /// (inbound, and a one-way frame sent) is given `frame_bytes_per_s_min` on top; so is
    /// writing a reply to an inbound request (a peer that does not read its replies has its
    /// stream reset with `0x302` then, instead of holding the reply for as long as it likes).
    pub rpc_timeout: Duration,
    /// The slowest rate a frame's payload may move at between nodes: an inbound frame of n
    /// bytes from a node must arrive within `rpc_timeout` plus n / this (its header within
    /// `rpc_timeout`), and a one-way frame sent is given as long. Without it a large frame over
    /// a slow link (a 60 MiB append over a share of 200 Mbit/s) was reset by its receiver at
    /// `rpc_timeout`, and raft sent it again, for good. A node's connection has a budget of its
    /// own; every other certificate's frame still has `rpc_timeout` alone (they share one
    /// budget, which a slow stream must not hold for long). 2 MiB/s: a 64 MiB frame 32 s more.
    pub frame_bytes_per_s_min: u64,
    /// Keep-alive PING interval: keeps NATs open and lets the idle timer detect a dead peer.
    pub keep_alive_interval: Duration,
    /// A connection with no packet from the peer for this long is closed and replaced on next
    /// use. Must exceed `keep_alive_interval` by a few round trips.
    pub idle_timeout: Duration,
    /// RTT assumed before the first sample (quinn's default is 333 ms, sized for the internet).
    /// It sets how often a handshake is retried: a peer that is still starting (its port not
    /// bound yet) is reached ~3x sooner with 100 ms, which cluster formation relies on when
    /// all nodes start at once. Only affects timers until the first RTT sample.
    pub initial_rtt: Duration,
    /// Concurrent requests a peer may have open on one connection; more wait for flow control.
    pub streams_per_connection_max: u32,
    /// The same for a connection of a certificate that is not a node's (client, admin,
    /// unidentified): every inbound connection starts with this many, and a node's is raised
    /// to `streams_per_connection_max` once its certificate is checked. A stream costs its
    /// node ~2 KiB while its frame is awaited (measured: 4,000 stalled streams, 3.7 KiB each
    /// for both ends), so 1024 connections x 1024 streams could pin ~2 GiB; at 128, ~256 MiB.
    /// A client's calls beyond it wait for a stream (its KV core keeps a few per lane).
    pub client_streams_per_connection_max: u32,
    /// Per-stream receive window: one 4 MiB snapshot chunk / bulk message in flight per stream
    /// without a window update stall.
    pub stream_receive_window_bytes: u32,
    /// Whole-connection receive window: bandwidth-delay product for ≥ 1 GB/s at ~1 ms RTT with
    /// headroom for several concurrent bulk streams.
    pub connection_receive_window_bytes: u32,
    /// Send buffer per connection (quinn's `send_window`).
    pub send_window_bytes: u64,
    /// Bytes of inbound payloads one node's connection may hold at once (being read or
    /// handled); all connections of client and unidentified certificates (and every peer of an
    /// insecure transport) share ONE budget of this size, so a certificate cannot multiply it
    /// by opening connections, and all admin connections share another, so clients cannot lock
    /// the operators out. A frame is charged as its payload bytes arrive, not when its header
    /// announces them (a header alone holds nothing). One maximal frame of it is headroom that
    /// only the oldest waiting frame may use, so frames that together announce more than it
    /// holds all finish in turn (src/budget.rs). A stream whose bytes find no room waits, and
    /// gives up after `rpc_timeout`. With the per-stream read deadline this bounds what slow or
    /// hostile peers can pin in memory. Must fit one maximal frame; with only that, frames are
    /// read one at a time.
    pub inbound_buffer_bytes_max: usize,
    /// Bytes of a shared budget (clients', or admins') that the frames of ONE certificate
    /// identity may hold, outside the one frame at a time that is promoted into the headroom:
    /// so one identity holds at most this plus one frame, and its frames beyond it wait their
    /// turn instead of the others'. A value above `inbound_buffer_bytes_max` is the same as it.
    /// 64 MiB: one maximal frame goes through without waiting, and with the default budget of
    /// 256 MiB one identity holds at most half of it (attack probe s30, finding 8).
    pub inbound_identity_bytes_max: usize,
    /// Connection attempts (handshakes) queued at once before new ones are refused.
    pub incoming_handshakes_max: usize,
    /// Inbound connections of client certificates (and unidentified ones) open at once; a
    /// further one is closed after its handshake (code `0x204`, counted as
    /// `inbound_connections_refused_full`). One idle connection costs a node ~160 KiB
    /// (measured: 2,000 raised one node's RSS by 326 MiB), so a stolen client certificate
    /// could otherwise exhaust its memory by connecting. Node connections never count; an
    /// insecure transport authenticates nobody and is not capped.
    pub client_connections_max: usize,
    /// Of those, the connections ONE client certificate identity (or one unidentified
    /// certificate key) may hold; a further one is closed the same way. Without it one stolen
    /// certificate took all 1024 slots and locked every other client out (attack probe s30,
    /// finding 10). 256, a quarter: room for a fleet of 256 processes sharing a certificate
    /// (one connection per node each), while it takes four identities to fill the node and
    /// one holds at most ~40 MiB of connection state. A value above `client_connections_max`
    /// is the same as it.
    pub client_connections_per_identity_max: usize,
    /// The same for admin certificates, counted apart so that clients filling theirs cannot
    /// lock the operators out.
    pub admin_connections_max: usize,
    /// Largest UDP payload we send (upper bound of MTU discovery) and accept. Default 1452 (a
    /// 1500-byte Ethernet path), quinn's own. Raising it to probe loopback's 64 KiB MTU did not
    /// help here: loss bursts under load trip quinn's black-hole detection back to 1200 (see
    /// BENCHMARKS.md, transport section). 1200..=65527.
    pub udp_payload_bytes_max: u16,
    /// SO_RCVBUF / SO_SNDBUF requested for the UDP socket (the kernel caps it at
    /// net.core.rmem_max / wmem_max): bursts of a bulk transfer must not overflow it.
    pub socket_buffer_bytes: usize,
    /// After `close()`, how long to let CONNECTION_CLOSE packets leave before the socket is
    /// released.
    pub close_linger: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(5),
            frame_bytes_per_s_min: 2 * 1024 * 1024,
            keep_alive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            initial_rtt: Duration::from_millis(100),
            streams_per_connection_max: 1024,
            client_streams_per_connection_max: 128,
            stream_receive_window_bytes: 16 * 1024 * 1024,
            connection_receive_window_bytes: 64 * 1024 * 1024,
            send_window_bytes: 64 * 1024 * 1024,
            inbound_buffer_bytes_max: 256 * 1024 * 1024,
            inbound_identity_bytes_max: 64 * 1024 * 1024,
            incoming_handshakes_max: 1024,
            client_connections_max: 1024,
            client_connections_per_identity_max: 256,
            admin_connections_max: 64,
            udp_payload_bytes_max: 1452,
            socket_buffer_bytes: 4 * 1024 * 1024,
            close_linger: Duration::from_millis(20),
        }
    }
}

impl TransportConfig {
    /// The connections one client identity may hold (`client_connections_per_identity_max`,
    /// at most `client_connections_max`).
    pub fn client_connections_per_identity(&self) -> usize {
        self.client_connections_per_identity_max
            .min(self.client_connections_max)
    }

    /// `rpc_timeout` plus the time a payload of `bytes` is given at `frame_bytes_per_s_min`.
    pub fn frame_timeout(&self, bytes: usize) -> Duration {
        let rate = self.frame_bytes_per_s_min.max(1);
        self.rpc_timeout + Duration::from_millis((bytes as u64).saturating_mul(1000) / rate)
    }

    /// Refuse combinations that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.rpc_timeout.is_zero() {
            return Err("rpc_timeout must be positive".into());
        }
        if self.frame_bytes_per_s_min == 0 {
            return Err("frame_bytes_per_s_min must be positive".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout must be positive".into());
        }
        if self.idle_timeout <= self.keep_alive_interval {
            return Err(format!(
                "idle_timeout ({:?}) must exceed keep_alive_interval ({:?})",
                self.idle_timeout, self.keep_alive_interval
            ));
        }
        if !(1200..=65_527).contains(&self.udp_payload_bytes_max) {
            return Err(format!(
                "udp_payload_bytes_max {} is outside 1200..=65527",
                self.udp_payload_bytes_max
            ));
        }
        if self.inbound_buffer_bytes_max < nodedb_wire::PAYLOAD_BYTES_MAX {
            return Err(format!(
                "inbound_buffer_bytes_max ({}) must hold one maximal frame ({} bytes)",
                self.inbound_buffer_bytes_max,
                nodedb_wire::PAYLOAD_BYTES_MAX
            ));
        }
        if self.inbound_identity_bytes_max == 0 {
            return Err("inbound_identity_bytes_max must be positive".into());
        }
        if self.incoming_handshakes_max == 0 {
            return Err("incoming_handshakes_max must be positive".into());
        }
        if self.client_connections_max == 0 || self.admin_connections_max == 0 {
            return Err("client_connections_max and admin_connections_max must be positive".into());
        }
        if self.client_connections_per_identity_max == 0 {
            return Err("client_connections_per_identity_max must be positive".into());
        }
        if self.streams_per_connection_max == 0 {
            return Err("streams_per_connection_max must be positive".into());
        }
        if !(1..=self.streams_per_connection_max).contains(&self.client_streams_per_connection_max)
        {
            return Err(format!(
                "client_streams_per_connection_max ({}) must be in 1..=streams_per_connection_max ({})",
                self.client_streams_per_connection_max, self.streams_per_connection_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_given_its_size_at_the_slowest_rate_on_top_of_the_rpc_timeout() {
        let cfg = TransportConfig::default();
        assert_eq!(cfg.frame_timeout(0), cfg.rpc_timeout);
        assert_eq!(
            cfg.frame_timeout(64 << 20),
            cfg.rpc_timeout + Duration::from_secs(32)
        );
        let zero = TransportConfig {
            frame_bytes_per_s_min: 0,
            ..TransportConfig::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn the_shares_of_one_identity_are_positive_and_at_most_the_whole() {
        let cfg = TransportConfig::default();
        assert_eq!(cfg.client_connections_per_identity(), 256);
        let small = TransportConfig {
            client_connections_max: 2,
            ..TransportConfig::default()
        };
        assert!(small.validate().is_ok());
        assert_eq!(small.client_connections_per_identity(), 2);
        let none = TransportConfig {
            client_connections_per_identity_max: 0,
            ..TransportConfig::default()
        };
        assert!(none
            .validate()
            .unwrap_err()
            .contains("client_connections_per_identity_max"));
        let none = TransportConfig {
            inbound_identity_bytes_max: 0,
            ..TransportConfig::default()
        };
        assert!(none
            .validate()
            .unwrap_err()
            .contains("inbound_identity_bytes_max"));
    }
}
