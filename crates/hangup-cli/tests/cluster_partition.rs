//! A cluster node cut off from Redis inside a network namespace of the test's own
//! (SPEC §11): it keeps serving its connections, says it is degraded, the other node
//! ends its sessions `server_lost` within the lease budget and admits its devices; once
//! the link is back the node reconciles: a device that moved meanwhile is kicked from
//! it (no ghost), a device that stayed is claimed again. Needs root.
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{privileged, redis_available, LineClient, RedisServer, TestServer, PATIENCE};
use hangup_server::cluster::ClusterSessionRow;
use hangup_server::presence::PresenceFilter;

const LEASE: &str = "1s";
const LOST_BUDGET: Duration = Duration::from_millis(1200);
const MARGIN: Duration = Duration::from_secs(5);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace joined to ours by a veth pair: `10.79.<n>.1` here, `10.79.<n>.2` in it.
/// Deleted on drop (which removes the pair too).
struct Island {
    name: String,
    dev: String,
    subnet: u8,
}

impl Island {
    fn create() -> Self {
        let pid = std::process::id();
        let subnet = (pid % 200) as u8 + 20;
        let island = Self {
            name: format!("hcl-{pid:x}"),
            dev: format!("hcl{pid:x}i"),
            subnet,
        };
        let host_dev = format!("hcl{pid:x}h");
        ip(&["netns", "add", &island.name]);
        ip(&["-n", &island.name, "link", "set", "lo", "up"]);
        ip(&[
            "link",
            "add",
            &host_dev,
            "type",
            "veth",
            "peer",
            "name",
            &island.dev,
            "netns",
            &island.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", island.host_ip()),
            "dev",
            &host_dev,
        ]);
        ip(&["link", "set", &host_dev, "up"]);
        island.address("add");
        ip(&["-n", &island.name, "link", "set", &island.dev, "up"]);
        island
    }

    fn host_ip(&self) -> String {
        format!("10.79.{}.1", self.subnet)
    }

    fn address(&self, verb: &str) {
        let addr = format!("10.79.{}.2/24", self.subnet);
        ip(&["-n", &self.name, "addr", verb, &addr, "dev", &self.dev]);
    }

    fn file(&self) -> File {
        File::open(format!("/run/netns/{}", self.name)).expect("open the netns")
    }

    /// A connection to `addr` made from inside the island (on a thread that enters it).
    fn connect(&self, addr: SocketAddr) -> LineClient {
        let file = self.file();
        let stream = thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is an open netns file.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpStream::connect(addr).expect("connect inside the island")
        })
        .join()
        .expect("connect thread");
        LineClient::from_stream(stream)
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn online(redis: &RedisServer) -> Vec<ClusterSessionRow> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(hangup_server::cluster::query(
            &redis.url(),
            &PresenceFilter {
                online_only: true,
                ..Default::default()
            },
        ))
        .expect("cluster presence")
}

fn hello_on(client: &mut LineClient, device: &str) -> String {
    client.send(&format!("HELLO {device}"));
    common::welcome_session(&client.reply())
}

#[test]
fn a_node_cut_off_from_redis_keeps_serving_and_reconciles_without_a_ghost() {
    if !privileged("a_node_cut_off_from_redis") || !redis_available("a_node_cut_off_from_redis") {
        return;
    }
    let island = Island::create();
    let mut redis = RedisServer::start_bound(&["127.0.0.1", &island.host_ip()]);
    let island_url = format!("redis://{}:{}", island.host_ip(), redis.port());
    let netns = island.file();
    let fd = netns.as_raw_fd();
    let mut cut_off = TestServer::start_with(
        &[
            "--cluster",
            &island_url,
            "--node-id",
            "island",
            "--cluster-lease",
            LEASE,
        ],
        move |command| {
            // SAFETY: setns between fork and exec; the fd stays open until spawn.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        },
    );
    cut_off
        .wait_event(|e| e["event"] == "cluster_joined", PATIENCE)
        .unwrap_or_else(|| panic!("island never joined:\n{}", cut_off.stderr_text()));
    let url = redis.url();
    let mut mainland = TestServer::start(&[
        "--cluster",
        &url,
        "--node-id",
        "mainland",
        "--cluster-lease",
        LEASE,
    ]);
    mainland
        .wait_event(|e| e["event"] == "cluster_joined", PATIENCE)
        .expect("mainland joined");

    // Two devices on the island's node, reached from inside the island.
    let mut mover = island.connect(cut_off.addr());
    let mover_old = hello_on(&mut mover, "mover");
    let mut stayer = island.connect(cut_off.addr());
    let stayer_session = hello_on(&mut stayer, "stayer");
    let ready = common::poll_until(PATIENCE, Duration::from_millis(50), || {
        (online(&redis).len() == 2).then_some(())
    });
    assert!(ready.is_some());

    island.address("del");
    let cut_at = Instant::now();
    cut_off
        .wait_event(|e| e["event"] == "cluster_degraded", LOST_BUDGET + MARGIN)
        .unwrap_or_else(|| panic!("never degraded:\n{}", cut_off.stderr_text()));
    let lost = mainland
        .wait_event(
            |e| e["event"] == "cluster_node_lost" && e["lost_node"] == "island",
            LOST_BUDGET + MARGIN,
        )
        .unwrap_or_else(|| panic!("island never lost:\n{}", mainland.stderr_text()));
    eprintln!(
        "island cut off: its sessions ended server_lost after {:?} (budget {LOST_BUDGET:?})",
        cut_at.elapsed()
    );
    assert_eq!(lost["sessions"], 2);
    // The island keeps serving its connections.
    stayer.assert_alive("cut-off");
    mover.assert_alive("cut-off");
    // The mover shows up on the mainland and is admitted at once.
    let (mut moved, moved_session) = common::hello(mainland.addr(), "mover", "");

    island.address("add");
    cut_off
        .wait_event(|e| e["event"] == "cluster_restored", LOST_BUDGET + MARGIN)
        .unwrap_or_else(|| panic!("never restored:\n{}", cut_off.stderr_text()));
    // The island's stale session of the mover is kicked; the stayer's is claimed again.
    let lines = mover.lines_to_eof();
    assert!(
        lines.iter().any(|l| l == "KICKED takeover"),
        "{mover_old}: {lines:?}"
    );
    stayer.assert_alive("after-reconnect");
    moved.assert_alive("moved");
    let rows = common::poll_until(PATIENCE, Duration::from_millis(50), || {
        let rows = online(&redis);
        (rows.len() == 2).then_some(rows)
    })
    .expect("both devices online once");
    let find = |device: &str| rows.iter().find(|r| r.device == device).unwrap().clone();
    assert_eq!(
        (find("mover").node, find("mover").session),
        ("mainland".to_owned(), moved_session)
    );
    assert_eq!(
        (find("stayer").node, find("stayer").session),
        ("island".to_owned(), stayer_session)
    );
    cut_off.assert_no_panic();
    mainland.assert_no_panic();
    drop(cut_off);
    redis.kill();
}
