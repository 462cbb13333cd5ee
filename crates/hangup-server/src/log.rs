//! The event log's writer: stderr, with the I/O threads' lines batched.
//!
//! Every event the server logs is a line on stderr, and a line written as it happens is
//! a `write(2)` on the thread that logged it. On an I/O thread that is one system call
//! per line in the middle of its work: a mass death of 100 000 sessions logs two or
//! three lines each, while fresh clients wait on the same thread. An I/O thread
//! therefore collects its lines and writes them in one call before it waits for
//! events again ([`flush_this_thread`]), or once they reach [`BATCH_LIMIT`]. A line's
//! `ts_ns` is taken when it is logged, so batching delays the line, never its time.
//! Every other thread writes each line at once.
//!
//! ```
//! use std::io::Write;
//!
//! // What `hangup serve` installs as the subscriber's writer.
//! let mut out = hangup_server::log::StderrLines;
//! out.write_all(b"a line\n").unwrap();
//! ```

use std::cell::RefCell;
use std::io::{self, Write};

/// Bytes an I/O thread holds before it writes them anyway.
pub const BATCH_LIMIT: usize = 64 * 1024;

thread_local! {
    /// `Some` on a thread that batches its lines.
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// The log's writer: into this thread's batch if it keeps one, else straight to stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrLines;

impl Write for StderrLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let batched = BATCH.with_borrow_mut(|batch| {
            let batch = batch.as_mut()?;
            batch.extend_from_slice(buf);
            Some(if batch.len() >= BATCH_LIMIT {
                write_out(batch)
            } else {
                Ok(())
            })
        });
        match batched {
            Some(written) => written.map(|()| buf.len()),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Makes the calling thread batch its log lines until it ends; the guard writes what
/// is left when it is dropped (the thread's end, a panic unwinding it).
pub(crate) fn batch_this_thread() -> BatchGuard {
    BATCH.set(Some(Vec::new()));
    BatchGuard(())
}

/// Writes this thread's batched lines, if it has any.
pub(crate) fn flush_this_thread() {
    BATCH.with_borrow_mut(|batch| {
        if let Some(batch) = batch.as_mut().filter(|batch| !batch.is_empty()) {
            // Nowhere to report a failing stderr: the lines are dropped.
            let _ = write_out(batch);
        }
    });
}

fn write_out(batch: &mut Vec<u8>) -> io::Result<()> {
    let written = io::stderr().lock().write_all(batch);
    batch.clear();
    if batch.capacity() > BATCH_LIMIT * 2 {
        batch.shrink_to(BATCH_LIMIT);
    }
    written
}

/// Ends a thread's batching (see [`batch_this_thread`]).
#[must_use = "the thread batches only while the guard lives"]
pub(crate) struct BatchGuard(());

impl Drop for BatchGuard {
    fn drop(&mut self) {
        flush_this_thread();
        BATCH.set(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> usize {
        BATCH.with_borrow(|batch| batch.as_ref().map_or(0, Vec::len))
    }

    #[test]
    fn a_batching_thread_holds_its_lines_until_it_flushes_or_reaches_the_limit() {
        std::thread::spawn(|| {
            let mut out = StderrLines;
            out.write_all(b"").unwrap();
            assert_eq!(held(), 0, "not batching: nothing held");
            let guard = batch_this_thread();
            out.write_all(b"{\"event\":\"test_line\"}\n").unwrap();
            assert_eq!(held(), 22);
            flush_this_thread();
            assert_eq!(held(), 0);
            let line = vec![b' '; 1000];
            for _ in 0..(BATCH_LIMIT / line.len()) {
                out.write_all(&line).unwrap();
            }
            assert!(held() < BATCH_LIMIT, "written out once over the limit");
            out.write_all(b"\n").unwrap();
            drop(guard);
            assert_eq!(held(), 0);
            assert!(BATCH.with_borrow(Option::is_none));
        })
        .join()
        .unwrap();
    }
}
