//! The fault lab end to end: `hangup lab --quick` proves every scenario of SPEC §7 with
//! the full policy, and no run, however it ends, leaves a namespace, a process or a
//! directory behind. Needs root (network namespaces): skipped with a printed reason
//! otherwise, never under `CI=true`.
#![cfg(target_os = "linux")]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{hangup_bin, lab_cleanup, leftovers, prefix_of, privileged};
use serde_json::Value;

/// Lab runs measure timing and share the machine: one at a time.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Slack over the SPEC's bounds, to stay clear of scheduling noise.
const NOISE_MS: f64 = 250.0;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a SPEC §7 expectation bounds the detection time.
#[derive(Debug, Clone, Copy)]
enum Within {
    /// SPEC: ≤ 5 ms. Asserted as ≤ 250 ms.
    Instant,
    /// 1.1·D (+ 250 ms).
    Budget,
    /// One heartbeat H (+ 250 ms).
    Heartbeat,
    /// Only that it happened, within the cap.
    Cap,
}

/// (scenario, accepted causes — empty for "the connection is kept", bound).
const EXPECTED: [(&str, &[&str], Within); 17] = [
    ("client-exit", &["peer_closed"], Within::Instant),
    ("client-exit-unread", &["peer_reset"], Within::Instant),
    ("client-half-close", &[], Within::Cap),
    (
        "client-crash-idle",
        &["timeout", "heartbeat_missed"],
        Within::Budget,
    ),
    ("client-crash-sending", &["timeout"], Within::Budget),
    (
        "client-crash-uploading",
        &["timeout", "heartbeat_missed"],
        Within::Budget,
    ),
    ("client-cable-flap", &[], Within::Cap),
    ("client-reboot", &["peer_reset"], Within::Budget),
    ("client-reconnect", &["takeover"], Within::Instant),
    // The router answers for the lost client with ICMP host unreachable; the session's
    // heartbeat verdict comes before the kernel turns that soft error into EHOSTUNREACH.
    (
        "client-unreachable",
        &["unreachable", "heartbeat_missed"],
        Within::Budget,
    ),
    // No session: the user timeout gives up on the unacknowledged replies, and the
    // kernel's error is the ICMP's (EHOSTUNREACH). `timeout` when the peer's window was
    // shut at the cut: zero-window probes carry snd_una − 1, and Linux drops the ICMP
    // answering them as out of window (LAB.md, "The new rows").
    (
        "client-unreachable-sending",
        &["unreachable", "timeout"],
        Within::Budget,
    ),
    // `protocol_error`: a flooding peer stopped by SIGSTOP may also have stopped in the
    // middle of a line, and that half line's timer (D since it arrived) can end it before
    // the write timer (D since the last write progress) does. The core no longer runs
    // that timer while it holds input back itself (LAB.md, finding 3).
    (
        "client-stalled",
        &["stalled", "protocol_error"],
        Within::Budget,
    ),
    ("server-exit", &["peer_closed"], Within::Instant),
    (
        "server-crash",
        &["timeout", "heartbeat_missed"],
        Within::Budget,
    ),
    (
        "server-unreachable",
        &["unreachable", "heartbeat_missed"],
        Within::Budget,
    ),
    ("server-reboot", &["peer_reset"], Within::Heartbeat),
    ("server-shutdown", &["shutdown"], Within::Cap),
];

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lab-test-{}-{name}", std::process::id()))
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the lab") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the lab did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a lab run and waits until it has namespaces and processes up.
fn start_lab_and_wait_for_namespaces(args: &[&str]) -> Child {
    let mut child = Command::new(hangup_bin())
        .arg("lab")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hangup lab");
    let prefix = prefix_of(child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let namespaces = hangup_lab::namespaces_with_prefix(&format!("{prefix}-"));
        let processes = hangup_lab::processes_with_marker()
            .into_iter()
            .filter(|(_, marker)| *marker == prefix)
            .count();
        if namespaces.len() == 2 && processes >= 2 {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the lab exited ({status}) before its namespaces were seen");
        }
        assert!(
            Instant::now() < deadline,
            "the lab never had its namespaces and processes up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_lab(args: &[&str]) -> (Output, u32) {
    let child = Command::new(hangup_bin())
        .arg("lab")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hangup lab");
    let pid = child.id();
    (child.wait_with_output().expect("run hangup lab"), pid)
}

#[test]
fn quick_run_proves_every_scenario_within_its_bound() {
    if !privileged("quick_run_proves_every_scenario_within_its_bound") {
        return;
    }
    let _lab = lock();
    let json_path = temp_path("quick.json");
    let svg_path = temp_path("quick.svg");
    let started = Instant::now();
    let (output, pid) = run_lab(&[
        "--quick",
        "--json",
        json_path.to_str().unwrap(),
        "--svg",
        svg_path.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    // 0: every cell met SPEC §7 exactly; 1: some cell missed a SPEC bound by less than
    // the noise slack asserted below. Anything else is an error.
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "hangup lab --quick failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON report"))
            .expect("valid JSON");
    let svg = std::fs::read_to_string(&svg_path).expect("SVG chart");
    assert!(
        svg.starts_with("<svg") && svg.contains("budget D"),
        "{svg:.300}"
    );
    let _ = std::fs::remove_file(&json_path);
    let _ = std::fs::remove_file(&svg_path);

    let dead_after_ms = report["dead_after_ms"].as_f64().unwrap();
    assert_eq!(dead_after_ms, 2000.0, "--quick runs with D = 2 s");
    let heartbeat_ms = report["heartbeat_ms"]
        .as_f64()
        .expect("the full set-up runs sessions with heartbeats");
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(
        cells.len(),
        EXPECTED.len(),
        "one cell per scenario: {cells:#?}"
    );
    for (scenario, causes, within) in EXPECTED {
        let cell = cells
            .iter()
            .find(|c| c["scenario"] == scenario)
            .unwrap_or_else(|| panic!("no cell for {scenario}"));
        assert_eq!(cell["setup"], "full", "{cell:#}");
        for check in cell["checks"].as_array().unwrap() {
            assert_eq!(check["passed"], true, "{scenario}: {check} in {cell:#}");
        }
        if causes.is_empty() {
            assert_eq!(cell["outcome"], "kept", "{scenario}: {cell:#}");
            continue;
        }
        assert_eq!(cell["outcome"], "detected", "{scenario}: {cell:#}");
        let cause = cell["cause"].as_str().unwrap();
        assert!(
            causes.contains(&cause),
            "{scenario}: cause {cause}, expected one of {causes:?}"
        );
        let detect_ms = cell["detect_ms"].as_f64().unwrap();
        let bound_ms = match within {
            Within::Instant => NOISE_MS,
            Within::Budget => 1.1 * dead_after_ms + NOISE_MS,
            Within::Heartbeat => heartbeat_ms + NOISE_MS,
            Within::Cap => report["cap_ms"].as_f64().unwrap(),
        };
        assert!(
            detect_ms <= bound_ms,
            "{scenario}: detected after {detect_ms} ms, bound {bound_ms} ms: {cell:#}"
        );
    }
    assert!(took < Duration::from_secs(120), "--quick took {took:?}");
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "left behind by a finished run"
    );
}

#[test]
fn a_run_that_fails_half_way_leaves_nothing_behind() {
    if !privileged("a_run_that_fails_half_way_leaves_nothing_behind") {
        return;
    }
    let _lab = lock();
    let (output, pid) = run_lab(&[
        "--quick",
        "--scenario",
        "client-crash-idle",
        "--fail-after-start",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("injected failure"), "{stderr}");
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "left behind by a failed run"
    );
}

#[test]
fn ctrl_c_stops_the_run_and_cleans_up() {
    if !privileged("ctrl_c_stops_the_run_and_cleans_up") {
        return;
    }
    let _lab = lock();
    let mut lab =
        start_lab_and_wait_for_namespaces(&["--quick", "--scenario", "client-cable-flap"]);
    let pid = lab.id();
    // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) }, 0);
    let status = wait_with_timeout(&mut lab, Duration::from_secs(15));
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "left behind after Ctrl-C"
    );
}

