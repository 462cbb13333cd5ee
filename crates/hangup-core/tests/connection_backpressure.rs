//! Back-pressure: a peer that sends requests but does not read the replies must not
//! make the connection buffer without bound.

mod common;

use common::{err_code, Driver, Jobs, Peer, Rng};
use hangup_core::{ErrorCode, Event, HalfClosePolicy};

const HIGH_WATER: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

fn pings(total: usize) -> Vec<u8> {
    // "PING nnnnnn\n" → "PONG nnnnnn\n": a reply is exactly as long as its request.
    let mut out = Vec::with_capacity(total + 16);
    let mut i = 0u32;
    while out.len() < total {
        out.extend_from_slice(format!("PING {i:06}\n").as_bytes());
        i += 1;
    }
    out
}

#[test]
fn read_interest_follows_the_high_water_mark() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.peer = Peer::Stalled;
    assert!(d.conn.interest().read);
    let line = format!("PING {}\n", "x".repeat(1000));
    let mut lines = 0;
    while d.conn.interest().read {
        d.bytes(&line);
        lines += 1;
        assert!(lines < 1000, "read interest never went off");
    }
    let pending = d.conn.poll_transmit().len();
    assert!(pending >= HIGH_WATER, "{pending}");
    assert!(pending < HIGH_WATER + line.len());
    // Still watching for hangups and wanting to write while reading is paused.
    assert!(d.conn.interest().hangup && d.conn.interest().write);

    // The peer reads a little: still above the mark.
    d.peer = Peer::Trickle(pending - HIGH_WATER);
    d.settle();
    assert_eq!(d.conn.poll_transmit().len(), HIGH_WATER);
    assert!(!d.conn.interest().read);
    d.settle();
    assert!(d.conn.interest().read, "below the mark again");

    d.set_peer(Peer::Reads);
    assert_eq!(d.conn.poll_transmit(), b"");
    assert!(d.conn.interest().read);
    assert_eq!(d.take_lines().len(), lines);
}

#[test]
fn a_megabyte_of_pings_to_a_peer_that_reads_nothing_stays_bounded() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.peer = Peer::Stalled;
    let input = pings(1 << 20);
    let fed = d.feed_while_readable(&input, READ_CHUNK);
    assert!(fed < input.len(), "reading stopped before the end");
    assert!(fed >= HIGH_WATER);
    assert!(
        d.max_pending < HIGH_WATER + READ_CHUNK,
        "pending {} bytes",
        d.max_pending
    );
    assert_eq!(d.feed_while_readable(&input[fed..], READ_CHUNK), 0);
    assert_eq!(d.closed(), None);
}

#[test]
fn a_megabyte_of_pings_to_a_slow_reader_is_all_answered_in_order() {
    for seed in 1..=8u64 {
        let mut rng = Rng::new(seed);
        let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
        let input = pings(1 << 20);
        let mut fed = 0;
        while fed < input.len() {
            d.peer = match rng.range(0, 3) {
                0 => Peer::Stalled,
                _ => Peer::Trickle(rng.range(1, 40_000)),
            };
            // One read of a random size, if the connection wants to read at all.
            if d.conn.interest().read {
                let end = (fed + rng.range(1, READ_CHUNK)).min(input.len());
                d.bytes(&input[fed..end]);
                fed = end;
            } else {
                d.settle();
            }
        }
        d.set_peer(Peer::Reads);
        assert!(
            d.max_pending < HIGH_WATER + READ_CHUNK,
            "seed {seed}: pending {} bytes",
            d.max_pending
        );
        let lines = d.take_lines();
        let expected: Vec<String> = String::from_utf8(input)
            .unwrap()
            .lines()
            .map(|l| l.replacen("PING", "PONG", 1))
            .collect();
        assert_eq!(lines.len(), expected.len(), "seed {seed}");
        assert!(lines == expected, "seed {seed}: replies differ");
        assert_eq!(d.take_events(), Vec::<Event>::new());
    }
}

#[test]
fn tiny_bad_lines_do_not_multiply_into_a_flood_of_errors() {
    // 2-byte lines that each earn an ~80-byte `ERR unknown-command …`: one read of them
    // must stop producing replies at the high-water mark, not expand 40-fold.
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.peer = Peer::Stalled;
    let input = b"X\n".repeat(64 * 1024);
    let fed = d.feed_while_readable(&input, READ_CHUNK);
    assert!(fed < input.len(), "reading paused");
    let pending = d.conn.poll_transmit().len();
    assert!(pending >= HIGH_WATER, "{pending}");
    assert!(
        pending < HIGH_WATER + 200,
        "one reply past the mark at most: {pending}"
    );
    assert!(!d.conn.interest().read);

    // Once the peer reads, the held-back input is parsed and every line is answered.
    d.set_peer(Peer::Reads);
    let rest = d.feed_while_readable(&input[fed..], READ_CHUNK);
    assert_eq!(fed + rest, input.len());
    let lines = d.take_lines();
    assert_eq!(lines.len(), input.len() / 2);
    assert!(lines
        .iter()
        .all(|l| err_code(l) == Some(ErrorCode::UnknownCommand)));
}
