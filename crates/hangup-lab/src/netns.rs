//! Two network namespaces joined by a veth pair, with Drop guards, and the faults
//! that act on the link: one side cut off (cable pulled, host dead), back again, and
//! a "reboot" of one side.
//!
//! ```text
//!   netns <prefix>c                              netns <prefix>s
//!   ┌──────────────────────┐   veth pair   ┌──────────────────────┐
//!   │ hangup client / peer │──dev c──dev s──│ hangup serve         │
//!   │ 10.77.0.1/24         │               │ 10.77.0.2/24 :7557   │
//!   └──────────────────────┘               └──────────────────────┘
//! ```
//!
//! Every name starts with [`NETNS_PREFIX`] and the pid (in hex) of the `hangup`
//! process that made it, so that `--cleanup` can find what a killed run left and never
//! touches anything else. Deleting a namespace removes the veth end inside it, and with
//! it the pair. [`Netns`] and [`Veth`] are public so that other commands that need a
//! namespace (`hangup bench mass-death`) make theirs under the same names, and
//! `--cleanup` finds their leftovers too.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::LabError;
use crate::events::ts_ns;
use crate::timescale::TimeScale;

/// Every namespace the lab creates is named `hlab-<pid in hex>-<cell><c|s>`; others
/// made through [`Netns::for_run`] are `hlab-<pid in hex>-<name>`.
pub const NETNS_PREFIX: &str = "hlab-";
/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The environment variable every lab process carries, `hlab-<pid in hex>`: it lets
/// the lab (and its tests) find processes of a run that was killed.
pub const RUN_MARKER_ENV: &str = "HANGUP_LAB_RUN";

/// The client side's address on the veth pair.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The server side's address on the veth pair.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The port the lab's servers listen on (inside their namespace).
pub const SERVER_PORT: u16 = hangup_core::DEFAULT_PORT;

/// The server's address as the client dials it.
pub fn server_addr() -> SocketAddr {
    SocketAddr::from((SERVER_IP, SERVER_PORT))
}

/// One end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Where the client (or a raw-socket peer) runs.
    Client,
    /// Where the server runs.
    Server,
}

impl Side {
    fn ip(self) -> Ipv4Addr {
        match self {
            Side::Client => CLIENT_IP,
            Side::Server => SERVER_IP,
        }
    }
}

/// The prefix of everything one lab process creates: `hlab-<pid in hex>`.
pub fn run_prefix() -> String {
    format!("{NETNS_PREFIX}{:x}", std::process::id())
}

static VETH_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS` and returns its stdout, or the error with its stderr.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LabError::NoIproute2,
            _ => LabError::Spawn {
                what: "ip".into(),
                source,
            },
        })?;
    if !output.status.success() {
        return Err(LabError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Checks that the lab can run here: Linux, root, iproute2.
pub fn preflight() -> Result<(), LabError> {
    if !cfg!(target_os = "linux") {
        return Err(LabError::Unsupported);
    }
    if which_ip().is_none() {
        return Err(LabError::NoIproute2);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    Ok(())
}

fn which_ip() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ip"))
        .find(|candidate| candidate.is_file())
}

/// A named network namespace with its loopback up, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<run prefix>-<name>` ([`run_prefix`]): a name [`cleanup_leftovers`]
    /// recognises once this process is gone.
    pub fn for_run(name: &str) -> Result<Self, LabError> {
        Self::create(format!("{}-{name}", run_prefix()))
    }

    fn create(name: String) -> Result<Self, LabError> {
        ip(&["netns", "add", &name])?;
        let netns = Netns { name };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "hangup: warning: could not delete netns {}: {err}",
                self.name
            );
        }
    }
}

/// A veth pair, `hl<pid in hex>x<n>c` and `hl<pid in hex>x<n>s`, between the namespace
/// of its client end and that of its server end (`None`: this process's own). Deleted
/// on drop, unless a namespace it was in took it along already.
#[derive(Debug)]
pub struct Veth {
    client_dev: String,
    server_dev: String,
    /// Where the client end is, to delete it from there.
    client_netns: Option<String>,
}

