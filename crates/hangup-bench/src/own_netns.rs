//! `bench scale --netns`: the whole bench (servers, load workers, the bench itself) in a
//! network namespace of its own, with a TCP established-connection table sized for
//! the run.
//!
//! Every namespace shares the kernel's one established table unless
//! `net.ipv4.tcp_child_ehash_entries` was set when it was created. That table is sized
//! at boot from memory (262 144 buckets on this 24 GiB machine), and a million loopback
//! sessions put two million sockets in it: about 8 per bucket, walked on every
//! segment's lookup (`__inet_lookup_established` was the top kernel symbol of the
//! million run). A namespace of its own also keeps those sockets out of the host
//! namespace's `/proc/net/tcp` and sock_diag, which other programs on the machine read.
//!
//! The bench runs itself again under `ip netns exec`, with [`NETNS_ENV`] set so that
//! the second run knows where it is; this process only creates the namespace, waits,
//! and deletes it.

use std::process::{Command, ExitCode};

use anyhow::Context;
use hangup_lab::Netns;

/// Set in the bench run inside the namespace: `<name> <buckets>`.
const NETNS_ENV: &str = "HANGUP_BENCH_NETNS";

const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";

/// The kernel's ceiling for `tcp_child_ehash_entries`.
const MAX_BUCKETS: usize = 1 << 24;

/// Buckets for `sessions` loopback sessions: one per socket (two per session), a
/// power of two, at least 64 Ki.
fn buckets_for(sessions: usize) -> usize {
    sessions
        .saturating_mul(2)
        .max(1 << 16)
        .checked_next_power_of_two()
        .unwrap_or(MAX_BUCKETS)
        .min(MAX_BUCKETS)
}

/// Where this run is, if it is the one inside the namespace: a line for the report's
/// "limits changed".
pub(crate) fn inside() -> Option<String> {
    let value = std::env::var(NETNS_ENV).ok()?;
    let (name, buckets) = value.split_once(' ').unwrap_or((&value, "?"));
    Some(format!(
        "ran in network namespace {name} with its own TCP established table of {buckets} buckets (net.ipv4.tcp_child_ehash_entries)"
    ))
}

/// Creates the namespace with a table for `sessions`, runs this same command line in
/// it, and returns its exit code once it is done. The namespace is deleted on return,
/// also on error; an interrupt reaches the inner run too (same process group), so this
/// one only waits for it.
pub(crate) fn rerun_inside(sessions: usize) -> anyhow::Result<ExitCode> {
    hangup_lab::preflight().context("--netns needs root and iproute2")?;
    super::catch_interrupts()?;
    let buckets = buckets_for(sessions);
    let netns = with_child_ehash(buckets, || {
        Netns::for_run("scale").context("could not create the bench's network namespace")
    })?;
    // The namespace's own loopback has the whole 127.0.0.0/8, as the host's has.
    let exe = std::env::current_exe().context("cannot find the hangup executable")?;
    eprintln!(
        "bench scale: running in network namespace {} ({buckets} TCP hash buckets)",
        netns.name()
    );
    let status = Command::new("ip")
        .args(["netns", "exec", netns.name()])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(NETNS_ENV, format!("{} {buckets}", netns.name()))
        .env(hangup_lab::RUN_MARKER_ENV, hangup_lab::run_prefix())
        .status()
        .context("could not run the bench under `ip netns exec`")?;
    drop(netns);
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => anyhow::bail!("the bench inside the namespace was killed ({status})"),
    })
}

/// Held while a bench has `tcp_child_ehash_entries` set: two benches started at once
/// would otherwise each read the other's value as the one to put back.
const CHILD_EHASH_LOCK: &str = "/run/lock/hangup-bench-child-ehash.lock";

/// Runs `create` with `tcp_child_ehash_entries` set to `buckets`, and puts the old
/// value back afterwards whatever happened: the setting applies to every namespace
/// created meanwhile. One bench at a time (a file lock), so the value put back is the
/// one the machine had.
fn with_child_ehash<T>(
    buckets: usize,
    create: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let lock_dir = std::path::Path::new(CHILD_EHASH_LOCK)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    std::fs::create_dir_all(lock_dir)
        .with_context(|| format!("could not create {}", lock_dir.display()))?;
    let lock = std::fs::File::create(CHILD_EHASH_LOCK)
        .with_context(|| format!("could not open {CHILD_EHASH_LOCK}"))?;
    // Released when `lock` is closed (dropped), after the old value is back.
    // SAFETY: flock on a descriptor `lock` owns for the whole call; no memory is passed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("could not lock {CHILD_EHASH_LOCK}"));
    }
    let old = std::fs::read_to_string(CHILD_EHASH).with_context(|| {
        format!(
            "{CHILD_EHASH}: this kernel has no per-namespace TCP table (Linux 6.1 or later has)"
        )
    })?;
    std::fs::write(CHILD_EHASH, buckets.to_string())
        .with_context(|| format!("could not write {buckets} to {CHILD_EHASH}"))?;
    let created = create();
    let restored = std::fs::write(CHILD_EHASH, old.trim())
        .with_context(|| format!("could not put {CHILD_EHASH} back to {}", old.trim()));
    let created = created?;
    restored?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two benches setting the table size at once leave the machine's own value
    /// behind (root: it writes the sysctl; skipped without it unless CI=true).
    #[test]
    fn concurrent_benches_put_the_machines_value_back() {
        let Ok(before) = std::fs::read_to_string(CHILD_EHASH) else {
            assert!(std::env::var_os("CI").is_none(), "{CHILD_EHASH} unreadable");
            return;
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("not root: skipped");
            return;
        }
        let (in_a, out_a) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                with_child_ehash(1 << 17, || {
                    // B starts while A holds its value, and A ends first: without
                    // the lock, B would then put A's value back.
                    in_a.send(()).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    Ok(())
                })
                .unwrap();
            });
            out_a.recv().unwrap();
            with_child_ehash(1 << 18, || {
                let now = std::fs::read_to_string(CHILD_EHASH).unwrap();
                assert_eq!(
                    now.trim(),
                    (1 << 18).to_string(),
                    "B's own value while B runs"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
                Ok(())
            })
            .unwrap();
        });
        let after = std::fs::read_to_string(CHILD_EHASH).unwrap();
        assert_eq!(after.trim(), before.trim());
    }

    #[test]
    fn a_bucket_per_socket_as_a_power_of_two_within_the_kernels_range() {
        assert_eq!(buckets_for(1), 1 << 16);
        assert_eq!(buckets_for(15_000), 1 << 16);
        assert_eq!(buckets_for(200_000), 1 << 19);
        assert_eq!(buckets_for(1_000_000), 1 << 21);
        assert_eq!(buckets_for(usize::MAX), MAX_BUCKETS);
    }
}
