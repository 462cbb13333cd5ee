//! `hangup bench soak`, short: churn, takeovers, bad input, stalled readers and
//! abandoned jobs across a server restart, then memory, descriptors, the presence store
//! and the kernel's socket table back to where they started. Correctness only.
#![cfg(target_os = "linux")]

mod common;

use common::{run_hangup_within, TempDir};
use serde_json::Value;
use std::time::Duration;

#[test]
fn a_short_soak_leaves_nothing_behind() {
    let dir = TempDir::new("soak");
    let json = dir.path().join("soak.json");
    std::fs::create_dir_all(dir.path()).unwrap();
    let (status, stdout, stderr) = run_hangup_within(
        &[
            "bench",
            "soak",
            "--duration",
            "6s",
            "--restarts",
            "1",
            "--clients",
            "6",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_else(|err| {
            panic!("no JSON report ({err}); stdout:\n{stdout}\nstderr:\n{stderr}")
        }))
        .unwrap();
    for check in report["checks"].as_array().unwrap() {
        assert_eq!(check["ok"], true, "{check}\n{stdout}");
    }
    assert!(status.success(), "{stdout}\n{stderr}");
    let counts = &report["counts"];
    for kind in [
        "sessions_welcomed",
        "takeovers_seen",
        "bad_lines_answered",
        "jobs_done",
        "jobs_abandoned",
        "stalled_readers",
    ] {
        assert!(counts[kind].as_u64().unwrap() > 0, "no {kind}: {counts}");
    }
    assert!(
        report["sessions_in_store"].as_u64().unwrap()
            >= counts["sessions_welcomed"].as_u64().unwrap()
    );
}
