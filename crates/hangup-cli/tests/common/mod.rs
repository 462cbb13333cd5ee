//! Shared harness for the `hangup` binary's real-socket tests (loopback only).
//!
//! [`TestServer`] runs `hangup serve --listen 127.0.0.1:0 --admin 127.0.0.1:0
//! --data-dir <fresh temp dir> --log-format json …` as a child process, parses its JSON events from stderr on a thread and lets tests wait
//! for them with a generous bound; Drop kills that child (by its pid, through
//! `Child::kill`) and reaps it. [`LineClient`] is a blocking line-protocol client with
//! read timeouts, so that no test can hang forever. [`chain_hex`] computes a job's
//! digest independently of the server (the `sha2` crate, not `hangup_core`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The bound for "it happened at all": far above any expected latency.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A job that never finishes on its own (10^10 rounds of SHA-256).
pub const ENDLESS_JOB: &str = "JOB 10000000000";

/// The `hangup` binary under test.
pub fn hangup_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hangup")
}

/// A directory under the system's temp dir, unique to this process and call, removed
/// on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("hangup-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `hangup serve` child and its event stream.
pub struct TestServer {
    child: Child,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    /// The presence store's directory, unless the test passed its own `--data-dir`.
    data_dir: Option<TempDir>,
    events: Receiver<Value>,
    /// Every event received so far, in order.
    history: Vec<Value>,
    /// Every stderr line, JSON or not (for failure messages).
    stderr: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts `hangup serve` on an ephemeral loopback port with `extra` arguments and
    /// waits for its `listening` event.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, |_| {})
    }

    /// Like [`TestServer::start`], with a hook to adjust the command (e.g. `pre_exec`).
    pub fn start_with(extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Self {
        Self::start_listening_on("127.0.0.1:0", extra, adjust)
    }

    /// Starts the server on a given `--listen` address.
    pub fn start_listening_on(
        listen: &str,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Self {
        let mut command = Command::new(hangup_bin());
        command.args(["serve", "--listen", listen, "--log-format", "json"]);
        // Every server its own admin port and presence store, so tests run in parallel.
        if !extra.contains(&"--admin") {
            command.args(["--admin", "127.0.0.1:0"]);
        }
        let data_dir = (!extra.contains(&"--data-dir")).then(|| TempDir::new("data"));
        if let Some(dir) = &data_dir {
            command.arg("--data-dir").arg(dir.path());
        }
        command.args(extra);
        adjust(&mut command);
        Self::spawn(command, data_dir)
    }

    /// Starts `hangup serve --log-format json <args>` with exactly these arguments (no
    /// `--listen`, `--admin` or `--data-dir` added: e.g. for a `--config` file that sets
    /// them).
    pub fn start_exact(args: &[&str]) -> Self {
        let mut command = Command::new(hangup_bin());
        command.args(["serve", "--log-format", "json"]).args(args);
        Self::spawn(command, None)
    }

    fn spawn(mut command: Command, data_dir: Option<TempDir>) -> Self {
        command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn hangup serve");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, events) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if value.get("event").is_some() && tx.send(value).is_err() {
                        break;
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut server = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            data_dir,
            events,
            history: Vec::new(),
            stderr,
        };
        let listening = server
            .wait_event(|e| e["event"] == "listening", PATIENCE)
            .unwrap_or_else(|| panic!("no `listening` event; stderr: {}", server.stderr_text()));
        server.addr = listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("listening event carries addr");
        server.admin = listening["admin"].as_str().and_then(|a| a.parse().ok());
        server
    }

    /// The admin endpoint's address, unless it was turned off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The presence store's directory, if the harness made it.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_ref().map(TempDir::path)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first event, received so far or within `timeout`, that matches `pred`.
    pub fn wait_event(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        if let Some(found) = self.history.iter().find(|e| pred(e)) {
            return Some(found.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.history.push(event.clone());
                    if pred(&event) {
                        return Some(event);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Like [`TestServer::wait_event`] for event `name` about the connection whose
    /// client-side address is `peer`; panics with the log when it does not come.
    pub fn expect_event(&mut self, name: &str, peer: SocketAddr) -> Value {
        let peer_text = peer.to_string();
        self.wait_event(
            |e| e["event"] == name && e["peer"] == peer_text.as_str(),
            PATIENCE,
        )
        .unwrap_or_else(|| {
            panic!(
                "no `{name}` event for {peer} within {PATIENCE:?}; stderr:\n{}",
                self.stderr_text()
            )
        })
    }

    /// Like [`TestServer::expect_event`] for the event `name` of job `job`.
    pub fn expect_job_event(&mut self, name: &str, peer: SocketAddr, job: u64) -> Value {
        let peer_text = peer.to_string();
        self.wait_event(
            |e| e["event"] == name && e["peer"] == peer_text.as_str() && e["job"] == job,
            PATIENCE,
        )
        .unwrap_or_else(|| {
            panic!(
                "no `{name}` event for job {job} of {peer} within {PATIENCE:?}; stderr:\n{}",
                self.stderr_text()
            )
        })
    }

    /// Every event received so far (after draining what already arrived) that
    /// matches `pred`.
    pub fn events_matching(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        while let Ok(event) = self.events.try_recv() {
            self.history.push(event);
        }
        self.history.iter().filter(|e| pred(e)).cloned().collect()
    }

    /// Events `name` about the connection from `peer`, received so far.
    pub fn events_for(&mut self, name: &str, peer: SocketAddr) -> Vec<Value> {
        let peer_text = peer.to_string();
        self.events_matching(|e| e["event"] == name && e["peer"] == peer_text.as_str())
    }

    /// Everything the server wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Kills the server with SIGKILL (it is our child) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (SIGTERM, SIGSTOP, SIGCONT …) to the server, our child.
    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.pid(), signal);
    }

    /// The server's exit status, once it exits by itself within `within`; panics with
    /// its log otherwise.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = &mut self.child;
        let status = poll_until(within, Duration::from_millis(10), || {
            child.try_wait().unwrap()
        });
        status.unwrap_or_else(|| {
            panic!(
                "the server did not exit within {within:?}; stderr:\n{}",
                self.stderr_text()
            )
        })
    }

    /// Fails the test if the server's log shows a panic.
    pub fn assert_no_panic(&self) {
        let stderr = self.stderr_text();
        assert!(
            !stderr.contains("panicked"),
            "the server panicked:\n{stderr}"
        );
    }

    /// `GET path` on the admin endpoint.
    pub fn admin_get(&self, path: &str) -> HttpResponse {
        http_get(self.admin_addr().expect("the admin endpoint is on"), path)
    }

    /// The server's resident set size in KiB, from /proc/<pid>/status.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// The server's CPU time (user + system) in clock ticks, from /proc/<pid>/stat.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/<pid>/stat");
        // Fields after the parenthesised command name; utime and stime are fields 14
        // and 15 of the whole line, i.e. 12 and 13 after the name.
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        utime + stime
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` to process `pid`, a child this test started.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory preconditions; the pid is our own child's.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `hangup <args>` to its end and returns its output; a run still going after
/// [`PATIENCE`] (e.g. a server that should have refused to start) is killed and fails.
pub fn run_hangup(args: &[&str]) -> Output {
    let (status, stdout, stderr) = run_hangup_within(args, PATIENCE);
    Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

/// A pipe read to its end on a thread, as text collected so far.
pub fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// A running `hangup client … --log-format json` whose stdin stays open until dropped
/// or closed, with its stdout and stderr collected. Drop kills it (SIGKILL, by its
/// pid through `Child::kill`) and reaps it.
pub struct ClientProcess {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl ClientProcess {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(hangup_bin())
            .arg("client")
            .args(args)
            .args(["--log-format", "json"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hangup client");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The JSON events the client logged so far.
    pub fn events(&self) -> Vec<Value> {
        self.stderr()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e.get("event").is_some())
            .collect()
    }

    /// The first event matching `pred` logged within `within`.
    pub fn wait_event(&self, within: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        poll_until(within, Duration::from_millis(5), || {
            self.events().into_iter().find(|e| pred(e))
        })
    }

    /// Waits until stderr contains `needle` `times` times.
    pub fn wait_stderr(&self, needle: &str, times: usize) {
        let seen = poll_until(PATIENCE, Duration::from_millis(10), || {
            (self.stderr().matches(needle).count() >= times).then_some(())
        });
        assert!(
            seen.is_some(),
            "client stderr never said `{needle}` {times}×:\n{}",
            self.stderr()
        );
    }

    pub fn wait_stdout(&self, needle: &str) {
        let seen = poll_until(PATIENCE, Duration::from_millis(10), || {
            self.stdout().contains(needle).then_some(())
        });
        assert!(
            seen.is_some(),
            "client stdout never showed `{needle}`:\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Whether the client is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The exit status, once the client exits by itself within [`PATIENCE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let status = poll_until(PATIENCE, Duration::from_millis(10), || {
            self.child.try_wait().unwrap()
        });
        status.unwrap_or_else(|| {
            panic!(
                "the client did not exit within {PATIENCE:?}; stderr:\n{}",
                self.stderr()
            )
        })
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response: status code, headers (names lowercased) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON; panics naming the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}):\n{}", self.body))
    }

    /// The first header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal blocking HTTP/1.1 `GET` (no client crate): `Connection: close`, read to
