//! What the scale benches read from /proc: a process's memory and CPU time, the
//! kernel's socket memory, and the limits that bound how many connections fit.

use std::fs;

use serde::Serialize;

/// Memory and CPU time of one process.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ProcessSample {
    /// Resident set size (VmRSS), bytes.
    pub rss: u64,
    /// Its anonymous part (RssAnon: heap and stacks, not the mapped executable), bytes.
    pub rss_anon: u64,
    /// User CPU time, seconds.
    pub utime_s: f64,
    /// System CPU time, seconds.
    pub stime_s: f64,
    /// User + system CPU time by thread name (tokio workers, the presence writer, …).
    pub threads: std::collections::BTreeMap<String, f64>,
}

impl ProcessSample {
    pub fn read(pid: u32) -> Option<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        let (_, utime_s, stime_s) = cpu_times(&format!("/proc/{pid}/stat"))?;
        let mut threads = std::collections::BTreeMap::new();
        for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let path = task.path().join("stat");
            if let Some((name, user, system)) = cpu_times(&path.to_string_lossy()) {
                *threads.entry(name).or_default() += user + system;
            }
        }
        Some(Self {
            rss: kib("VmRSS:"),
            rss_anon: kib("RssAnon:"),
            utime_s,
            stime_s,
            threads,
        })
    }

    /// User + system CPU time, seconds.
    pub fn cpu_s(&self) -> f64 {
        self.utime_s + self.stime_s
    }
}

/// CPU time by thread name spent between two samplings of the same processes
/// (user + system), in µs, divided by `per` (the heartbeats answered, the deaths, …).
pub(crate) fn thread_cpu_us_between(
    before: &[ProcessSample],
    after: &[ProcessSample],
    per: f64,
) -> std::collections::BTreeMap<String, f64> {
    let mut by_thread = std::collections::BTreeMap::new();
    for (samples, sign) in [(after, 1.0), (before, -1.0)] {
        for sample in samples {
            for (name, secs) in &sample.threads {
                *by_thread.entry(name.clone()).or_default() += sign * secs * 1e6 / per;
            }
        }
    }
    by_thread
}

/// (name, user seconds, system seconds) from a /proc stat file.
fn cpu_times(path: &str) -> Option<(String, f64, f64)> {
    let stat = fs::read_to_string(path).ok()?;
    // The name is in parentheses and may hold spaces; after it, state is field 3,
    // utime 14 and stime 15 (1-based).
    let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = clock_ticks();
    let secs = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
            / ticks
    };
    Some((name, secs(11), secs(12)))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Machine-wide memory figures.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct MachineSample {
    /// MemTotal − MemAvailable, bytes.
    pub used: u64,
    /// Kernel slab (SReclaimable + SUnreclaim): socket, inode, file and epoll objects.
    pub slab: u64,
    /// Pages of socket buffers charged to TCP (/proc/net/sockstat `TCP: mem`), in bytes.
    pub tcp_buffers: u64,
    /// TCP sockets allocated (/proc/net/sockstat `TCP: alloc`).
    pub tcp_sockets: u64,
    /// Open file handles machine-wide (/proc/sys/fs/file-nr, first field).
    pub open_files: u64,
}

impl MachineSample {
    pub fn read() -> Self {
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        let sockstat = fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let tcp_field = |key: &str| {
            sockstat
                .lines()
                .find_map(|l| l.strip_prefix("TCP: "))
                .and_then(|rest| {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    let at = words.iter().position(|w| *w == key)?;
                    words.get(at + 1)?.parse::<u64>().ok()
                })
                .unwrap_or(0)
        };
        Self {
            used: kib("MemTotal:").saturating_sub(kib("MemAvailable:")),
            slab: kib("SReclaimable:") + kib("SUnreclaim:"),
            tcp_buffers: tcp_field("mem") * page_size(),
            tcp_sockets: tcp_field("alloc"),
            open_files: read_first_number("/proc/sys/fs/file-nr").unwrap_or(0),
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

pub(crate) fn read_first_number(path: &str) -> Option<u64> {
    fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The limits that bound a connection count on this machine, as read now.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Limits {
    /// RLIMIT_NOFILE of this process (soft, hard); children inherit it.
    pub nofile: (u64, u64),
    /// net.ipv4.ip_local_port_range.
    pub local_port_range: (u64, u64),
    pub somaxconn: u64,
    /// net.ipv4.tcp_mem (pages): low, pressure, high.
    pub tcp_mem_pages: Vec<u64>,
    pub file_max: u64,
    pub nr_open: u64,
    pub mem_total: u64,
}

impl Limits {
    pub fn read() -> Self {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let numbers = |path: &str| -> Vec<u64> {
            fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        };
        let ports = numbers("/proc/sys/net/ipv4/ip_local_port_range");
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            nofile: (limit.rlim_cur, limit.rlim_max),
            local_port_range: (
                ports.first().copied().unwrap_or(0),
                ports.get(1).copied().unwrap_or(0),
            ),
            somaxconn: read_first_number("/proc/sys/net/core/somaxconn").unwrap_or(0),
            tcp_mem_pages: numbers("/proc/sys/net/ipv4/tcp_mem"),
            file_max: read_first_number("/proc/sys/fs/file-max").unwrap_or(0),
            nr_open: read_first_number("/proc/sys/fs/nr_open").unwrap_or(0),
            mem_total: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |k| k * 1024),
        }
    }

    /// Ephemeral ports one source address offers towards one server port.
    pub fn ports_per_address(&self) -> u64 {
        (self.local_port_range.1 + 1).saturating_sub(self.local_port_range.0)
    }
}

/// Stops a ramp-up before the machine runs out of memory: the OOM killer would pick
/// some process of this machine, not necessarily one of the bench's.
pub(crate) struct MemoryFloor {
    /// Halt when MemAvailable falls below this many bytes.
    floor: u64,
    checked: std::time::Instant,
    /// (sessions open, MemAvailable) when the floor was reached.
    pub hit: Option<(u64, u64)>,
}

impl MemoryFloor {
    /// A floor of 2 GiB or 8 % of the memory, whichever is more.
    pub fn new() -> Self {
        let total = Limits::read().mem_total;
        Self {
            floor: (2 << 30u64).max(total / 12),
            checked: std::time::Instant::now(),
            hit: None,
        }
    }

    /// Whether the ramp must halt now, with `open` sessions open (checked at most every
    /// 200 ms).
    pub fn reached(&mut self, open: u64) -> bool {
        if self.hit.is_some() {
            return true;
        }
        if self.checked.elapsed() < std::time::Duration::from_millis(200) {
            return false;
        }
        self.checked = std::time::Instant::now();
        let available = mem_available();
        if available < self.floor {
            self.hit = Some((open, available));
            return true;
        }
        false
    }

    /// What the floor stopped, for the report.
    pub fn describe(&self) -> Option<String> {
        let (open, available) = self.hit?;
        Some(format!(
            "memory: the ramp-up was halted at {open} sessions with {} MiB available (floor {} MiB)",
            available >> 20,
            self.floor >> 20
        ))
    }
}

fn mem_available() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(u64::MAX, |k| k * 1024)
}