impl Veth {
    /// Creates the pair, both ends still down and without addresses.
    pub fn create(client: Option<&Netns>, server: Option<&Netns>) -> Result<Self, LabError> {
        let n = VETH_COUNTER.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes: "hl" + pid (≤ 6 hex) + "x" + counter.
        let base = format!("hl{:x}x{n}", std::process::id());
        let veth = Veth {
            client_dev: format!("{base}c"),
            server_dev: format!("{base}s"),
            client_netns: client.map(|netns| netns.name().to_owned()),
        };
        let mut args = vec!["link", "add", &veth.client_dev];
        if let Some(netns) = client {
            args.extend(["netns", netns.name()]);
        }
        args.extend(["type", "veth", "peer", "name", &veth.server_dev]);
        if let Some(netns) = server {
            args.extend(["netns", netns.name()]);
        }
        ip(&args)?;
        Ok(veth)
    }

    /// The interface name of `side`'s end.
    pub fn dev(&self, side: Side) -> &str {
        match side {
            Side::Client => &self.client_dev,
            Side::Server => &self.server_dev,
        }
    }

    /// Deletes the pair now, reporting a failure.
    pub fn delete(mut self) -> Result<(), LabError> {
        let result = ip(&self.delete_args()).map(drop);
        // Nothing left for Drop to delete.
        self.client_dev.clear();
        result
    }

    fn delete_args(&self) -> Vec<&str> {
        let mut args = Vec::new();
        if let Some(netns) = &self.client_netns {
            args.extend(["-n", netns.as_str()]);
        }
        args.extend(["link", "del", self.client_dev.as_str()]);
        args
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Fails harmlessly when a deleted namespace took the pair with it.
        if !self.client_dev.is_empty() {
            let _ = ip(&self.delete_args());
        }
    }
}

/// How the two sides of a cell are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// One veth pair, one subnet: 10.77.0.1 ══ 10.77.0.2.
    Direct,
    /// Through a router namespace with forwarding on: 10.77.1.1 ══ router ══ 10.77.2.2,
    /// so that after a cut the router can answer for the lost side with ICMP.
    Routed,
}

/// The client's address behind the router ([`Link::Routed`]).
pub const ROUTED_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The server's address behind the router ([`Link::Routed`]).
pub const ROUTED_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
/// The router's address on the client's subnet.
const ROUTER_CLIENT_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 254);
/// The router's address on the server's subnet.
const ROUTER_SERVER_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 254);

/// The namespaces of one cell and the links between them: two namespaces and a veth
/// pair, or (routed) client ══ router ══ server with a veth pair on each side.
///
/// ```text
///   Direct:  <prefix>c 10.77.0.1/24 ══════════════════════════════ 10.77.0.2/24 <prefix>s
///   Routed:  <prefix>c 10.77.1.1/24 ══ .1.254 <prefix>r .2.254 ══ 10.77.2.2/24 <prefix>s
/// ```
#[derive(Debug)]
pub(crate) struct Topology {
    link: Link,
    // Field order: the namespaces go last, after everything that lives in them.
    /// Client ══ server (direct) or client ══ router (routed).
    veth: Option<Veth>,
    /// Router ══ server (routed only).
    uplink: Option<Veth>,
    client: Option<Netns>,
    server: Option<Netns>,
    router: Option<Netns>,
    /// `--time-scale`: the endpoints' TCP timers divided.
    scale: Option<TimeScale>,
}

