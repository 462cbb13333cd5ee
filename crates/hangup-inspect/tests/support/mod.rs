//! Shared helpers for the inspector's real-socket tests: bounded waiting,
//! socket lookup, `ss -tinpoe` parsing and comparison, and network namespaces
//! with Drop guards.

#![allow(dead_code)]

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use hangup_inspect::{collect, diagnose, DiagnosedSocket, Filter, FindingKind, Report, Thresholds};

/// Thresholds that flag everything at once, for tests that make conditions happen.
pub fn eager() -> Thresholds {
    Thresholds {
        close_wait_after: Duration::ZERO,
        silent_after: Duration::ZERO,
    }
}

/// Thresholds nothing in a short test reaches.
pub fn patient() -> Thresholds {
    Thresholds {
        close_wait_after: Duration::from_secs(3600),
        silent_after: Duration::from_secs(3600),
    }
}

/// Collects this thread's namespace and diagnoses the sockets on `port`.
pub fn report_for_port(port: u16, thresholds: &Thresholds) -> Report {
    let snapshot = collect().expect("sock_diag dump");
    let filter = Filter {
        port: Some(port),
        ..Filter::default()
    };
    diagnose(snapshot, thresholds, &filter)
}

/// The socket with exactly this local and peer address, if listed.
pub fn find(report: &Report, local: SocketAddr, peer: SocketAddr) -> Option<&DiagnosedSocket> {
    report
        .sockets
        .iter()
        .find(|s| s.socket.local == local && s.socket.peer == peer)
}

/// Like [`find`], panicking with the report when missing.
pub fn get(report: &Report, local: SocketAddr, peer: SocketAddr) -> &DiagnosedSocket {
    find(report, local, peer).unwrap_or_else(|| {
        panic!("no socket {local} -> {peer} in {:#?}", report.sockets);
    })
}

/// The kinds of findings on a socket.
pub fn kinds(socket: &DiagnosedSocket) -> Vec<FindingKind> {
    socket.findings.iter().map(|f| f.kind).collect()
}

/// Polls `probe` every `step` until it returns `Some`, at most `attempts` times.
pub fn wait_for<T>(
    what: &str,
    attempts: u32,
    step: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    for _ in 0..attempts {
        if let Some(value) = probe() {
            return value;
        }
        thread::sleep(step);
    }
    panic!(
        "gave up waiting for {what} after {attempts} attempts ({:?})",
        started.elapsed()
    );
}

/// A listener on `ip` with an ephemeral port.
pub fn listen(ip: IpAddr) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind listener");
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A connected (client, server) pair through `listener`.
pub fn connect_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------- ss -tinpoe

/// One socket as `ss -tinpoe` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct SsSocket {
    pub state: String,
    pub recv_q: u32,
    pub send_q: u32,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub pids: Vec<u32>,
    /// (name, time left in ms as printed, retries)
    pub timer: Option<(String, u64, u8)>,
    pub inode: u32,
    pub cookie: Option<u64>,
    pub uid: u32,
    pub rtt_ms: Option<f64>,
    pub unacked: u32,
    pub retrans: (u32, u32),
    pub lastsnd: Option<u64>,
    pub lastrcv: Option<u64>,
    pub lastack: Option<u64>,
}

/// Serializes "take a report, then run ss" within one test binary: spawning a
/// process forks, and until `exec` the child holds a copy of every descriptor,
/// so a parallel test's report would briefly see that child as an owner.
static FORK_LOCK: Mutex<()> = Mutex::new(());

/// Takes our report and then ss's listing for `port`, with no fork in this
/// process in between (optionally inside a named netns).
pub fn report_and_ss(
    port: u16,
    thresholds: &Thresholds,
    netns: Option<&Netns>,
) -> (Report, Vec<SsSocket>) {
    let _no_forks = FORK_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let report = match netns {
        Some(netns) => netns.run(|| report_for_port(port, thresholds)),
        None => report_for_port(port, thresholds),
    };
    let ss = ss_for_port(port, netns.map(|n| n.name.as_str()));
    (report, ss)
}

/// Runs `ss -tinpoe` (plus `-a` for listeners and TIME-WAIT, `-H` for no header) for sockets on `port` (optionally inside a named netns).
pub fn ss_for_port(port: u16, netns: Option<&str>) -> Vec<SsSocket> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let mut command = match netns {
        Some(name) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", name, "ss"]);
            command
        }
        None => Command::new("ss"),
    };
    let output = command
        .args(["-tinpoeaH", &filter])
        .output()
        .expect("run ss (iproute2)");
    assert!(
        output.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_ss(&String::from_utf8_lossy(&output.stdout))
}