/// EOF, chunked bodies decoded.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin endpoint");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|err| panic!("GET {path}: reading the response failed: {err}"));
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of headers in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        decode_chunked(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn decode_chunked(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}

/// A field of /proc/<pid>/status in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Clock ticks per second, for [`TestServer::cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// A blocking line-protocol client whose reads give up after [`PATIENCE`].
pub struct LineClient {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl LineClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        Self::from_stream(stream)
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Self { stream, reader }
    }

    /// This client's address, as the server's events name it (`peer`).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the server");
    }

    /// Sends one line (the `\n` is added).
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// The next line without its `\n`, or `None` at EOF. Panics on a reset or when
    /// nothing arrives within [`PATIENCE`].
    pub fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_owned()),
            Err(err) => panic!("reading a line from the server failed: {err}"),
        }
    }

    /// The next line, `Ok(None)` at EOF, or the read error (a timeout, a reset).
    pub fn try_read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line)? {
            0 => Ok(None),
            _ => Ok(Some(line.trim_end_matches(['\n', '\r']).to_owned())),
        }
    }

    /// How long reads wait ([`PATIENCE`] unless changed).
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    /// The next line; panics at EOF.
    pub fn line(&mut self) -> String {
        self.read_line()
            .expect("the server closed the connection while a line was expected")
    }

    /// The next line that is not a `#` probe or empty.
    pub fn reply(&mut self) -> String {
        loop {
            let line = self.line();
            if !line.is_empty() && !line.starts_with('#') {
                return line;
            }
        }
    }

    /// Sends `PING <tag>` and checks that `PONG <tag>` comes back (skipping probes).
    pub fn assert_alive(&mut self, tag: &str) {
        self.send(&format!("PING {tag}"));
        assert_eq!(
            self.reply(),
            format!("PONG {tag}"),
            "the connection should still be usable"
        );
    }

    /// Reads every remaining line until EOF; panics on a reset or timeout.
    pub fn lines_to_eof(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.read_line() {
            lines.push(line);
            assert!(lines.len() < 10_000, "the server never closed");
        }
        lines
    }

    /// Reads raw bytes until EOF; `Err` carries the error kind (e.g. a reset).
    pub fn bytes_to_eof(&mut self) -> Result<Vec<u8>, ErrorKind> {
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .map(|_| rest)
            .map_err(|err| err.kind())
    }

    /// Half-closes: sends FIN, keeps reading.
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }

    /// Closes with SO_LINGER 0, so the kernel sends RST instead of FIN.
    pub fn reset(self) {
        socket2::SockRef::from(&self.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(self);
    }
}

