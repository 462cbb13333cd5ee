//! PeerWatch on real loopback sockets: FIN and RST told apart with unread data queued,
//! no data consumed, no readiness stolen from the socket's reader, no wake-up for plain
//! data, and no spinning after a FIN.
#![cfg(target_os = "linux")]

mod support;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use hangup::{Cause, PeerState, PeerWatch};
use support::{pair, reset, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts how often a future's task is woken.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `future` once with a counting waker; the count and whether it finished.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>, waker: &Arc<CountingWaker>) -> bool {
    let waker = Waker::from(waker.clone());
    future.poll(&mut Context::from_waker(&waker)).is_ready()
}

#[tokio::test]
async fn fin_with_unread_data_is_peer_closed_and_the_data_stays() {
    let (mut client, mut server) = pair().await;
    client
        .write_all(b"first request\nsecond request\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    drop(client);

    let mut watch = PeerWatch::new(&server).unwrap();
    let cause = tokio::time::timeout(WAIT, watch.closed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cause, Cause::PeerClosed);
    // Asked again, the same answer, at once.
    assert_eq!(watch.closed().await.unwrap(), Cause::PeerClosed);
    drop(watch);

    let mut data = Vec::new();
    server.read_to_end(&mut data).await.unwrap();
    assert_eq!(data, b"first request\nsecond request\n");
}

#[tokio::test]
async fn rst_with_unread_data_is_peer_reset_every_time_it_is_asked() {
    let (mut client, server) = pair().await;
    client
        .write_all(b"pipelined bytes nobody reads")
        .await
        .unwrap();
    let mut watch = PeerWatch::new(&server).unwrap();
    reset(client);

    let cause = tokio::time::timeout(WAIT, watch.closed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cause, Cause::PeerReset);
    for _ in 0..3 {
        assert_eq!(watch.state().unwrap(), PeerState::Gone(Cause::PeerReset));
        assert_eq!(watch.gone().await.unwrap(), Cause::PeerReset);
        assert_eq!(watch.closed().await.unwrap(), Cause::PeerReset);
    }
}

#[tokio::test]
async fn a_fin_or_rst_before_the_watch_started_is_reported() {
    let (client, server) = pair().await;
    reset(client);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut watch = PeerWatch::new(&server).unwrap();
    assert_eq!(watch.state().unwrap(), PeerState::Gone(Cause::PeerReset));
}

#[tokio::test]
async fn plain_data_never_wakes_the_watch() {
    let (mut client, server) = pair().await;
    let mut watch = PeerWatch::new(&server).unwrap();
    let wakes = Arc::new(CountingWaker::default());
    {
        let mut closed = pin!(watch.closed());
        assert!(!poll_once(closed.as_mut(), &wakes));
        for i in 0..50 {
            client
                .write_all(format!("line {i}\n").as_bytes())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "woken by plain data");

        client.shutdown().await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while wakes.0.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(wakes.0.load(Ordering::SeqCst) >= 1, "not woken by the FIN");
        assert!(poll_once(closed.as_mut(), &wakes));
    }
    assert_eq!(watch.state().unwrap(), PeerState::HalfClosed);
}

#[tokio::test]
async fn after_a_fin_gone_waits_without_spinning_until_the_rst() {
    let (mut client, server) = pair().await;
    let mut watch = PeerWatch::new(&server).unwrap();
    client.shutdown().await.unwrap(); // half-close: the client still reads
    assert_eq!(watch.closed().await.unwrap(), Cause::PeerClosed);

    let wakes = Arc::new(CountingWaker::default());
    {
        let mut gone = pin!(watch.gone());
        assert!(!poll_once(gone.as_mut(), &wakes));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "spun after the FIN");
        assert!(!poll_once(gone.as_mut(), &wakes));
    }
    reset(client);
    let cause = tokio::time::timeout(WAIT, watch.gone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cause, Cause::PeerReset);
}

#[tokio::test]
async fn the_owner_keeps_its_readiness_while_the_watch_waits() {
    let (mut client, server) = pair().await;
    let server = Arc::new(server);
    // The owner: a reader task awaiting readiness on the same socket.
    let reader = tokio::spawn({
        let server = server.clone();
        async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                server.readable().await.unwrap();
                match server.try_read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(err) => panic!("read: {err}"),
                }
            }
        }
    });
    let watcher = tokio::spawn({
        let server = server.clone();
        async move {
            let mut watch = PeerWatch::new(&*server).unwrap();
            watch.closed().await.unwrap()
        }
    });
    for i in 0..100 {
        client
            .write_all(format!("message {i}\n").as_bytes())
            .await
            .unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    client.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    let expected: String = (0..100).map(|i| format!("message {i}\n")).collect();
    assert_eq!(String::from_utf8(got).unwrap(), expected);
    let cause = tokio::time::timeout(WAIT, watcher).await.unwrap().unwrap();
    assert_eq!(cause, Cause::PeerClosed);
}

#[tokio::test]
async fn many_watches_waiting_on_one_socket_are_all_woken() {
    let (client, server) = pair().await;
    let server = Arc::new(server);
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { PeerWatch::new(&*server).unwrap().closed().await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    reset(client);
    let mut causes = Vec::new();
    for task in waiting {
        causes.push(tokio::time::timeout(WAIT, task).await.unwrap().unwrap());
    }
    // The errno is read once, by whichever watch gets there first; every watch knows
    // the connection is gone.
    assert!(causes.contains(&Cause::PeerReset), "{causes:?}");
    assert!(causes
        .iter()
        .all(|c| matches!(c, Cause::PeerReset | Cause::PeerClosed)));
}

#[tokio::test]
async fn dropping_the_watch_leaves_the_socket_usable() {
    let (mut client, mut server) = pair().await;
    let watch = PeerWatch::new(&server).unwrap();
    drop(watch);
    client.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(b"pong\n").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong\n");
}
