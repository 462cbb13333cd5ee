//! The axum integration on real loopback sockets and real clients: each way a client
//! hangs up stops the handler's blocking work (FIN, RST, a pipelined second request
//! buffered, a POST body unread, curl and Python giving up); a half-close is cancelled
//! or answered as configured; a route drops its handler on hangup or lets it finish.
#![cfg(target_os = "linux")]

mod http_common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::{middleware, routing::get, routing::post, Router};
use hangup::http::axum::{drop_on_hangup, finish_detached, Hangup, HangupListener};
use hangup::http::{Connection, OnFin};
use hangup::{Cause, LivenessPolicy};
use http_common::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

#[derive(Clone)]
struct App {
    outcomes: mpsc::UnboundedSender<Outcome>,
    events: mpsc::UnboundedSender<&'static str>,
}

#[derive(serde::Deserialize)]
struct Limit {
    ms: Option<u64>,
}

async fn compute(State(app): State<App>, limit: Query<Limit>, hangup: Hangup) -> String {
    let token = hangup.token();
    let connection = hangup.0.connection().clone();
    let limit = Duration::from_millis(limit.ms.unwrap_or(30_000));
    // The work reports from its own thread: hyper may drop this handler when it reads
    // the client's EOF itself, and the work must stop then too.
    tokio::task::spawn_blocking(move || {
        let cancelled = work(&token, limit);
        let cause = cancelled.then(|| connection.cause()).flatten();
        let _ = app.outcomes.send(Outcome { cancelled, cause });
    })
    .await
    .unwrap();
    "done\n".into()
}

/// Never returns; says when it is dropped.
async fn forever(State(app): State<App>) -> String {
    struct Sentinel(mpsc::UnboundedSender<&'static str>);
    impl Drop for Sentinel {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }
    let _sentinel = Sentinel(app.events.clone());
    std::future::pending::<()>().await;
    unreachable!()
}

async fn side_effect(State(app): State<App>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = app.events.send("finished");
    "ok\n"
}

struct Harness {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    events: mpsc::UnboundedReceiver<&'static str>,
}

impl Harness {
    /// A GET of `path`, hung up as `how` says once its handler runs: what the work
    /// reported.
    async fn hang_up_during(&mut self, path: &str, how: HangUp) -> Outcome {
        let bytes = request(path);
        hang_up_during(self.addr, bytes.as_bytes(), how, &mut self.outcomes).await
    }

    /// The next thing a handler said.
    async fn event(&mut self) -> &'static str {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("no handler event in time")
            .expect("the server is gone")
    }
}

async fn start(on_fin: OnFin) -> Harness {
    let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/work", get(compute))
        .route("/upload", post(compute))
        .route(
            "/forever",
            get(forever).layer(middleware::from_fn(drop_on_hangup)),
        )
        .route(
            "/detached",
            get(side_effect).layer(middleware::from_fn(finish_detached)),
        )
        .with_state(App {
            outcomes: outcomes_tx,
            events: events_tx,
        });
    let policy = LivenessPolicy::from_dead_after(Duration::from_secs(10));
    let listener = HangupListener::bind("127.0.0.1:0", policy)
        .await
        .unwrap()
        .on_fin(on_fin);
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<Connection>(),
        )
        .await
        .unwrap()
    });
    Harness {
        addr,
        outcomes,
        events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_cancels_the_work() {
    let mut h = start(OnFin::Cancel).await;
    let got = h.hang_up_during("/work", HangUp::Close).await;
    assert_eq!(got, cancelled_by(Cause::PeerClosed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_cancels_the_work() {
    let mut h = start(OnFin::Cancel).await;
    let got = h.hang_up_during("/work", HangUp::Reset).await;
    assert_eq!(got, cancelled_by(Cause::PeerReset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_second_request_does_not_hide_the_hangup() {
    let mut h = start(OnFin::Cancel).await;
    let two = format!("{}{}", request("/work"), request("/work"));
    // The second request is still unread in the server's socket at the close.
    let first = hang_up_during(h.addr, two.as_bytes(), HangUp::Close, &mut h.outcomes).await;
    assert!(first.cancelled, "{first:?}");
    assert!(
        matches!(first.cause, Some(Cause::PeerClosed | Cause::PeerReset)),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_post_body_does_not_hide_the_hangup() {
    let mut h = start(OnFin::Cancel).await;
    // Unread bytes in the server's socket: the kernel answers the close with RST.
    let body = post_with_body("/upload", 64 * 1024);
    let got = hang_up_during(h.addr, &body, HangUp::Close, &mut h.outcomes).await;
    assert!(got.cancelled, "{got:?}");
    assert!(
        matches!(got.cause, Some(Cause::PeerClosed | Cause::PeerReset)),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_cancels_by_default() {
    let mut h = start(OnFin::Cancel).await;
    let mut client = send(h.addr, request("/work").as_bytes()).await;
    settle().await;
    client.shutdown().await.unwrap(); // FIN, still reading
    assert_eq!(
        outcome(&mut h.outcomes).await,
        cancelled_by(Cause::PeerClosed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_answered_with_on_fin_finish() {
    let mut h = start(OnFin::Finish).await;
    let mut client = send(h.addr, request("/work?ms=300").as_bytes()).await;
    settle().await;
    client.shutdown().await.unwrap();
    assert_eq!(
        outcome(&mut h.outcomes).await,
        Outcome {
            cancelled: false,
            cause: None
        }
    );
    let response = read_all(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("done\n"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_fin_finish_an_rst_still_cancels() {
    let mut h = start(OnFin::Finish).await;
    let got = h.hang_up_during("/work", HangUp::Reset).await;
    assert_eq!(got, cancelled_by(Cause::PeerReset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_on_hangup_drops_the_handler() {
    let mut h = start(OnFin::Cancel).await;
    // Pipelined, so that hyper itself would not notice the hangup.
    let two = format!("{}{}", request("/forever"), request("/forever"));
    let client = send(h.addr, two.as_bytes()).await;
    settle().await;
    drop(client);
    assert_eq!(h.event().await, "dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_detached_runs_the_handler_to_its_end() {
    let mut h = start(OnFin::Cancel).await;
    let client = send(h.addr, request("/detached").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(client);
    assert_eq!(h.event().await, "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_completes_answers_normally() {
    let mut h = start(OnFin::Cancel).await;
    let mut client = send(h.addr, request("/work?ms=10").as_bytes()).await;
    assert_eq!(
        outcome(&mut h.outcomes).await,
        Outcome {
            cancelled: false,
            cause: None
        }
    );
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut client, &mut buf))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("done\n"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_giving_up_cancels_the_work() {
    let mut h = start(OnFin::Cancel).await;
    let url = format!("http://{}/work", h.addr);
    let Some(_status) = run_client("curl", &["-s", "-m", "0.3", &url]).await else {
        panic!("curl is not installed: scripts/test installs it");
    };
    let got = outcome(&mut h.outcomes).await;
    assert!(got.cancelled, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_client_giving_up_cancels_the_work() {
    let mut h = start(OnFin::Cancel).await;
    let script = python_client_script(h.addr, "/work");
    let Some(_status) = run_client("python3", &["-c", &script]).await else {
        panic!("python3 is not installed");
    };
    let got = outcome(&mut h.outcomes).await;
    assert!(got.cancelled, "{got:?}");
}
