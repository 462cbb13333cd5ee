//! Without root: sockets are listed, owners in other users' processes are
//! not, and the report says what is missing.
#![cfg(target_os = "linux")]

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::thread;

use hangup_inspect::{collect, OwnerStatus, Snapshot, Socket};
use support::*;

/// Runs `work` on a thread whose credentials are those of `nobody`. The raw
/// `setresuid` syscall changes only the calling thread (glibc's wrapper would
/// change the whole test process), and leaving uid 0 drops its capabilities.
fn as_nobody<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let nobody: libc::uid_t = 65534;
                // SAFETY: a plain syscall with integer arguments.
                let changed = unsafe { libc::syscall(libc::SYS_setresuid, nobody, nobody, nobody) };
                assert_eq!(changed, 0, "setresuid: {}", std::io::Error::last_os_error());
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A child process we started, killed and reaped on drop (also on panic).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sleep` holding `fd` as its descriptor 3.
fn hold_in_child(fd: std::os::fd::RawFd) -> ChildGuard {
    let mut command = Command::new("sleep");
    command.arg("60");
    // SAFETY: dup2 is async-signal-safe, as required between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    ChildGuard(command.spawn().expect("spawn sleep"))
}

fn socket_of(
    snapshot: &Snapshot,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
) -> &Socket {
    snapshot
        .sockets
        .iter()
        .find(|s| s.local == local && s.peer == peer)
        .unwrap_or_else(|| panic!("no {local} -> {peer}"))
}

#[test]
fn without_root_sockets_are_listed_and_missing_owners_are_explained() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let (listener, addr) = listen(LOCALHOST);
    let (client, server) = connect_pair(&listener);
    let client_addr = client.local_addr().unwrap();
    // Only the child holds the server side from now on.
    let child = hold_in_child(server.as_raw_fd());
    drop(server);
    let child_pid = child.0.id();

    let unprivileged =
        if root { as_nobody(collect) } else { collect() }.expect("dump without root");
    let held = socket_of(&unprivileged, addr, client_addr);
    assert!(held.tcp_info.is_some(), "TCP_INFO needs no privilege");
    let ours = socket_of(&unprivileged, client_addr, addr);
    // A thread group may always read its own /proc/PID/fd.
    assert_eq!(ours.owner_status, OwnerStatus::Found);
    assert_eq!(ours.owners[0].pid, std::process::id());
    if root {
        assert_eq!(held.owner_status, OwnerStatus::Unknown, "{held:#?}");
        assert!(unprivileged.unreadable_pids.contains(&child_pid));
        let note = unprivileged
            .notes
            .iter()
            .find(|n| n.contains("not readable"))
            .unwrap_or_else(|| panic!("no note in {:?}", unprivileged.notes));
        assert!(note.contains("root"), "{note}");

        // With root the other process's socket has its owner again.
        let privileged = collect().unwrap();
        let held = socket_of(&privileged, addr, client_addr);
        assert_eq!(held.owner_status, OwnerStatus::Found);
        assert_eq!(held.owners.len(), 1, "{:?}", held.owners);
        assert_eq!(held.owners[0].pid, child_pid);
        assert_eq!(held.owners[0].comm, "sleep");
        assert_eq!(held.owners[0].fd, 3);
    } else {
        eprintln!("not root: checked collection as the current user only");
        assert_eq!(held.owner_status, OwnerStatus::Found);
    }
    drop(child);
}
