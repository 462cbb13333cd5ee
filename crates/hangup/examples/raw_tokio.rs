//! A raw tokio server that stops CPU work the moment its client hangs up, and keeps
//! answering clients that only half-closed (`printf 'WORK 3000000\n' | nc -N …`).
//!
//! The protocol: a client sends `WORK <rounds>`, the server answers `RESULT <n>` after
//! `rounds` rounds of hashing. Blank lines are ignored by clients, so `\n` is the
//! half-close probe.
//!
//! ```text
//! cargo run -p hangup --example raw_tokio -- 127.0.0.1:7600
//! ```

use std::time::Duration;

use hangup::{apply_policy, CancellationToken, HalfClose, LivenessPolicy, PeerWatch};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let policy = LivenessPolicy::from_dead_after(Duration::from_secs(30));
    loop {
        let (stream, _) = listener.accept().await?;
        apply_policy(&stream, &policy)?;
        tokio::spawn(async move {
            match handle(stream).await {
                Ok(Outcome::Cancelled(cause)) => eprintln!("work cancelled: {cause}"),
                Ok(Outcome::Answered) => {}
                Err(err) => eprintln!("connection: {err}"),
            }
        });
    }
}

/// How one connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer was written.
    Answered,
    /// The client hung up first; the work stopped.
    Cancelled(hangup::Cause),
}

/// Serves one connection: one request, one answer, unless the client hangs up.
pub async fn handle(mut stream: TcpStream) -> std::io::Result<Outcome> {
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line).await?;
    let Some(rounds) = line
        .strip_prefix("WORK ")
        .and_then(|n| n.trim().parse().ok())
    else {
        stream.write_all(b"ERR expected WORK <rounds>\n").await?;
        return Ok(Outcome::Answered);
    };

    // The hangup part: a token for the work, a watch on the socket, a half-close policy.
    let token = CancellationToken::new();
    let work = tokio::task::spawn_blocking({
        let token = token.clone();
        move || work(rounds, &token)
    });
    let mut watch = PeerWatch::new(&stream)?;
    let (result, cause) = watch
        .cancel_on_hangup(&token, &HalfClose::probe(b"\n"), work)
        .await;
    drop(watch);

    match (result?, cause) {
        (Some(n), _) => {
            stream.write_all(format!("RESULT {n}\n").as_bytes()).await?;
            Ok(Outcome::Answered)
        }
        (None, cause) => Ok(Outcome::Cancelled(cause.unwrap_or(hangup::Cause::Local))),
    }
}

/// `rounds` rounds of a cheap hash, checking the token every 4096 rounds; `None` when
/// cancelled.
pub fn work(rounds: u64, token: &CancellationToken) -> Option<u64> {
    let mut x = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..rounds {
        if i % 4096 == 0 && token.is_cancelled() {
            return None;
        }
        x = (x ^ i).wrapping_mul(0x100_0000_01b3);
    }
    Some(x)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7600".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    serve(listener).await
}
