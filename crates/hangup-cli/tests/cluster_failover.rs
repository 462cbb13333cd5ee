//! Cluster failures with a real Redis of the test's own (SPEC §11): a node killed
//! with SIGKILL has its sessions ended `server_lost` within the lease budget while its
//! devices are admitted elsewhere at once; Redis killed and restarted under load loses
//! no session and leaves no ghost once it is back.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    cluster_node, hello_all, poll_until, redis_available, server_sockets, LineClient, RedisServer,
    TestServer, PATIENCE,
};
use hangup_server::cluster::ClusterSessionRow;
use hangup_server::presence::PresenceFilter;

/// The lease the nodes here run with, and the budget it implies (lease + lease/5).
const LEASE: &str = "1s";
const LOST_BUDGET: Duration = Duration::from_millis(1200);
/// The kill test's longer lease (and budget): long enough that reconnecting devices are
/// seen admitted before the lease could have run out.
const KILL_LEASE: &str = "3s";
const KILL_LEASE_TIME: Duration = Duration::from_secs(3);
const KILL_BUDGET: Duration = Duration::from_millis(3600);
/// Wide margin over a budget: loaded machines, debug builds.
const MARGIN: Duration = Duration::from_secs(5);

fn node(redis: &RedisServer, id: &str) -> TestServer {
    node_with_lease(redis, id, LEASE)
}

fn node_with_lease(redis: &RedisServer, id: &str, lease: &str) -> TestServer {
    cluster_node(redis, id, &["--cluster-lease", lease])
}

fn cluster_rows(redis: &RedisServer, filter: PresenceFilter) -> Vec<ClusterSessionRow> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(hangup_server::cluster::query(&redis.url(), &filter))
        .expect("cluster presence")
}

fn online_devices(redis: &RedisServer) -> Vec<ClusterSessionRow> {
    cluster_rows(
        redis,
        PresenceFilter {
            online_only: true,
            ..Default::default()
        },
    )
}

#[test]
fn a_killed_node_has_its_sessions_ended_server_lost_and_its_devices_admitted_elsewhere() {
    if !redis_available("a_killed_node_has_its_sessions_ended_server_lost") {
        return;
    }
    let redis = RedisServer::start();
    let mut doomed = node_with_lease(&redis, "doomed", KILL_LEASE);
    let mut survivor = node_with_lease(&redis, "survivor", KILL_LEASE);
    let devices: Vec<String> = (0..100).map(|i| format!("lost-{i}")).collect();
    let _old = hello_all(doomed.addr(), &devices);
    let claimed = poll_until(PATIENCE, Duration::from_millis(50), || {
        (online_devices(&redis).len() == devices.len()).then_some(())
    });
    assert!(claimed.is_some(), "every device online on `doomed`");

    doomed.kill();
    let killed_at = Instant::now();
    // Half the devices reconnect at once, before anyone noticed: admitted at once.
    let (early, late) = devices.split_at(50);
    let mut moved = hello_all(survivor.addr(), early);
    let admitted = killed_at.elapsed();
    assert!(
        admitted < KILL_LEASE_TIME,
        "admitted after {admitted:?}: no wait for the lease"
    );
    assert!(
        survivor
            .events_matching(|e| e["event"] == "cluster_node_lost")
            .is_empty(),
        "admitted before the dead node was even noticed"
    );

    // The others' sessions end `server_lost` within the budget.
    let lost = survivor
        .wait_event(
            |e| e["event"] == "cluster_node_lost" && e["lost_node"] == "doomed",
            KILL_BUDGET + MARGIN,
        )
        .unwrap_or_else(|| panic!("`doomed` never found lost:\n{}", survivor.stderr_text()));
    let noticed = killed_at.elapsed();
    eprintln!(
        "node killed: {} devices admitted elsewhere after {admitted:?}; the rest ended server_lost after {noticed:?} (budget {KILL_BUDGET:?})",
        early.len()
    );
    assert!(noticed <= KILL_BUDGET + MARGIN);
    assert_eq!(lost["sessions"], late.len() as u64, "{lost}");
    let all = cluster_rows(&redis, PresenceFilter::default());
    for device in late {
        let row = all
            .iter()
            .find(|r| &r.device == device)
            .expect("history row");
        assert_eq!(row.node, "doomed");
        assert_eq!(row.cause, Some(hangup_core::Cause::ServerLost), "{row:?}");
        assert!(!row.online);
    }
    for device in early {
        let rows: Vec<_> = all.iter().filter(|r| &r.device == device).collect();
        assert_eq!(rows[0].node, "survivor");
        assert!(rows[0].online);
        // Reconnected before the lease ran out: an ordinary takeover of the ghost.
        assert_eq!(rows[1].cause, Some(hangup_core::Cause::Takeover));
    }
    // The rest reconnect now and are admitted too.
    moved.extend(hello_all(survivor.addr(), late));
    for (client, _) in &mut moved {
        client.assert_alive("moved");
    }
    assert_eq!(online_devices(&redis).len(), devices.len());
    survivor.assert_no_panic();
}

