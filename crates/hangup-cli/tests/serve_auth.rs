//! Device tokens and exposure (SPEC §4): with `--auth-secret FILE` a `HELLO` needs
//! `token=` hex HMAC-SHA256(secret, device-id) — the one `hangup token` prints and the
//! one computed here independently with the `hmac` crate; without a secret the server
//! refuses a non-loopback address unless `--insecure`.
#![cfg(target_os = "linux")]

mod common;

use std::path::PathBuf;

use common::{run_hangup, welcome_session, LineClient, TempDir, TestServer};
use hangup_core::ErrorCode;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The secret as written in the file: the trailing newline is not part of it.
const SECRET: &str = "correct horse battery staple";

fn expected_token(device: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(device.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

struct Secret {
    dir: TempDir,
}

impl Secret {
    fn new() -> Self {
        let dir = TempDir::new("secret");
        std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    fn arg(&self) -> String {
        self.path().to_str().unwrap().to_owned()
    }

    /// `hangup token <device> --auth-secret FILE`.
    fn token(&self, device: &str) -> String {
        let output = run_hangup(&["token", device, "--auth-secret", &self.arg()]);
        assert!(
            output.status.success(),
            "hangup token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }
}

#[test]
fn hangup_token_prints_the_hmac_of_the_device_id() {
    let secret = Secret::new();
    for device in ["sensor-17", "a", "Az09._:-"] {
        let token = secret.token(device);
        assert_eq!(token, expected_token(device), "device {device}");
        assert_eq!(token.len(), 64);
    }
    let bad = run_hangup(&["token", "not/a/device", "--auth-secret", &secret.arg()]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("not/a/device"), "{stderr}");
}

#[test]
fn a_correct_token_opens_the_session_and_wrong_or_missing_ones_are_refused() {
    let secret = Secret::new();
    let mut server = TestServer::start(&["--auth-secret", &secret.arg()]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();

    client.send("HELLO door-1 heartbeat=30");
    let reply = client.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::Unauthorized),
        "{reply}"
    );
    client.assert_alive("after-missing-token");

    client.send(&format!(
        "HELLO door-1 token={} heartbeat=30",
        "ab".repeat(32)
    ));
    let reply = client.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::Unauthorized),
        "{reply}"
    );
    client.assert_alive("after-wrong-token");

    // Another device's token, and a token that is not hex.
    client.send(&format!("HELLO door-1 token={}", expected_token("door-2")));
    let reply = client.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::Unauthorized),
        "{reply}"
    );
    client.send("HELLO door-1 token=xyz");
    let reply = client.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::Unauthorized),
        "{reply}"
    );
    client.assert_alive("after-foreign-token");
    assert!(server.events_for("session_started", peer).is_empty());

    // The right token, from `hangup token`, on the same connection.
    let token = secret.token("door-1");
    client.send(&format!("HELLO door-1 token={token} heartbeat=30"));
    welcome_session(&client.reply());
    server.expect_event("session_started", peer);
    client.assert_alive("with-session");

    // Tokens are hex: upper case is the same token.
    let mut upper = LineClient::connect(server.addr());
    upper.send(&format!(
        "HELLO door-3 token={}",
        expected_token("door-3").to_uppercase()
    ));
    welcome_session(&upper.reply());
}

#[test]
fn a_wrong_token_cannot_kick_a_device_off() {
    let secret = Secret::new();
    let mut server = TestServer::start(&["--auth-secret", &secret.arg()]);
    let mut owner = LineClient::connect(server.addr());
    owner.send(&format!(
        "HELLO car-9 token={} heartbeat=30",
        expected_token("car-9")
    ));
    let session = welcome_session(&owner.reply());

    let mut intruder = LineClient::connect(server.addr());
    intruder.send(&format!(
        "HELLO car-9 token={} heartbeat=30",
        expected_token("car-10")
    ));
    let reply = intruder.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::Unauthorized),
        "{reply}"
    );
    intruder.send("HELLO car-9");
    let reply = intruder.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::Unauthorized),
        "{reply}"
    );

    // The owner was not kicked: its next line is the PONG, not KICKED.
    owner.assert_alive("still-mine");
    assert!(server
        .events_matching(|e| e["event"] == "session_taken_over")
        .is_empty());
    let sessions = server.admin_get("/sessions").json();
    let rows = sessions.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{sessions}");
    assert_eq!(rows[0]["session"], session.as_str(), "{sessions}");
    assert_eq!(
        rows[0]["peer"],
        owner.local_addr().to_string().as_str(),
        "{sessions}"
    );
}

#[test]
fn a_non_loopback_listen_address_needs_a_secret_or_insecure() {
    let data = TempDir::new("exposed");
    let data_arg = data.path().to_str().unwrap();
    let output = run_hangup(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--admin",
        "127.0.0.1:0",
        "--data-dir",
        data_arg,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    for needle in ["--auth-secret", "--insecure", "0.0.0.0"] {
        assert!(stderr.contains(needle), "no `{needle}` in: {stderr}");
    }

    // The admin endpoint is guarded the same way.
    let output = run_hangup(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "0.0.0.0:0",
        "--data-dir",
        data_arg,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    for needle in ["--admin", "--auth-secret", "--insecure"] {
        assert!(stderr.contains(needle), "no `{needle}` in: {stderr}");
    }

    // With --insecure it starts (reached here over loopback only).
    let server = TestServer::start_listening_on("0.0.0.0:0", &["--insecure"], |_| {});
    let port = server.addr().port();
    let mut client = LineClient::connect(([127, 0, 0, 1], port).into());
    client.assert_alive("insecure");

    // With a secret it starts too.
    let secret = Secret::new();
    let server =
        TestServer::start_listening_on("0.0.0.0:0", &["--auth-secret", &secret.arg()], |_| {});
    let mut client = LineClient::connect(([127, 0, 0, 1], server.addr().port()).into());
    client.assert_alive("with-secret");
}

#[test]
fn an_empty_or_missing_secret_file_is_refused_naming_the_flag() {
    let dir = TempDir::new("empty-secret");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let data_arg = dir.path().join("data");
    for file in [empty, dir.path().join("missing")] {
        let output = run_hangup(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--data-dir",
            data_arg.to_str().unwrap(),
            "--auth-secret",
            file.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "it started: {stderr}");
        assert!(stderr.contains("--auth-secret"), "{stderr}");
    }
}
