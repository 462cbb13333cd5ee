//! `hangup bench mass-death` end to end (SPEC §8), small: 200 sessions in a network
//! namespace whose link is pulled. Correctness only: every death detected by the
//! servers with the expected cause, nothing closed early, the JSON well-formed. No
//! speed is asserted. Needs root (skips with a reason otherwise, never under CI=true).
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{privileged, run_hangup_within};
use serde_json::Value;

#[test]
fn bench_mass_death_detects_every_death_with_its_cause() {
    if !privileged("bench_mass_death_detects_every_death_with_its_cause") {
        return;
    }
    let json_path = std::env::temp_dir().join(format!(
        "hangup-bench-mass-death-{}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&json_path);
    // 1.5 × H = 1.5 s is below D = 2 s: the heartbeat must catch every death.
    let (status, _stdout, stderr) = run_hangup_within(
        &[
            "bench",
            "mass-death",
            "--connections",
            "200",
            "--dead-after",
            "2s",
            "--heartbeat",
            "1",
            "--probe-rate",
            "50",
            "--json",
            json_path.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{status}; stderr:\n{stderr}");

    let text = std::fs::read_to_string(&json_path).expect("the bench wrote its JSON file");
    let _ = std::fs::remove_file(&json_path);
    let report: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["bench"], "mass-death");
    assert_eq!(report["sessions_reached"], 200, "{text}");
    assert_eq!(report["closed_before_link_down"], 0, "{text}");
    assert_eq!(report["deaths_detected"], 200, "{text}");
    assert_eq!(report["deaths_missed"], 0, "{text}");
    assert_eq!(report["wrong_cause"], 0, "{text}");
    assert_eq!(
        report["expected_causes"],
        serde_json::json!(["heartbeat_missed"])
    );
    assert_eq!(
        report["causes"],
        serde_json::json!({"heartbeat_missed": 200}),
        "{text}"
    );
    let detection = &report["detection"];
    assert_eq!(detection["samples"], 200, "{text}");
    let (p50, p99, max) = (
        detection["p50_ms"].as_f64().unwrap(),
        detection["p99_ms"].as_f64().unwrap(),
        detection["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{text}");
    assert!(report["probe_storm"]["samples"].is_u64(), "{text}");
    // The namespace made for the run is gone.
    let made = stderr
        .split_whitespace()
        .find(|w| w.starts_with("hgmd-"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .expect("the bench names its namespace");
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !listed
            .lines()
            .any(|l| l.split_whitespace().next() == Some(made)),
        "a mass-death namespace was left behind: {listed}"
    );
}
