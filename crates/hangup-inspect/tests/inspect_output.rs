//! `run()` end to end: filters, the table, the JSON schema, watch mode, and
//! option errors.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use hangup_inspect::{run, FindingKind, InspectError, Options, TcpState, JSON_SCHEMA};
use serde_json::Value;
use support::*;

fn options(port: u16) -> Options {
    let mut options = Options::default();
    options.port = Some(port);
    options.close_wait_after = Duration::ZERO;
    options.silent_after = Duration::from_secs(3600);
    options
}

fn output(options: &Options) -> String {
    let mut out = Vec::new();
    run(options, &mut out).expect("run");
    String::from_utf8(out).unwrap()
}

/// A listener with one CLOSE_WAIT socket held open, its client in FIN_WAIT2;
/// returns what must stay alive.
///
/// The port may still carry TIME_WAIT sockets of an earlier test run that used
/// the same ephemeral port, so the tests below count only these sockets.
fn close_wait_fixture() -> (std::net::TcpListener, std::net::TcpStream, u16) {
    let (listener, addr) = listen(LOCALHOST);
    let (client, server) = connect_pair(&listener);
    let client_addr = client.local_addr().unwrap();
    drop(client);
    wait_for(
        "a CLOSE_WAIT leak and FIN_WAIT2",
        100,
        Duration::from_millis(20),
        || {
            let report = report_for_port(addr.port(), &eager());
            let leak =
                kinds(find(&report, addr, client_addr)?).contains(&FindingKind::CloseWaitLeak);
            let closed = find(&report, client_addr, addr)?.socket.state == TcpState::FinWait2;
            (leak && closed).then_some(())
        },
    );
    (listener, server, addr.port())
}

/// The sockets of this run: leftovers of earlier runs are all TIME_WAIT.
fn this_run(sockets: &[Value]) -> Vec<&Value> {
    sockets
        .iter()
        .filter(|s| s["state"] != "time-wait")
        .collect()
}

#[test]
fn json_follows_the_documented_schema() {
    let (_listener, _server, port) = close_wait_fixture();
    let mut options = options(port);
    options.json = true;
    let text = output(&options);
    assert_eq!(text.lines().count(), 1, "one document per line");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["schema"], JSON_SCHEMA);
    assert_eq!(doc["thresholds"]["close_wait_after_ms"], 0);
    assert_eq!(doc["thresholds"]["silent_after_ms"], 3_600_000);
    assert!(doc["total_sockets"].as_u64().unwrap() >= 3);
    assert_eq!(doc["findings"]["close-wait-leak"], 1);
    assert_eq!(doc["findings"]["zero-window"], 0);
    let sockets = this_run(doc["sockets"].as_array().unwrap());
    assert_eq!(
        sockets.len(),
        3,
        "listener, CLOSE_WAIT, FIN_WAIT2: {sockets:#?}"
    );
    let leak = sockets.iter().find(|s| s["state"] == "close-wait").unwrap();
    assert_eq!(leak["family"], "ipv4");
    assert_eq!(leak["local"], format!("127.0.0.1:{port}"));
    assert_eq!(leak["recv_q"], 1);
    assert!(leak["inode"].as_u64().unwrap() > 0);
    assert!(leak["timer"].is_null());
    let info = &leak["tcp_info"];
    for field in [
        "rtt_us",
        "rto_us",
        "unacked",
        "retransmits",
        "total_retrans",
        "last_data_sent_ms",
        "last_data_recv_ms",
        "last_ack_recv_ms",
    ] {
        assert!(info[field].is_u64(), "tcp_info.{field} in {info}");
    }
    assert_eq!(leak["owner_status"], "found");
    assert_eq!(leak["owners"][0]["pid"], std::process::id());
    assert!(leak["owners"][0]["fd"].is_u64());
    assert_eq!(leak["findings"][0]["kind"], "close-wait-leak");
    assert!(leak["findings"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("CLOSE_WAIT"));
    let orphan = sockets
        .iter()
        .find(|s| s["state"] == "fin-wait-2")
        .unwrap_or_else(|| panic!("{sockets:#?}"));
    assert_eq!(orphan["owner_status"], "orphan");
    // An orphaned FIN_WAIT2 is either a TIME_WAIT mini-socket or a full socket
    // on its FIN_WAIT2 (keepalive) timer, depending on how the ACK was processed.
    let kind = orphan["timer"]["kind"].as_str().unwrap();
    assert!(kind == "time-wait" || kind == "keepalive", "{orphan}");
    assert!(orphan["timer"]["expires_ms"].as_u64().unwrap() > 0);
    let processes = doc["processes"].as_array().unwrap();
    let ours = processes
        .iter()
        .find(|p| p["pid"] == std::process::id())
        .unwrap();
    assert_eq!(ours["sockets"], 2);
    assert_eq!(ours["flagged"], 1);
    assert_eq!(ours["findings"]["close-wait-leak"], 1);
    assert!(processes
        .iter()
        .any(|p| p["pid"].is_null() && p["sockets"].as_u64() >= Some(1)));
    assert!(doc["notes"].is_array());
}

