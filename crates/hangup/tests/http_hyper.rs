//! The plain hyper integration on real loopback sockets: FIN, RST, a pipelined second
//! request and an unread body all stop the handler's work; OnFin::Finish answers a
//! half-closed client; a dropped handler future cancels its token.
#![cfg(target_os = "linux")]

mod http_common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hangup::http::OnFin;
use hangup::{Cause, LivenessPolicy};
use http_common::*;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A hyper server whose handler runs blocking work until its request's token fires.
/// `?drop` makes the handler give up on its own work after 100 ms (the future holding
/// the RequestHangup is dropped).
async fn start(on_fin: OnFin) -> (SocketAddr, mpsc::UnboundedReceiver<Outcome>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let policy = LivenessPolicy::from_dead_after(Duration::from_secs(10));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (io, connection) = hangup::http::hyper::wrap(stream, &policy, on_fin).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let hangup = connection.request();
                    let tx = tx.clone();
                    async move {
                        let limit = if request.uri().query() == Some("short") {
                            Duration::from_millis(300)
                        } else {
                            Duration::from_secs(30)
                        };
                        let token = hangup.token();
                        let connection = hangup.connection().clone();
                        let report = tx.clone();
                        // Reported from the work's thread: hyper may drop this future.
                        let job = tokio::task::spawn_blocking(move || {
                            let cancelled = work(&token, limit);
                            let cause = cancelled.then(|| connection.cause()).flatten();
                            let _ = report.send(Outcome { cancelled, cause });
                            cancelled
                        });
                        if request.uri().query() == Some("drop") {
                            let watcher = hangup.token();
                            // Dropping the handler's future (here: giving up on it)
                            // cancels the request's token, so the work stops.
                            drop(
                                tokio::time::timeout(Duration::from_millis(100), async move {
                                    let _held = hangup;
                                    std::future::pending::<()>().await
                                })
                                .await,
                            );
                            let _ = job.await;
                            assert!(watcher.is_cancelled());
                            return Ok::<_, Infallible>(hyper::Response::new(
                                "dropped\n".to_string(),
                            ));
                        }
                        let _ = job.await;
                        Ok::<_, Infallible>(hyper::Response::new("done\n".to_string()))
                    }
                });
                let _ = http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_cancels_the_work() {
    let (addr, mut outcomes) = start(OnFin::Cancel).await;
    let got = hang_up_during(addr, request("/").as_bytes(), HangUp::Close, &mut outcomes).await;
    assert_eq!(got, cancelled_by(Cause::PeerClosed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_cancels_the_work() {
    let (addr, mut outcomes) = start(OnFin::Cancel).await;
    let got = hang_up_during(addr, request("/").as_bytes(), HangUp::Reset, &mut outcomes).await;
    assert_eq!(got, cancelled_by(Cause::PeerReset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_second_request_does_not_hide_the_hangup() {
    let (addr, mut outcomes) = start(OnFin::Cancel).await;
    let two = format!("{}{}", request("/"), request("/"));
    let first = hang_up_during(addr, two.as_bytes(), HangUp::Close, &mut outcomes).await;
    assert!(first.cancelled, "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_post_body_does_not_hide_the_hangup() {
    let (addr, mut outcomes) = start(OnFin::Cancel).await;
    let body = post_with_body("/", 64 * 1024);
    let got = hang_up_during(addr, &body, HangUp::Close, &mut outcomes).await;
    assert!(got.cancelled, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_cancels_by_default_and_is_answered_with_finish() {
    let (addr, mut outcomes) = start(OnFin::Cancel).await;
    let mut client = send(addr, request("/?short").as_bytes()).await;
    settle().await;
    client.shutdown().await.unwrap();
    assert_eq!(
        outcome(&mut outcomes).await,
        Outcome {
            cancelled: true,
            cause: Some(Cause::PeerClosed)
        }
    );

    let (addr, mut outcomes) = start(OnFin::Finish).await;
    let mut client = send(addr, request("/?short").as_bytes()).await;
    settle().await;
    client.shutdown().await.unwrap();
    assert_eq!(
        outcome(&mut outcomes).await,
        Outcome {
            cancelled: false,
            cause: None
        }
    );
    let response = read_all(&mut client).await;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("done\n"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handler_cancels_its_token() {
    let (addr, mut outcomes) = start(OnFin::Cancel).await;
    let mut client = send(addr, request("/?drop").as_bytes()).await;
    let got = outcome(&mut outcomes).await;
    assert!(got.cancelled, "{got:?}");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut client, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("dropped\n"));
}
