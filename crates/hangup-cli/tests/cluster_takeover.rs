//! Cluster takeover over real loopback sockets and a real Redis of the test's own
//! (SPEC §11): a device's `HELLO` on one node evicts its session on another
//! (`KICKED takeover`), leaving no ghost socket, and racing `HELLO`s on three nodes
//! leave exactly one live session.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    cluster_node, hello, hello_all, poll_until, redis_available, run_hangup, server_sockets,
    LineClient, RedisServer, TestServer, PATIENCE,
};
use serde_json::Value;

/// Devices in the storm (the issue asks for 1 000).
const DEVICES: usize = 1000;

/// A cluster node on this Redis, once it has joined.
fn node(redis: &RedisServer, id: &str, lease: &str) -> TestServer {
    cluster_node(
        redis,
        id,
        &["--cluster-lease", lease, "--max-connections", "5000"],
    )
}

/// A counter or gauge from the node's /metrics (0 when absent).
fn metric(server: &TestServer, name: &str) -> f64 {
    let body = server.admin_get("/metrics").body;
    body.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

fn presence(redis: &RedisServer, device: &str) -> Vec<Value> {
    let url = redis.url();
    let out = run_hangup(&["presence", "--cluster", &url, "--device", device, "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<Vec<Value>>(&text).unwrap_or_else(|err| {
        panic!(
            "presence --cluster --json: {err}; stdout {text}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_thousand_devices_move_across_nodes_without_a_ghost() {
    if !redis_available("a_thousand_devices_move_across_nodes_without_a_ghost") {
        return;
    }
    let redis = RedisServer::start();
    let mut nodes = [
        node(&redis, "n0", "5s"),
        node(&redis, "n1", "5s"),
        node(&redis, "n2", "5s"),
    ];
    let devices: Vec<String> = (0..DEVICES).map(|i| format!("storm-{i}")).collect();

    let mut old = hello_all(nodes[0].addr(), &devices);
    let claimed = poll_until(PATIENCE, Duration::from_millis(50), || {
        (metric(&nodes[0], "hangup_cluster_claims_total") >= DEVICES as f64).then_some(())
    });
    assert!(claimed.is_some(), "n0 never claimed every device");

    // Every device reconnects to another node: odd ones to n1, even ones to n2.
    let started = Instant::now();
    let (odd, even): (Vec<String>, Vec<String>) = devices
        .iter()
        .cloned()
        .partition(|d| d.trim_start_matches("storm-").parse::<usize>().unwrap() % 2 == 1);
    let mut new = hello_all(nodes[1].addr(), &odd);
    new.extend(hello_all(nodes[2].addr(), &even));
    let welcomed = started.elapsed();

    // Every old connection is told and closed.
    for (client, session) in &mut old {
        let lines = client.lines_to_eof();
        assert!(
            lines.iter().any(|l| l == "KICKED takeover"),
            "old session {session} got {lines:?}"
        );
    }
    let all_kicked = started.elapsed();
    eprintln!(
        "{DEVICES} devices: every new HELLO welcomed after {welcomed:?}, every old connection kicked and closed after {all_kicked:?}"
    );

    // No ghost on n0, and every old session ended `takeover`, exactly once.
    let n0 = nodes[0].addr();
    let ghosts = poll_until(PATIENCE, Duration::from_millis(50), || {
        (server_sockets(n0) == 0).then_some(())
    });
    assert!(
        ghosts.is_some(),
        "ghosts left on n0: {} sockets",
        server_sockets(n0)
    );
    let ended = poll_until(PATIENCE, Duration::from_millis(50), || {
        let ended = nodes[0].events_matching(|e| e["event"] == "session_ended");
        (ended.len() >= DEVICES).then_some(ended)
    })
    .expect("n0 ended every session");
    assert_eq!(ended.len(), DEVICES, "each old session ends once");
    assert!(
        ended.iter().all(|e| e["cause"] == "takeover"),
        "causes: {ended:?}"
    );
    let evicted = nodes[0].events_matching(|e| e["event"] == "cluster_evicted");
    assert_eq!(evicted.len(), DEVICES);

    // The new sessions are alive, and nothing on n1 or n2 was evicted.
    for (client, _) in new.iter_mut().step_by(97) {
        client.assert_alive("after-storm");
    }
    for node in &mut nodes[1..] {
        assert!(node
            .events_matching(|e| e["event"] == "cluster_evicted")
            .is_empty());
        node.assert_no_panic();
    }

    // The cluster view: storm-1 is online on n1; its session on n0 ended `takeover`.
    let rows = presence(&redis, "storm-1");
    assert_eq!(rows[0]["node"], "n1", "{rows:#?}");
    assert_eq!(rows[0]["online"], true);
    assert_eq!(rows[0]["session"], new[0].1.as_str());
    assert_eq!(rows[1]["node"], "n0");
    assert_eq!(rows[1]["cause"], "takeover");
    assert_eq!(rows[1]["online"], false);

    // `/sessions` names the node.
    let sessions = nodes[1].admin_get("/sessions").json();
    assert_eq!(sessions[0]["node"], "n1");
    let round_trips = metric(&nodes[1], "hangup_cluster_round_trips_total");
    eprintln!("n1: {round_trips} Redis round trips (claims are pipelined)");
}

/// What became of one racing connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Kicked,
    Alive,
}

/// Whether `client` was kicked (KICKED takeover, then EOF) or still answers PING.
fn fate(client: &mut LineClient) -> Fate {
    client.send("PING fate");
    loop {
        match client.try_read_line() {
            Ok(Some(line)) if line == "KICKED takeover" => return Fate::Kicked,
            Ok(Some(line)) if line == "PONG fate" => return Fate::Alive,
            Ok(Some(_)) => continue,
            // Closed after KICKED, the PING may meet a reset.
            Ok(None) | Err(_) => return Fate::Kicked,
        }
    }
}

#[test]
fn racing_hellos_on_three_nodes_leave_exactly_one_session() {
    if !redis_available("racing_hellos_on_three_nodes_leave_exactly_one_session") {
        return;
    }
    const ROUNDS: usize = 50;
    let redis = RedisServer::start();
    let mut nodes = [
        node(&redis, "r0", "5s"),
        node(&redis, "r1", "5s"),
        node(&redis, "r2", "5s"),
    ];
    let addrs: Vec<SocketAddr> = nodes.iter().map(TestServer::addr).collect();
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let device = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(addrs.len()));
        let racers: Vec<_> = addrs
            .iter()
            .map(|&addr| {
                let barrier = barrier.clone();
                let device = device.clone();
                thread::spawn(move || {
                    let mut client = LineClient::connect(addr);
                    barrier.wait();
                    client.send(&format!("HELLO {device}"));
                    let session = common::welcome_session(&client.reply());
                    (client, session)
                })
            })
            .collect();
        rounds.push((
            device,
            racers
                .into_iter()
                .map(|r| r.join().expect("racer"))
                .collect::<Vec<_>>(),
        ));
    }
    // Settle: each round's losers are kicked within milliseconds; the bound is wide.
    let settled = poll_until(PATIENCE, Duration::from_millis(100), || {
        let evicted: usize = nodes
            .iter_mut()
            .map(|n| n.events_matching(|e| e["event"] == "cluster_evicted").len())
            .sum();
        (evicted >= 2 * ROUNDS).then_some(())
    });
    assert!(settled.is_some(), "not every loser was evicted");
    thread::sleep(Duration::from_millis(300));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let online = runtime
        .block_on(hangup_server::cluster::query(
            &redis.url(),
            &hangup_server::presence::PresenceFilter {
                online_only: true,
                ..Default::default()
            },
        ))
        .expect("cluster presence");
    for (device, mut racers) in rounds {
        let fates: Vec<Fate> = racers.iter_mut().map(|(c, _)| fate(c)).collect();
        let winners: Vec<&String> = racers
            .iter()
            .zip(&fates)
            .filter(|(_, f)| **f == Fate::Alive)
            .map(|((_, s), _)| s)
            .collect();
        assert_eq!(winners.len(), 1, "{device}: fates {fates:?}");
        let owners: Vec<_> = online.iter().filter(|r| r.device == device).collect();
        assert_eq!(owners.len(), 1, "{device}: online rows {owners:?}");
        assert_eq!(
            &owners[0].session, winners[0],
            "{device}: Redis names the winner"
        );
    }
    let evicted: usize = nodes
        .iter_mut()
        .map(|n| n.events_matching(|e| e["event"] == "cluster_evicted").len())
        .sum();
    assert_eq!(evicted, 2 * ROUNDS, "exactly two losers a round");
}

#[test]
fn a_session_on_one_node_is_taken_over_from_another_with_its_job_cancelled() {
    if !redis_available("a_session_on_one_node_is_taken_over_from_another") {
        return;
    }
    let redis = RedisServer::start();
    let mut a = node(&redis, "a", "5s");
    let b = node(&redis, "b", "5s");
    let (mut old, old_session) = hello(a.addr(), "phone", "");
    old.send(common::ENDLESS_JOB);
    assert!(old.reply().starts_with("ACCEPTED"));
    thread::sleep(Duration::from_millis(200));
    let (mut new, _) = hello(b.addr(), "phone", "");
    let lines = old.lines_to_eof();
    assert!(lines.iter().any(|l| l == "KICKED takeover"), "{lines:?}");
    let peer = old.local_addr();
    let cancelled = a.expect_event("job_cancelled", peer);
    assert_eq!(cancelled["cause"], "takeover");
    let ended = a
        .wait_event(
            |e| e["event"] == "session_ended" && e["session"] == old_session.as_str(),
            PATIENCE,
        )
        .expect("old session ended");
    assert_eq!(ended["cause"], "takeover");
    new.assert_alive("new");
    let health = a.admin_get("/healthz");
    assert!(
        health.body.contains("cluster: node a ok"),
        "{}",
        health.body
    );
}

#[test]
fn cluster_settings_come_from_the_config_file_and_the_node_id_has_a_default() {
    if !redis_available("cluster_settings_come_from_the_config_file") {
        return;
    }
    let redis = RedisServer::start();
    let dir = common::TempDir::new("cluster-config");
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "cluster = \"{}\"\nnode-id = \"from-file\"\ncluster-lease = \"2s\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut from_file = TestServer::start(&["--config", config.to_str().unwrap()]);
    let joined = from_file
        .wait_event(|e| e["event"] == "cluster_joined", PATIENCE)
        .expect("joined");
    assert_eq!(joined["node"], "from-file");
    assert_eq!(joined["lease_ms"], 2000);
    assert_eq!(joined["lost_budget_ms"], 2400);

    let url = redis.url();
    let mut unnamed = TestServer::start(&["--cluster", &url]);
    let joined = unnamed
        .wait_event(|e| e["event"] == "cluster_joined", PATIENCE)
        .expect("joined");
    let port = unnamed.addr().port();
    let node = joined["node"].as_str().unwrap();
    assert!(
        node.ends_with(&format!(":{port}")),
        "default node id {node}"
    );
    let metrics = unnamed.admin_get("/metrics").body;
    assert!(
        metrics.contains(&format!("hangup_node_info{{node=\"{node}\"}} 1")),
        "{metrics}"
    );
}