#[test]
fn cleanup_removes_what_a_killed_run_left() {
    if !privileged("cleanup_removes_what_a_killed_run_left") {
        return;
    }
    let _lab = lock();
    let mut lab =
        start_lab_and_wait_for_namespaces(&["--quick", "--scenario", "client-cable-flap"]);
    let pid = lab.id();
    lab.kill().unwrap();
    lab.wait().unwrap();
    // SIGKILL leaves the namespaces; the lab's children die with it (PR_SET_PDEATHSIG).
    let left = leftovers(pid);
    assert!(
        left.iter().filter(|l| l.starts_with("namespace")).count() == 2,
        "expected the killed run's two namespaces: {left:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while leftovers(pid).iter().any(|l| l.starts_with("process")) {
        assert!(
            Instant::now() < deadline,
            "children outlived the lab: {:?}",
            leftovers(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = lab_cleanup();
    assert!(
        stdout.contains(&format!("removed namespace {}-", prefix_of(pid))),
        "{stdout}"
    );
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "left behind after --cleanup"
    );
}

#[test]
fn without_iproute2_it_says_so_and_fails() {
    let output = Command::new(hangup_bin())
        .args(["lab", "--quick"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run hangup lab");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("iproute2"), "{stderr}");
}

#[test]
fn time_scale_brings_the_kernels_own_verdict_within_reach() {
    if !privileged("time_scale_brings_the_kernels_own_verdict_within_reach") {
        return;
    }
    let _lab = lock();
    let json_path = temp_path("scaled.json");
    // 1/1800: tcp_keepalive_time 7200 s → 4 s, tcp_keepalive_intvl 75 s → 1 s (the
    // kernel's floor), 9 probes kept: the keepalive verdict comes 4 + 9 × 1 = 13 s after
    // the last segment, instead of 2 h 11 min.
    let (output, pid) = run_lab(&[
        "--time-scale",
        "1800",
        "--setup",
        "keepalive-os",
        "--scenario",
        "client-crash-idle",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("SCALED"),
        "the table must say it is scaled:\n{stdout}\n{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON report"))
            .unwrap_or_else(|e| panic!("valid JSON ({e}):\n{stderr}"));
    let _ = std::fs::remove_file(&json_path);
    let scale = &report["time_scale"];
    assert_eq!(scale["factor"], 1800, "{report:#}");
    assert_eq!(
        scale["sysctls"]["net.ipv4.tcp_keepalive_time"], "4",
        "{scale:#}"
    );
    assert_eq!(
        scale["sysctls"]["net.ipv4.tcp_keepalive_intvl"], "1",
        "{scale:#}"
    );
    assert_eq!(
        scale["sysctls"]["net.ipv4.tcp_keepalive_probes"], "9",
        "{scale:#}"
    );
    let verdict_ms = scale["keepalive_verdict_ms"].as_f64().unwrap();
    assert_eq!(verdict_ms, 13_000.0);
    let cell = &report["cells"][0];
    // With the host's 7200 s nothing would end it within the cap.
    assert_eq!(cell["outcome"], "detected", "{cell:#}");
    assert_eq!(cell["cause"], "timeout", "the kernel's ETIMEDOUT: {cell:#}");
    let detect_ms = cell["detect_ms"].as_f64().unwrap();
    assert!(
        detect_ms >= verdict_ms / 2.0 && detect_ms <= verdict_ms * 1.5,
        "detected after {detect_ms} ms; the scaled keepalive verdict is {verdict_ms} ms: {cell:#}"
    );
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "left behind by a scaled run"
    );
}
