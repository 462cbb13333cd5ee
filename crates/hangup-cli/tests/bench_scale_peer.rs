//! `hangup bench scale --peer mosquitto` end to end, small: 600 sessions against
//! `hangup serve` and against a mosquitto the bench starts, from the same load workers.
//! Needs mosquitto, which the test suite does not install (`scripts/bench-peers` does):
//! without it the test says why and skips. Correctness only: every session reached
//! and held on both servers, the broker stopped and its temp dir gone; no speed.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{collect, hangup_bin, leftovers, poll_until};
use serde_json::Value;

fn mosquitto_installed() -> bool {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("mosquitto").is_file())
    });
    on_path || Path::new("/usr/sbin/mosquitto").is_file()
}

#[test]
fn bench_scale_peer_mosquitto_holds_every_session_on_both_servers() {
    if !mosquitto_installed() {
        eprintln!(
            "skipping bench_scale_peer_mosquitto_holds_every_session_on_both_servers: mosquitto is not installed (scripts/bench-peers installs it)"
        );
        return;
    }
    let json_path = std::env::temp_dir().join(format!(
        "hangup-bench-scale-peer-{}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&json_path);
    let mut child = Command::new(hangup_bin())
        .args([
            "bench",
            "scale",
            "--peer",
            "mosquitto",
            "--repeat",
            "2",
            "--connections",
            "600",
            "--per-worker",
            "300",
            "--heartbeat",
            "1",
            "--hold",
            "3s",
            "--json",
        ])
        .arg(&json_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hangup bench scale --peer mosquitto");
    let pid = child.id();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let status = poll_until(Duration::from_secs(180), Duration::from_millis(20), || {
        child.try_wait().unwrap()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    std::thread::sleep(Duration::from_millis(50));
    let (stdout, stderr) = (
        stdout.lock().unwrap().clone(),
        stderr.lock().unwrap().clone(),
    );
    let status = status.unwrap_or_else(|| panic!("the bench did not finish; stderr:\n{stderr}"));
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "the bench left its broker or temp dir behind"
    );

    let text = std::fs::read_to_string(&json_path).expect("the bench wrote its JSON file");
    let _ = std::fs::remove_file(&json_path);
    let report: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["bench"], "scale");
    assert_eq!(report["peer"], "mosquitto");
    assert_eq!(report["repeat"], 2);
    assert!(report["peer_version"]
        .as_str()
        .is_some_and(|v| v.contains("mosquitto")));
    // Interleaved: hangup, peer, peer, hangup.
    assert_eq!(
        report["order"],
        serde_json::json!(["hangup", "mosquitto", "mosquitto", "hangup"]),
        "{text}"
    );
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 4);
    for round in rounds {
        let kind = round["server_kind"].as_str().unwrap();
        assert_eq!(round["sessions_reached"], 600, "{kind}: {round}");
        assert_eq!(round["sessions_failed"], 0, "{kind}: {round}");
        assert_eq!(round["sessions_lost"], 0, "{kind}: {round}");
        assert_eq!(round["server"]["processes"], 1, "{kind}: {round}");
        // 3 s of 1 s heartbeats over 600 sessions: every session answered.
        assert!(
            round["rtt"]["pongs"].as_u64().unwrap() >= 600,
            "{kind}: {round}"
        );
        assert!(round["server"]["cpu_per_heartbeat_us"].is_number());
        // MQTT sessions ask for keepalive 2 × H (mosquitto counts whole seconds).
        if kind == "mosquitto" {
            assert_eq!(round["mqtt_keepalive_s"], 2, "{round}");
        }
    }
    let comparison = report["comparison"].as_array().expect("comparison");
    let figure = |name: &str| {
        comparison
            .iter()
            .find(|f| f["figure"] == name)
            .unwrap_or_else(|| panic!("no {name}: {text}"))
    };
    for name in [
        "server RSS per session (VmRSS delta)",
        "server CPU per heartbeat (user+sys)",
        "PING round trip p99",
    ] {
        let f = figure(name);
        assert_eq!(f["hangup_rounds"].as_array().unwrap().len(), 2, "{f}");
        assert_eq!(f["peer_rounds"].as_array().unwrap().len(), 2, "{f}");
        assert!(f["ratio"].is_number(), "{f}");
    }
    assert_eq!(figure("sessions lost")["hangup"], 0.0);
    assert_eq!(figure("sessions lost")["peer"], 0.0);
    assert!(stdout.contains("hangup/mosquitto"), "{stdout}");
}
