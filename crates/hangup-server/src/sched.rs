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
//!
//! Neither helps an I/O thread that is already runnable rather than waking: one that
//! another thread preempted in the middle of its work (a wake-up of a third task, say)
//! waits in the run queue, and when that task is done the kernel may pick the job
//! thread, which then runs until the next scheduler tick (4 ms at HZ = 250). The lab saw
//! it: an I/O thread that had just taken a peer's RST waited 2.5 ms behind the job it
//! was about to cancel. So job threads also give way by hand: every I/O thread marks
//! itself [`IoThreads`] awake, with the CPU it woke on, until it waits for events again;
//! a job thread that finds one marked on its own CPU (the I/O thread is then queued
//! behind it) naps for a few microseconds, once per wake-up of that I/O thread.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The slice job threads ask for: well above the kernel's default, so that every other
/// thread's wake-up is the shorter one; not so long that a job holds a core from
/// another process's runnable (not waking) threads for more than a few milliseconds.
pub const JOB_THREAD_SLICE: Duration = Duration::from_millis(10);

/// The nice value of job threads.
pub const JOB_NICE: i32 = 19;

/// How long a job thread naps to let a queued I/O thread run, and how many naps it takes
/// at most for one wake-up of it.
pub const GIVE_WAY_NAP: Duration = Duration::from_micros(20);
const GIVE_WAY_NAPS: u32 = 10;

/// The timer slack of job threads: their naps are short, and the default slack (50 µs)
/// would make each nap three times as long.
const JOB_TIMER_SLACK_NS: u64 = 1_000;

/// Where the I/O threads are: per thread, 0 while it waits for events, else its wake-up
/// count (high 32 bits) and 1 + the CPU it woke on (low 32 bits).
#[derive(Debug)]
pub(crate) struct IoThreads {
    slots: Box<[AtomicU64]>,
}

impl IoThreads {
    /// Marks for `threads` I/O threads (at least one).
    pub(crate) fn new(threads: usize) -> Self {
        Self {
            slots: (0..threads.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many I/O threads there are.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// I/O thread `n` woke up (its `wakes`-th time) and works until [`IoThreads::idle`].
    pub(crate) fn awake(&self, n: usize, wakes: u32) {
        if let (Some(slot), Some(cpu)) = (self.slots.get(n), this_cpu()) {
            slot.store(
                u64::from(wakes) << 32 | u64::from(cpu + 1),
                Ordering::Relaxed,
            );
        }
    }

    /// I/O thread `n` waits for events again.
    pub(crate) fn idle(&self, n: usize) {
        if let Some(slot) = self.slots.get(n) {
            slot.store(0, Ordering::Relaxed);
        }
    }

    /// For job threads, between slices of work: if an I/O thread is marked awake on
    /// this thread's CPU, it is queued behind us; nap so that it runs, until it waits
    /// for events again (at most [`GIVE_WAY_NAPS`] naps). `given` remembers the wake-up
    /// already given way to, so that an I/O thread that is awake but blocked elsewhere
    /// costs the job one episode, not one per slice. Returns the naps taken.
    pub(crate) fn give_way(&self, given: &Cell<u64>) -> u32 {
        let marks = || self.slots.iter().map(|slot| slot.load(Ordering::Relaxed));
        // The common case, with every I/O thread waiting: relaxed loads only.
        if marks().all(|mark| mark == 0) {
            return 0;
        }
        let Some(cpu) = this_cpu() else { return 0 };
        let Some(mark) = marks().find(|&mark| mark != 0 && mark as u32 == cpu + 1) else {
            return 0;
        };
        if given.replace(mark) == mark {
            return 0;
        }
        let mut naps = 0;
        while naps < GIVE_WAY_NAPS && marks().any(|other| other == mark) {
            std::thread::sleep(GIVE_WAY_NAP);
            naps += 1;
        }
        naps
    }
}

#[cfg(target_os = "linux")]
fn this_cpu() -> Option<u32> {
    // SAFETY: no arguments; glibc answers from rseq or the vDSO.
    u32::try_from(unsafe { libc::sched_getcpu() }).ok()
}

#[cfg(not(target_os = "linux"))]
fn this_cpu() -> Option<u32> {
    None
}

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
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a value, no memory; it affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, JOB_TIMER_SLACK_NS as libc::c_ulong);
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

    /// Pins the calling thread to the CPU it runs on, and returns that CPU.
    fn pin_here() -> u32 {
        let cpu = this_cpu().expect("sched_getcpu");
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get valid
        // pointers to it and its size, for the calling thread (pid 0).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            let rc = libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        }
        cpu
    }

    #[test]
    fn a_job_gives_way_once_per_wake_up_to_an_io_thread_marked_on_its_cpu() {
        std::thread::spawn(|| {
            let cpu = pin_here();
            let io = IoThreads::new(2);
            let given = Cell::new(0);
            assert_eq!(io.give_way(&given), 0, "every I/O thread waits");
            // An I/O thread awake on another CPU is running there: no nap.
            io.slots[1].store(1 << 32 | u64::from(cpu + 2), Ordering::Relaxed);
            assert_eq!(io.give_way(&given), 0);
            // Awake on this CPU while we run: it is queued behind us. Nobody clears
            // the mark here, so the job naps its most, once per wake-up.
            io.awake(0, 7);
            assert_eq!(io.give_way(&given), GIVE_WAY_NAPS);
            assert_eq!(io.give_way(&given), 0, "this wake-up was given way to");
            io.awake(0, 8);
            assert_eq!(io.give_way(&given), GIVE_WAY_NAPS, "the next one is too");
            io.idle(0);
            io.awake(0, 9);
            // Cleared by the I/O thread once it waits again: the naps end with it.
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    std::thread::sleep(GIVE_WAY_NAP);
                    io.idle(0);
                });
                assert!(io.give_way(&given) >= 1);
            });
            assert_eq!(io.give_way(&given), 0, "idle");
        })
        .join()
        .unwrap();
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
