//! The engine's NO_SPACE state (like etcd's NOSPACE alarm), as a pure decision: inputs are
//! free-space samples of the log's filesystem (`SpaceStatus`) and `NoSpace` errors from the
//! log, output is whether the node refuses writes. No I/O, no clock: the core feeds it.
//!
//! Enter when free space falls below the log's reserve, or on a `NoSpace` error (something
//! else ate the reserve). Leave only once free space is back above the reserve by a margin
//! ([`leave_threshold_bytes`]), so a disk hovering at the reserve does not flap between
//! refusing and accepting writes with every segment the log fills.

use nodedb_wal::SpaceStatus;
pub use nodedb_wal::{leave_threshold_bytes, LEAVE_MARGIN_MIN_BYTES};

/// What one input did to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    Entered,
    Left,
}

/// Whether the node is in NO_SPACE, with the last sample seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoSpaceState {
    no_space: bool,
    last_sample: Option<SpaceStatus>,
}

impl NoSpaceState {
    /// Are writes refused?
    pub fn no_space(&self) -> bool {
        self.no_space
    }

    /// The last free-space sample fed in, if any.
    pub fn last_sample(&self) -> Option<SpaceStatus> {
        self.last_sample
    }

    /// A free-space sample of the log's filesystem.
    pub fn observe(&mut self, sample: SpaceStatus) -> Transition {
        self.last_sample = Some(sample);
        if !self.no_space && sample.available_bytes < sample.reserve_bytes {
            self.no_space = true;
            return Transition::Entered;
        }
        if self.no_space && sample.available_bytes >= leave_threshold_bytes(sample.reserve_bytes) {
            self.no_space = false;
            return Transition::Left;
        }
        Transition::Unchanged
    }

    /// The log (or a snapshot file) hit a full disk: in NO_SPACE until a sample shows room.
    pub fn no_space_error(&mut self) -> Transition {
        if self.no_space {
            return Transition::Unchanged;
        }
        self.no_space = true;
        Transition::Entered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sample(available_mib: u64, reserve_mib: u64) -> SpaceStatus {
        SpaceStatus {
            available_bytes: available_mib * MIB,
            reserve_bytes: reserve_mib * MIB,
        }
    }

    #[test]
    fn enters_below_the_reserve_and_leaves_only_above_it_by_the_margin() {
        let mut s = NoSpaceState::default();
        assert!(!s.no_space());
        assert_eq!(s.observe(sample(500, 128)), Transition::Unchanged);
        assert_eq!(
            s.observe(sample(128, 128)),
            Transition::Unchanged,
            "at the reserve"
        );
        assert_eq!(s.observe(sample(127, 128)), Transition::Entered);
        assert!(s.no_space());
        // Hysteresis: back at or just above the reserve is not enough.
        assert_eq!(s.observe(sample(128, 128)), Transition::Unchanged);
        assert_eq!(s.observe(sample(159, 128)), Transition::Unchanged);
        assert!(s.no_space());
        assert_eq!(s.observe(sample(160, 128)), Transition::Left);
        assert!(!s.no_space());
        assert_eq!(
            s.observe(sample(140, 128)),
            Transition::Unchanged,
            "no flap"
        );
        assert_eq!(s.last_sample(), Some(sample(140, 128)));
    }

    #[test]
    fn a_no_space_error_enters_whatever_the_samples_said() {
        let mut s = NoSpaceState::default();
        s.observe(sample(500, 128));
        assert_eq!(s.no_space_error(), Transition::Entered);
        assert_eq!(s.no_space_error(), Transition::Unchanged);
        assert_eq!(s.observe(sample(150, 128)), Transition::Unchanged);
        assert_eq!(s.observe(sample(600, 128)), Transition::Left);
    }

    #[test]
    fn a_zero_reserve_still_needs_the_minimum_margin_to_leave() {
        let mut s = NoSpaceState::default();
        assert_eq!(
            s.observe(sample(0, 0)),
            Transition::Unchanged,
            "0 < 0 is false"
        );
        assert_eq!(s.no_space_error(), Transition::Entered);
        let just_below = SpaceStatus {
            available_bytes: LEAVE_MARGIN_MIN_BYTES - 1,
            reserve_bytes: 0,
        };
        assert_eq!(s.observe(just_below), Transition::Unchanged);
        let enough = SpaceStatus {
            available_bytes: LEAVE_MARGIN_MIN_BYTES,
            reserve_bytes: 0,
        };
        assert_eq!(s.observe(enough), Transition::Left);
    }

    #[test]
    fn thresholds_saturate() {
        assert_eq!(leave_threshold_bytes(u64::MAX), u64::MAX);
        assert_eq!(leave_threshold_bytes(128 * MIB), 160 * MIB);
        assert_eq!(leave_threshold_bytes(2 * MIB), 3 * MIB);
    }
}
