//! A process the lab runs inside a network namespace, with its JSON events, its stdout
//! lines and a Drop guard that kills it.
//!
//! The child joins the namespace itself (`setns` on `/run/netns/NS` between fork and
//! exec), so the pid the lab holds is the `hangup` process itself: signals go straight
//! to it. Not `ip netns exec`: that also gives every process a mount namespace of its
//! own (to remount /sys), and tearing that down when the process dies waits for an
//! expedited RCU grace period *before* the dead process's sockets are closed: 4–5.6 ms
//! in traced runs (`free_nsproxy` → `namespace_unlock` → `synchronize_rcu_expedited`),
//! which the lab counted as the server's time to notice a client exit.
//! Children get their own process group (the terminal's Ctrl-C reaches only the lab,
//! which then cleans up) and `PR_SET_PDEATHSIG`, so that a lab killed with SIGKILL
//! does not leave them running. They must therefore be spawned from a thread that
//! lives as long as they do: the lab spawns them from the thread that runs it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::error::LabError;
use crate::events::ts_ns;
use crate::interrupt;
use crate::netns::RUN_MARKER_ENV;

/// Lines of stderr kept for error messages.
const LOG_TAIL: usize = 40;
/// Lines of stdout kept (the lab only looks for a few replies).
const STDOUT_KEEP: usize = 10_000;

/// A line a process printed on stdout, with the Unix time (ns) it was read.
pub(crate) type StdoutLine = (u64, String);

/// A running lab process.
pub(crate) struct LabProcess {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    history: Vec<Value>,
    stdout: Arc<Mutex<Vec<StdoutLine>>>,
    log: Arc<Mutex<VecDeque<String>>>,
    exit: Option<ExitStatus>,
    /// Signals go to its whole process group (a third-party server's workers).
    group: bool,
}

impl std::fmt::Debug for LabProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabProcess")
            .field("role", &self.role)
            .field("pid", &self.child.id())
            .field("exit", &self.exit)
            .finish()
    }
}

impl LabProcess {
    /// Starts `exe args…` inside `netns`, marked with `run_marker`.
    pub(crate) fn spawn(
        role: &str,
        netns: &str,
        exe: &Path,
        args: &[String],
        run_marker: &str,
    ) -> Result<Self, LabError> {
        Self::spawn_in(role, netns, exe, args, run_marker, &[], false)
    }

    /// Starts `sh -c 'exec COMMAND'` inside `netns` with `env` added; signals reach its
    /// whole process group (the lab made it the group's leader), so that a server's
    /// worker processes go with it.
    pub(crate) fn spawn_shell(
        role: &str,
        netns: &str,
        shell_command: &str,
        run_marker: &str,
        env: &[(&str, String)],
    ) -> Result<Self, LabError> {
        let args = ["-c".to_owned(), format!("exec {shell_command}")];
        Self::spawn_in(
            role,
            netns,
            Path::new("/bin/sh"),
            &args,
            run_marker,
            env,
            true,
        )
    }

