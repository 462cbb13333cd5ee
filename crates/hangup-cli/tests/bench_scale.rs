//! `hangup bench scale` end to end (SPEC §8), small: 2 000 sessions over 2 reuse-port
//! instances and 2 load workers. Correctness only: every session reached, none lost,
//! the JSON well-formed. No speed is asserted.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::run_bench;

#[test]
fn bench_scale_holds_every_session_and_reports_json() {
    let run = run_bench(
        &[
            "scale",
            "--connections",
            "2000",
            "--instances",
            "2",
            "--per-worker",
            "1000",
            "--heartbeat",
            "1",
            "--hold",
            "3s",
        ],
        Duration::from_secs(120),
    );
    let report = &run.report;
    let text = report.to_string();
    assert_eq!(report["bench"], "scale");
    assert_eq!(report["connections"], 2000);
    assert_eq!(report["instances"], 2);
    assert_eq!(report["load_workers"], 2);
    assert_eq!(report["sessions_reached"], 2000, "{text}");
    assert_eq!(report["sessions_failed"], 0, "{text}");
    assert_eq!(report["sessions_lost"], 0, "{text}");
    assert_eq!(report["server_closes_during_run"], 0, "{text}");
    // Nor during the stop, before the load workers close their sockets.
    assert_eq!(
        report["server_close_causes_at_the_stop"],
        serde_json::json!({}),
        "{text}"
    );
    let server = &report["server"];
    assert_eq!(server["processes"], 2, "{text}");
    for key in ["rss_per_connection_bytes", "cpu_per_heartbeat_us"] {
        assert!(server[key].is_number(), "{key}: {text}");
    }
    // 3 s of 1 s heartbeats over 2 000 sessions: thousands of PONGs were timed.
    let rtt = &report["rtt"];
    assert!(rtt["pongs"].as_u64().unwrap() >= 2000, "{text}");
    let (p50, p99, max) = (
        rtt["p50_us"].as_f64().unwrap(),
        rtt["p99_us"].as_f64().unwrap(),
        rtt["max_us"].as_f64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max, "{text}");
    assert!(report["limits"]["nofile"].is_array(), "{text}");
    assert!(run.stdout.contains("sessions reached"), "{}", run.stdout);
}

/// `--netns`: the same small run inside a namespace of the bench's own, with a TCP
/// table of its own; the namespace is gone afterwards and the host's setting is back.
#[test]
fn bench_scale_in_its_own_namespace_leaves_nothing_behind() {
    if !common::privileged("bench_scale_in_its_own_namespace_leaves_nothing_behind") {
        return;
    }
    const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
    let setting_before = std::fs::read_to_string(CHILD_EHASH).expect("Linux 6.1 or later");
    let scale_namespaces = || {
        hangup_lab::namespaces_with_prefix(hangup_lab::NETNS_PREFIX)
            .into_iter()
            .filter(|name| name.ends_with("-scale"))
            .collect::<Vec<_>>()
    };
    let before = scale_namespaces();
    let run = run_bench(
        &[
            "scale",
            "--netns",
            "--connections",
            "300",
            "--instances",
            "1",
            "--heartbeat",
            "1",
            "--hold",
            "2s",
        ],
        Duration::from_secs(120),
    );
    let report = &run.report;
    let text = report.to_string();
    assert_eq!(report["sessions_reached"], 300, "{text}");
    assert_eq!(report["sessions_lost"], 0, "{text}");
    assert_eq!(report["server_closes_during_run"], 0, "{text}");
    assert!(
        report["kernel"]["load_worker_cpu_per_heartbeat_us"].is_number(),
        "{text}"
    );
    let changed = report["limits_changed"].to_string();
    assert!(
        changed.contains("network namespace") && changed.contains("65536 buckets"),
        "{changed}"
    );
    assert!(
        run.stderr.contains("running in network namespace"),
        "{}",
        run.stderr
    );
    assert_eq!(scale_namespaces(), before, "the bench's namespace is left");
    assert_eq!(
        std::fs::read_to_string(CHILD_EHASH).unwrap(),
        setting_before,
        "tcp_child_ehash_entries was not put back"
    );
}
