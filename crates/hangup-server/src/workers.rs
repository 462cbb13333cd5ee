//! The bounded worker pool that runs jobs: at most `workers` chains hash at once, each
//! on a blocking thread, each checking its cancellation token between slices.

use std::num::NonZeroUsize;
use std::sync::Arc;

use hangup_core::run_chain;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::sched::IoThreads;

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

impl Finished {
    /// Cancelled, now.
    fn cancelled() -> Self {
        Self {
            outcome: None,
            stopped_ns: hangup::events::ts_ns(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct WorkerPool {
    permits: Arc<Semaphore>,
    /// The server's I/O threads, which its jobs give way to.
    io: Arc<IoThreads>,
}

/// Calls `on_finished` exactly once: with the job's end, or as cancelled if the job's
/// task is dropped first (the runtime shutting down, a worker that panicked).
struct Report<F: FnOnce(Finished)> {
    on_finished: Option<F>,
}

impl<F: FnOnce(Finished)> Report<F> {
    fn send(mut self, finished: Finished) {
        if let Some(on_finished) = self.on_finished.take() {
            on_finished(finished);
        }
    }
}

impl<F: FnOnce(Finished)> Drop for Report<F> {
    fn drop(&mut self) {
        if let Some(on_finished) = self.on_finished.take() {
            on_finished(Finished::cancelled());
        }
    }
}

impl WorkerPool {
    /// At least one worker: a pool of none would queue every job for ever.
    pub(crate) fn new(workers: NonZeroUsize, io: Arc<IoThreads>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.get())),
            io,
        }
    }

    /// Queues a job for a worker (from inside the runtime). `on_finished` is called
    /// once, on the worker's thread or the runtime's, when the chain completed or, once
    /// `cancel` fires, within one slice of rounds (or at once if it was still waiting).
    pub(crate) fn spawn(
        &self,
        seed: String,
        rounds: u64,
        cancel: CancellationToken,
        on_finished: impl FnOnce(Finished) + Send + 'static,
    ) {
        let report = Report {
            on_finished: Some(on_finished),
        };
        let permits = self.permits.clone();
        let io = self.io.clone();
        tokio::spawn(async move {
            let permit = tokio::select! {
                permit = permits.acquire_owned() => permit,
                () = cancel.cancelled() => return report.send(Finished::cancelled()),
            };
            let Ok(permit) = permit else { return };
            let _ = tokio::task::spawn_blocking(move || {
                crate::sched::yield_to_io();
                let given = std::cell::Cell::new(0);
                let outcome = run_chain(seed.as_bytes(), rounds, || {
                    io.give_way(&given);
                    cancel.is_cancelled()
                });
                let stopped_ns = hangup::events::ts_ns();
                drop(permit);
                // Straight from the worker's thread: the connection hears of the end
                // without a hop through the runtime.
                report.send(Finished {
                    outcome,
                    stopped_ns,
                });
            })
            .await;
        });
    }
}