#[test]
fn table_shows_rows_findings_and_the_per_process_summary() {
    let (_listener, _server, port) = close_wait_fixture();
    let text = output(&options(port));
    assert!(text.contains(" TCP socket(s) shown, 1 flagged\n"), "{text}");
    assert!(text.contains("STATE"), "{text}");
    assert!(text.contains("CLOSE-WAIT"), "{text}");
    assert!(
        text.contains("  ! close-wait-leak: in CLOSE_WAIT for at least"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "(pid {}): 2 socket(s), 1 flagged: 1 close-wait-leak",
            std::process::id()
        )),
        "{text}"
    );
    assert!(
        text.contains("no known owner: ") && text.contains(" socket(s), 0 flagged"),
        "{text}"
    );
}

#[test]
fn state_and_pid_filters_narrow_the_list() {
    let (_listener, _server, port) = close_wait_fixture();
    let mut by_state = options(port);
    by_state.json = true;
    by_state.state = Some("CLOSE_WAIT".into());
    let doc: Value = serde_json::from_str(&output(&by_state)).unwrap();
    let states: Vec<&Value> = doc["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["state"])
        .collect();
    assert_eq!(states, ["close-wait"]);

    let mut by_pid = options(port);
    by_pid.json = true;
    by_pid.pid = Some(std::process::id());
    let doc: Value = serde_json::from_str(&output(&by_pid)).unwrap();
    assert_eq!(
        doc["sockets"].as_array().unwrap().len(),
        2,
        "listener and CLOSE_WAIT, not the orphan"
    );

    let mut nobody = options(port);
    nobody.pid = Some(u32::MAX);
    assert!(output(&nobody).starts_with("0 of "));
}

#[test]
fn watch_refreshes_the_given_number_of_times() {
    let (_listener, _server, port) = close_wait_fixture();
    let mut json = options(port);
    json.json = true;
    json.watch = Some(Duration::from_millis(10));
    json.refreshes = Some(3);
    let text = output(&json);
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        let doc: Value = serde_json::from_str(line).unwrap();
        assert_eq!(doc["schema"], JSON_SCHEMA);
    }
    let mut table = options(port);
    table.watch = Some(Duration::from_millis(10));
    table.refreshes = Some(2);
    let text = output(&table);
    assert_eq!(
        text.matches("\x1b[H\x1b[2J").count(),
        2,
        "each frame redraws in place"
    );
}

#[test]
fn bad_options_fail_before_collecting_with_a_clear_message() {
    let mut bad_state = Options::default();
    bad_state.state = Some("half-closed".into());
    let error = run(&bad_state, &mut Vec::new()).unwrap_err();
    assert!(matches!(error, InspectError::UnknownState { .. }));
    let message = error.to_string();
    assert!(message.contains("`half-closed`"), "{message}");
    for name in [
        "established",
        "close-wait",
        "time-wait",
        "listen",
        "fin-wait-2",
    ] {
        assert!(message.contains(name), "{message}");
    }

    let mut zero = Options::default();
    zero.watch = Some(Duration::ZERO);
    assert!(matches!(
        run(&zero, &mut Vec::new()),
        Err(InspectError::ZeroWatchInterval)
    ));

    for alias in ["estab", "ESTABLISHED", "close_wait", "Fin-Wait-1", "unconn"] {
        let mut ok = Options::default();
        ok.state = Some(alias.into());
        assert!(ok.filter().is_ok(), "{alias}");
    }
}