#[test]
fn redis_killed_and_restarted_under_load_loses_no_session_and_leaves_no_ghost() {
    if !redis_available("redis_killed_and_restarted_under_load") {
        return;
    }
    let mut redis = RedisServer::start();
    let mut nodes = [node(&redis, "x0"), node(&redis, "x1"), node(&redis, "x2")];
    let addrs: Vec<SocketAddr> = nodes.iter().map(TestServer::addr).collect();
    const PER_NODE: usize = 30;
    let mut held: Vec<Vec<(LineClient, String)>> = addrs
        .iter()
        .enumerate()
        .map(|(n, &addr)| {
            let devices: Vec<String> = (0..PER_NODE).map(|i| format!("dev-{n}-{i}")).collect();
            hello_all(addr, &devices)
        })
        .collect();
    let claimed = poll_until(PATIENCE, Duration::from_millis(50), || {
        (online_devices(&redis).len() == 3 * PER_NODE).then_some(())
    });
    assert!(claimed.is_some());

    redis.kill();
    for node in &mut nodes {
        node.wait_event(|e| e["event"] == "cluster_degraded", LOST_BUDGET + MARGIN)
            .unwrap_or_else(|| panic!("never degraded:\n{}", node.stderr_text()));
        let health = node.admin_get("/healthz");
        assert_eq!(health.status, 200, "a degraded node stays in the balancer");
        assert!(health.body.contains("degraded"), "{}", health.body);
    }
    // Meanwhile: a local takeover still works; a cross-node one cannot (yet).
    let (mut local_new, _) = common::hello(addrs[0], "dev-0-0", "");
    let lines = held[0][0].0.lines_to_eof();
    assert!(lines.iter().any(|l| l == "KICKED takeover"), "{lines:?}");
    let (mut moved, moved_session) = common::hello(addrs[1], "dev-0-1", "");
    for clients in &mut held {
        for (client, _) in clients.iter_mut().skip(2) {
            client.assert_alive("while-redis-is-down");
        }
    }
    held[0][1].0.assert_alive("ghost-for-now");

    redis.restart();
    for node in &mut nodes {
        node.wait_event(|e| e["event"] == "cluster_restored", LOST_BUDGET + MARGIN)
            .unwrap_or_else(|| panic!("never restored:\n{}", node.stderr_text()));
        // The first reconciliation ran when the node joined; the second after Redis
        // came back.
        let reconciled = poll_until(LOST_BUDGET + MARGIN, Duration::from_millis(20), || {
            let done = node.events_matching(|e| e["event"] == "cluster_reconciled");
            (done.len() >= 2).then_some(())
        });
        assert!(
            reconciled.is_some(),
            "never reconciled:\n{}",
            node.stderr_text()
        );
    }
    // dev-0-1 said HELLO on x1 after x0's session: x0's is evicted, x1's lives.
    let lines = held[0][1].0.lines_to_eof();
    assert!(lines.iter().any(|l| l == "KICKED takeover"), "{lines:?}");
    moved.assert_alive("moved-wins");
    local_new.assert_alive("local-new");
    // No other session was lost; Redis knows every device exactly once, where it is.
    for clients in &mut held {
        for (client, _) in clients.iter_mut().skip(2) {
            client.assert_alive("after-redis-returned");
        }
    }
    let online = poll_until(PATIENCE, Duration::from_millis(100), || {
        let online = online_devices(&redis);
        (online.len() == 3 * PER_NODE).then_some(online)
    })
    .expect("every device online again in Redis");
    let moved_row = online.iter().find(|r| r.device == "dev-0-1").unwrap();
    assert_eq!(
        (moved_row.node.as_str(), moved_row.session.as_str()),
        ("x1", moved_session.as_str())
    );
    for (n, clients) in held.iter().enumerate() {
        for (i, (_, session)) in clients.iter().enumerate().skip(2) {
            let device = format!("dev-{n}-{i}");
            let row = online.iter().find(|r| r.device == device).unwrap();
            assert_eq!((row.node.clone(), &row.session), (format!("x{n}"), session));
        }
    }

    // And cross-node takeover works again: x0's devices move to x2, no ghost on x0.
    let devices: Vec<String> = (2..PER_NODE).map(|i| format!("dev-0-{i}")).collect();
    let _moved_all = hello_all(addrs[2], &devices);
    for (client, _) in held[0].iter_mut().skip(2) {
        let lines = client.lines_to_eof();
        assert!(lines.iter().any(|l| l == "KICKED takeover"), "{lines:?}");
    }
    // x0 still carries dev-0-0 (the local takeover's new session): one socket.
    let ghosts = poll_until(PATIENCE, Duration::from_millis(50), || {
        (server_sockets(addrs[0]) == 1).then_some(())
    });
    assert!(
        ghosts.is_some(),
        "x0 sockets left: {}",
        server_sockets(addrs[0])
    );
    for node in &nodes {
        node.assert_no_panic();
    }
}

