//! The keepalive timer, on and off, and the half-open suspicion that depends on it.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use hangup_inspect::{FindingKind, TimerKind};
use socket2::{SockRef, TcpKeepalive};
use support::*;

#[test]
fn keepalive_timer_shows_and_silence_without_it_is_half_open_suspect() {
    let (listener, addr) = listen(LOCALHOST);
    let (kept, _kept_server) = connect_pair(&listener);
    let (bare, _bare_server) = connect_pair(&listener);
    let idle = Duration::from_secs(30);
    SockRef::from(&kept)
        .set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))
        .unwrap();
    let kept_addr = kept.local_addr().unwrap();
    let bare_addr = bare.local_addr().unwrap();

    let report = wait_for(
        "both clients silent for over 0 ms",
        100,
        Duration::from_millis(20),
        || {
            let report = report_for_port(addr.port(), &eager());
            let silent = |local| {
                find(&report, local, addr)
                    .and_then(|s| s.socket.tcp_info)
                    .is_some_and(|info| !info.last_recv().is_zero())
            };
            (silent(kept_addr) && silent(bare_addr)).then_some(report)
        },
    );

    let kept_socket = get(&report, kept_addr, addr);
    let timer = kept_socket.socket.timer.expect("keepalive timer");
    assert_eq!(timer.kind, TimerKind::Keepalive);
    assert!(timer.expires_in <= idle, "{timer:?}");
    assert_eq!(timer.retries, 0);
    assert!(!kinds(kept_socket).contains(&FindingKind::HalfOpenSuspect));

    let bare_socket = get(&report, bare_addr, addr);
    assert_eq!(bare_socket.socket.timer, None);
    assert_eq!(kinds(bare_socket), [FindingKind::HalfOpenSuspect]);

    // Silent, but not for long: nothing to report.
    let patient = report_for_port(addr.port(), &patient());
    assert!(get(&patient, bare_addr, addr).findings.is_empty());

    let (report, ss) = report_and_ss(addr.port(), &eager(), None);
    assert_agrees_with_ss(&report, &ss);

    // Keepalive off again: the timer goes, the suspicion comes.
    SockRef::from(&kept).set_keepalive(false).unwrap();
    let report = report_for_port(addr.port(), &eager());
    let kept_socket = get(&report, kept_addr, addr);
    assert_eq!(kept_socket.socket.timer, None);
    assert_eq!(kinds(kept_socket), [FindingKind::HalfOpenSuspect]);
}
