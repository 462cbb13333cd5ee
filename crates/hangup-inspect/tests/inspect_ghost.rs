//! Several connections from one peer to a listening port: the silent older ones are ghosts.
#![cfg(target_os = "linux")]

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use hangup_inspect::{FindingKind, Thresholds};
use support::*;

#[test]
fn silent_twin_of_a_reconnected_client_is_a_ghost_duplicate() {
    let (listener, addr) = listen(LOCALHOST);
    let (ghost_client, _ghost_server) = connect_pair(&listener);
    let (mut live_client, mut live_server) = connect_pair(&listener);
    let ghost_addr = ghost_client.local_addr().unwrap();
    let live_addr = live_client.local_addr().unwrap();

    let threshold = Duration::from_millis(50);
    let thresholds = Thresholds {
        silent_after: threshold,
        ..patient()
    };
    wait_for(
        "the first connection silent past the threshold",
        100,
        Duration::from_millis(20),
        || {
            let report = report_for_port(addr.port(), &thresholds);
            let silence = find(&report, addr, ghost_addr)?
                .socket
                .tcp_info?
                .last_recv();
            (silence > threshold * 2).then_some(())
        },
    );
    // The reconnected client talks; the old connection stays silent.
    live_client.write_all(b"hello").unwrap();
    let mut greeting = [0; 5];
    live_server.read_exact(&mut greeting).unwrap();

    let report = report_for_port(addr.port(), &thresholds);
    let ghost = get(&report, addr, ghost_addr);
    assert!(
        kinds(ghost).contains(&FindingKind::GhostDuplicate),
        "{:?}",
        ghost.findings
    );
    let reason = &ghost
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::GhostDuplicate)
        .unwrap()
        .reason;
    assert!(reason.contains(&live_addr.to_string()), "{reason}");
    let live = get(&report, addr, live_addr);
    assert!(
        !kinds(live).contains(&FindingKind::GhostDuplicate),
        "{:?}",
        live.findings
    );
    // Client sides are not accepted connections, so never ghosts.
    assert!(!kinds(get(&report, ghost_addr, addr)).contains(&FindingKind::GhostDuplicate));

    let calm = report_for_port(addr.port(), &patient());
    assert!(calm.sockets.iter().all(|s| s.findings.is_empty()));
}
