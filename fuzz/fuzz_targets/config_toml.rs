//! `hangup serve --config FILE` on arbitrary text, as far as a library can reach it.
//!
//! The TOML-to-flags step itself (`crates/hangup-cli/src/commands/config.rs`) lives in
//! the binary and checks each key against clap's `serve` command, whose value parsers
//! are hangup-core's; reaching it from here would mean building the whole CLI
//! (server, lab, tokio) into the fuzz target. So this target runs what that step runs
//! on a file: `toml::from_str::<toml::Table>`, then every scalar value, in the text the
//! step turns it into, through the core's parsers behind the `serve` flags
//! (`parse_duration`, `KeepaliveSetting`, `AutoDuration`, `HalfClosePolicy`, `Cause`).
//!
//! Checks: no panic, and a parsed duration formats back (`format_duration`) into text
//! that parses again, to the same duration when it is whole seconds or milliseconds.
#![no_main]

use std::time::Duration;

use hangup_core::{
    format_duration, parse_duration, AutoDuration, Cause, HalfClosePolicy, KeepaliveSetting,
};
use libfuzzer_sys::fuzz_target;

/// The flag value `config.rs` makes of a TOML value, as it does (`None`: not a value).
fn flag_value(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(if *b { "on" } else { "off" }.to_owned()),
        _ => None,
    }
}

fn check_value(text: &str) {
    if let Ok(duration) = parse_duration(text) {
        let formatted = format_duration(duration);
        let again = parse_duration(&formatted)
            .unwrap_or_else(|err| panic!("{duration:?} formats as `{formatted}`: {err}"));
        let exact = duration.subsec_nanos() == 0
            || (duration < Duration::from_secs(1) && duration.subsec_nanos() % 1_000_000 == 0);
        if exact {
            assert_eq!(again, duration, "`{text}` -> `{formatted}`");
        }
    }
    let _ = text.parse::<KeepaliveSetting>();
    let _ = text.parse::<AutoDuration>();
    let _ = text.parse::<HalfClosePolicy>();
    let _ = text.parse::<Cause>();
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Values on their own too: a flag on the command line reaches the same parsers.
    check_value(text);
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return;
    };
    for value in table.values() {
        match value {
            toml::Value::Array(items) => items
                .iter()
                .filter_map(flag_value)
                .for_each(|v| check_value(&v)),
            other => flag_value(other).iter().for_each(|v| check_value(v)),
        }
    }
});
