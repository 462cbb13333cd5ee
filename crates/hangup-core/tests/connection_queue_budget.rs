//! The server-wide bound on queued work: connections sharing a QueueBudget get
//! `ERR too-many-jobs` once together they hold its bytes, and every way a queued job
//! leaves (started, cancelled, connection closed or dropped) gives its bytes back.

mod common;

use std::sync::Arc;

use common::{config, err_code, Driver, Jobs};
use hangup_core::{Cause, ErrorCode, HalfClosePolicy, QueueBudget};

fn driver(budget: &Arc<QueueBudget>) -> Driver {
    let mut config = config(HalfClosePolicy::Probe);
    config.queue_budget = Some(budget.clone());
    Driver::new(config, Jobs::Manual)
}

/// Queues jobs with 200-byte seeds until one is refused; the count accepted.
fn fill(d: &mut Driver) -> usize {
    let seed = "q".repeat(200);
    for accepted in 0..1000 {
        d.bytes(format!("JOB 1000 {seed}\n"));
        let lines = d.take_lines();
        match err_code(&lines[0]) {
            Some(ErrorCode::TooManyJobs) => {
                assert!(lines[0].contains("server's job queue is full"), "{lines:?}");
                return accepted;
            }
            None => assert!(lines[0].starts_with("ACCEPTED "), "{lines:?}"),
            Some(code) => panic!("{code:?}: {lines:?}"),
        }
    }
    panic!("the budget never filled")
}

#[test]
fn connections_sharing_a_budget_are_refused_together_and_get_it_back() {
    let budget = Arc::new(QueueBudget::new(4096));
    let mut a = driver(&budget);
    let accepted = fill(&mut a);
    // The first job runs (it left the queue); the rest wait and fill the budget.
    assert!((2..64).contains(&accepted), "{accepted}");
    assert!(budget.used() <= budget.limit());
    let mut b = driver(&budget);
    // A job is charged while it passes through the queue, even one that starts at
    // once: a full budget refuses every new job.
    assert_eq!(fill(&mut b), 0);

    // A's connection ends: its queued jobs give their bytes back.
    a.local_close(Cause::Local, false);
    a.settle();
    let mut c = driver(&budget);
    assert!(fill(&mut c) >= 2);
    drop(c);
    drop(b);
    drop(a);
    assert_eq!(budget.used(), 0, "every byte came back");
}

#[test]
fn cancelling_and_starting_jobs_release_their_bytes() {
    let budget = Arc::new(QueueBudget::new(1 << 20));
    let mut d = driver(&budget);
    d.bytes("JOB 1000 first\nJOB 1000 second\nJOB 1000 third\n");
    d.take_lines();
    let held = budget.used();
    assert!(held > 0);
    d.bytes("CANCEL 3\n");
    assert_eq!(d.take_lines(), vec!["CANCELLED 3"]);
    assert!(budget.used() < held);
    d.complete_job(); // job 1 done: job 2 leaves the queue and runs
    d.take_lines();
    assert_eq!(budget.used(), 0);
}