/// Parses `ss -tinpoeH` output: a socket line, then a tab-indented TCP_INFO line.
pub fn parse_ss(text: &str) -> Vec<SsSocket> {
    let mut sockets: Vec<SsSocket> = Vec::new();
    for line in text.lines() {
        if line.starts_with('\t') || line.starts_with(' ') {
            if let Some(last) = sockets.last_mut() {
                parse_ss_info(line, last);
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(state), Some(recv_q), Some(send_q), Some(local), Some(peer)) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            continue;
        };
        let mut socket = SsSocket {
            state: state.to_owned(),
            recv_q: recv_q.parse().expect("recv-q"),
            send_q: send_q.parse().expect("send-q"),
            local: parse_ss_addr(local),
            peer: parse_ss_addr(peer),
            pids: Vec::new(),
            timer: None,
            inode: 0,
            cookie: None,
            uid: 0,
            rtt_ms: None,
            unacked: 0,
            retrans: (0, 0),
            lastsnd: None,
            lastrcv: None,
            lastack: None,
        };
        for word in words {
            if let Some(users) = word.strip_prefix("users:") {
                socket.pids = users
                    .split("pid=")
                    .skip(1)
                    .map(|rest| rest.split(',').next().unwrap().parse().expect("pid"))
                    .collect();
                socket.pids.sort_unstable();
                socket.pids.dedup();
            } else if let Some(timer) = word.strip_prefix("timer:(") {
                let parts: Vec<&str> = timer.trim_end_matches(')').split(',').collect();
                socket.timer = Some((
                    parts[0].to_owned(),
                    parse_ss_ms(parts[1]),
                    parts[2].parse().expect("timer retries"),
                ));
            } else if let Some(inode) = word.strip_prefix("ino:") {
                socket.inode = inode.parse().expect("ino");
            } else if let Some(cookie) = word.strip_prefix("sk:") {
                socket.cookie = u64::from_str_radix(cookie, 16).ok();
            } else if let Some(uid) = word.strip_prefix("uid:") {
                socket.uid = uid.parse().expect("uid");
            }
        }
        sockets.push(socket);
    }
    sockets
}

fn parse_ss_info(line: &str, socket: &mut SsSocket) {
    for word in line.split_whitespace() {
        let Some((key, value)) = word.split_once(':') else {
            continue;
        };
        match key {
            "rtt" => socket.rtt_ms = value.split('/').next().and_then(|v| v.parse().ok()),
            "unacked" => socket.unacked = value.parse().expect("unacked"),
            "retrans" => {
                let (now, total) = value.split_once('/').expect("retrans a/b");
                socket.retrans = (now.parse().unwrap(), total.parse().unwrap());
            }
            "lastsnd" => socket.lastsnd = value.parse().ok(),
            "lastrcv" => socket.lastrcv = value.parse().ok(),
            "lastack" => socket.lastack = value.parse().ok(),
            _ => {}
        }
    }
}

/// `127.0.0.1:80`, `[::1]:80`, `*:80`, `0.0.0.0:*`, `[fe80::1]%lo:80`.
pub fn parse_ss_addr(text: &str) -> SocketAddr {
    let (host, port) = text.rsplit_once(':').expect("host:port");
    let port = if port == "*" {
        0
    } else {
        port.parse().expect("port")
    };
    let host = host
        .split('%')
        .next()
        .unwrap()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip = if host == "*" {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        host.parse().unwrap_or_else(|_| panic!("address {text}"))
    };
    SocketAddr::new(ip, port)
}

/// ss's `print_ms_timer`: `200ms`, `6.084ms` (6 s 84 ms), `59sec`, `1min30sec`.
pub fn parse_ss_ms(text: &str) -> u64 {
    let mut rest = text;
    let mut millis = 0;
    if let Some((minutes, after)) = rest.split_once("min") {
        millis += minutes.parse::<u64>().expect("minutes") * 60_000;
        rest = after;
    }
    if let Some(secs) = rest.strip_suffix("sec") {
        return millis + secs.parse::<u64>().expect("secs") * 1000;
    }
    let rest = rest.strip_suffix("ms").unwrap_or(rest);
    match rest.split_once('.') {
        Some((secs, ms)) => {
            millis + secs.parse::<u64>().unwrap() * 1000 + ms.parse::<u64>().unwrap()
        }
        None if rest.is_empty() => millis,
        None => millis + rest.parse::<u64>().expect("ms"),
    }
}

