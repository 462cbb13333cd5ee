//! `--reuse-port`: two servers share one port and the kernel spreads connections over
//! both; without it the second cannot bind.

#![cfg(target_os = "linux")]

mod common;

use common::{hangup_bin, LineClient, TestServer};

#[test]
fn two_instances_share_a_port() {
    let mut first = TestServer::start(&["--reuse-port"]);
    let listen = first.addr().to_string();
    let mut second = TestServer::start_listening_on(&listen, &["--reuse-port"], |_| {});
    assert_eq!(second.addr(), first.addr());
    // SO_REUSEPORT hashes the 4-tuple: 64 connections all landing on one of two
    // servers has probability 2^-63.
    let clients: Vec<LineClient> = (0..64)
        .map(|i| {
            let mut client = LineClient::connect(first.addr());
            client.send(&format!("PING {i}"));
            assert_eq!(client.line(), format!("PONG {i}"));
            client
        })
        .collect();
    let opened = |server: &mut TestServer| {
        server
            .events_matching(|e| e["event"] == "connection_opened")
            .len()
    };
    // Events arrive through each server's stderr pipe: give the last ones time to land.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut a, mut b) = (opened(&mut first), opened(&mut second));
    while a + b < clients.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        (a, b) = (opened(&mut first), opened(&mut second));
    }
    assert_eq!(
        a + b,
        clients.len(),
        "every connection is served exactly once"
    );
    assert!(a > 0 && b > 0, "one instance got them all: {a} and {b}");
}

#[test]
fn without_reuse_port_the_second_instance_cannot_bind() {
    let first = TestServer::start(&["--reuse-port"]);
    let output = std::process::Command::new(hangup_bin())
        .args(["serve", "--admin", "off", "--listen"])
        .arg(first.addr().to_string())
        .arg("--data-dir")
        .arg(std::env::temp_dir().join(format!("hangup-test-noreuse-{}", std::process::id())))
        .output()
        .expect("run hangup serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "second bind succeeded: {stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("hangup-test-noreuse-{}", std::process::id())),
    );
}
