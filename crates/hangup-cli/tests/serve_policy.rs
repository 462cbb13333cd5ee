//! Keepalive and TCP_USER_TIMEOUT read back from the kernel with `getsockopt` (SPEC §2):
//! first on a socket the library configured, then on the very socket the running
//! `hangup serve` process holds for a connection, fetched with `pidfd_getfd`.
#![cfg(target_os = "linux")]

mod common;

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use common::{LineClient, TestServer};
use hangup::{Keepalive, KeepaliveTimers, LivenessPolicy};

/// What the kernel reports for a socket, read with raw `getsockopt` (independently of
/// `hangup::read_liveness`, which goes through socket2).
#[derive(Debug, PartialEq, Eq)]
struct KernelLiveness {
    keepalive_on: bool,
    /// TCP_KEEPIDLE, TCP_KEEPINTVL (seconds), TCP_KEEPCNT.
    timers: (i32, i32, i32),
    /// TCP_USER_TIMEOUT in milliseconds (0 = unset).
    user_timeout_ms: i32,
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> i32 {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of an int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&raw mut value).cast::<libc::c_void>(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    value
}

fn kernel_liveness(fd: RawFd) -> KernelLiveness {
    KernelLiveness {
        keepalive_on: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE) != 0,
        timers: (
            getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
        ),
        user_timeout_ms: getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    }
}

/// A connected pair on loopback: (client, accepted server side).
fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    (client, accepted)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn library_applies_the_policy_derived_from_thirty_seconds() {
    let (_client, socket) = loopback_pair();
    hangup::apply_policy(&socket, &LivenessPolicy::from_dead_after(secs(30))).unwrap();
    let read = hangup::read_liveness(&socket).unwrap();
    let timers = KeepaliveTimers {
        idle: secs(15),
        interval: secs(3),
        count: 5,
    };
    assert_eq!(read.keepalive, Some(timers));
    // D − 250 ms: Linux counts the user timeout from the first retransmission.
    assert_eq!(read.user_timeout, Some(Duration::from_millis(29_750)));
    assert_eq!(
        kernel_liveness(socket.as_raw_fd()),
        KernelLiveness {
            keepalive_on: true,
            timers: (15, 3, 5),
            user_timeout_ms: 29_750,
        }
    );
}

#[test]
fn library_clamps_a_two_second_budget_to_whole_kernel_seconds() {
    let (_client, socket) = loopback_pair();
    hangup::apply_policy(&socket, &LivenessPolicy::from_dead_after(secs(2))).unwrap();
    let read = hangup::read_liveness(&socket).unwrap();
    let timers = KeepaliveTimers {
        idle: secs(1),
        interval: secs(1),
        count: 5,
    };
    assert_eq!(read.keepalive, Some(timers));
    assert_eq!(read.user_timeout, Some(Duration::from_millis(1_750)));
    assert_eq!(
        kernel_liveness(socket.as_raw_fd()),
        KernelLiveness {
            keepalive_on: true,
            timers: (1, 1, 5),
            user_timeout_ms: 1_750,
        }
    );
}

#[test]
fn library_keepalive_off_and_os() {
    let (_client, socket) = loopback_pair();
    let mut policy = LivenessPolicy::from_dead_after(secs(30));
    policy.keepalive = Keepalive::Off;
    policy.user_timeout = None;
    hangup::apply_policy(&socket, &policy).unwrap();
    let read = hangup::read_liveness(&socket).unwrap();
    assert_eq!(read.keepalive, None);
    assert_eq!(read.user_timeout, None);
    let kernel = kernel_liveness(socket.as_raw_fd());
    assert!(!kernel.keepalive_on);
    assert_eq!(kernel.user_timeout_ms, 0);

    // `os`: SO_KEEPALIVE on with the system's timers.
    policy.keepalive = Keepalive::Os;
    let (_client, socket) = loopback_pair();
    hangup::apply_policy(&socket, &policy).unwrap();
    let system = |name: &str| -> i32 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let kernel = kernel_liveness(socket.as_raw_fd());
    assert!(kernel.keepalive_on);
    assert_eq!(
        kernel.timers,
        (
            system("tcp_keepalive_time"),
            system("tcp_keepalive_intvl"),
            system("tcp_keepalive_probes"),
        )
    );
    let read = hangup::read_liveness(&socket).unwrap();
    assert_eq!(
        read.keepalive.map(|t| t.idle),
        Some(secs(kernel.timers.0 as u64))
    );
}

