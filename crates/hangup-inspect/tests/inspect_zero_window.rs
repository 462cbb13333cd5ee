//! A receiver that does not read: the sender sees a zero window and probes.
#![cfg(target_os = "linux")]

mod support;

use std::io::{ErrorKind, Write};
use std::time::Duration;

use hangup_inspect::{FindingKind, TimerKind};
use socket2::SockRef;
use support::*;

#[test]
fn a_receiver_that_does_not_read_gives_the_sender_a_zero_window() {
    let (listener, addr) = listen(LOCALHOST);
    // Small buffers fill in a few writes; the accepted socket inherits the
    // listener's receive buffer.
    SockRef::from(&listener).set_recv_buffer_size(4096).unwrap();
    let (mut sender, _stalled_receiver) = connect_pair(&listener);
    SockRef::from(&sender).set_send_buffer_size(4096).unwrap();
    sender.set_nonblocking(true).unwrap();
    let sender_addr = sender.local_addr().unwrap();

    let chunk = [0x5a; 1024];
    let mut written = 0usize;
    let filled = (0..10_000).any(|_| match sender.write(&chunk) {
        Ok(n) => {
            written += n;
            false
        }
        Err(error) if error.kind() == ErrorKind::WouldBlock => true,
        Err(error) => panic!("write: {error}"),
    });
    assert!(filled, "send buffer never filled after {written} bytes");

    let report = wait_for(
        "the persist timer on the sender",
        200,
        Duration::from_millis(25),
        || {
            let report = report_for_port(addr.port(), &eager());
            let socket = &find(&report, sender_addr, addr)?.socket;
            socket
                .timer
                .is_some_and(|timer| timer.kind == TimerKind::Persist)
                .then_some(report)
        },
    );
    let stalled = get(&report, sender_addr, addr);
    assert!(
        kinds(stalled).contains(&FindingKind::ZeroWindow),
        "{:?}",
        stalled.findings
    );
    assert!(
        !kinds(stalled).contains(&FindingKind::Retransmitting),
        "{:?}",
        stalled.findings
    );
    assert!(stalled.socket.send_q > 0);
    if let Some(window) = stalled.socket.tcp_info.and_then(|info| info.snd_wnd) {
        assert_eq!(window, 0);
    }
    let receiver = get(&report, addr, sender_addr);
    assert!(
        receiver.socket.recv_q > 0,
        "the receiver holds unread bytes"
    );

    let (report, ss) = report_and_ss(addr.port(), &eager(), None);
    assert_agrees_with_ss(&report, &ss);
}
