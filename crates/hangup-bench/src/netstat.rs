//! The kernel's TCP counters (`/proc/net/snmp`, `/proc/net/netstat`) before and after a
//! run: who reset connections, and why. A session lost to `ECONNRESET` was reset by
//! some TCP stack; these counters say whether the kernel aborted connections on its
//! own (memory pressure, a timer, data after close) or a listen queue overflowed,
//! without the cooperation of any process.

use std::collections::{BTreeMap, HashMap};
use std::io;

use serde::Serialize;

/// The counters worth reporting when connections are lost: resets sent and received,
/// the kernel's own aborts, and listen-queue and SYN-queue overflows.
pub const WATCHED: &[&str] = &[
    "Tcp.OutRsts",
    "Tcp.EstabResets",
    "Tcp.AttemptFails",
    "TcpExt.TCPAbortOnData",
    "TcpExt.TCPAbortOnClose",
    "TcpExt.TCPAbortOnMemory",
    "TcpExt.TCPAbortOnTimeout",
    "TcpExt.TCPAbortOnLinger",
    "TcpExt.TCPAbortFailed",
    "TcpExt.TCPMemoryPressures",
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies",
    "TcpExt.SyncookiesSent",
    "TcpExt.SyncookiesFailed",
    "TcpExt.TCPBacklogDrop",
    "TcpExt.TCPTimeouts",
    "TcpExt.TCPSynRetrans",
];

/// One reading of every counter, by `Group.Name` (the lab's parser).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(HashMap<String, u64>);

impl Counters {
    /// Reads this network namespace's counters now.
    pub fn read() -> io::Result<Self> {
        let mut text = String::new();
        for path in ["/proc/net/snmp", "/proc/net/netstat"] {
            text.push_str(&std::fs::read_to_string(path)?);
        }
        Ok(Counters(hangup_lab::parse_counters(&text)))
    }

    /// How much each [`WATCHED`] counter grew since `before`, the non-zero ones.
    pub fn grown_since(&self, before: &Counters) -> BTreeMap<String, u64> {
        WATCHED
            .iter()
            .filter_map(|&name| {
                let grown = self.0.get(name)?.saturating_sub(*before.0.get(name)?);
                (grown > 0).then(|| (name.to_owned(), grown))
            })
            .collect()
    }
}

/// TCP sockets closed but not yet freed on the machine (the kernel counts them for
/// every namespace together): `orphan` of `/proc/net/sockstat`'s `TCP:` line.
pub fn tcp_orphans() -> Option<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    orphans_in(&sockstat)
}

fn orphans_in(sockstat: &str) -> Option<u64> {
    let fields = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP:"))?;
    let mut words = fields.split_whitespace();
    while let Some(word) = words.next() {
        if word == "orphan" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The growth of the watched counters over a run, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CounterGrowth {
    /// Counter (`Group.Name`) → growth; only those that grew.
    pub grown: BTreeMap<String, u64>,
}

impl CounterGrowth {
    /// The growth from `before` to `after`; none known if either could not be read.
    pub fn between(before: Option<&Counters>, after: Option<&Counters>) -> Self {
        match (before, after) {
            (Some(before), Some(after)) => Self {
                grown: after.grown_since(before),
            },
            _ => Self::default(),
        }
    }

    /// One line for the table: `none` or `Name +n, …`.
    pub fn summary(&self) -> String {
        if self.grown.is_empty() {
            return "none".into();
        }
        self.grown
            .iter()
            .map(|(name, n)| format!("{} +{n}", name.split_once('.').map_or(&**name, |p| p.1)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_are_read_from_sockstat() {
        let sockstat = "sockets: used 7\nTCP: inuse 1 orphan 130411 tw 3442 alloc 130412 mem 130612\nUDP: inuse 0 mem 0\n";
        assert_eq!(orphans_in(sockstat), Some(130_411));
        assert_eq!(orphans_in("sockets: used 7\n"), None);
        assert!(
            tcp_orphans().is_some(),
            "this kernel's sockstat has an orphan count"
        );
    }

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
        Tcp: RtoAlgorithm MaxConn ActiveOpens OutRsts EstabResets\nTcp: 1 -1 10 3 2\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent TCPAbortOnMemory ListenOverflows\n\
        TcpExt: 0 0 7\nIpExt: InNoRoutes\nIpExt: 0\n";

    fn parsed(snmp: &str, netstat: &str) -> Counters {
        Counters(hangup_lab::parse_counters(&format!("{snmp}{netstat}")))
    }

    #[test]
    fn pairs_of_lines_become_named_counters() {
        let c = parsed(SNMP, NETSTAT);
        assert_eq!(c.0.get("Tcp.OutRsts"), Some(&3));
        assert_eq!(c.0.get("TcpExt.ListenOverflows"), Some(&7));
        assert_eq!(c.0.get("Ip.DefaultTTL"), Some(&64));
        assert_eq!(c.0.get("Tcp.MaxConn"), None, "a signed gauge is no counter");
    }

    #[test]
    fn growth_names_only_what_grew() {
        let before = parsed(SNMP, NETSTAT);
        let after = parsed(
            &SNMP.replace("1 -1 10 3 2", "1 -1 12 268 2"),
            &NETSTAT.replace("0 0 7", "0 5 7"),
        );
        let grown = after.grown_since(&before);
        assert_eq!(
            grown.into_iter().collect::<Vec<_>>(),
            vec![
                ("Tcp.OutRsts".to_owned(), 265),
                ("TcpExt.TCPAbortOnMemory".to_owned(), 5)
            ]
        );
        let growth = CounterGrowth {
            grown: after.grown_since(&before),
        };
        assert_eq!(growth.summary(), "OutRsts +265, TCPAbortOnMemory +5");
        assert_eq!(CounterGrowth::default().summary(), "none");
    }

    #[test]
    fn this_machine_has_the_counters() {
        let now = Counters::read().expect("/proc/net/snmp");
        assert!(now.0.contains_key("Tcp.OutRsts"), "{:?}", now.0.keys());
        assert!(now.0.contains_key("TcpExt.ListenOverflows"));
    }
}