impl Topology {
    /// Creates `<prefix>c` and `<prefix>s` (and `<prefix>r` when routed), the veth
    /// pairs, addresses, routes and links up.
    pub(crate) fn create(
        prefix: &str,
        link: Link,
        scale: Option<TimeScale>,
    ) -> Result<Self, LabError> {
        let mut topology = Topology {
            link,
            veth: None,
            uplink: None,
            client: None,
            server: None,
            router: None,
            scale,
        };
        topology.client = Some(Netns::create(format!("{prefix}c"))?);
        topology.server = Some(Netns::create(format!("{prefix}s"))?);
        for side in [Side::Client, Side::Server] {
            topology.scale_timers(side)?;
        }
        if link == Link::Routed {
            let router = Netns::create(format!("{prefix}r"))?;
            sysctl(router.name(), "net.ipv4.ip_forward", "1")?;
            // Every packet for a lost host gets its ICMP answer, not one a second.
            sysctl(router.name(), "net.ipv4.icmp_ratelimit", "0")?;
            topology.router = Some(router);
            topology.uplink = Some(Veth::create(
                topology.router.as_ref(),
                topology.server.as_ref(),
            )?);
            let router_ns = topology.netns_of_router().to_owned();
            let uplink_router_dev = topology.uplink_dev(Side::Client).to_owned();
            ip(&[
                "-n",
                &router_ns,
                "addr",
                "add",
                &format!("{ROUTER_SERVER_SIDE_IP}/24"),
                "dev",
                &uplink_router_dev,
            ])?;
            ip(&["-n", &router_ns, "link", "set", &uplink_router_dev, "up"])?;
            let server_dev = topology.uplink_dev(Side::Server).to_owned();
            let server_ns = topology.netns(Side::Server).to_owned();
            ip(&["-n", &server_ns, "link", "set", &server_dev, "up"])?;
        }
        topology.connect()?;
        Ok(topology)
    }

    /// Writes the scaled TCP timers (if any) into `side`'s namespace.
    fn scale_timers(&self, side: Side) -> Result<(), LabError> {
        if let Some(scale) = self.scale {
            for (key, value) in scale.sysctls() {
                sysctl(self.netns(side), key, &value)?;
            }
        }
        Ok(())
    }