/// Checks that every socket `ss` lists on the report's port agrees with ours.
///
/// The report is taken first, so values that only grow with time (ages,
/// retry counts) may be larger in ss, and timers may have counted down.
pub fn assert_agrees_with_ss(report: &Report, ss: &[SsSocket]) {
    assert!(!ss.is_empty(), "ss listed no sockets");
    for theirs in ss {
        let ours = find(report, theirs.local, theirs.peer)
            .unwrap_or_else(|| panic!("ss lists {theirs:?}, we do not: {:#?}", report.sockets));
        let socket = &ours.socket;
        let context = format!("{} -> {}", theirs.local, theirs.peer);
        assert_eq!(socket.state.ss_label(), theirs.state, "state of {context}");
        assert_eq!(socket.recv_q, theirs.recv_q, "recv-q of {context}");
        assert_eq!(socket.send_q, theirs.send_q, "send-q of {context}");
        assert_eq!(socket.inode, theirs.inode, "inode of {context}");
        assert_eq!(socket.uid, theirs.uid, "uid of {context}");
        if let Some(cookie) = theirs.cookie {
            assert_eq!(socket.cookie, cookie, "cookie (sk:) of {context}");
        }
        let mut pids: Vec<u32> = socket.owners.iter().map(|o| o.pid).collect();
        pids.dedup();
        assert_eq!(pids, theirs.pids, "pids of {context}");
        match (&socket.timer, &theirs.timer) {
            (None, None) => {}
            (Some(timer), Some((name, left_ms, retries))) => {
                assert_eq!(timer.kind.ss_name(), name, "timer of {context}");
                assert!(
                    timer.retries <= *retries,
                    "timer retries of {context}: {timer:?} vs {retries}"
                );
                if timer.retries == *retries {
                    let ours_ms = u64::try_from(timer.expires_in.as_millis()).unwrap();
                    assert!(
                        *left_ms <= ours_ms,
                        "timer left of {context}: ss {left_ms} ms, ours {ours_ms} ms"
                    );
                }
            }
            (ours, theirs) => panic!("timer of {context}: ours {ours:?}, ss {theirs:?}"),
        }
        if let Some(info) = &socket.tcp_info {
            if let Some(rtt_ms) = theirs.rtt_ms {
                let ours = info.rtt.as_secs_f64() * 1000.0;
                assert!(
                    (ours - rtt_ms).abs() <= ours * 1e-4 + 1e-6,
                    "rtt of {context}: {ours} vs {rtt_ms}"
                );
            }
            assert!(
                info.total_retrans <= theirs.retrans.1,
                "total retrans of {context}"
            );
            assert_eq!(info.unacked, theirs.unacked, "unacked of {context}");
            for (name, ours, theirs) in [
                ("lastsnd", info.last_data_sent, theirs.lastsnd),
                ("lastrcv", info.last_data_recv, theirs.lastrcv),
                ("lastack", info.last_ack_recv, theirs.lastack),
            ] {
                if let Some(theirs) = theirs {
                    let ours = u64::try_from(ours.as_millis()).unwrap();
                    assert!(
                        ours <= theirs,
                        "{name} of {context}: ours {ours} ms, ss {theirs} ms"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- privileges, netns

/// True when the test may create namespaces. Without root it prints why it
/// skips, except under `CI=true`, where skipping would hide a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root for network namespaces, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root to create network namespaces");
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, e.g. `hgi-4242-3`.
pub fn unique_name() -> String {
    format!(
        "hgi-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace made by the test, deleted on drop (also on panic).
/// Deleting it removes every interface inside, veth ends included.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique_name();
        ip(&["netns", "add", &name]);
        let netns = Netns { name };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }

    /// Runs `work` on a thread that joined this namespace. Sockets created
    /// there stay in the namespace after the thread ends.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = CString::new(format!("/run/netns/{}", self.name)).unwrap();
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: plain syscalls on a path and the fd they return.
                    unsafe {
                        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                        assert!(fd >= 0, "open netns: {}", std::io::Error::last_os_error());
                        let joined = libc::setns(fd, libc::CLONE_NEWNET);
                        let error = std::io::Error::last_os_error();
                        libc::close(fd);
                        assert_eq!(joined, 0, "setns: {error}");
                    }
                    work()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete netns {}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair, `10.201.0.1/24` in `a` and
/// `10.201.0.2/24` in `b`. Field order drops the namespaces, and with them the
/// veth pair, on any exit.
#[derive(Debug)]
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
    pub dev_a: String,
    pub dev_b: String,
}

pub const ADDR_A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 201, 0, 1));
pub const ADDR_B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 201, 0, 2));

impl VethPair {
    pub fn new() -> VethPair {
        let a = Netns::new();
        let b = Netns::new();
        let dev_a = format!("{}a", unique_name());
        let dev_b = format!("{}b", unique_name());
        assert!(
            dev_a.len() <= 15 && dev_b.len() <= 15,
            "interface names too long"
        );
        let pair = VethPair { a, b, dev_a, dev_b };
        ip(&[
            "link",
            "add",
            &pair.dev_a,
            "netns",
            &pair.a.name,
            "type",
            "veth",
            "peer",
            "name",
            &pair.dev_b,
            "netns",
            &pair.b.name,
        ]);
        for (ns, dev, addr) in [
            (&pair.a, &pair.dev_a, ADDR_A),
            (&pair.b, &pair.dev_b, ADDR_B),
        ] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", &ns.name, "link", "set", dev, "up"]);
        }
        pair
    }
}
