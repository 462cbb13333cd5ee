//! Loopback pairs and resets, shared by the library's socket tests.
#![allow(dead_code)]

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for something that takes microseconds when it works.
pub const WAIT: Duration = Duration::from_secs(10);

/// A connected loopback pair: (client, server side).
pub async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// Closes with RST: SO_LINGER 0.
pub fn reset(stream: TcpStream) {
    let std = stream.into_std().unwrap();
    socket2::SockRef::from(&std)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(std);
}
