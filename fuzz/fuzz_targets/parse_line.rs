//! The line protocol's parsers on arbitrary bytes, and the commands' encoding.
//!
//! - `parse_line` on the input as one line: no panic, and a parsed command written back
//!   (`Display`, `encode`) parses to the same command, as `Command`'s docs promise;
//! - `Reply::parse` on the same bytes: no panic, and a parsed reply other than a `#`
//!   probe writes back as exactly the line that was read, as its docs promise, which
//!   parses again to the same reply when it is one line;
//! - a `Command` built from the input by `Arbitrary`: encoding never panics, and it
//!   parses back to itself wherever its docs say it round-trips.
#![no_main]

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use hangup_core::{parse_line, valid_device_id, Command, Reply, DEFAULT_MAX_ROUNDS};
use libfuzzer_sys::fuzz_target;

/// A command as a client could hold it, with `None` where the docs make no round-trip
/// promise: the command back from parsing its line, when one is promised.
fn arbitrary_command(u: &mut Unstructured<'_>) -> arbitrary::Result<(Command, Option<Command>)> {
    // "A single word": non-empty, no whitespace, no NUL (no line holds one).
    let word = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('\0');
    Ok(match u.int_in_range(0..=5)? {
        0 => {
            let device = String::arbitrary(u)?;
            let token = Option::<String>::arbitrary(u)?;
            let heartbeat = Option::<Duration>::arbitrary(u)?;
            let command = Command::Hello {
                device: device.clone(),
                token: token.clone(),
                heartbeat,
            };
            let promised = valid_device_id(&device) && token.as_deref().is_none_or(word);
            // Whole seconds on the wire, a fraction rounded up.
            let heartbeat = heartbeat.map(|d| {
                Duration::from_secs(d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)))
            });
            let expected = Command::Hello {
                device,
                token,
                heartbeat,
            };
            (command, promised.then_some(expected))
        }
        1 => {
            let data = String::arbitrary(u)?;
            let promised = !data.contains(['\n', '\r', '\0']) && data.trim() == data;
            (
                Command::Ping(data.clone()),
                promised.then_some(Command::Ping(data)),
            )
        }
        2 => {
            let rounds = u.int_in_range(1..=DEFAULT_MAX_ROUNDS)?;
            let seed = String::arbitrary(u)?;
            let command = Command::Job {
                rounds,
                seed: seed.clone(),
            };
            let promised = word(&seed) && seed.len() <= hangup_core::MAX_SEED_LEN;
            (command.clone(), promised.then_some(command))
        }
        3 => {
            let command = Command::Cancel(u64::arbitrary(u)?);
            (command.clone(), Some(command))
        }
        4 => (Command::Status, Some(Command::Status)),
        _ => (Command::Bye, Some(Command::Bye)),
    })
}

fn reparse(command: &Command) -> Option<Command> {
    let line = command.to_string();
    let mut encoded = Vec::new();
    command.encode(&mut encoded);
    assert_eq!(
        encoded,
        format!("{line}\n").into_bytes(),
        "encode is Display + \\n"
    );
    match parse_line(line.as_bytes(), DEFAULT_MAX_ROUNDS) {
        Ok(parsed) => parsed,
        Err(err) => panic!("{command:?} wrote `{line}`, which does not parse: {err:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(command)) = parse_line(data, DEFAULT_MAX_ROUNDS) {
        let promised = match &command {
            Command::Ping(data) => !data.contains('\n'),
            _ => true,
        };
        if promised {
            assert_eq!(reparse(&command).as_ref(), Some(&command));
        }
    }

    if let Ok(reply) = Reply::parse(data) {
        let line = data.strip_suffix(b"\n").unwrap_or(data);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if reply != Reply::Probe {
            assert_eq!(reply.to_string().as_bytes(), line, "{reply:?}");
        }
        // Read back as a line of its own where it is one: no line break inside, and no
        // `\r` left at its end for the next parse to take as the line ending.
        if !line.contains(&b'\n') && !line.ends_with(b"\r") {
            assert_eq!(Reply::parse(reply.to_string()), Ok(reply));
        }
    }

    let mut u = Unstructured::new(data);
    if let Ok((command, expected)) = arbitrary_command(&mut u) {
        let parsed = reparse_lenient(&command);
        if let Some(expected) = expected {
            assert_eq!(parsed, Some(expected), "{command:?} did not round-trip");
        }
    }
});

/// Encodes `command` (which must not panic) and parses the line; `None` if it does not
/// parse, which is allowed where no round trip is promised.
fn reparse_lenient(command: &Command) -> Option<Command> {
    let line = command.to_string();
    let mut encoded = Vec::new();
    command.encode(&mut encoded);
    assert_eq!(
        encoded,
        format!("{line}\n").into_bytes(),
        "encode is Display + \\n"
    );
    parse_line(line.as_bytes(), DEFAULT_MAX_ROUNDS)
        .ok()
        .flatten()
}
