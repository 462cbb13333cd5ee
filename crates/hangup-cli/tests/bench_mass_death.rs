//! `hangup bench mass-death` end to end (SPEC §8), small: 200 sessions in a network
//! namespace whose link is pulled. Correctness only: every death detected by the
//! servers with the expected cause, nothing closed early, the JSON well-formed. No
//! speed is asserted. And what a killed mass-death bench leaves, `hangup lab --cleanup`
//! removes. Needs root (skips with a reason otherwise, never under CI=true).
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{hangup_bin, lab_cleanup, leftovers, prefix_of, privileged, run_hangup_within};
use serde_json::Value;

/// Both tests build the same kind of namespace and address plan: one at a time.
static ONE_BENCH_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_BENCH_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A small mass death: 1.5 × H = 1.5 s is below D = 2 s, so the heartbeat must catch
/// every death.
const SMALL_RUN: [&str; 10] = [
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
];

#[test]
fn bench_mass_death_detects_every_death_with_its_cause() {
    if !privileged("bench_mass_death_detects_every_death_with_its_cause") {
        return;
    }
    let _bench = lock();
    let json_path = std::env::temp_dir().join(format!(
        "hangup-bench-mass-death-{}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&json_path);
    let (status, _stdout, stderr) = run_hangup_within(
        &[&SMALL_RUN[..], &["--json", json_path.to_str().unwrap()]].concat(),
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
        .find(|w| w.starts_with(hangup_lab::NETNS_PREFIX))
        .map(|w| w.trim_end_matches(','))
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

#[test]
fn lab_cleanup_removes_what_a_killed_mass_death_bench_left() {
    if !privileged("lab_cleanup_removes_what_a_killed_mass_death_bench_left") {
        return;
    }
    let _bench = lock();
    let mut bench = Command::new(hangup_bin())
        .args(SMALL_RUN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hangup bench mass-death");
    let pid = bench.id();
    // Killed once its namespace, servers and load workers are up and every session is
    // open: SIGKILL runs none of its guards.
    let stderr = BufReader::new(bench.stderr.take().unwrap());
    let mut said = String::new();
    for line in stderr.lines() {
        let line = line.expect("read the bench's stderr");
        said.push_str(&line);
        said.push('\n');
        if line.contains("sessions open in") {
            break;
        }
    }
    assert!(
        said.contains("sessions open in"),
        "the bench ended before its sessions were open:\n{said}"
    );
    bench.kill().unwrap();
    bench.wait().unwrap();
    let left = leftovers(pid);
    assert!(
        left.contains(&format!("namespace {}-md", prefix_of(pid))),
        "expected the killed bench's namespace: {left:?}"
    );
    assert!(
        left.iter().any(|l| l.starts_with("process")),
        "expected the killed bench's servers and workers, marked: {left:?}"
    );
    assert!(
        left.iter().any(|l| l.starts_with("directory")),
        "expected the killed bench's server presence stores: {left:?}"
    );

    let stdout = lab_cleanup();
    assert!(
        stdout.contains(&format!("removed namespace {}-md", prefix_of(pid))),
        "{stdout}"
    );
    // Killed processes may take a moment to be gone from /proc.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !leftovers(pid).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "left behind after --cleanup"
    );
}
