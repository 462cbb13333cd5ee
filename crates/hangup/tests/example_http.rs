//! The axum and hyper examples, run for real: a request is answered, and a client that
//! hangs up (here with a pipelined request still unread) stops the work.
#![cfg(target_os = "linux")]

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod axum_example;
#[path = "../examples/hyper_server.rs"]
#[allow(dead_code)]
mod hyper_example;

use std::time::Duration;

use hangup::http::{Connection, OnFin, WatchedStream};
use hangup::{Cause, LivenessPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, client.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_example_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum_example::serve(listener));
    let response = get(addr, "/sum?n=1000").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("499500\n"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_example_answers_and_stops_on_hangup() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hyper_example::serve(listener));
    let response = get(addr, "/?n=1000").await;
    assert!(response.ends_with("499500\n"), "{response}");

    // The example's handler on a connection of our own, so the test sees its result.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let policy = LivenessPolicy::from_dead_after(Duration::from_secs(10));
    let stream = WatchedStream::new(stream, &policy, OnFin::Cancel).unwrap();
    let connection: Connection = stream.connection().clone();
    let handler = tokio::spawn(hyper_example::handle(u64::MAX, connection.request()));
    client
        .write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(client);
    let result = tokio::time::timeout(WAIT, handler).await.unwrap().unwrap();
    assert_eq!(result, None, "the work stopped");
    assert_eq!(connection.cause(), Some(Cause::PeerClosed));
    drop(stream);
}