/// The digest the server must report for `JOB <rounds> <seed>`: H0 = the seed's bytes,
/// H(i+1) = SHA-256(H(i)), lowercase hex of H(rounds). Computed here with `sha2`,
/// independently of `hangup_core`.
pub fn chain_hex(seed: &str, rounds: u64) -> String {
    assert!(rounds >= 1);
    let mut digest: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
    for _ in 1..rounds {
        digest = Sha256::digest(digest).into();
    }
    hex::encode(digest)
}

/// Polls `probe` every `step` until it returns `Some` or `within` passed.
pub fn poll_until<T>(
    within: Duration,
    step: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(step);
    }
}

/// Like [`run_hangup`] with a bound of `limit` instead of [`PATIENCE`], for runs that
/// take longer (the benches); returns its exit status, stdout and stderr.
pub fn run_hangup_within(
    args: &[&str],
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(hangup_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hangup");
    // Read the pipes on threads, so that a chatty child cannot block on a full pipe.
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let exited = poll_until(limit, Duration::from_millis(10), || {
        child.try_wait().unwrap()
    });
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`hangup {}` did not exit within {limit:?}; stderr:\n{}",
            args.join(" "),
            stderr.lock().unwrap()
        );
    };
    // The pipes close when the process is gone; let the readers reach EOF.
    thread::sleep(Duration::from_millis(50));
    let stdout = stdout.lock().unwrap().clone();
    let stderr = stderr.lock().unwrap().clone();
    (status, stdout, stderr)
}

