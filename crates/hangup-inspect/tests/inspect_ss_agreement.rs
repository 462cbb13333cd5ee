//! Our figures against `ss -tinpoe` for a mix of sockets: IPv4 and IPv6,
//! listeners, unread and unsent bytes, keepalive, CLOSE_WAIT, FIN_WAIT2 and
//! TIME_WAIT, a socket shared by two file descriptors.
#![cfg(target_os = "linux")]

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use hangup_inspect::TcpState;
use socket2::{SockRef, TcpKeepalive};
use support::*;

fn exercise(ip: IpAddr) {
    let (listener, addr) = listen(ip);
    // Unread bytes on the server, keepalive on the client.
    let (mut talker, _unread_server) = connect_pair(&listener);
    SockRef::from(&talker)
        .set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_secs(40)))
        .unwrap();
    talker.write_all(&[7; 300]).unwrap();
    // A CLOSE_WAIT / FIN_WAIT2 pair.
    let (closer, _held) = connect_pair(&listener);
    drop(closer);
    // A TIME_WAIT: the client closes after the server did.
    let (mut finisher, finished) = connect_pair(&listener);
    drop(finished);
    let mut rest = Vec::new();
    finisher.read_to_end(&mut rest).unwrap();
    drop(finisher);
    // One socket, two descriptors.
    let (quiet, _quiet_server) = connect_pair(&listener);
    let _quiet_dup = quiet.try_clone().unwrap();

    let report = wait_for(
        "unread bytes, CLOSE_WAIT and TIME_WAIT, nothing in transit",
        100,
        Duration::from_millis(20),
        || {
            let report = report_for_port(addr.port(), &eager());
            let states: Vec<TcpState> = report.sockets.iter().map(|s| s.socket.state).collect();
            let unread = report.sockets.iter().any(|s| s.socket.recv_q == 300);
            let in_transit = [
                TcpState::FinWait1,
                TcpState::LastAck,
                TcpState::Closing,
                TcpState::SynSent,
            ];
            let settled = !states.iter().any(|state| in_transit.contains(state));
            (settled
                && unread
                && states.contains(&TcpState::CloseWait)
                && states.contains(&TcpState::TimeWait))
            .then_some(report)
        },
    );
    assert!(report
        .sockets
        .iter()
        .any(|s| s.socket.state == TcpState::Listen));

    let (report, ss) = report_and_ss(addr.port(), &eager(), None);
    let shared = get(&report, quiet.local_addr().unwrap(), addr);
    let fds: Vec<(u32, u32)> = shared.socket.owners.iter().map(|o| (o.pid, o.fd)).collect();
    assert_eq!(fds.len(), 2, "one socket, two descriptors: {fds:?}");
    assert_eq!(fds[0].0, fds[1].0);
    assert_eq!(
        ss.len(),
        report.sockets.len(),
        "ss: {ss:#?}\nours: {:#?}",
        report.sockets
    );
    assert_agrees_with_ss(&report, &ss);
}

#[test]
fn ipv4_sockets_agree_with_ss() {
    exercise(LOCALHOST);
}

#[test]
fn ipv6_sockets_agree_with_ss() {
    exercise(IpAddr::V6(Ipv6Addr::LOCALHOST));
}

#[test]
fn ss_timer_format_parses() {
    assert_eq!(parse_ss_ms("200ms"), 200);
    assert_eq!(parse_ss_ms("6.084ms"), 6084);
    assert_eq!(parse_ss_ms("59sec"), 59_000);
    assert_eq!(parse_ss_ms("1min30sec"), 90_000);
    assert_eq!(parse_ss_ms("2min"), 120_000);
}
