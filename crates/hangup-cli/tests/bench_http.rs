//! `hangup bench http` end to end: it starts its own axum and hyper servers, plain and
//! with hangup, measures every case and writes JSON. Only correctness is checked (every
//! server and case reported, the hangup variants stopping every work, the half-closed
//! client answered), never speed.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::run_bench;
use serde_json::Value;

const SERVERS: [&str; 4] = ["axum", "axum-hangup", "hyper", "hyper-hangup"];
const CASES: [&str; 5] = ["fin", "rst", "pipelined", "unread-body", "half-close"];

#[test]
fn bench_http_reports_every_server_and_case() {
    // About 20 s normally: 8 misses of 2.5 s each dominate.
    let run = run_bench(
        &[
            "http",
            "--trials",
            "5",
            // Plain servers miss pipelined and unread-body: give up on them early.
            "--miss-limit",
            "1s",
            "--give-up-after",
            "2",
            "--throughput-time",
            "300ms",
            "--throughput-runs",
            "1",
        ],
        Duration::from_secs(180),
    );
    let report = &run.report;
    assert_eq!(report["bench"], "http");
    assert_eq!(report["trials"], 5);
    assert!(report["machine"].as_str().is_some_and(|m| !m.is_empty()));

    let results = report["results"].as_array().expect("results");
    let result = |server: &str, case: &str| -> &Value {
        results
            .iter()
            .find(|r| r["server"] == server && r["case"] == case)
            .unwrap_or_else(|| panic!("no result for {server} {case}: {report}"))
    };
    for case in CASES {
        for server in SERVERS {
            let r = result(server, case);
            assert_eq!(r["trials"], 5, "{r}");
            assert_eq!(r["not_started"], 0, "every work starts: {r}");
            let run = r["run"].as_u64().unwrap();
            let stopped = r["stopped"].as_u64().unwrap();
            let missed = r["missed"].as_u64().unwrap();
            assert!((1..=5).contains(&run), "{r}");
            assert_eq!(stopped + missed, run, "{r}");
            assert_eq!(r["answered"].is_null(), case != "half-close", "{r}");
        }
    }
    for server in ["axum-hangup", "hyper-hangup"] {
        for case in ["fin", "rst", "pipelined", "unread-body"] {
            let r = result(server, case);
            assert_eq!((&r["run"], &r["stopped"]), (&5.into(), &5.into()), "{r}");
            let (p50, max) = (r["p50_us"].as_f64().unwrap(), r["max_us"].as_f64().unwrap());
            assert!(0.0 < p50 && p50 <= max, "{r}");
        }
        let r = result(server, "half-close");
        assert_eq!((&r["run"], &r["answered"]), (&5.into(), &5.into()), "{r}");
    }
    // Plain hyper does not read while its handler runs: whatever it measured, the case
    // is there.
    assert!(result("hyper", "pipelined")["run"].as_u64().unwrap() >= 1);

    let throughput = &report["throughput"];
    let servers = throughput["servers"]
        .as_array()
        .expect("throughput servers");
    let names: Vec<&str> = servers
        .iter()
        .filter_map(|s| s["server"].as_str())
        .collect();
    assert_eq!(
        names,
        ["axum", "axum-hangup", "hyper", "hyper-hangup"],
        "{throughput}"
    );
    for s in servers {
        assert_eq!(s["runs_rps"].as_array().map(Vec::len), Some(1), "{s}");
        assert!(s["mean_rps"].as_f64().is_some_and(|r| r > 0.0), "{s}");
        assert!(s["mean_cpu_us_per_request"].as_f64().is_some(), "{s}");
    }
    let pairs = throughput["pairs"].as_array().expect("throughput pairs");
    assert_eq!(pairs.len(), 2, "{throughput}");
    assert!(
        pairs.iter().all(|p| p["ratio"].as_f64().is_some()),
        "{throughput}"
    );

    let stdout = &run.stdout;
    for name in SERVERS.iter().chain(&CASES) {
        assert!(
            stdout.contains(name),
            "{name} missing from the table:\n{stdout}"
        );
    }
}