/// True when the test may create network namespaces. Without root it prints why it
/// skips, except under `CI=true`, where skipping would hide a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root for network namespaces, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root to create network namespaces");
    false
}

/// The session id of a `WELCOME <session> heartbeat=… dead-after=…` line (16 hex
/// digits); panics on any other line.
pub fn welcome_session(line: &str) -> String {
    match hangup_core::Reply::parse(line) {
        Ok(hangup_core::Reply::Welcome(session, _)) => session.to_string(),
        other => panic!("expected WELCOME, got {line:?}: {other:?}"),
    }
}

/// Opens a session for `device` on a fresh connection (`HELLO <device> <extra>`) and
/// returns the client with the session id from `WELCOME`.
pub fn hello(addr: SocketAddr, device: &str, extra: &str) -> (LineClient, String) {
    let mut client = LineClient::connect(addr);
    client.send(format!("HELLO {device} {extra}").trim_end());
    let welcome = client.reply();
    let session = welcome_session(&welcome);
    (client, session)
}

/// Every session of the presence store in `data_dir`, newest first.
pub fn presence_rows(data_dir: &Path) -> Vec<hangup_server::presence::SessionRow> {
    hangup_server::presence::query(
        data_dir,
        &hangup_server::presence::PresenceFilter::default(),
    )
    .expect("query the presence store")
}

/// The presence row of `session` once it satisfies `pred` (writes are asynchronous:
/// polled up to [`PATIENCE`]); panics with the rows seen otherwise.
pub fn wait_presence_row(
    data_dir: &Path,
    session: &str,
    pred: impl Fn(&hangup_server::presence::SessionRow) -> bool,
) -> hangup_server::presence::SessionRow {
    let found = poll_until(PATIENCE, Duration::from_millis(20), || {
        presence_rows(data_dir)
            .into_iter()
            .find(|row| row.session == session && pred(row))
    });
    found.unwrap_or_else(|| {
        panic!(
            "session {session} never reached the expected state in the presence store; rows: {:#?}",
            presence_rows(data_dir)
        )
    })
}

/// The code of an `ERR` reply line; `None` for any other line.
pub fn err_code(line: &str) -> Option<hangup_core::ErrorCode> {
    match hangup_core::Reply::parse(line) {
        Ok(hangup_core::Reply::Err(code, _)) => Some(code),
        _ => None,
    }
}

/// `hlab-<pid in hex>`: the prefix of everything the `hangup` process `pid` creates in
/// the lab's names (a lab run, or bench mass-death).
pub fn prefix_of(pid: u32) -> String {
    format!("{}{pid:x}", hangup_lab::NETNS_PREFIX)
}

/// What the lab run (or bench) with pid `pid` still has on the machine: namespaces,
/// marked processes, temporary directories.
pub fn leftovers(pid: u32) -> Vec<String> {
    let prefix = prefix_of(pid);
    let mut left: Vec<String> = hangup_lab::namespaces_with_prefix(&format!("{prefix}-"))
        .into_iter()
        .map(|ns| format!("namespace {ns}"))
        .collect();
    left.extend(
        hangup_lab::processes_with_marker()
            .into_iter()
            .filter(|(_, marker)| *marker == prefix)
            .map(|(pid, _)| format!("process {pid}")),
    );
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        left.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.starts_with(&format!("{prefix}-")))
                .map(|name| format!("directory {name}")),
        );
    }
    left
}

