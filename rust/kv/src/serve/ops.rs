//! KV requests served, by op and result (`nodedb_kv_requests_total{op, result}`): a fixed table
//! of relaxed atomics, one add per request. The result is the request's, not each group's: a
//! `*_many` answered with some groups in `nlg` or `unk` counts as `ok`; an Error answer counts
//! under its code.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nodedb_transport::HandlerFuture;

use super::request::Served;

/// Op labels, in [`op_of`]'s numbering.
pub const OPS: [&str; 5] = ["propose_many", "read_many", "propose", "read", "routing"];
/// Result labels: `ok` and the Error codes the server answers with; anything else is `other`.
pub const RESULTS: [&str; 13] = [
    "ok",
    "Busy",
    "EngineStopped",
    "InvalidRequest",
    "RaftNotLeader",
    "UnknownGroup",
    "LeadershipLost",
    "Timeout",
    "NoSpace",
    "QuotaExceeded",
    "Unavailable",
    "UnsupportedVersion",
    "other",
];

/// Requests by op and result.
#[derive(Default)]
pub struct KvOpCounters {
    counts: [[AtomicU64; RESULTS.len()]; OPS.len()],
}

/// The index of `request`'s op in [`OPS`].
pub(super) fn op_of(request: &Served) -> usize {
    match request {
        Served::ProposeMany { .. } => 0,
        Served::ReadMany { .. } => 1,
        Served::Propose { .. } => 2,
        Served::Read { .. } => 3,
        Served::Routing => 4,
    }
}

impl KvOpCounters {
    /// `answer`, counting its result under `op` once it resolves.
    pub(super) fn counted(self: &Arc<Self>, op: usize, answer: HandlerFuture) -> HandlerFuture {
        let counters = Arc::clone(self);
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(_) => "ok",
                Err(err) => err.code.as_str(),
            };
            let index = RESULTS
                .iter()
                .position(|r| *r == code)
                .unwrap_or(RESULTS.len() - 1);
            if let Some(row) = counters.counts.get(op) {
                row[index].fetch_add(1, Ordering::Relaxed);
            }
            result
        })
    }

    /// `(op, result, count)` for every nonzero pair.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (op, row) in OPS.iter().zip(&self.counts) {
            for (result, count) in RESULTS.iter().zip(row) {
                let n = count.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((*op, *result, n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodedb_transport::HandlerError;

    #[test]
    fn results_are_counted_under_their_op_once_the_answer_resolves() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let counters = Arc::new(KvOpCounters::default());
        let ok = counters.counted(0, Box::pin(async { Ok(None) }));
        let busy = counters.counted(3, Box::pin(async { Err(HandlerError::new("Busy", "")) }));
        let odd = counters.counted(3, Box::pin(async { Err(HandlerError::new("Weird", "")) }));
        assert!(
            counters.snapshot().is_empty(),
            "nothing counted before the answer"
        );
        rt.block_on(async {
            assert!(ok.await.is_ok());
            assert_eq!(busy.await.unwrap_err().code, "Busy");
            assert!(odd.await.is_err());
        });
        assert_eq!(
            counters.snapshot(),
            vec![
                ("propose_many", "ok", 1),
                ("read", "Busy", 1),
                ("read", "other", 1)
            ]
        );
    }
}
