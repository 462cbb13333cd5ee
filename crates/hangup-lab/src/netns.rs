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

/// The two namespaces of one cell and the veth pair between them.
#[derive(Debug)]
pub(crate) struct Topology {
    // Field order: the namespaces go last, after everything that lives in them.
    veth: Option<Veth>,
    client: Option<Netns>,
    server: Option<Netns>,
}

impl Topology {
    /// Creates `<prefix>c` and `<prefix>s`, the veth pair, addresses and links up.
    pub(crate) fn create(prefix: &str) -> Result<Self, LabError> {
        let mut topology = Topology {
            veth: None,
            client: None,
            server: None,
        };
        topology.client = Some(Netns::create(format!("{prefix}c"))?);
        topology.server = Some(Netns::create(format!("{prefix}s"))?);
        topology.connect()?;
        Ok(topology)
    }

    /// The namespace of `side`.
    pub(crate) fn netns(&self, side: Side) -> &str {
        let netns = match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        };
        netns.as_ref().map_or("", Netns::name)
    }

    fn dev(&self, side: Side) -> &str {
        self.veth.as_ref().map_or("", |veth| veth.dev(side))
    }

    /// A new veth pair between the two namespaces, addressed and up.
    fn connect(&mut self) -> Result<(), LabError> {
        self.veth = Some(Veth::create(self.client.as_ref(), self.server.as_ref())?);
        for side in [Side::Client, Side::Server] {
            self.address(side, "add")?;
            ip(&["-n", self.netns(side), "link", "set", self.dev(side), "up"])?;
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

    /// Undoes [`Topology::cut`]: the address (and its route) is back.
    pub(crate) fn reconnect(&self, side: Side) -> Result<u64, LabError> {
        let at = ts_ns();
        self.address(side, "add")?;
        Ok(at)
    }

    /// `ip addr add|del` of `side`'s address on its veth end.
    fn address(&self, side: Side, verb: &str) -> Result<(), LabError> {
        let address = format!("{}/24", side.ip());
        ip(&[
            "-n",
            self.netns(side),
            "addr",
            verb,
            &address,
            "dev",
            self.dev(side),
        ])?;
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
        self.connect()
    }
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
    fn owner_pid_reads_the_hex_pid() {
        assert_eq!(owner_pid("hlab-1f2e-3c"), Some(0x1f2e));
        assert_eq!(owner_pid("hlab-1f2e"), Some(0x1f2e));
        assert_eq!(owner_pid("hlab-zz-1c"), None);
        assert_eq!(owner_pid("other-1f2e"), None);
    }
}