/// Runs `hangup lab --cleanup`, asserts that it succeeded, and returns what it printed.
pub fn lab_cleanup() -> String {
    let output = Command::new(hangup_bin())
        .args(["lab", "--cleanup"])
        .output()
        .expect("run hangup lab --cleanup");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A loopback port that was free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// True when `redis-server` is installed (scripts/test installs it). Without it a test
/// prints why it skips, except under `CI=true`, where skipping would hide a failure.
pub fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test} needs redis-server (scripts/test installs it), and CI=true forbids skipping"
        );
    }
    eprintln!("skipping {test}: redis-server is not installed (apt-get install redis-server)");
    false
}

/// A `redis-server` of this test's own, on a free loopback port, without persistence,
/// in a temp dir; killed by its pid (it is our child) on drop, never a system one.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// `--bind` addresses (loopback unless a test adds one of its own namespaces').
    bind: String,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_bound(&["127.0.0.1"])
    }

    /// Bound to these addresses (readiness is checked on loopback, which must be one).
    pub fn start_bound(bind: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: TempDir::new("redis"),
            bind: bind.join(" "),
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL (through `Child::kill`, by its pid) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, empty, and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                &self.bind,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            // Bound beyond loopback only to a namespace of the test's own, which protected
            // mode would refuse (no password here).
            .args(["--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ready = poll_until(PATIENCE, Duration::from_millis(20), || {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            stream.write_all(b"PING\r\n").ok()?;
            let mut buf = [0u8; 16];
            let n = stream.read(&mut buf).ok()?;
            buf[..n].starts_with(b"+PONG").then_some(())
        });
        assert!(
            ready.is_some(),
            "redis-server on port {port} did not answer PING"
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster node (`hangup serve --cluster`) on `redis` with node id `id` and
/// `extra` flags, once it has joined.
pub fn cluster_node(redis: &RedisServer, id: &str, extra: &[&str]) -> TestServer {
    let url = redis.url();
    let mut args = vec!["--cluster", &url, "--node-id", id];
    args.extend_from_slice(extra);
    let mut server = TestServer::start(&args);
    server
        .wait_event(|e| e["event"] == "cluster_joined", PATIENCE)
        .unwrap_or_else(|| panic!("{id} never joined; stderr:\n{}", server.stderr_text()));
    server
}

/// HELLO for every device on its own connection to `addr`, pipelined: all connect and
/// send first, then every WELCOME is read.
pub fn hello_all(addr: SocketAddr, devices: &[String]) -> Vec<(LineClient, String)> {
    let mut clients: Vec<LineClient> = devices
        .iter()
        .map(|device| {
            let mut client = LineClient::connect(addr);
            client.send(&format!("HELLO {device}"));
            client
        })
        .collect();
    clients
        .drain(..)
        .map(|mut client| {
            let session = welcome_session(&client.reply());
            (client, session)
        })
        .collect()
}

/// Server-side sockets on `server`'s address still ESTABLISHED or CLOSE_WAIT (from
/// sock_diag).
pub fn server_sockets(server: SocketAddr) -> usize {
    let snapshot = hangup_inspect::collect().expect("sock_diag dump");
    snapshot
        .sockets
        .iter()
        .filter(|s| s.local.port() == server.port() && s.local.ip() == server.ip())
        .filter(|s| {
            matches!(
                s.state,
                hangup_inspect::TcpState::Established | hangup_inspect::TcpState::CloseWait
            )
        })
        .count()
}

/// What a `hangup bench …` run printed and wrote.
pub struct BenchRun {
    /// The JSON file it wrote (`--json`), parsed.
    pub report: Value,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `hangup bench <args> --json <a temp file>` within `limit`, asserts that it
/// succeeded, and returns the parsed report (the file removed) with the output.
pub fn run_bench(args: &[&str], limit: Duration) -> BenchRun {
    // Unique per call: the tests of one binary run in parallel.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let json_path = std::env::temp_dir().join(format!(
        "hangup-bench-{}-{}-{}.json",
        args.first().copied().unwrap_or("bench"),
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&json_path);
    let json = json_path.to_str().expect("temp paths are UTF-8").to_owned();
    let mut full = vec!["bench"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--json", &json]);
    let (status, stdout, stderr) = run_hangup_within(&full, limit);
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    let text = std::fs::read_to_string(&json_path).expect("the bench wrote its JSON file");
    let _ = std::fs::remove_file(&json_path);
    let report = serde_json::from_str(&text).expect("valid JSON");
    BenchRun {
        report,
        stdout,
        stderr,
    }
}
