//! The admin endpoint of the real server (SPEC §5), read with a plain HTTP/1.1 GET:
//! `/metrics` as OpenMetrics text with the connection, session, takeover and histogram
//! series; `/connections` and `/sessions` as JSON with the fields an operator needs;
//! `/healthz`.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;

use common::{hello, poll_until, LineClient, TestServer, ENDLESS_JOB, PATIENCE};
use hangup_core::Reply;
use serde_json::Value;

/// One OpenMetrics sample line: name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the sample lines of an OpenMetrics text exposition (comments skipped);
/// panics on a line that is not `name{labels} value`.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), HashMap::new()),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn healthz_answers_200_and_unknown_paths_404() {
    let server = TestServer::start(&[]);
    let health = server.admin_get("/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body.trim(), "ok");
    assert_eq!(server.admin_get("/no-such-page").status, 404);
}

#[test]
fn metrics_count_connections_sessions_takeovers_and_fill_histograms() {
    let mut server = TestServer::start(&[]);
    // A connection that closes (peer_closed), a session, and a takeover.
    let closer = LineClient::connect(server.addr());
    let closer_peer = closer.local_addr();
    drop(closer);
    server.expect_event("connection_closed", closer_peer);
    let (old, _) = hello(server.addr(), "metered", "heartbeat=30");
    let old_peer = old.local_addr();
    let (mut new, _) = hello(server.addr(), "metered", "heartbeat=30");
    server.expect_event("connection_closed", old_peer);
    new.send("JOB 5");
    assert_eq!(new.reply(), "ACCEPTED 1");
    assert!(matches!(Reply::parse(new.reply()), Ok(Reply::Done(1, _))));
    server.expect_job_event("job_done", new.local_addr(), 1);

    let response = server.admin_get("/metrics");
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = &response.body;
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE hangup_connections_opened counter"),
        "{text}"
    );
    let samples = parse_metrics(text);
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    assert_eq!(get("hangup_connections_opened_total", &[]), 3.0);
    assert_eq!(get("hangup_connections_open", &[]), 1.0);
    assert_eq!(
        get(
            "hangup_connections_closed_total",
            &[("cause", "peer_closed")]
        ),
        1.0
    );
    assert_eq!(
        get("hangup_connections_closed_total", &[("cause", "takeover")]),
        1.0
    );
    assert_eq!(get("hangup_sessions_started_total", &[]), 2.0);
    assert_eq!(get("hangup_sessions_open", &[]), 1.0);
    assert_eq!(
        get("hangup_sessions_ended_total", &[("cause", "takeover")]),
        1.0
    );
    assert_eq!(get("hangup_takeovers_total", &[]), 1.0);
    assert_eq!(get("hangup_jobs_started_total", &[]), 1.0);
    assert_eq!(get("hangup_jobs_done_total", &[]), 1.0);
    assert_eq!(get("hangup_eviction_seconds_count", &[]), 1.0);

    // Histogram buckets: cumulative, ending in +Inf = the count.
    for cause in ["peer_closed", "takeover"] {
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| {
                s.name == "hangup_close_silence_seconds_bucket"
                    && s.labels.get("cause").map(String::as_str) == Some(cause)
            })
            .map(|s| {
                let le = &s.labels["le"];
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("a numeric le")
                };
                (bound, s.value)
            })
            .collect();
        assert!(buckets.len() >= 10, "{cause}: {buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{cause}: buckets not cumulative: {buckets:?}"
        );
        assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
        let count = get("hangup_close_silence_seconds_count", &[("cause", cause)]);
        assert_eq!(buckets.last().unwrap().1, count);
        assert_eq!(count, 1.0);
    }
}

#[test]
fn connections_and_sessions_list_live_peers_with_tcp_figures() {
    let mut server = TestServer::start(&[]);
    let mut anonymous = LineClient::connect(server.addr());
    anonymous.assert_alive("anon");
    let (mut device, session) = hello(server.addr(), "listed-1", "heartbeat=20");
    device.send(ENDLESS_JOB);
    assert_eq!(device.reply(), "ACCEPTED 1");
    server.expect_event("job_started", device.local_addr());

    // The event is logged as the job starts; the live table's job counts follow a
    // moment later, at the end of the same pass of the driver: poll for them.
    let device_peer = device.local_addr().to_string();
    let connections = poll_until(PATIENCE, std::time::Duration::from_millis(20), || {
        let response = server.admin_get("/connections");
        assert_eq!(response.status, 200);
        let json = response.json();
        let running = json
            .as_array()?
            .iter()
            .any(|r| r["peer"] == device_peer.as_str() && r["jobs_running"] == 1);
        running.then_some(json)
    })
    .expect("the running job shows in /connections");
    let rows = connections.as_array().expect("an array");
    assert_eq!(rows.len(), 2, "{connections:#}");
    let row_of = |peer: &str| -> &Value {
        rows.iter()
            .find(|r| r["peer"] == peer)
            .unwrap_or_else(|| panic!("no row for {peer}: {connections:#}"))
    };
    let anon_row = row_of(&anonymous.local_addr().to_string());
    assert_eq!(anon_row["device"], Value::Null);
    assert_eq!(anon_row["session"], Value::Null);
    assert_eq!(anon_row["state"], "open");
    assert_eq!(anon_row["jobs_running"], 0);
    let dev_row = row_of(&device.local_addr().to_string());
    assert_eq!(dev_row["device"], "listed-1");
    assert_eq!(dev_row["session"], session.as_str());
    assert_eq!(dev_row["state"], "open");
    assert_eq!(dev_row["jobs_running"], 1);
    assert_eq!(dev_row["jobs_queued"], 0);
    for row in rows {
        for field in ["id", "age_ms", "last_inbound_ms_ago"] {
            assert!(row[field].is_u64(), "{field} in {row}");
        }
        assert!(row["opened_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        let tcp = &row["tcp"];
        for field in [
            "rtt_us",
            "unacked",
            "retransmits",
            "total_retrans",
            "probes",
            "last_data_recv_ms",
        ] {
            assert!(tcp[field].is_u64(), "tcp.{field} in {row}");
        }
        // Loopback has a round trip: measured, and far below a second.
        let rtt = tcp["rtt_us"].as_u64().unwrap();
        assert!(rtt > 0 && rtt < 1_000_000, "rtt {rtt} µs in {row}");
    }

    let sessions = server.admin_get("/sessions").json();
    let rows = sessions.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{sessions:#}");
    let row = &rows[0];
    assert_eq!(row["device"], "listed-1");
    assert_eq!(row["session"], session.as_str());
    assert_eq!(row["peer"], device.local_addr().to_string().as_str());
    assert_eq!(row["connection"], dev_row["id"]);
    assert_eq!(row["heartbeat_s"], 20.0);
    assert!(row["started_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(row["last_inbound_ms_ago"].is_u64());

    // Closed connections leave the lists.
    drop(anonymous);
    drop(device);
    let emptied = poll_until(PATIENCE, std::time::Duration::from_millis(20), || {
        let conns = server.admin_get("/connections").json();
        let sessions = server.admin_get("/sessions").json();
        (conns.as_array().unwrap().is_empty() && sessions.as_array().unwrap().is_empty())
            .then_some(())
    });
    assert!(
        emptied.is_some(),
        "{}",
        server.admin_get("/connections").body
    );
}