    fn spawn_in(
        role: &str,
        netns: &str,
        exe: &Path,
        args: &[String],
        run_marker: &str,
        env: &[(&str, String)],
        group: bool,
    ) -> Result<Self, LabError> {
        let namespace =
            std::fs::File::open(Path::new("/run/netns").join(netns)).map_err(|source| {
                LabError::Spawn {
                    what: format!("{role}: network namespace {netns}"),
                    source,
                }
            })?;
        let namespace_fd = namespace.as_raw_fd();
        let mut command = Command::new(exe);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(RUN_MARKER_ENV, run_marker)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // The parent keeps `namespace` open until spawn returns; the fd is
                // close-on-exec, so the program never sees it.
                if libc::setns(namespace_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| LabError::Spawn {
            what: format!("{role} ({} in network namespace {netns})", exe.display()),
            source,
        })?;
        drop(namespace);
        let stdin = child.stdin.take();
        let stdout_pipe = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let (tx, events) = mpsc::channel();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = stderr_pipe {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(value) = serde_json::from_str::<Value>(&line) {
                        if value.get("event").is_some() {
                            let _ = tx.send(value);
                        }
                    }
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == LOG_TAIL {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        if let Some(pipe) = stdout_pipe {
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut lines = stdout.lock().unwrap_or_else(|p| p.into_inner());
                    if lines.len() < STDOUT_KEEP {
                        lines.push((ts_ns(), line));
                    }
                }
            });
        }
        Ok(Self {
            role: role.to_owned(),
            child,
            stdin,
            events,
            history: Vec::new(),
            stdout,
            log,
            exit: None,
            group,
        })
    }

    /// The last lines of its stderr.
    pub(crate) fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn timeout(&self, what: impl Into<String>) -> LabError {
        LabError::Timeout {
            what: what.into(),
            process: self.role.clone(),
            log: self.log_tail(),
        }
    }

    /// Writes one line to its stdin.
    pub(crate) fn send_line(&mut self, line: &str) -> Result<(), LabError> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            LabError::io(
                "stdin already closed",
                std::io::ErrorKind::BrokenPipe.into(),
            )
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|err| LabError::io(format!("write to the {}'s stdin", self.role), err))
    }

    /// Closes its stdin (the client then half-closes); returns the Unix time in ns.
    pub(crate) fn close_stdin(&mut self) -> u64 {
        let at = ts_ns();
        self.stdin = None;
        at
    }

    /// Sends `signal`; returns the Unix time in ns just before. Only while the process
    /// has not been reaped, so the pid is certainly still ours.
    pub(crate) fn signal(&mut self, signal: libc::c_int) -> Result<u64, LabError> {
        if self.exit.is_some() {
            return Err(LabError::io(
                format!("signal the {}", self.role),
                std::io::Error::from_raw_os_error(libc::ESRCH),
            ));
        }
        let at = ts_ns();
        let pid = self.child.id() as libc::pid_t;
        let target = if self.group { -pid } else { pid };
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child
        // (and with `group`, the process group it leads since we spawned it).
        if unsafe { libc::kill(target, signal) } != 0 {
            return Err(LabError::io(
                format!("signal the {}", self.role),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(at)
    }

    /// SIGKILL and reap; returns the Unix time in ns just before the signal.
    pub(crate) fn kill(&mut self) -> Result<u64, LabError> {
        let at = self.signal(libc::SIGKILL)?;
        self.reap();
        Ok(at)
    }

    fn reap(&mut self) {
        if self.exit.is_none() {
            if let Ok(status) = self.child.wait() {
                self.exit = Some(status);
            }
        }
    }

    /// Its exit status, waiting until `deadline`.
    pub(crate) fn wait_exit(&mut self, deadline: Instant) -> Result<Option<ExitStatus>, LabError> {
        loop {
            interrupt::check()?;
            if self.exit.is_none() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    self.exit = Some(status);
                }
            }
            if self.exit.is_some() || Instant::now() >= deadline {
                return Ok(self.exit);
            }
            std::thread::sleep(interrupt::POLL_STEP.min(deadline - Instant::now()));
        }
    }

    /// The first event (already received, or arriving until `deadline`) that matches.
    pub(crate) fn wait_event(
        &mut self,
        deadline: Instant,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>, LabError> {
        if let Some(found) = self.history.iter().find(|e| wanted(e)) {
            return Ok(Some(found.clone()));
        }
        loop {
            interrupt::check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left.min(interrupt::POLL_STEP)) {
                Ok(event) => {
                    self.history.push(event.clone());
                    if wanted(&event) {
                        return Ok(Some(event));
                    }
                }
                Err(RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    // Its stderr closed: it exited. Nothing more will come.
                    if left.is_zero() {
                        return Ok(None);
                    }
                    std::thread::sleep(left.min(interrupt::POLL_STEP));
                }
            }
        }
    }

    /// Like [`LabProcess::wait_event`], but a missing event is an error naming `what`.
    pub(crate) fn expect_event(
        &mut self,
        what: &str,
        deadline: Instant,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value, LabError> {
        match self.wait_event(deadline, wanted)? {
            Some(event) => Ok(event),
            None => Err(self.timeout(format!("the {} did not report {what}", self.role))),
        }
    }

    /// Every event received so far that matches (after taking what already arrived).
    pub(crate) fn events_matching(&mut self, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
        while let Ok(event) = self.events.try_recv() {
            self.history.push(event);
        }
        self.history.iter().filter(|e| wanted(e)).cloned().collect()
    }

    /// The first stdout line (already read, or arriving until `deadline`) that matches.
    pub(crate) fn wait_stdout(
        &mut self,
        deadline: Instant,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Option<StdoutLine>, LabError> {
        loop {
            interrupt::check()?;
            {
                let lines = self.stdout.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(found) = lines.iter().find(|(_, line)| wanted(line)) {
                    return Ok(Some(found.clone()));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(interrupt::POLL_STEP.min(deadline - Instant::now()));
        }
    }

    /// Like [`LabProcess::wait_stdout`], but a missing line is an error naming `what`.
    pub(crate) fn expect_stdout(
        &mut self,
        what: &str,
        deadline: Instant,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<StdoutLine, LabError> {
        match self.wait_stdout(deadline, wanted)? {
            Some(line) => Ok(line),
            None => Err(self.timeout(format!("the {} did not print {what}", self.role))),
        }
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if self.group {
                // SAFETY: as in `signal`: the group our unreaped child leads.
                unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
            }
            // Also ends a stopped process; then reap it so no zombie is left.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