    /// The namespace of `side`.
    pub(crate) fn netns(&self, side: Side) -> &str {
        let netns = match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        };
        netns.as_ref().map_or("", Netns::name)
    }

    fn netns_of_router(&self) -> &str {
        self.router.as_ref().map_or("", Netns::name)
    }

    /// `side`'s address.
    pub(crate) fn ip(&self, side: Side) -> Ipv4Addr {
        match (self.link, side) {
            (Link::Direct, side) => side.ip(),
            (Link::Routed, Side::Client) => ROUTED_CLIENT_IP,
            (Link::Routed, Side::Server) => ROUTED_SERVER_IP,
        }
    }

    /// The address the server listens on and the client dials.
    pub(crate) fn server_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip(Side::Server), SERVER_PORT))
    }

    /// `side`'s own interface (the other end of it is the peer, or the router).
    fn dev(&self, side: Side) -> &str {
        match (self.link, side) {
            (Link::Routed, Side::Server) => self.uplink_dev(Side::Server),
            _ => self.veth.as_ref().map_or("", |veth| veth.dev(side)),
        }
    }

    /// The router ══ server pair's ends (its "client" end is the router's).
    fn uplink_dev(&self, end: Side) -> &str {
        self.uplink.as_ref().map_or("", |veth| veth.dev(end))
    }

    /// A new veth pair from the client (to the server, or to the router), addressed,
    /// routed and up.
    fn connect(&mut self) -> Result<(), LabError> {
        match self.link {
            Link::Direct => {
                self.veth = Some(Veth::create(self.client.as_ref(), self.server.as_ref())?);
                for side in [Side::Client, Side::Server] {
                    self.address(side, "add")?;
                    ip(&["-n", self.netns(side), "link", "set", self.dev(side), "up"])?;
                }
            }
            Link::Routed => {
                self.veth = Some(Veth::create(self.client.as_ref(), self.router.as_ref())?);
                let router_dev = self.veth.as_ref().map_or("", |v| v.dev(Side::Server));
                ip(&[
                    "-n",
                    self.netns_of_router(),
                    "addr",
                    "add",
                    &format!("{ROUTER_CLIENT_SIDE_IP}/24"),
                    "dev",
                    router_dev,
                ])?;
                ip(&[
                    "-n",
                    self.netns_of_router(),
                    "link",
                    "set",
                    router_dev,
                    "up",
                ])?;
                ip(&[
                    "-n",
                    self.netns(Side::Client),
                    "link",
                    "set",
                    self.dev(Side::Client),
                    "up",
                ])?;
                for side in [Side::Client, Side::Server] {
                    self.address(side, "add")?;
                }
            }
        }
        Ok(())
    }

    /// Cuts `side` off: its address is deleted, so nothing leaves it any more and
    /// whatever reaches it is dropped without an answer (no RST, no ICMP: forwarding is
    /// off). Returns the Unix time in ns just before.
    ///
    /// Deleting the address rather than setting the veth end down keeps the other
    /// side's view faithful: with the peer's end down, a veth drops what the other side
    /// sends *and reports it* (NET_XMIT_DROP), which TCP takes for local congestion and
    /// answers differently (keepalive probes retried every 0.5 s without counting).
    /// Here, as with a real unplugged host, the other side's segments leave normally
    /// and vanish.
    pub(crate) fn cut(&self, side: Side) -> Result<u64, LabError> {
        let at = ts_ns();
        self.address(side, "del")?;
        Ok(at)
    }

    /// Cuts `side` off as [`Topology::cut`] does, and the router (routed only) then
    /// answers every packet for it with ICMP host unreachable (an `unreachable` route
    /// for its address: at once, without the ~3 s of failed ARP a vanished neighbour
    /// costs). Returns the Unix time in ns just before.
    pub(crate) fn cut_unreachable(&self, side: Side) -> Result<u64, LabError> {
        let at = self.cut(side)?;
        let lost = format!("{}/32", self.ip(side));
        ip(&[
            "-n",
            self.netns_of_router(),
            "route",
            "replace",
            "unreachable",
            &lost,
        ])?;
        Ok(at)
    }

    /// Undoes [`Topology::cut`]: the address (and its routes) are back.
    pub(crate) fn reconnect(&self, side: Side) -> Result<u64, LabError> {
        let at = ts_ns();
        self.address(side, "add")?;
        Ok(at)
    }

    /// `ip addr add|del` of `side`'s address on its interface; when routed, adding it
    /// also adds the default route through the router (deleting the last address took
    /// it away).
    fn address(&self, side: Side, verb: &str) -> Result<(), LabError> {
        let address = format!("{}/24", self.ip(side));
        ip(&[
            "-n",
            self.netns(side),
            "addr",
            verb,
            &address,
            "dev",
            self.dev(side),
        ])?;
        if self.link == Link::Routed && verb == "add" {
            let gateway = match side {
                Side::Client => ROUTER_CLIENT_SIDE_IP,
                Side::Server => ROUTER_SERVER_SIDE_IP,
            };
            ip(&[
                "-n",
                self.netns(side),
                "route",
                "replace",
                "default",
                "via",
                &gateway.to_string(),
            ])?;
        }
        Ok(())
    }

    /// `side`'s host reboots: its namespace and every socket in it are gone, and a
    /// fresh one with the same name and address comes up on a new veth pair. Kill the
    /// processes in it first (with the side cut off, so that no FIN left).
    ///
    /// Sockets the killed processes left behind (FIN_WAIT orphans) keep the old
    /// namespace alive, unnamed and without a link, until the kernel gives up on them:
    /// they can never send anything, as on a host that lost power.
    pub(crate) fn reboot(&mut self, side: Side) -> Result<(), LabError> {
        if self.link == Link::Routed {
            return Err(LabError::io(
                "reboot a side of a routed topology",
                std::io::ErrorKind::Unsupported.into(),
            ));
        }
        if let Some(veth) = self.veth.take() {
            veth.delete()?;
        }
        let name = self.netns(side).to_owned();
        let slot = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        drop(slot.take());
        *slot = Some(Netns::create(name)?);
        self.scale_timers(side)?;
        self.connect()
    }
}

/// The namespace's SNMP counters (`/proc/net/snmp` and `/proc/net/netstat` as seen
/// from inside it), keyed `Group.Name`: `Icmp.InDestUnreachs`,
/// `TcpExt.OutOfWindowIcmps`, `TcpExt.TCPAbortOnTimeout`, …
pub(crate) fn counters(netns: &str) -> Result<std::collections::HashMap<String, u64>, LabError> {
    let text = ip(&[
        "netns",
        "exec",
        netns,
        "cat",
        "/proc/net/snmp",
        "/proc/net/netstat",
    ])?;
    Ok(parse_counters(&text))
}

