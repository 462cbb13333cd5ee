//! What one cell (scenario × set-up) observed, and whether that meets the expectation.
//! Pure data and judgement: no I/O.

use std::time::Duration;

use crate::netns::Side;
use crate::scenario::Scenario;
use crate::setup::Setup;

/// What the lab saw after the fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The watching side reported the connection's end.
    Detected {
        /// Which side reported it.
        side: Side,
        /// The cause it gave.
        cause: String,
        /// From the fault to the report (the event's `ts_ns`).
        after: Duration,
    },
    /// Nothing was reported within the cap.
    NotDetected {
        /// The cap.
        within: Duration,
    },
    /// The connection (or its job) survived, as checked.
    Kept {
        /// From the fault to the proof of life (a reply read by the client).
        proven_after: Duration,
    },
    /// Nothing was reported, but the connection no longer works.
    Broken {
        /// What failed.
        detail: String,
    },
    /// The cell was not run.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The lab could not run the cell.
    Error {
        /// What went wrong.
        message: String,
    },
}

impl Outcome {
    /// The stable kind name used in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Detected { .. } => "detected",
            Outcome::NotDetected { .. } => "not_detected",
            Outcome::Kept { .. } => "kept",
            Outcome::Broken { .. } => "broken",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Error { .. } => "error",
        }
    }

    /// The time the chart plots: detection time, or none.
    pub fn detection_time(&self) -> Option<Duration> {
        match self {
            Outcome::Detected { after, .. } => Some(*after),
            _ => None,
        }
    }
}

/// A named yes/no fact a scenario checks besides the outcome (e.g. "DONE delivered").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
}

/// One cell of the matrix.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The row.
    pub scenario: Scenario,
    /// The column.
    pub setup: Setup,
    /// What happened.
    pub outcome: Outcome,
    /// Facts checked besides the outcome.
    pub checks: Vec<Check>,
    /// Observations worth reading (not judged).
    pub notes: Vec<String>,
    /// The time limit the expectation set, for this run's D, H and cap.
    pub limit: Duration,
    /// Whether the outcome and every check meet the scenario's expectation.
    pub meets_expectation: bool,
}

/// Whether `outcome` and `checks` meet `scenario`'s expectation within `limit`.
pub fn judge(scenario: Scenario, outcome: &Outcome, checks: &[Check], limit: Duration) -> bool {
    let expectation = scenario.expectation();
    let checks_pass = checks.iter().all(|check| check.passed);
    let outcome_ok = match outcome {
        Outcome::Kept { .. } => expectation.survives,
        Outcome::Detected { side, cause, after } => {
            !expectation.survives
                && *side == scenario.watcher()
                && (expectation.causes.is_empty() || expectation.causes.contains(&cause.as_str()))
                && *after <= limit
        }
        Outcome::NotDetected { .. }
        | Outcome::Broken { .. }
        | Outcome::Skipped { .. }
        | Outcome::Error { .. } => false,
    };
    outcome_ok && checks_pass
}

/// [`judge`] for a `--target` cell: the same bounds, any cause the kernel tells (a
/// third-party server has no hangup causes). A half-close must still get its reply
/// (the check), whether or not the server closes afterwards.
pub fn judge_target(
    scenario: Scenario,
    outcome: &Outcome,
    checks: &[Check],
    limit: Duration,
) -> bool {
    let checks_pass = checks.iter().all(|check| check.passed);
    let outcome_ok = match (scenario, outcome) {
        (Scenario::ClientHalfClose, Outcome::Kept { .. } | Outcome::Detected { .. }) => true,
        (_, Outcome::Kept { .. }) => scenario.expectation().survives,
        (_, Outcome::Detected { side, after, .. }) => {
            !scenario.expectation().survives && *side == scenario.watcher() && *after <= limit
        }
        _ => false,
    };
    outcome_ok && checks_pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(side: Side, cause: &str, ms: u64) -> Outcome {
        Outcome::Detected {
            side,
            cause: cause.into(),
            after: Duration::from_millis(ms),
        }
    }

    #[test]
    fn detection_must_have_the_cause_side_and_time() {
        let limit = Duration::from_millis(2200);
        let crash = Scenario::ClientCrashIdle;
        assert!(judge(
            crash,
            &detected(Side::Server, "timeout", 2100),
            &[],
            limit
        ));
        assert!(judge(
            crash,
            &detected(Side::Server, "heartbeat_missed", 1500),
            &[],
            limit
        ));
        assert!(!judge(
            crash,
            &detected(Side::Server, "timeout", 2300),
            &[],
            limit
        ));
        assert!(!judge(
            crash,
            &detected(Side::Server, "peer_reset", 100),
            &[],
            limit
        ));
        assert!(!judge(
            crash,
            &detected(Side::Client, "timeout", 100),
            &[],
            limit
        ));
        let not = Outcome::NotDetected {
            within: Duration::from_secs(11),
        };
        assert!(!judge(crash, &not, &[], limit));
    }

    #[test]
    fn survival_scenarios_want_kept_and_their_checks() {
        let kept = Outcome::Kept {
            proven_after: Duration::from_secs(1),
        };
        let flap = Scenario::ClientCableFlap;
        assert!(judge(flap, &kept, &[], Duration::MAX));
        assert!(!judge(
            flap,
            &detected(Side::Server, "timeout", 2000),
            &[],
            Duration::MAX
        ));
        let failed = [Check {
            name: "DONE delivered".into(),
            passed: false,
        }];
        assert!(!judge(
            Scenario::ClientHalfClose,
            &kept,
            &failed,
            Duration::MAX
        ));
        assert!(!judge(Scenario::ClientExit, &kept, &[], Duration::MAX));
    }
}
