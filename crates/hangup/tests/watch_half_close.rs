//! HalfClose on real loopback sockets: a probe tells a client that only half-closed
//! (keeps its answer) from one that closed (its work is cancelled); `cancel` and
//! `finish` do what they say; `cancel_on_hangup` hands the token to spawn_blocking work.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use hangup::{CancellationToken, Cause, HalfClose, PeerWatch};
use support::{pair, reset, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WINDOW: Duration = Duration::from_millis(200);

/// Work that runs until cancelled or for `limit`; how it ended.
fn endless(token: CancellationToken, limit: Duration) -> &'static str {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if token.is_cancelled() {
            return "cancelled";
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    "finished"
}

#[tokio::test]
async fn probe_a_closed_client_is_peer_closed_within_the_window() {
    let (client, server) = pair().await;
    let mut watch = PeerWatch::new(&server).unwrap();
    drop(client); // FIN; the socket is gone, so the probe is answered with RST
    let started = tokio::time::Instant::now();
    let cause = tokio::time::timeout(WAIT, watch.hangup(&HalfClose::probe(b"#\n")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cause, Cause::PeerClosed);
    // The RST answers the probe in one loopback round trip, well inside the window.
    assert!(started.elapsed() < WINDOW, "{:?}", started.elapsed());
}

#[tokio::test]
async fn probe_a_half_closed_client_keeps_its_answer_and_reads_the_probe() {
    let (mut client, mut server) = pair().await;
    client.write_all(b"JOB\n").await.unwrap();
    client.shutdown().await.unwrap(); // `nc -N`: done sending, still reading

    let token = CancellationToken::new();
    let work = tokio::task::spawn_blocking({
        let token = token.clone();
        move || endless(token, WINDOW * 3)
    });
    let mut watch = PeerWatch::new(&server).unwrap();
    let (outcome, cause) = watch
        .cancel_on_hangup(&token, &HalfClose::probe(b"#\n"), work)
        .await;
    assert_eq!(outcome.unwrap(), "finished");
    assert_eq!(cause, None);
    assert!(!token.is_cancelled());
    drop(watch);

    server.write_all(b"ANSWER\n").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = String::new();
    client.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "#\nANSWER\n");
}

#[tokio::test]
async fn probe_then_a_later_close_is_still_caught() {
    let (mut client, server) = pair().await;
    client.shutdown().await.unwrap();
    let hangup = tokio::spawn(async move {
        let mut watch = PeerWatch::new(&server).unwrap();
        watch.hangup(&HalfClose::probe(b"#\n")).await.unwrap()
    });
    // Past the window: the client is taken to be reading. Then it resets.
    tokio::time::sleep(WINDOW * 2).await;
    assert!(!hangup.is_finished());
    reset(client);
    let cause = tokio::time::timeout(WAIT, hangup).await.unwrap().unwrap();
    assert_eq!(cause, Cause::PeerReset);
}

#[tokio::test]
async fn cancel_policy_fires_on_a_half_close() {
    let (mut client, server) = pair().await;
    client.shutdown().await.unwrap();
    let token = CancellationToken::new();
    let work = tokio::task::spawn_blocking({
        let token = token.clone();
        move || endless(token, WAIT * 2)
    });
    let mut watch = PeerWatch::new(&server).unwrap();
    let (outcome, cause) = tokio::time::timeout(
        WAIT,
        watch.cancel_on_hangup(&token, &HalfClose::Cancel, work),
    )
    .await
    .unwrap();
    assert_eq!(outcome.unwrap(), "cancelled");
    assert_eq!(cause, Some(Cause::PeerClosed));
}

#[tokio::test]
async fn finish_policy_ignores_a_fin_but_not_an_rst() {
    let (client, server) = pair().await;
    let std = client.into_std().unwrap();
    std.shutdown(std::net::Shutdown::Write).unwrap();
    let mut watch = PeerWatch::new(&server).unwrap();
    let finish = HalfClose::Finish;
    assert!(tokio::time::timeout(WINDOW, watch.hangup(&finish))
        .await
        .is_err());
    socket2::SockRef::from(&std)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(std);
    let cause = tokio::time::timeout(WAIT, watch.hangup(&finish))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cause, Cause::PeerReset);
}

#[tokio::test]
async fn work_that_ends_first_returns_without_a_cause() {
    let (_client, server) = pair().await;
    let token = CancellationToken::new();
    let mut watch = PeerWatch::new(&server).unwrap();
    let (value, cause) = watch
        .cancel_on_hangup(&token, &HalfClose::Cancel, async { 42 })
        .await;
    assert_eq!((value, cause), (42, None));
    assert!(!token.is_cancelled());
}
