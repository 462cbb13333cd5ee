//! CLOSE_WAIT held by the application: the peer closed, we never did.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use hangup_inspect::{close_wait_age, FindingKind, OwnerStatus, TcpState};
use support::*;

#[test]
fn peer_close_while_the_application_holds_the_socket_is_a_close_wait_leak() {
    let (listener, addr) = listen(LOCALHOST);
    let (client, server) = connect_pair(&listener);
    let client_addr = client.local_addr().unwrap();
    drop(client);

    let report = wait_for(
        "the server side in CLOSE_WAIT for over 0 ms, the client in FIN_WAIT2",
        100,
        Duration::from_millis(20),
        || {
            let report = report_for_port(addr.port(), &eager());
            let held = find(&report, addr, client_addr)?;
            let age = close_wait_age(&held.socket)?;
            let closed = find(&report, client_addr, addr)?;
            (!age.is_zero() && closed.socket.state == TcpState::FinWait2).then_some(report)
        },
    );
    let held = get(&report, addr, client_addr);
    assert_eq!(held.socket.state, TcpState::CloseWait);
    assert_eq!(kinds(held), [FindingKind::CloseWaitLeak]);
    assert!(
        held.findings[0].reason.contains("CLOSE_WAIT"),
        "{:?}",
        held.findings
    );
    assert_eq!(held.socket.owner_status, OwnerStatus::Found);
    assert_eq!(held.socket.owners[0].pid, std::process::id());
    // The FIN is one byte of the receive queue.
    assert_eq!(held.socket.recv_q, 1);

    let closed = get(&report, client_addr, addr);
    assert_eq!(closed.socket.state, TcpState::FinWait2);
    assert_eq!(closed.socket.owner_status, OwnerStatus::Orphan);
    assert!(closed.findings.is_empty(), "{:?}", closed.findings);

    let patient = report_for_port(addr.port(), &patient());
    assert!(get(&patient, addr, client_addr).findings.is_empty());

    let (report, ss) = report_and_ss(addr.port(), &eager(), None);
    assert_agrees_with_ss(&report, &ss);
    drop(server);
}
