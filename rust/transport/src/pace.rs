//! How long a request may take when its size, not the peer, sets the pace.
//!
//! A fixed bound on a whole request (`rpc_timeout`) cannot tell a slow peer from a large reply:
//! a reply of 48 MiB over a link of 100 Mbit/s takes 4 s from a peer that answered at once.
//! A paced request bounds the part that is the peer's (connect, the request, the handling,
//! until the reply's header arrives) by `answer_by`, and gives the reply's payload its
//! announced length at `reply_bytes_per_s`, counted from its header, and never less than what
//! is left of `answer_by` (a reply of 1 MiB that came early was otherwise given 60 ms, which a
//! loaded host missed: the write was retried, and its result was gone). A peer that stops
//! sending mid-reply is still caught: by that allowance, and by QUIC's idle timeout.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RpcPace {
    /// The reply's header must have arrived by then.
    pub answer_by: Instant,
    /// The slowest rate a reply's payload may arrive at after its header (> 0).
    pub reply_bytes_per_s: f64,
}

impl RpcPace {
    /// The time a reply of `bytes` is given after its header.
    pub fn reply_allowance(&self, bytes: usize) -> Duration {
        let rate = self.reply_bytes_per_s.max(1.0);
        Duration::try_from_secs_f64(bytes as f64 / rate).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_given_its_length_at_the_rate() {
        let pace = RpcPace {
            answer_by: Instant::now(),
            reply_bytes_per_s: 1024.0 * 1024.0,
        };
        assert_eq!(pace.reply_allowance(0), Duration::ZERO);
        assert_eq!(pace.reply_allowance(3 << 20), Duration::from_secs(3));
    }

    #[test]
    fn a_rate_of_zero_is_taken_as_one_byte_per_second() {
        let pace = RpcPace {
            answer_by: Instant::now(),
            reply_bytes_per_s: 0.0,
        };
        assert_eq!(pace.reply_allowance(5), Duration::from_secs(5));
    }
}
