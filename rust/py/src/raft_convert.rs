//! The engine's types as Python takes them (statuses, histograms, timeouts): translation only.

use std::time::Duration;

use nodedb_multiraft::{GroupStatus, Role};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::cluster_error;

/// Upper bound for every timeout a caller passes (a day): a typo cannot park a future forever.
const TIMEOUT_MS_MAX: u64 = 86_400_000;

pub(crate) fn timeout(py: Python<'_>, ms: u64) -> PyResult<Duration> {
    if ms == 0 || ms > TIMEOUT_MS_MAX {
        return Err(cluster_error(
            py,
            "ConfigError",
            ("timeout_ms", format!("{ms} is not in 1..={TIMEOUT_MS_MAX}")),
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

pub(crate) fn status_to_py(py: Python<'_>, s: GroupStatus) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("group_id", s.group.0)?;
    d.set_item("role", role_name(s.role))?;
    d.set_item("term", s.term)?;
    d.set_item("leader_id", s.leader.map(|n| n.0))?;
    d.set_item("commit_index", s.commit_index)?;
    d.set_item("applied_index", s.applied_index)?;
    d.set_item("last_index", s.last_index)?;
    d.set_item("snapshot_index", s.snapshot_index)?;
    d.set_item("voters", s.voters.iter().map(|n| n.0).collect::<Vec<_>>())?;
    d.set_item(
        "learners",
        s.learners.iter().map(|n| n.0).collect::<Vec<_>>(),
    )?;
    d.set_item(
        "matched",
        s.matched.iter().map(|(n, i)| (n.0, *i)).collect::<Vec<_>>(),
    )?;
    d.set_item(
        "voters_outgoing",
        s.voters_outgoing.iter().map(|n| n.0).collect::<Vec<_>>(),
    )?;
    Ok(d.into_any().unbind())
}

/// A histogram as Python takes it: `(name, bounds_s, cumulative counts, sum_s, count)`.
pub(crate) type HistogramRow = (&'static str, Vec<f64>, Vec<u64>, f64, u64);

pub(crate) fn histogram_row(
    name: &'static str,
    s: nodedb_multiraft::metrics::HistogramSnapshot,
) -> HistogramRow {
    (name, s.bounds_s, s.cumulative, s.sum_s, s.count)
}

pub(crate) fn none(py: Python<'_>, _: ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}
