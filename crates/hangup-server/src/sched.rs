//! Which threads the kernel runs first: the server's I/O threads ask EEVDF for a short
//! time slice, its job threads run at nice 19 with the default slice.
//!
//! A job thread keeps a core busy for as long as its job runs. When a hangup wakes an
//! I/O thread on that core, EEVDF lets the waking thread preempt only if its virtual
//! deadline comes first; a thread's deadline is its eligible time plus its slice, so a
//! thread with a short slice is picked at once, where one with the default slice
//! (≈ 3 ms here) may wait for the job's slice to run out. Since Linux 6.12 a fair
//! (`SCHED_OTHER`) thread sets its own slice with `sched_setattr(2)`'s
//! `sched_runtime` (0.1–100 ms). On older kernels the call is refused and the server
//! runs as before (nice 19 for jobs still helps).

use std::io;
use std::time::Duration;

/// The slice the I/O threads ask for: the kernel's minimum. An I/O thread runs for a
/// few microseconds per wake-up, so a short slice costs it nothing.
pub const IO_THREAD_SLICE: Duration = Duration::from_micros(100);

/// The nice value of job threads.
pub const JOB_NICE: i32 = 19;

/// Asks for [`IO_THREAD_SLICE`] on the calling thread; for tokio's `on_thread_start`
/// of the runtime that serves connections. Errors when the kernel refuses (before
/// 6.12, or under a seccomp filter); the caller may ignore that.
pub fn prefer_io_thread() -> io::Result<()> {
    set_this_thread(0, IO_THREAD_SLICE)
}

/// Makes the calling thread a job thread: nice [`JOB_NICE`], the default slice (it may
/// have been started as an I/O thread: tokio's blocking threads run `on_thread_start`
/// too). Nice only matters while threads compete for a core: with idle I/O threads the
/// jobs still get every spare cycle.
pub(crate) fn yield_to_io() {
    if set_this_thread(JOB_NICE, Duration::ZERO).is_err() {
        // Before 6.12 `sched_runtime` may be refused: nice alone still helps.
        #[cfg(target_os = "linux")]
        // SAFETY: setpriority on the calling thread only (its tid); no memory is passed.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, JOB_NICE);
        }
    }
}

/// `struct sched_attr` (`include/uapi/linux/sched/types.h`), the first 56 bytes
/// (`SCHED_ATTR_SIZE_VER1`).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

/// `SCHED_OTHER` with `nice` and `slice` (zero: the kernel's default) for the calling
/// thread.
#[cfg(target_os = "linux")]
fn set_this_thread(nice: i32, slice: Duration) -> io::Result<()> {
    let mut attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_nice: nice,
        sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        ..SchedAttr::default()
    };
    // SAFETY: pid 0 is the calling thread; `attr` is a valid sched_attr of the size it
    // states, read by the kernel only during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &mut attr as *mut SchedAttr,
            0u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_this_thread(_nice: i32, _slice: Duration) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Reads the calling thread's attributes back.
    fn this_thread() -> SchedAttr {
        let mut attr = SchedAttr::default();
        // SAFETY: as above; the kernel writes at most `size` bytes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                &mut attr as *mut SchedAttr,
                std::mem::size_of::<SchedAttr>() as u32,
                0u32,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        attr
    }

    #[test]
    fn the_kernel_keeps_the_slice_and_the_nice_value() {
        std::thread::spawn(|| {
            if let Err(err) = prefer_io_thread() {
                eprintln!("sched_runtime refused by this kernel ({err}): nothing to check");
                return;
            }
            let io = this_thread();
            assert_eq!(io.sched_runtime, IO_THREAD_SLICE.as_nanos() as u64);
            assert_eq!(io.sched_nice, 0);
            yield_to_io();
            let job = this_thread();
            assert_eq!(job.sched_nice, JOB_NICE);
            assert_ne!(job.sched_runtime, IO_THREAD_SLICE.as_nanos() as u64);
        })
        .join()
        .unwrap();
    }
}
