//! `hangup bench cancel` end to end (SPEC §8): it runs its own server, measures FIN and
//! RST hangups and writes JSON. Only the shape and consistency of the figures are
//! checked, never their speed.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::run_bench;

#[test]
fn bench_cancel_reports_both_modes_as_json() {
    // Generous: 60 hangups and 200 connections take well under a second normally.
    let run = run_bench(
        &["cancel", "--idle", "200", "--iterations", "30"],
        Duration::from_secs(60),
    );
    let report = &run.report;
    assert_eq!(report["bench"], "cancel");
    assert_eq!(report["idle_connections"], 200);
    assert_eq!(report["iterations"], 30);
    assert!(report["machine"].as_str().is_some_and(|m| !m.is_empty()));

    let results = report["results"].as_array().expect("results");
    let modes: Vec<&str> = results.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(modes, ["fin", "rst"], "{report}");
    for (result, cause) in results.iter().zip(["peer_closed", "peer_reset"]) {
        assert_eq!(result["expected_cause"], cause, "{result}");
        assert_eq!(result["samples"], 30, "{result}");
        assert_eq!(result["missed"], 0, "{result}");
        assert_eq!(result["wrong_cause"], serde_json::json!({}), "{result}");
        let us = |key: &str| {
            result[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} is not a number: {result}"))
        };
        let (p50, p90, p99, max) = (us("p50_us"), us("p90_us"), us("p99_us"), us("max_us"));
        assert!(p50 > 0.0, "{result}");
        assert!(
            p50 <= p90 && p90 <= p99 && p99 <= max,
            "percentiles out of order: {result}"
        );
        assert!(us("mean_us") <= max, "{result}");
    }
    // The table on stdout names both modes too.
    let stdout = &run.stdout;
    assert!(stdout.contains("fin") && stdout.contains("rst"), "{stdout}");
}

/// `--peer axum`: the same client times hangup serve and plain axum in one run, trials
/// interleaved; every hangup stops the work on both (plain axum notices FIN and RST of
/// a body-less request too), and the ratios are reported.
#[test]
fn bench_cancel_peer_times_both_servers_in_one_run() {
    let run = run_bench(
        &[
            "cancel",
            "--peer",
            "axum",
            "--idle",
            "50",
            "--iterations",
            "12",
        ],
        Duration::from_secs(120),
    );
    let report = &run.report;
    let ours = report["results"].as_array().expect("results");
    let peer = &report["peer"];
    assert_eq!(peer["server"], "axum", "{report}");
    let theirs = peer["results"].as_array().expect("peer results");
    for results in [ours, theirs] {
        let modes: Vec<&str> = results.iter().filter_map(|r| r["mode"].as_str()).collect();
        assert_eq!(modes, ["fin", "rst"], "{report}");
        for result in results {
            assert_eq!(result["samples"], 12, "{result}");
            assert_eq!(result["missed"], 0, "{result}");
            let (p50, max) = (
                result["p50_us"].as_f64().unwrap(),
                result["max_us"].as_f64().unwrap(),
            );
            assert!(p50 > 0.0 && p50 <= max, "{result}");
        }
    }
    assert!(ours.iter().all(|r| r["server"] == "hangup"), "{report}");
    assert!(theirs.iter().all(|r| r["server"] == "axum"), "{report}");
    let ratios = peer["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 2, "{report}");
    assert!(ratios.iter().all(|r| r["p50"].is_number()), "{report}");
    assert!(run.stdout.contains("ratio hangup/axum"), "{}", run.stdout);
}
