//! Runs the `reconnecting_client` example's own code against a line server written
//! here: a session, its greeting answered, GOAWAY, a reconnect with HELLO, and the
//! takeover that ends it.

#[allow(dead_code)] // the example's `main`
#[path = "../examples/reconnecting_client.rs"]
mod example;

use std::time::Duration;

use hangup::client::Backoff;
use hangup::{parse_line, Command, Heartbeat, Reply, SessionId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(10);

/// Answers HELLO and PING; then, after the greeting, sends `last` and closes.
async fn serve(stream: TcpStream, session: u64, last: Reply) -> Vec<String> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut heard = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        heard.push(line.clone());
        let mut replies = Vec::new();
        match parse_line(line.as_bytes(), 1).unwrap() {
            Some(Command::Hello { heartbeat, .. }) => {
                Reply::Welcome(SessionId(session), Heartbeat::grant(heartbeat)).encode(&mut replies)
            }
            Some(Command::Ping(data)) if !data.is_empty() => {
                Reply::Pong(data).encode(&mut replies);
                last.encode(&mut replies);
                write.write_all(&replies).await.unwrap();
                return heard;
            }
            Some(Command::Ping(_)) => Reply::Pong(String::new()).encode(&mut replies),
            _ => {}
        }
        write.write_all(&replies).await.unwrap();
    }
    heard
}

#[tokio::test]
async fn the_example_keeps_its_session_across_goaway_until_kicked() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (first, _) = listener.accept().await.unwrap();
        let mut heard = serve(first, 1, Reply::GoawayShutdown).await;
        let (second, _) = listener.accept().await.unwrap();
        heard.extend(serve(second, 2, Reply::KickedTakeover).await);
        heard
    });

    let mut config = example::config(addr.clone(), "lamp-3".to_owned());
    config.backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, example::run(config, &mut out))
        .await
        .expect("the example ends when kicked")
        .unwrap();

    let heard = server.await.unwrap();
    let hello = "HELLO lamp-3 heartbeat=5";
    assert_eq!(
        heard,
        [
            hello,
            "PING hello from lamp-3",
            hello,
            "PING hello from lamp-3"
        ]
    );
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let open =
        |id: &str| format!("session {id} open: heartbeat 5s, server dead after 7.5s of silence");
    assert_eq!(lines[0], format!("connected to {addr}"), "{out}");
    assert_eq!(lines[1], open("0000000000000001"), "{out}");
    assert_eq!(lines[2], "server: PONG hello from lamp-3", "{out}");
    assert_eq!(lines[3], "server: GOAWAY shutdown", "{out}");
    assert_eq!(lines[4], "the server shut down", "{out}");
    assert!(lines[5].starts_with("reconnecting in "), "{out}");
    assert_eq!(lines[6], format!("connected to {addr}"), "{out}");
    assert_eq!(lines[7], open("0000000000000002"), "{out}");
    assert_eq!(lines[8], "server: PONG hello from lamp-3", "{out}");
    assert_eq!(lines[9], "another connection took the device over", "{out}");
    assert_eq!(lines.len(), 10, "{out}");
}
