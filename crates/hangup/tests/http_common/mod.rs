//! Shared by the HTTP integration tests: raw-socket clients that hang up in each way a
//! client can, and the blocking work the handlers run.
#![allow(dead_code)]

#[path = "../support/mod.rs"]
mod support;
pub use support::{reset, WAIT};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hangup::{CancellationToken, Cause};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a handler's work reports when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The token fired before the work was done.
    pub cancelled: bool,
    /// The cause the request's hangup state gave.
    pub cause: Option<Cause>,
}

/// CPU work that runs until `token` fires or for `limit`.
pub fn work(token: &CancellationToken, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if token.is_cancelled() {
            return true;
        }
        std::hint::black_box((0..1000u64).sum::<u64>());
    }
    false
}

/// Waits for the next outcome.
pub async fn outcome(rx: &mut mpsc::UnboundedReceiver<Outcome>) -> Outcome {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the work did not end in time")
        .expect("the server is gone")
}

/// A GET request line for `path`.
pub fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// Connects and sends `bytes`.
pub async fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Lets the server start the handler before the client hangs up.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// How a test client hangs up.
#[derive(Debug, Clone, Copy)]
pub enum HangUp {
    /// A plain close: FIN.
    Close,
    /// `SO_LINGER` 0, then close: RST.
    Reset,
}

/// Sends `bytes` to `addr`, lets the handler start, hangs up as `how` says and returns
/// what the work reported.
pub async fn hang_up_during(
    addr: SocketAddr,
    bytes: &[u8],
    how: HangUp,
    outcomes: &mut mpsc::UnboundedReceiver<Outcome>,
) -> Outcome {
    let client = send(addr, bytes).await;
    settle().await;
    match how {
        HangUp::Close => drop(client),
        HangUp::Reset => reset(client),
    }
    outcome(outcomes).await
}

/// The outcome of work cancelled by a hangup with `cause`.
pub fn cancelled_by(cause: Cause) -> Outcome {
    Outcome {
        cancelled: true,
        cause: Some(cause),
    }
}

/// Reads the whole response (until the server closes or `WAIT`).
pub async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A POST whose body the handler never reads.
pub fn post_with_body(path: &str, body_len: usize) -> Vec<u8> {
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {body_len}\r\n\r\n")
            .into_bytes();
    request.extend(std::iter::repeat_n(b'x', body_len));
    request
}

/// Runs a real HTTP client (`curl`, `python3`) that gives up after `give_up`.
pub async fn run_client(program: &str, args: &[&str]) -> Option<std::process::ExitStatus> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    match command.status().await {
        Ok(status) => Some(status),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => panic!("{program}: {err}"),
    }
}

/// `python3` with `http.client`, giving up after 0.3 s.
pub fn python_client_script(addr: SocketAddr, path: &str) -> String {
    format!(
        "import http.client, socket\n\
         c = http.client.HTTPConnection('{}', {}, timeout=0.3)\n\
         c.request('GET', '{path}')\n\
         try:\n    c.getresponse()\nexcept socket.timeout:\n    pass\n\
         c.close()\n",
        addr.ip(),
        addr.port()
    )
}
