//! The bounded worker pool that runs jobs: at most `workers` chains hash at once, each
//! on a blocking thread, each checking its cancellation token between slices.

use std::num::NonZeroUsize;
use std::sync::Arc;

use hangup_core::run_chain;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

/// How a job ended: its digest, or `None` if it was cancelled.
pub(crate) type JobOutcome = Option<[u8; 32]>;

/// A job's end as its worker saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    pub outcome: JobOutcome,
    /// When the worker came out of the chain (Unix ns), taken on the worker's thread:
    /// the instant the work stopped, before the connection hears of it.
    pub stopped_ns: u64,
}

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
    ) -> oneshot::Receiver<Finished> {
        let (tx, rx) = oneshot::channel();
        let permits = self.permits.clone();
        tokio::spawn(async move {
            let permit = tokio::select! {
                permit = permits.acquire_owned() => permit,
                () = cancel.cancelled() => {
                    let _ = tx.send(Finished {
                        outcome: None,
                        stopped_ns: hangup::events::ts_ns(),
                    });
                    return;
                }
            };
            let Ok(permit) = permit else { return };
            let finished = tokio::task::spawn_blocking(move || {
                crate::sched::yield_to_io();
                let outcome = run_chain(seed.as_bytes(), rounds, || cancel.is_cancelled());
                let stopped_ns = hangup::events::ts_ns();
                drop(permit);
                Finished {
                    outcome,
                    stopped_ns,
                }
            })
            .await
            .unwrap_or_else(|_| Finished {
                outcome: None,
                stopped_ns: hangup::events::ts_ns(),
            });
            let _ = tx.send(finished);
        });
        rx
    }
}