/// The inode of the TCP socket from `local_port` to `remote_port`, from /proc/net/tcp.
fn tcp_socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        (port(local)? == local_port && port(remote)? == remote_port)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// The descriptor number of socket `inode` in process `pid`.
fn fd_of_inode(pid: u32, inode: u64) -> Option<RawFd> {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| {
            std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy() == wanted)
        })
        .and_then(|entry| entry.file_name().to_str()?.parse().ok())
}

/// A duplicate, in this process, of descriptor `fd` of process `pid`.
fn pidfd_getfd(pid: u32, fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls with integer arguments; each returned fd is owned here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as RawFd);
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(dup as RawFd))
    }
}

/// The server's socket for `client`'s connection, or `None` (with the reason printed)
/// when this process may not take it and the run is not in CI.
fn servers_socket(server: &TestServer, client: &LineClient) -> Option<OwnedFd> {
    let (server_port, client_port) = (server.addr().port(), client.local_addr().port());
    let inode = tcp_socket_inode(server_port, client_port)
        .expect("the server's socket is listed in /proc/net/tcp");
    let fd = fd_of_inode(server.pid(), inode);
    let fd = match fd {
        Some(fd) => fd,
        None if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: cannot read /proc/{}/fd (not root?)", server.pid());
            return None;
        }
        None => panic!(
            "socket inode {inode} not found among /proc/{}/fd",
            server.pid()
        ),
    };
    match pidfd_getfd(server.pid(), fd) {
        Ok(fd) => Some(fd),
        Err(err)
            if err.raw_os_error() == Some(libc::EPERM)
                && std::env::var("CI").as_deref() != Ok("true") =>
        {
            eprintln!(
                "skipped: pidfd_getfd needs ptrace rights over the server (run as root): {err}"
            );
            None
        }
        Err(err) => panic!("pidfd_getfd({}, {fd}): {err}", server.pid()),
    }
}

/// Starts a server with `args`, connects, and returns what the kernel reports for the
/// server's side of that connection.
fn server_side_liveness(args: &[&str]) -> Option<(KernelLiveness, hangup::SocketLiveness)> {
    let server = TestServer::start(args);
    let mut client = LineClient::connect(server.addr());
    client.assert_alive("policy"); // the server accepted and configured the socket
    let socket = servers_socket(&server, &client)?;
    let kernel = kernel_liveness(socket.as_raw_fd());
    let read = hangup::read_liveness(&socket).unwrap();
    Some((kernel, read))
}

#[test]
fn the_server_derives_its_policy_from_dead_after() {
    let Some((kernel, read)) = server_side_liveness(&["--dead-after", "8s"]) else {
        return;
    };
    // idle D/2 = 4 s, interval D/10 = 0.8 s → the kernel's 1 s floor, 5 probes.
    assert_eq!(
        kernel,
        KernelLiveness {
            keepalive_on: true,
            timers: (4, 1, 5),
            user_timeout_ms: 7_750,
        }
    );
    assert_eq!(read.user_timeout, Some(Duration::from_millis(7_750)));
}

#[test]
fn the_server_applies_explicit_keepalive_and_user_timeout() {
    let args = ["--keepalive", "10s,2s,4", "--user-timeout", "1500ms"];
    let Some((kernel, read)) = server_side_liveness(&args) else {
        return;
    };
    assert_eq!(
        kernel,
        KernelLiveness {
            keepalive_on: true,
            timers: (10, 2, 4),
            user_timeout_ms: 1_500,
        }
    );
    assert_eq!(
        read.keepalive,
        Some(KeepaliveTimers {
            idle: secs(10),
            interval: secs(2),
            count: 4,
        })
    );
    assert_eq!(read.user_timeout, Some(Duration::from_millis(1500)));
}

#[test]
fn the_server_can_turn_both_off() {
    let Some((kernel, read)) =
        server_side_liveness(&["--keepalive", "off", "--user-timeout", "off"])
    else {
        return;
    };
    assert!(!kernel.keepalive_on);
    assert_eq!(kernel.user_timeout_ms, 0);
    assert_eq!(read.keepalive, None);
    assert_eq!(read.user_timeout, None);
}
