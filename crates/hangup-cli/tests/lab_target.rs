//! `hangup lab --target`: the server-side scenarios against a server the lab only
//! starts by COMMAND and watches through sock_diag. The server here is `hangup serve`
//! itself, run as if it were anyone's (the lab gives it no flags). Needs root (network
//! namespaces): skipped with a printed reason otherwise, never under `CI=true`.
#![cfg(target_os = "linux")]

mod common;

use std::process::{Command, Stdio};

use common::{hangup_bin, leftovers, privileged, TempDir};
use serde_json::Value;

/// Slack over the bounds, to stay clear of scheduling noise (and the 2 ms poll).
const NOISE_MS: f64 = 250.0;

#[test]
fn target_server_is_measured_from_sock_diag() {
    if !privileged("target_server_is_measured_from_sock_diag") {
        return;
    }
    let dir = TempDir::new("lab-target");
    let payload = dir.path().join("payload");
    std::fs::write(&payload, "PING from-the-raw-peer\n").unwrap();
    let json = dir.path().join("target.json");
    let data = dir.path().join("data");
    let command = format!(
        "{} serve --listen 0.0.0.0:$HANGUP_LAB_PORT --insecure --admin off --dead-after 2s \
         --data-dir {}",
        hangup_bin(),
        data.display()
    );
    let child = Command::new(hangup_bin())
        .args(["lab", "--target", &command, "--port", "7600", "--payload"])
        .arg(&payload)
        .args(["--json"])
        .arg(&json)
        .args([
            "--scenario",
            "client-exit",
            "--scenario",
            "client-exit-unread",
            "--scenario",
            "client-half-close",
            "--scenario",
            "client-crash-idle",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hangup lab --target");
    let pid = child.id();
    let output = child.wait_with_output().expect("run hangup lab --target");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "hangup lab --target failed:\n{stderr}\n{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON report")).unwrap();
    assert_eq!(report["target"]["port"], 7600, "{report:#}");
    let dead_after_ms = report["dead_after_ms"].as_f64().unwrap();
    let cell = |scenario: &str| -> &Value {
        report["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["scenario"] == scenario)
            .unwrap_or_else(|| panic!("no cell for {scenario}: {report:#}"))
    };
    for (scenario, causes, bound_ms) in [
        // The peer's FIN; hangup sees EOF and closes: its FIN leaves.
        ("client-exit", &["fin_sent"][..], NOISE_MS),
        // Killed with the PONG unread, the peer's kernel resets the connection.
        ("client-exit-unread", &["rst_received"][..], NOISE_MS),
        // Nothing arrives any more: hangup's derived keepalive and user timeout make
        // the kernel give up on the socket.
        (
            "client-crash-idle",
            &["timer"][..],
            1.1 * dead_after_ms + NOISE_MS,
        ),
    ] {
        let cell = cell(scenario);
        assert_eq!(cell["setup"], "target", "{cell:#}");
        assert_eq!(cell["outcome"], "detected", "{scenario}: {cell:#}");
        assert_eq!(cell["side"], "server", "{scenario}: {cell:#}");
        let cause = cell["cause"].as_str().unwrap();
        assert!(
            causes.contains(&cause),
            "{scenario}: cause {cause}, expected one of {causes:?}: {cell:#}"
        );
        let detect_ms = cell["detect_ms"].as_f64().unwrap();
        assert!(
            detect_ms <= bound_ms,
            "{scenario}: detected after {detect_ms} ms, bound {bound_ms} ms: {cell:#}"
        );
        for check in cell["checks"].as_array().unwrap() {
            assert_eq!(check["passed"], true, "{scenario}: {check} in {cell:#}");
        }
    }
    // The half-closing peer gets its PONG, and hangup, with nothing left to do for it,
    // then closes with FIN.
    let half = cell("client-half-close");
    let checks = half["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "the half-closing peer got a reply" && c["passed"] == true),
        "{half:#}"
    );
    assert!(
        half["outcome"] == "kept" || half["cause"] == "fin_sent",
        "{half:#}"
    );
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "left behind by --target"
    );
}