/// Parses the header/value line pairs of `/proc/net/snmp` and `/proc/net/netstat` into
/// counters keyed `Group.Name` (signed gauges such as `Tcp.MaxConn` = -1 left out).
pub fn parse_counters(text: &str) -> std::collections::HashMap<String, u64> {
    let mut counters = std::collections::HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [header, values] = pair else { continue };
        let (Some((group, names)), Some((_, numbers))) =
            (header.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, number) in names.split_whitespace().zip(numbers.split_whitespace()) {
            if let Ok(number) = number.parse::<u64>() {
                counters.insert(format!("{group}.{name}"), number);
            }
        }
    }
    counters
}

/// `sysctl -w KEY=VALUE` inside the namespace `netns` (the `net.*` keys are per
/// network namespace).
pub(crate) fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    ip(&[
        "netns",
        "exec",
        netns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={value}"),
    ])
    .map(drop)
}

/// What `--cleanup` removed, or left alone because its run is still alive.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Cleanup {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Processes killed (pid), found in those namespaces or carrying the run marker.
    pub processes: Vec<u32>,
    /// Temporary directories removed.
    pub directories: Vec<PathBuf>,
    /// Namespaces kept because the lab that made them is still running.
    pub kept_live: Vec<String>,
}

/// Removes what killed lab runs (and benches: `bench mass-death` makes its namespace
/// with [`Netns::for_run`]) left behind: namespaces named `hlab-<pid>-…`, the
/// processes in them or carrying [`RUN_MARKER_ENV`], and `hlab-<pid>-…` temporary
/// directories, for every `<pid>` that is no running `hangup` process. Nothing else
/// is touched.
pub fn cleanup_leftovers() -> Result<Cleanup, LabError> {
    preflight()?;
    let mut cleanup = Cleanup::default();
    let listed = std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for name in listed {
        let Some(owner) = owner_pid(&name) else {
            continue;
        };
        if lab_is_running(owner) {
            cleanup.kept_live.push(name);
            continue;
        }
        if let Ok(pids) = ip(&["netns", "pids", &name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                kill_leftover(pid, &mut cleanup);
            }
        }
        ip(&["netns", "del", &name])?;
        cleanup.namespaces.push(name);
    }
    for (pid, marker) in processes_with_marker() {
        if owner_pid(&marker).is_some_and(|owner| !lab_is_running(owner)) {
            kill_leftover(pid, &mut cleanup);
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if owner_pid(&name).is_some_and(|owner| !lab_is_running(owner))
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                cleanup.directories.push(entry.path());
            }
        }
    }
    Ok(cleanup)
}

fn kill_leftover(pid: u32, cleanup: &mut Cleanup) {
    if cleanup.processes.contains(&pid) {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; the pid was found inside a lab
    // namespace or carries the lab's run marker, i.e. the lab started it.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
        cleanup.processes.push(pid);
    }
}

/// The lab pid in a name `hlab-<pid in hex>[-…]`.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let hex = rest.split('-').next()?;
    u32::from_str_radix(hex, 16).ok()
}

/// Whether `pid` is a live `hangup` process (a lab run that owns its names).
fn lab_is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "hangup" && pid != 0)
}

/// Processes whose environment carries [`RUN_MARKER_ENV`], with its value.
pub fn processes_with_marker() -> Vec<(u32, String)> {
    let needle = format!("{RUN_MARKER_ENV}=");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let marker = environ
                .split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(needle.as_bytes()))?;
            Some((pid, String::from_utf8_lossy(marker).into_owned()))
        })
        .collect()
}

/// Names of the namespaces that exist now and start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_pair_header_and_value_lines() {
        let text = "Icmp: InMsgs InDestUnreachs\nIcmp: 7 3\nTcpExt: SyncookiesSent OutOfWindowIcmps\nTcpExt: 0 2\n";
        let counters = parse_counters(text);
        assert_eq!(counters["Icmp.InDestUnreachs"], 3);
        assert_eq!(counters["TcpExt.OutOfWindowIcmps"], 2);
        assert_eq!(counters.len(), 4);
    }

    #[test]
    fn owner_pid_reads_the_hex_pid() {
        assert_eq!(owner_pid("hlab-1f2e-3c"), Some(0x1f2e));
        assert_eq!(owner_pid("hlab-1f2e"), Some(0x1f2e));
        assert_eq!(owner_pid("hlab-zz-1c"), None);
        assert_eq!(owner_pid("other-1f2e"), None);
    }
}
