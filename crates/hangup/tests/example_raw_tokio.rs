//! The raw tokio example, run for real on loopback: a client that closes stops its
//! work; a client that half-closed gets its answer; a plain request is answered.
#![cfg(target_os = "linux")]

#[path = "../examples/raw_tokio.rs"]
#[allow(dead_code)]
mod example;

use std::time::Duration;

use hangup::CancellationToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example::serve(listener));
    addr
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered() {
    let addr = start().await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"WORK 1000\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(WAIT, client.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let expected = example::work(1000, &CancellationToken::new()).unwrap();
    assert_eq!(reply, format!("RESULT {expected}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_keeps_its_answer() {
    let addr = start().await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    // Enough rounds to outlast the probe window on any machine.
    client.write_all(b"WORK 400000000\n").await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(120), client.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let expected = example::work(400_000_000, &CancellationToken::new()).unwrap();
    assert_eq!(
        reply,
        format!("\nRESULT {expected}\n"),
        "the probe, then the answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_stops_the_work() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let handler = tokio::spawn(example::handle(stream));
    // Hours of work on this machine, were it not stopped.
    client.write_all(b"WORK 100000000000000\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(client);
    let outcome = tokio::time::timeout(WAIT, handler)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        example::Outcome::Cancelled(hangup::Cause::PeerClosed)
    );
}