#[test]
fn a_node_restarted_under_the_same_id_ends_its_previous_runs_sessions() {
    if !redis_available("a_node_restarted_under_the_same_id") {
        return;
    }
    let redis = RedisServer::start();
    // A lease far longer than the test: only the restart itself can clean up.
    let mut first = node_with_lease(&redis, "same", "60s");
    let devices: Vec<String> = (0..20).map(|i| format!("again-{i}")).collect();
    let _old = hello_all(first.addr(), &devices);
    let claimed = poll_until(PATIENCE, Duration::from_millis(50), || {
        (online_devices(&redis).len() == devices.len()).then_some(())
    });
    assert!(claimed.is_some());
    first.kill();
    let mut second = node_with_lease(&redis, "same", "60s");
    let reconciled = second
        .wait_event(|e| e["event"] == "cluster_reconciled", PATIENCE)
        .expect("reconciled on join");
    assert_eq!(reconciled["stale"], devices.len() as u64, "{reconciled}");
    assert!(online_devices(&redis).is_empty());
    let all = cluster_rows(&redis, PresenceFilter::default());
    assert_eq!(all.len(), devices.len());
    assert!(all
        .iter()
        .all(|r| r.cause == Some(hangup_core::Cause::ServerLost)));
}

#[test]
fn a_stalled_node_that_was_swept_claims_its_sessions_back() {
    if !redis_available("a_stalled_node_that_was_swept_claims_its_sessions_back") {
        return;
    }
    let redis = RedisServer::start();
    let mut stalled = node(&redis, "stalled");
    let mut other = node(&redis, "other");
    let devices: Vec<String> = (0..10).map(|i| format!("stall-{i}")).collect();
    let mut held = hello_all(stalled.addr(), &devices);
    let claimed = poll_until(PATIENCE, Duration::from_millis(50), || {
        (online_devices(&redis).len() == devices.len()).then_some(())
    });
    assert!(claimed.is_some());

    // Frozen past its lease: the other node sweeps it.
    stalled.signal(libc::SIGSTOP);
    let swept = other.wait_event(
        |e| e["event"] == "cluster_node_lost" && e["lost_node"] == "stalled",
        LOST_BUDGET + MARGIN,
    );
    let none_online = online_devices(&redis).is_empty();
    stalled.signal(libc::SIGCONT);
    assert!(swept.is_some(), "never swept:\n{}", other.stderr_text());
    assert!(none_online, "swept devices are offline in Redis");

    // Thawed, it notices and claims every session back.
    stalled
        .wait_event(|e| e["event"] == "cluster_rejoined", LOST_BUDGET + MARGIN)
        .unwrap_or_else(|| panic!("never rejoined:\n{}", stalled.stderr_text()));
    let back = poll_until(PATIENCE, Duration::from_millis(50), || {
        let online = online_devices(&redis);
        (online.len() == devices.len() && online.iter().all(|r| r.node == "stalled")).then_some(())
    });
    assert!(back.is_some(), "online: {:?}", online_devices(&redis));
    for (client, _) in &mut held {
        client.assert_alive("thawed");
    }
    // And a device moving away from it is evicted there, as usual.
    let (mut moved, _) = common::hello(other.addr(), "stall-0", "");
    let lines = held[0].0.lines_to_eof();
    assert!(lines.iter().any(|l| l == "KICKED takeover"), "{lines:?}");
    moved.assert_alive("moved");
}
