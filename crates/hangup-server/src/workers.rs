//! The bounded worker pool that runs jobs: at most `workers` chains hash at once, each
//! on a blocking thread, each checking its cancellation token between slices.

use std::num::NonZeroUsize;
use std::sync::Arc;

use hangup_core::run_chain;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

/// How a job ended: its digest, or `None` if it was cancelled.
pub(crate) type JobOutcome = Option<[u8; 32]>;

#[derive(Debug)]
pub(crate) struct WorkerPool {
    permits: Arc<Semaphore>,
}

impl WorkerPool {
    /// At least one worker: a pool of none would queue every job for ever.
    pub(crate) fn new(workers: NonZeroUsize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.get())),
        }
    }

    /// Queues a job for a worker. The receiver yields when the chain completed or, once
    /// `cancel` fires, within one slice of rounds (or at once if it was still waiting).
    pub(crate) fn spawn(
        &self,
        seed: String,
        rounds: u64,
        cancel: CancellationToken,
    ) -> oneshot::Receiver<JobOutcome> {
        let (tx, rx) = oneshot::channel();
        let permits = self.permits.clone();
        tokio::spawn(async move {
            let permit = tokio::select! {
                permit = permits.acquire_owned() => permit,
                () = cancel.cancelled() => {
                    let _ = tx.send(None);
                    return;
                }
            };
            let Ok(permit) = permit else { return };
            let outcome = tokio::task::spawn_blocking(move || {
                yield_to_io();
                let outcome = run_chain(seed.as_bytes(), rounds, || cancel.is_cancelled());
                drop(permit);
                outcome
            })
            .await
            .unwrap_or(None);
            let _ = tx.send(outcome);
        });
        rx
    }
}

/// Lets the I/O threads preempt job threads at once.
///
/// A job thread keeps a core busy for as long as the job runs. Under Linux's EEVDF
/// scheduler a waking I/O thread that lands on that core may otherwise wait out the
/// job's time slice (about 3 ms) before it can notice a hangup: `hangup bench cancel`
/// measured a p90 of 3.0 ms that way, and 0.15 ms with job threads at nice 19
/// (`SCHED_BATCH` did not help; `SCHED_IDLE` helped as much but can starve jobs on a
/// busy host). Nice only matters while threads compete for a core: with idle I/O
/// threads the jobs still get every spare cycle. The blocking threads of the server's
/// runtime only ever run jobs, so the setting is never undone.
fn yield_to_io() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread only (its tid); no memory is passed.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, JOB_NICE);
    }
}

/// The nice value of job threads.
#[cfg(target_os = "linux")]
const JOB_NICE: libc::c_int = 19;
