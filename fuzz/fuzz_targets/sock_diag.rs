//! The inspector's sock_diag answer parser (`parse_dump_datagram`) on arbitrary bytes.
//!
//! The input is either one raw datagram, or (first byte odd) a list of messages built
//! by `Arbitrary` whose netlink headers carry right lengths and types, so that the
//! fuzzer reaches the `inet_diag_msg`, its attributes and `tcp_info` quickly.
//!
//! Checks: no panic, and every socket found has a port pair and timer within what the
//! kernel's fields can hold (the parser never invents data it did not read).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use hangup_inspect::parse_dump_datagram;
use libfuzzer_sys::fuzz_target;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

#[derive(Debug, Arbitrary)]
enum Kind {
    SockDiag,
    Done,
    Error,
    Other(u16),
}

#[derive(Debug, Arbitrary)]
struct Message {
    kind: Kind,
    flags: u16,
    sequence: u32,
    /// The `inet_diag_msg` (72 bytes) then its attributes, or an error or done body.
    payload: Vec<u8>,
}

fn datagram(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        let kind = match message.kind {
            Kind::SockDiag => SOCK_DIAG_BY_FAMILY,
            Kind::Done => NLMSG_DONE,
            Kind::Error => NLMSG_ERROR,
            Kind::Other(kind) => kind,
        };
        let length = u32::try_from(16 + message.payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&length.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&message.flags.to_ne_bytes());
        out.extend_from_slice(&message.sequence.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&message.payload);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let built;
    let bytes = match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => {
            let u = Unstructured::new(rest);
            let Ok(messages) = Vec::<Message>::arbitrary_take_rest(u) else {
                return;
            };
            built = datagram(&messages);
            &built[..]
        }
        _ => data,
    };
    if let Ok(part) = parse_dump_datagram(bytes, "ipv4") {
        for socket in &part.sockets {
            // `idiag_expires` is a u32 of milliseconds.
            if let Some(timer) = &socket.timer {
                assert!(timer.expires_in.as_millis() <= u128::from(u32::MAX));
            }
        }
    }
});
