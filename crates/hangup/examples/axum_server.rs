//! An axum server whose handlers stop their CPU work when the client hangs up — also
//! with a pipelined request or an unread body buffered, where hyper alone misses it.
//!
//! ```text
//! cargo run -p hangup --features axum --example axum_server -- 127.0.0.1:3000
//! curl -m 1 'http://127.0.0.1:3000/sum?n=100000000000'   # gives up after 1 s: work stops
//! ```

use std::time::Duration;

use axum::extract::Query;
use axum::{middleware, routing::get, Router};
use hangup::http::axum::{drop_on_hangup, Hangup, HangupListener};
use hangup::http::Connection;
use hangup::LivenessPolicy;

/// `?n=`: how far to sum.
#[derive(Debug, serde::Deserialize)]
pub struct Sum {
    n: u64,
}

/// Sums 0..n on the blocking pool, stopping when the client hangs up.
async fn sum(Query(Sum { n }): Query<Sum>, hangup: Hangup) -> String {
    let token = hangup.token();
    let sum = tokio::task::spawn_blocking(move || {
        let mut sum = 0u64;
        for i in 0..n {
            if i % 4096 == 0 && token.is_cancelled() {
                return None;
            }
            sum = sum.wrapping_add(i);
        }
        Some(sum)
    });
    match sum.await.unwrap() {
        Some(sum) => format!("{sum}\n"),
        None => {
            eprintln!("client gone ({:?}): work stopped", hangup.cause());
            String::new()
        }
    }
}

/// The routes: `/sum` hands its token to the work; `/wait` is dropped on hangup.
pub fn app() -> Router {
    Router::new().route("/sum", get(sum)).route(
        "/wait",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "waited\n"
        })
        .layer(middleware::from_fn(drop_on_hangup)),
    )
}

/// Serves `app()` on `listener` with the hangup policy.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let policy = LivenessPolicy::from_dead_after(Duration::from_secs(30));
    let listener = HangupListener::new(listener, policy);
    axum::serve(
        listener,
        app().into_make_service_with_connect_info::<Connection>(),
    )
    .await
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    serve(listener).await
}
