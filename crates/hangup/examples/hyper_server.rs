//! A plain hyper server whose requests carry a hangup token: the blocking work stops
//! the moment the client hangs up.
//!
//! ```text
//! cargo run -p hangup --features hyper --example hyper_server -- 127.0.0.1:3001
//! curl -m 1 'http://127.0.0.1:3001/?n=100000000000'
//! ```

use std::convert::Infallible;
use std::time::Duration;

use hangup::http::{OnFin, RequestHangup};
use hangup::LivenessPolicy;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};

/// Sums 0..n (from `?n=`), stopping when the client hangs up; `None` if it did.
pub async fn handle(n: u64, hangup: RequestHangup) -> Option<u64> {
    let token = hangup.token();
    tokio::task::spawn_blocking(move || {
        let mut sum = 0u64;
        for i in 0..n {
            if i % 4096 == 0 && token.is_cancelled() {
                return None;
            }
            sum = sum.wrapping_add(i);
        }
        Some(sum)
    })
    .await
    .unwrap()
}

/// Accepts connections from `listener` and serves them with hyper's http1.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let policy = LivenessPolicy::from_dead_after(Duration::from_secs(30));
    loop {
        let (stream, _) = listener.accept().await?;
        let (io, connection) = hangup::http::hyper::wrap(stream, &policy, OnFin::Cancel)?;
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let hangup = connection.request();
                let n = request
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("n="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1000);
                async move {
                    let body = match handle(n, hangup).await {
                        Some(sum) => format!("{sum}\n"),
                        None => String::new(),
                    };
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            let _ = http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    serve(listener).await
}
