//! `hangup client` notices its server's death while idle at the prompt (SPEC §6): a
//! FIN from a killed server, an RST from a resetting one; with input that ends it
//! half-closes and still gets its result; without `--once` it reconnects.
#![cfg(target_os = "linux")]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use common::{chain_hex, ClientProcess, TestServer, PATIENCE};

#[test]
fn once_exits_with_peer_closed_when_the_server_is_killed_while_idle() {
    let mut server = TestServer::start(&[]);
    let addr = server.addr().to_string();
    let mut client = ClientProcess::start(&[&addr, "--once"]);
    client.wait_stderr("connected to", 1);
    server
        .wait_event(|e| e["event"] == "connection_opened", PATIENCE)
        .expect("the server saw the client");
    server.kill(); // SIGKILL: the kernel closes the server's sockets with FIN

    let status = client.wait_exit();
    assert_eq!(status.code(), Some(1), "stderr:\n{}", client.stderr());
    let stderr = client.stderr();
    assert!(stderr.contains("connection lost: peer_closed"), "{stderr}");
}

#[test]
fn once_exits_with_peer_reset_when_the_server_resets() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut client = ClientProcess::start(&[&addr, "--once"]);
    let (mut stream, _) = listener.accept().unwrap();
    stream.write_all(b"PONG from-a-tiny-server\n").unwrap();
    client.wait_stdout("PONG from-a-tiny-server");
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream); // RST

    let status = client.wait_exit();
    assert_eq!(status.code(), Some(1), "stderr:\n{}", client.stderr());
    let stderr = client.stderr();
    assert!(stderr.contains("connection lost: peer_reset"), "{stderr}");
}

/// `printf 'JOB 3\n' | hangup client ADDR --once`: input ends, the client half-closes,
/// and under the default `probe` policy the server still sends the result.
#[test]
fn piped_input_gets_its_result_after_the_half_close() {
    let server = TestServer::start(&[]);
    let addr = server.addr().to_string();
    let mut client = ClientProcess::start(&[&addr, "--once"]);
    client.type_line("JOB 3");
    drop(client.stdin.take()); // end of input

    let status = client.wait_exit();
    assert!(status.success(), "{status}; stderr:\n{}", client.stderr());
    // The pipe may still hold the last bytes when the process is gone.
    client.wait_stdout("DONE 1 ");
    assert_eq!(
        client.stdout(),
        format!("ACCEPTED 1\nDONE 1 {}\n", chain_hex("hangup", 3))
    );
}

#[test]
fn without_once_the_client_reconnects_to_a_restarted_server() {
    let mut server = TestServer::start(&[]);
    let listen = server.addr().to_string();
    let mut client = ClientProcess::start(&[&listen]);
    client.wait_stderr("connected to", 1);
    server
        .wait_event(|e| e["event"] == "connection_opened", PATIENCE)
        .expect("the server saw the client");
    server.kill();

    client.wait_stderr("connection lost: peer_closed", 1);
    client.wait_stderr("reconnecting in", 1);
    assert!(
        client.child.try_wait().unwrap().is_none(),
        "the client exited"
    );

    // A new server on the same port: the client comes back by itself.
    let mut restarted = TestServer::start_listening_on(&listen, &[], |_| {});
    restarted
        .wait_event(|e| e["event"] == "connection_opened", PATIENCE)
        .expect("the client reconnected");
    client.wait_stderr("connected to", 2);
    client.type_line("PING again");
    client.wait_stdout("PONG again");
}
