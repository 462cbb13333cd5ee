//! Bad flags name the flag, the value and the accepted forms, and exit non-zero;
//! `hangup serve --help` documents every flag.
#![cfg(target_os = "linux")]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{hangup_bin, poll_until, PATIENCE};

/// Runs `hangup <args>` and returns its output; a run that is still going after
/// [`PATIENCE`] (a server that accepted a bad flag and started) is killed and fails.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(hangup_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hangup");
    let exited = poll_until(PATIENCE, Duration::from_millis(10), || {
        child.try_wait().unwrap()
    });
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`hangup {}` did not exit: it accepted the arguments",
            args.join(" ")
        );
    }
    child.wait_with_output().unwrap()
}

/// `hangup serve --listen 127.0.0.1:0 <flag> <value>` must fail and say `needles` on
/// stderr.
fn assert_serve_rejects(flag: &str, value: &str, needles: &[&str]) {
    let output = run(&["serve", "--listen", "127.0.0.1:0", flag, value]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "`serve {flag} {value}` was accepted; stderr:\n{stderr}"
    );
    for needle in [flag, value].iter().chain(needles) {
        assert!(
            stderr.contains(needle),
            "`serve {flag} {value}`: stderr does not mention `{needle}`:\n{stderr}"
        );
    }
}

#[test]
fn keepalive_below_the_kernel_second_is_rejected() {
    assert_serve_rejects(
        "--keepalive",
        "10s,500ms,4",
        &["whole seconds", "IDLE,INTVL,COUNT"],
    );
    assert_serve_rejects(
        "--keepalive",
        "often",
        &["`auto`", "`os`", "`off`", "IDLE,INTERVAL,COUNT"],
    );
}

#[test]
fn a_zero_dead_after_is_rejected() {
    assert_serve_rejects("--dead-after", "0s", &["at least 1s"]);
    assert_serve_rejects("--dead-after", "soon", &["e.g. `30s`"]);
    // The client resolves the same flags.
    let output = run(&["client", "127.0.0.1:9", "--once", "--dead-after", "0s"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--dead-after 0s"), "{stderr}");
    assert!(stderr.contains("at least 1s"), "{stderr}");
}

#[test]
fn a_user_timeout_that_is_not_a_duration_is_rejected() {
    assert_serve_rejects("--user-timeout", "soon", &["`auto`", "`off`", "duration"]);
}

#[test]
fn an_unknown_half_close_policy_is_rejected() {
    assert_serve_rejects(
        "--on-half-close",
        "maybe",
        &["`probe`", "`cancel`", "`finish`"],
    );
}

#[test]
fn watch_hangup_takes_on_or_off() {
    assert_serve_rejects("--watch-hangup", "maybe", &["`on`", "`off`"]);
}

#[test]
fn serve_help_documents_every_flag() {
    let output = run(&["serve", "--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let flags = [
        "--listen",
        "--dead-after",
        "--keepalive",
        "--user-timeout",
        "--watch-hangup",
        "--write-timeout",
        "--on-half-close",
        "--workers",
        "--max-connections",
        "--max-rounds",
        "--log-format",
    ];
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} ")),
            "`{flag}` missing:\n{help}"
        );
    }
    // Every flag listed (also ones added later) has a description under it.
    let lines: Vec<&str> = help.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || trimmed.starts_with("-h,") {
            let description = lines.get(i + 1).map_or("", |l| l.trim());
            assert!(
                !description.is_empty() && !description.starts_with('-'),
                "`{trimmed}` has no description:\n{help}"
            );
        }
    }
    for word in ["auto", "os", "off", "probe", "cancel", "finish", "json"] {
        assert!(help.contains(word), "`{word}` not explained:\n{help}");
    }
}
