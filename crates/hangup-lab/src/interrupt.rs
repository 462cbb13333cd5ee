//! Ctrl-C and friends: a signal only sets a flag; every wait in the lab polls it and
//! returns [`LabError::Interrupted`](crate::LabError::Interrupted), so that the Drop
//! guards run and remove what the lab created.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that make the running lab stop and
/// clean up. Call it once from the binary (a library should not take signals on its own).
pub fn install_handler() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic; `action` is fully initialised
        // (zeroed, then the fields that matter set) before it is passed.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once a stop was requested.
pub(crate) fn check() -> Result<(), crate::LabError> {
    if requested() {
        Err(crate::LabError::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps for `duration` in short steps, returning early with `Err(Interrupted)`.
pub(crate) fn sleep(duration: std::time::Duration) -> Result<(), crate::LabError> {
    let deadline = std::time::Instant::now() + duration;
    loop {
        check()?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(POLL_STEP));
    }
}

/// How often waits look at the flag.
pub(crate) const POLL_STEP: std::time::Duration = std::time::Duration::from_millis(20);
