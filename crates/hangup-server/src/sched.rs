//! Which threads the kernel runs first: job threads run at nice 19 with a long time
//! slice, so that a waking I/O thread preempts them at once.
//!
//! A job thread keeps a core busy for as long as its job runs. When a hangup wakes an
//! I/O thread on that core, EEVDF (Linux ≥ 6.6) lets the waking thread preempt only if
//! it becomes the task with the earliest virtual deadline, and (with `RUN_TO_PARITY`)
//! only once the running task used up its protected slice, unless the waking task asks
//! for a *shorter* slice than the running one (`PREEMPT_SHORT`, Linux ≥ 6.12): then the
//! protection is cancelled and the wake-up preempts at once. Since 6.12 a fair
//! (`SCHED_OTHER`) thread sets its own slice with `sched_setattr(2)`'s `sched_runtime`
//! (0.1–100 ms). So the job threads ask for a long slice, and the I/O threads, on the
//! kernel's default (≈ 3 ms here), are the shorter ones.
//!
//! The other way round (a 0.1 ms slice for the I/O threads) cut the tail just as well
//! but cost throughput when the machine is saturated: `bench scale` with 200 000
//! sessions over 11 instances ramped up in 21–23 s against 16–18 s, and a million
//! sessions over 56 instances took 740 s to ramp up and lost sessions to missed
//! heartbeats. Lengthening the job threads' slice leaves every other thread as it was.
//! On kernels before 6.12 the call is refused and nice 19 alone applies.

use std::io;
use std::time::Duration;

/// The slice job threads ask for: well above the kernel's default, so that every other
/// thread's wake-up is the shorter one; not so long that a job holds a core from
/// another process's runnable (not waking) threads for more than a few milliseconds.
pub const JOB_THREAD_SLICE: Duration = Duration::from_millis(10);

/// The nice value of job threads.
pub const JOB_NICE: i32 = 19;

/// Makes the calling thread a job thread: nice [`JOB_NICE`] and [`JOB_THREAD_SLICE`].
/// Nice only matters while threads compete for a core: with idle I/O threads the jobs
/// still get every spare cycle. The setting is never undone: the blocking threads of the
/// server's runtime run jobs, and otherwise only the admin endpoint's walks of the live
/// table, which may then run at nice 19 as well (they are not latency-critical).
pub(crate) fn yield_to_io() {
    if set_this_thread(JOB_NICE, JOB_THREAD_SLICE).is_err() {
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

/// `SCHED_OTHER` with `nice` and `slice` for the calling thread.
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
    fn a_job_thread_gets_nice_19_and_the_long_slice() {
        std::thread::spawn(|| {
            let before = this_thread();
            yield_to_io();
            let job = this_thread();
            assert_eq!(job.sched_nice, JOB_NICE);
            if job.sched_runtime == before.sched_runtime {
                eprintln!("sched_runtime refused by this kernel: nice 19 alone applies");
                return;
            }
            assert_eq!(job.sched_runtime, JOB_THREAD_SLICE.as_nanos() as u64);
        })
        .join()
        .unwrap();
    }
}
