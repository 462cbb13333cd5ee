//! A link pulled while data is unacknowledged: the retransmit timer runs and
//! retries pile up. Two test-made network namespaces joined by a veth pair.
#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use hangup_inspect::{FindingKind, TimerKind};
use support::*;

#[test]
fn pulled_link_with_unacknowledged_data_is_retransmitting() {
    if !privileged("pulled_link_with_unacknowledged_data_is_retransmitting") {
        return;
    }
    let link = VethPair::new();
    let listener: TcpListener = link
        .b
        .run(|| TcpListener::bind(SocketAddr::new(ADDR_B, 0)).expect("bind in netns b"));
    let server_addr = listener.local_addr().unwrap();
    let mut client: TcpStream = link
        .a
        .run(|| TcpStream::connect(server_addr).expect("connect across the veth pair"));
    let (_server, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap();

    // The peer's end goes down: segments leave `a` and are lost.
    ip(&["-n", &link.b.name, "link", "set", &link.dev_b, "down"]);
    client.write_all(&[0x42; 1000]).unwrap();

    let report = wait_for(
        "a retransmission timeout on the client",
        150,
        Duration::from_millis(100),
        || {
            let report = link
                .a
                .run(|| report_for_port(server_addr.port(), &patient()));
            let socket = &find(&report, client_addr, server_addr)?.socket;
            let retries = socket.tcp_info?.retransmits;
            (retries >= 1).then_some(report)
        },
    );
    let dying = get(&report, client_addr, server_addr);
    let timer = dying.socket.timer.expect("retransmit timer");
    assert_eq!(timer.kind, TimerKind::Retransmit);
    assert!(timer.retries >= 1, "{timer:?}");
    let info = dying.socket.tcp_info.unwrap();
    assert!(info.unacked >= 1, "{info:?}");
    // total_retrans counts only retransmissions the device accepted; a dropped
    // one still counts as a timeout (retransmits), so it is not asserted here.
    assert_eq!(dying.socket.send_q, 1000);
    assert_eq!(kinds(dying), [FindingKind::Retransmitting]);
    let reason = &dying.findings[0].reason;
    assert!(reason.contains("retransmission timeout"), "{reason}");
    assert_eq!(dying.socket.owners[0].pid, std::process::id());

    // The same sockets through ss, inside the namespace.
    let (report, ss) = report_and_ss(server_addr.port(), &patient(), Some(&link.a));
    assert_agrees_with_ss(&report, &ss);

    // The listener is not visible from `a`: collection is per namespace.
    assert!(find(&report, server_addr, "0.0.0.0:0".parse().unwrap()).is_none());
}
