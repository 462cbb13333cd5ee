//! `hangup bench takeover` end to end (SPEC §8): a small reconnect storm against its
//! own server. Checked: it succeeds, its JSON is complete, no ghost is left and the
//! presence store has a row per session; never its speed.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{poll_until, TempDir};
use serde_json::Value;

#[test]
fn bench_takeover_leaves_no_ghosts_and_records_every_session() {
    let dir = TempDir::new("bench-takeover");
    let json_path = dir.path().join("takeover.json");
    let mut child = std::process::Command::new(common::hangup_bin())
        .args([
            "bench",
            "takeover",
            "--devices",
            "400",
            "--wave",
            "200",
            "--json",
        ])
        .arg(&json_path)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn hangup bench takeover");
    let stdout = common::collect(child.stdout.take().unwrap());
    let stderr = common::collect(child.stderr.take().unwrap());
    // Generous: 800 connections and 400 takeovers take about a second normally.
    let status = poll_until(Duration::from_secs(120), Duration::from_millis(20), || {
        child.try_wait().unwrap()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = stderr.lock().unwrap().clone();
    let status = status.unwrap_or_else(|| panic!("the bench did not finish; stderr:\n{stderr}"));
    assert!(
        status.success(),
        "{status}; stdout:\n{}\nstderr:\n{stderr}",
        stdout.lock().unwrap()
    );

    let text = std::fs::read_to_string(&json_path).expect("the bench wrote its JSON file");
    let report: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["bench"], "takeover", "{report:#}");
    assert_eq!(report["devices"], 400, "{report:#}");
    assert_eq!(report["wave"], 200, "{report:#}");
    assert_eq!(report["reconnects"], 400, "{report:#}");
    assert_eq!(report["ghosts_left"], 0, "{report:#}");
    assert_eq!(report["unclean_old_closes"], 0, "{report:#}");
    assert_eq!(report["presence_rows"], 800, "{report:#}");
    assert_eq!(report["presence_takeover_rows"], 400, "{report:#}");
    // The distributions are present and ordered; their values are not judged.
    for name in ["eviction", "handover"] {
        let d = &report[name];
        let fields: Vec<f64> = ["p50_us", "p90_us", "p99_us", "max_us"]
            .iter()
            .map(|f| {
                d[f].as_f64()
                    .unwrap_or_else(|| panic!("{name}.{f} in {report:#}"))
            })
            .collect();
        assert!(
            fields.windows(2).all(|w| w[0] <= w[1]) && fields[0] > 0.0,
            "{name}: {d}"
        );
    }
    assert!(report["machine"].as_str().is_some_and(|m| !m.is_empty()));
}

/// `--nodes 3`: every reconnect lands on another node of a cluster on the bench's own
/// Redis; every eviction crosses nodes, no ghost, round trips reported.
#[test]
fn bench_takeover_across_three_cluster_nodes() {
    if !common::redis_available("bench_takeover_across_three_cluster_nodes") {
        return;
    }
    let dir = TempDir::new("bench-takeover-cluster");
    let json_path = dir.path().join("takeover.json");
    let json = json_path.to_str().unwrap();
    let (status, stdout, stderr) = common::run_hangup_within(
        &[
            "bench",
            "takeover",
            "--nodes",
            "3",
            "--devices",
            "300",
            "--wave",
            "300",
            "--json",
            json,
        ],
        Duration::from_secs(120),
    );
    assert!(
        status.success(),
        "{status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["nodes"], 3, "{report:#}");
    assert_eq!(report["ghosts_left"], 0, "{report:#}");
    assert_eq!(report["cluster_evictions"], 300, "{report:#}");
    assert_eq!(report["presence_takeover_rows"], 300, "{report:#}");
    assert!(report["redis_round_trips"].as_u64().is_some_and(|n| n > 0));
}
