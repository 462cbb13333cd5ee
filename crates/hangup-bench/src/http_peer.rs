//! `hangup bench http-peer`: the reference HTTP servers of `bench http`, one per process.
//!
//! Every server has the same two routes and the same work; only the way the work learns
//! that its client is gone differs:
//!
//! - `axum`, `hyper`: what a careful user of plain axum 0.8 / hyper 1 writes. The
//!   handler makes a `CancellationToken`, holds its drop guard and hands the token to
//!   the work on the blocking pool: when hyper drops the handler future (it read the
//!   client's EOF or an error), the guard cancels the work.
//! - `axum-hangup`, `hyper-hangup`: the token is the request's hangup token
//!   (`hangup::http::axum::Hangup`, `Connection::request()`), which also fires when the
//!   handler is dropped.
//!
//! `/work?ms=N` runs the work until its token fires or N ms pass (default 60 s);
//! `/ok` answers `ok` (the hangup variants take the request's token there too, and do
//! nothing with it); `/no-token` answers `ok` without taking a token (in the hangup
//! variants only their listener or wrapper is in the way). The server prints `listening` with its address, then
//! `work_started` and `work_stopped` (with `cancelled`) for each work, one JSON object
//! a line on stderr, each with `ts_ns` (Unix ns) taken where it happened, and the
//! client's address as `peer`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::ConnectInfo;
use axum::http::Uri;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use hangup::events::ts_ns;
use hangup::http::axum::{Hangup, HangupListener};
use hangup::http::{Connection, OnFin};
use hangup::LivenessPolicy;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The reference servers of `bench http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpServerKind {
    /// Plain axum 0.8 (`axum::serve`); the handler cancels its work with a drop guard.
    Axum,
    /// axum with `hangup::http::axum::HangupListener` and the `Hangup` extractor.
    AxumHangup,
    /// Plain hyper 1 `http1::serve_connection`, with the same drop guard.
    Hyper,
    /// hyper with `hangup::http::hyper::wrap` and `Connection::request()`.
    HyperHangup,
}

impl HttpServerKind {
    /// Every kind, in report order.
    pub const ALL: [HttpServerKind; 4] = [
        HttpServerKind::Axum,
        HttpServerKind::AxumHangup,
        HttpServerKind::Hyper,
        HttpServerKind::HyperHangup,
    ];

    /// The name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpServerKind::Axum => "axum",
            HttpServerKind::AxumHangup => "axum-hangup",
            HttpServerKind::Hyper => "hyper",
            HttpServerKind::HyperHangup => "hyper-hangup",
        }
    }

    /// Whether this is one of the hangup variants.
    pub fn is_hangup(self) -> bool {
        matches!(
            self,
            HttpServerKind::AxumHangup | HttpServerKind::HyperHangup
        )
    }
}

impl std::fmt::Display for HttpServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HttpServerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                format!("expected `axum`, `axum-hangup`, `hyper` or `hyper-hangup`, got `{s}`")
            })
    }
}

/// What `hangup bench http-peer` runs.
#[derive(Debug, Clone)]
pub struct HttpPeerSettings {
    /// Which server.
    pub server: HttpServerKind,
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    /// With a hangup server: serve a client that half-closes (`OnFin::Finish`).
    pub finish_on_fin: bool,
}

/// The work's cap when the request names none.
const DEFAULT_CAP: Duration = Duration::from_secs(60);

/// Runs one reference server until killed (`hangup bench http-peer`).
pub fn http_peer(args: &HttpPeerSettings) -> anyhow::Result<ExitCode> {
    if args.finish_on_fin && !args.server.is_hangup() {
        bail!("--finish-on-fin needs a hangup server (plain axum and hyper cancel on FIN)");
    }
    die_with_parent();
    let on_fin = if args.finish_on_fin {
        OnFin::Finish
    } else {
        OnFin::Cancel
    };
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("could not listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        emit(&format!(
            r#"{{"event":"listening","ts_ns":{},"addr":"{addr}","server":"{}"}}"#,
            ts_ns(),
            args.server.as_str()
        ));
        match args.server {
            HttpServerKind::Axum => serve_axum(listener).await,
            HttpServerKind::AxumHangup => serve_axum_hangup(listener, on_fin).await,
            HttpServerKind::Hyper => serve_hyper(listener).await,
            HttpServerKind::HyperHangup => serve_hyper_hangup(listener, on_fin).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The bench kills its peers by pid when it ends; should it die without doing so, the
/// kernel ends them too.
fn die_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

/// The liveness policy of the hangup variants, as in the crate's examples.
fn policy() -> LivenessPolicy {
    LivenessPolicy::from_dead_after(Duration::from_secs(30))
}

/// One line on stderr, in one write, so that lines from several threads never mix.
fn emit(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(format!("{line}\n").as_bytes());
}

/// `?ms=N` of a request, or the default cap.
fn cap_of(uri: &Uri) -> Duration {
    uri.query()
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse().ok())
        .map_or(DEFAULT_CAP, Duration::from_millis)
}

/// The work every server runs: CPU in slices of about a microsecond, checking `token`
/// between them, until it fires or `cap` passes. Reports its start and its end.
fn work(peer: SocketAddr, token: &CancellationToken, cap: Duration) -> bool {
    emit(&format!(
        r#"{{"event":"work_started","ts_ns":{},"peer":"{peer}"}}"#,
        ts_ns()
    ));
    let start = Instant::now();
    let cancelled = loop {
        if token.is_cancelled() {
            break true;
        }
        if start.elapsed() >= cap {
            break false;
        }
        std::hint::black_box((0..1000u64).fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b)));
    };
    emit(&format!(
        r#"{{"event":"work_stopped","ts_ns":{},"peer":"{peer}","cancelled":{cancelled}}}"#,
        ts_ns()
    ));
    cancelled
}

/// Runs [`work`] on the blocking pool and answers with how it ended.
async fn run_work(peer: SocketAddr, token: CancellationToken, cap: Duration) -> String {
    let cancelled = tokio::task::spawn_blocking(move || work(peer, &token, cap))
        .await
        .unwrap_or(true);
    if cancelled {
        "cancelled\n".into()
    } else {
        "done\n".into()
    }
}

/// Plain axum: the handler's own token, cancelled by its drop guard when hyper drops
/// the handler.
async fn serve_axum(listener: TcpListener) -> anyhow::Result<()> {
    async fn work_route(ConnectInfo(peer): ConnectInfo<SocketAddr>, uri: Uri) -> String {
        let token = CancellationToken::new();
        let _cancel_on_drop = token.clone().drop_guard();
        run_work(peer, token, cap_of(&uri)).await
    }
    let app = Router::new()
        .route("/work", get(work_route).post(work_route))
        .route("/ok", get(|| async { "ok" }))
        .route("/no-token", get(|| async { "ok" }));
    // TCP_NODELAY as hangup's listener sets it, so that throughput compares the
    // integration, not Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// axum with hangup: `HangupListener` and the `Hangup` extractor's token.
async fn serve_axum_hangup(listener: TcpListener, on_fin: OnFin) -> anyhow::Result<()> {
    async fn work_route(hangup: Hangup, uri: Uri) -> String {
        let peer = hangup.0.connection().peer_addr();
        run_work(peer, hangup.token(), cap_of(&uri)).await
    }
    let app = Router::new()
        .route("/work", get(work_route).post(work_route))
        .route("/ok", get(|_hangup: Hangup| async { "ok" }))
        .route("/no-token", get(|| async { "ok" }));
    let listener = HangupListener::new(listener, policy()).on_fin(on_fin);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Connection>(),
    )
    .await?;
    Ok(())
}

type Response = hyper::Response<String>;

fn not_found() -> Response {
    let mut response = Response::new(String::new());
    *response.status_mut() = hyper::StatusCode::NOT_FOUND;
    response
}

/// Accepts until the listener fails for good; EMFILE and friends wait a little, as
/// axum's listener does.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Plain hyper: `http1::serve_connection`, the same drop guard in the service.
async fn serve_hyper(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = accept(&listener).await;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let cap = cap_of(request.uri());
                let path = request.uri().path().to_owned();
                async move {
                    Ok::<_, Infallible>(match path.as_str() {
                        "/work" => {
                            let token = CancellationToken::new();
                            let _cancel_on_drop = token.clone().drop_guard();
                            Response::new(run_work(peer, token, cap).await)
                        }
                        "/ok" | "/no-token" => Response::new("ok".into()),
                        _ => not_found(),
                    })
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// hyper with hangup: `hangup::http::hyper::wrap` and each request's
/// `Connection::request()` token.
async fn serve_hyper_hangup(listener: TcpListener, on_fin: OnFin) -> anyhow::Result<()> {
    let policy = policy();
    loop {
        let (stream, _) = accept(&listener).await;
        let Ok((io, connection)) = hangup::http::hyper::wrap(stream, &policy, on_fin) else {
            continue; // the client is already gone
        };
        tokio::spawn(async move {
            let peer = connection.peer_addr();
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let hangup = connection.request();
                let cap = cap_of(request.uri());
                let path = request.uri().path().to_owned();
                async move {
                    Ok::<_, Infallible>(match path.as_str() {
                        "/work" => Response::new(run_work(peer, hangup.token(), cap).await),
                        "/ok" | "/no-token" => Response::new("ok".into()),
                        _ => not_found(),
                    })
                }
            });
            let _ = http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
