//! A mosquitto broker the bench starts itself (`bench scale --peer mosquitto`): on a
//! free loopback port, with a config file of its own in a temp dir (no persistence, no
//! connection limit, anonymous clients, only warnings and errors logged), stopped by
//! its pid and its temp dir removed when dropped.
//!
//! mosquitto comes from the system (Debian's package, installed by
//! `scripts/bench-peers`); the bench never installs it.

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Descriptors mosquitto needs besides its clients (listener, epoll, stdio, config).
const FD_MARGIN: u64 = 64;
/// How long the broker may take to listen.
const START_LIMIT: Duration = Duration::from_secs(10);

/// The broker; killed (by its pid) and its config dir removed when dropped.
pub(crate) struct Mosquitto {
    child: Child,
    /// Where it listens (127.0.0.1, a port that was free).
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The mosquitto executable: `mosquitto` on PATH, else Debian's `/usr/sbin/mosquitto`
/// (not on a non-root PATH); an error that names the setup script when neither exists.
pub(crate) fn binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("mosquitto"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    let debian = Path::new("/usr/sbin/mosquitto");
    on_path
        .or_else(|| debian.is_file().then(|| debian.to_path_buf()))
        .context(
            "mosquitto is not installed: run `scripts/bench-peers` (as root: apt-get install mosquitto) to install Debian's package",
        )
}

/// The broker's version line (`mosquitto version 2.0.11`), for the report.
pub(crate) fn version(binary: &Path) -> String {
    // `mosquitto -h` prints its usage, version first, and exits non-zero.
    Command::new(binary)
        .arg("-h")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            text.lines()
                .find(|l| l.contains("version"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "mosquitto (version unknown)".into())
}

/// The most sessions one mosquitto process can hold here: its descriptor hard limit
/// (the bench raises the soft limit to it) less a margin.
pub(crate) fn session_room() -> usize {
    let (_, hard) = nofile_limit();
    hard.saturating_sub(FD_MARGIN) as usize
}

/// RLIMIT_NOFILE (soft, hard), as the scale bench reads it.
fn nofile_limit() -> (u64, u64) {
    super::procfs::Limits::read().nofile
}

impl Mosquitto {
    /// Starts `binary` on a free loopback port for up to `sessions` clients; waits until
    /// it accepts connections.
    pub fn start(binary: &Path, sessions: usize) -> anyhow::Result<Self> {
        if sessions > session_room() {
            bail!(
                "mosquitto is one process and may hold at most {} descriptors here (RLIMIT_NOFILE hard limit): {sessions} sessions do not fit, use at most {}",
                nofile_limit().1,
                session_room()
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "{}-bench-mosquitto-{}",
            hangup_lab::run_prefix(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        // A port that was free a moment ago; another process could take it in between,
        // so a broker that cannot listen is retried on another one.
        let mut last_error = None;
        for _ in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .context("could not find a free loopback port")?
                .port();
            match Self::start_on(binary, &dir, port) {
                Ok(child) => {
                    return Ok(Self {
                        child,
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                        dir,
                    });
                }
                Err(err) => last_error = Some(err),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_error.expect("three attempts"))
    }

    fn start_on(binary: &Path, dir: &Path, port: u16) -> anyhow::Result<Child> {
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "# Written by `hangup bench scale --peer mosquitto`; removed with the run.\n\
                 listener {port} 127.0.0.1\n\
                 max_connections -1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n\
                 connection_messages false\n"
            ),
        )
        .with_context(|| format!("could not write {}", config.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&config)
            .env(hangup_lab::RUN_MARKER_ENV, hangup_lab::run_prefix())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // One process holds every session: give it the whole hard limit.
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let said = Arc::new(Mutex::new(Vec::<String>::new()));
        if let Some(stderr) = child.stderr.take() {
            let said = said.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    let mut said = said.lock().unwrap_or_else(|p| p.into_inner());
                    if said.len() < 20 {
                        said.push(line);
                    }
                }
            });
        }
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let said = said.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                bail!("mosquitto exited with {status} on port {port}: {said}");
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                // Someone listens; make sure it is our broker, not a process that took
                // the port first (then mosquitto exits at once, unable to bind).
                std::thread::sleep(Duration::from_millis(100));
                if child.try_wait()?.is_none() {
                    return Ok(child);
                }
                continue;
            }
            if started.elapsed() > START_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mosquitto did not listen on port {port} within {START_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
