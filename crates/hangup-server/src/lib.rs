//! The `hangup serve` application (SPEC §3–§5): the line-protocol server built on the
//! `hangup` library, with its admin endpoint, metrics, worker pool and presence store.
//!
//! This crate is what only `hangup serve` needs (SQLite, axum, prometheus, HMAC); the
//! embeddable pieces (socket policy, peer-gone watch, half-close, client) live in the
//! `hangup` crate, whose dependency tree stays small.
//!
//! ```text
//!  listener ──▶ I/O threads (reactor.rs): each accepts, and drives a slab of
//!               connections (driver.rs) with one timer wheel (wheel.rs)
//!                    ├─ socket readiness: bytes, FIN (EPOLLRDHUP), RST (EPOLLERR),
//!                    │    a cause by hangup_core::classify_readiness
//!                    ├─ hangup_core::Connection: replies, job starts/cancels, timers
//!                    ├─ HELLO ──▶ session registry: takeover kicks the old connection
//!                    └─ running job ──▶ worker pool (workers.rs), cancelled by token
//!  admin endpoint (admin.rs) ◀── the I/O threads' listings (live.rs), metrics (metrics.rs)
//!  --cluster: cluster task (cluster/) ◀─▶ Redis: cross-node takeover, leases, presence
//! ```

#![warn(missing_docs)]

mod admin;
pub mod cluster;
mod driver;
mod live;
pub mod log;
mod metrics;
pub mod presence;
mod reactor;
pub mod sched;
mod wheel;
mod workers;

pub use admin::{
    ADMIN_CONNECTION_TIMEOUT, ADMIN_HEADER_TIMEOUT, ADMIN_MAX_CONNECTIONS, ADMIN_SHUTDOWN_GRACE,
};
pub use live::{ConnectionSnapshot, ConnectionState, SessionSnapshot, TcpFigures};

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangup_core::{
    ConnectionConfig, HalfClosePolicy, LivenessPolicy, QueueBudget, SessionRegistry, StatusCounts,
    DEFAULT_DEAD_AFTER, DEFAULT_MAX_ROUNDS, DEFAULT_PORT,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::presence::PresenceRecorder;
use metrics::Metrics;
use workers::WorkerPool;

/// The secret device tokens are derived from (`--auth-secret`); never printed.
#[derive(Clone)]
pub struct AuthSecret(Arc<[u8]>);

impl AuthSecret {
    /// A secret from its bytes (a file's content, trailing newline included or not:
    /// the caller decides).
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self(bytes.into())
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthSecret(..)")
    }
}

/// Where `hangup serve` listens unless told otherwise (SPEC §5 `--listen`).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_PORT));

/// Where `hangup serve`'s admin endpoint listens unless told otherwise (SPEC §5
/// `--admin`). A [`ServerConfig`] has none unless given one.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_PORT + 1));

/// Connections served at once unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

/// How long jobs may still run after `GOAWAY` unless configured otherwise (SPEC §5).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of queued jobs (seeds included) the whole server holds at most; past it a
/// `JOB` gets `ERR too-many-jobs`. 32 MiB is ~100 000 jobs of the longest seed.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 32 << 20;

/// Everything `hangup serve` can be told. [`Default`] is SPEC §5's defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Set SO_REUSEPORT on the listening socket, so that several servers (one per core,
    /// or as many as the descriptor limit requires) share the port; the kernel spreads
    /// new connections over them. Sessions and takeover are per server.
    pub reuse_port: bool,
    /// The liveness policy for every accepted connection.
    pub policy: LivenessPolicy,
    /// What to do on FIN while jobs are pending.
    pub half_close: HalfClosePolicy,
    /// Jobs running at once across all connections; by default one per CPU.
    pub workers: NonZeroUsize,
    /// Threads that drive the connections (each with its own epoll and its share of
    /// the connections); by default [`default_io_threads`].
    pub io_threads: NonZeroUsize,
    /// Connections served at once; the next one gets `ERR busy`.
    pub max_connections: NonZeroUsize,
    /// Largest accepted `JOB <rounds>`.
    pub max_rounds: u64,
    /// Where the admin endpoint listens; `None`: no admin endpoint.
    pub admin: Option<SocketAddr>,
    /// With a token, every admin request needs `Authorization: Bearer <token>`.
    pub admin_token: Option<Arc<str>>,
    /// With a secret, `HELLO` needs `token=` hex HMAC-SHA256(secret, device-id).
    pub auth_secret: Option<AuthSecret>,
    /// On shutdown, how long jobs in flight may still run after `GOAWAY`.
    pub drain_timeout: Duration,
    /// Bytes of queued work across all connections (see [`DEFAULT_MAX_QUEUED_BYTES`]).
    pub max_queued_bytes: usize,
    /// Where sessions are recorded; `None`: nowhere.
    pub presence: Option<PresenceRecorder>,
    /// Whether `WELCOME` waits for the session start to be on disk.
    pub presence_durability: PresenceDurability,
    /// Share sessions with other nodes through Redis (SPEC §11); `None`: this server
    /// alone (local takeover only).
    pub cluster: Option<cluster::ClusterConfig>,
}

impl ServerConfig {
    /// Defaults of SPEC §5, listening on `listen`, with everything derived from
    /// dead-after `dead_after`; no admin endpoint, no presence store.
    pub fn new(listen: SocketAddr, dead_after: Duration) -> Self {
        Self {
            listen,
            reuse_port: false,
            policy: LivenessPolicy::from_dead_after(dead_after),
            half_close: HalfClosePolicy::default(),
            workers: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            io_threads: default_io_threads(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_rounds: DEFAULT_MAX_ROUNDS,
            admin: None,
            admin_token: None,
            auth_secret: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            presence_durability: PresenceDurability::default(),
            presence: None,
            cluster: None,
        }
    }

    fn connection_config(&self) -> ConnectionConfig {
        ConnectionConfig {
            max_rounds: self.max_rounds,
            half_close: self.half_close,
            queue_budget: Some(Arc::new(QueueBudget::new(self.max_queued_bytes))),
            ..ConnectionConfig::new(&self.policy)
        }
    }
}

/// Half the CPUs, at least one: the other half runs the jobs and the presence writer.
/// One I/O thread on two cores spent 0.88 × mosquitto's CPU per heartbeat where two
/// spent 1.23 × (each woke up for half the events: twice the context switches), with
/// round trips as short as mosquitto's (BENCHMARKS.md, `bench scale --io-threads`).
pub fn default_io_threads() -> NonZeroUsize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    NonZeroUsize::new(cpus / 2).unwrap_or(NonZeroUsize::MIN)
}

impl Default for ServerConfig {
    /// [`DEFAULT_LISTEN`] and [`DEFAULT_DEAD_AFTER`].
    fn default() -> Self {
        Self::new(DEFAULT_LISTEN, DEFAULT_DEAD_AFTER)
    }
}

/// Counters shared by every connection.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Jobs started (running on a worker, or waiting for one), across connections.
    jobs_running: AtomicU64,
    /// Jobs accepted and waiting behind their connection's running job.
    jobs_queued: AtomicU64,
}

/// Live sessions by device, shared by every I/O thread.
pub(crate) type Sessions = SessionRegistry<SessionHandle>;

/// What the registry keeps per session: how to reach the connection that owns it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    conn: u64,
    /// Where the evicting `HELLO`'s instant goes (for the eviction latency); taken by
    /// the first kick.
    kick: Option<reactor::Mailbox>,
    /// In cluster mode only: the session's claim.
    claim: Option<Box<Claim>>,
}

/// What the cluster knows of a session this node holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    /// The fencing epoch; 0 until the claim returned.
    epoch: u64,
    /// The highest epoch an eviction message named while our claim was in flight.
    evict_seen: u64,
    peer: SocketAddr,
    /// When the `HELLO` came, Unix ms (for the reconciliation).
    since_ms: u64,
}

impl SessionHandle {
    /// The session's claim (all zero without a cluster).
    fn claim(&self) -> Claim {
        self.claim.as_deref().copied().unwrap_or(Claim {
            epoch: 0,
            evict_seen: 0,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            since_ms: 0,
        })
    }

    /// The session's claim, to update (made if it had none).
    fn claim_mut(&mut self) -> &mut Claim {
        let claim = self.claim();
        self.claim.get_or_insert_with(|| Box::new(claim))
    }

    /// Kicks the connection; false when it was kicked already.
    fn kick_now(&mut self, hello_at: Instant) -> bool {
        match self.kick.take() {
            Some(kick) => {
                // The connection may be closing on its own: then nobody listens.
                kick.send(reactor::ConnMessage::Kicked(hello_at));
                true
            }
            None => false,
        }
    }
}

pub(crate) struct Shared {
    config: ServerConfig,
    /// Shared by every connection rather than copied into each.
    connection_config: Arc<ConnectionConfig>,
    counters: Counters,
    workers: WorkerPool,
    next_connection_id: AtomicU64,
    /// The `ERR busy` refusals in flight (tokio tasks).
    refusals: TaskTracker,
    sessions: Mutex<Sessions>,
    /// The I/O threads, with the connections.
    reactors: reactor::Reactors,
    metrics: Metrics,
    /// Cancelled when shutdown begins.
    draining: CancellationToken,
    /// The cluster's side for drivers, in cluster mode.
    cluster: Option<cluster::Cluster>,
}

impl Shared {
    /// Server-wide counts, less the jobs `(running, queued)` that the asking connection
    /// last reported (it adds its current ones itself).
    fn status_excluding(&self, own: (u64, u64)) -> StatusCounts {
        let counters = &self.counters;
        StatusCounts {
            connections: self.metrics.connections_open.get().max(0) as u64,
            sessions: live::lock(&self.sessions).len() as u64,
            jobs_running: counters
                .jobs_running
                .load(Ordering::Relaxed)
                .saturating_sub(own.0),
            jobs_queued: counters
                .jobs_queued
                .load(Ordering::Relaxed)
                .saturating_sub(own.1),
        }
    }
}

/// A bound server, ready to [`Server::run`].
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use std::time::Duration;
/// use hangup_server::{Server, ServerConfig};
/// use tokio_util::sync::CancellationToken;
///
/// let config = ServerConfig::new("127.0.0.1:7557".parse().unwrap(), Duration::from_secs(30));
/// let server = Server::bind(config).await?;
/// server.run(CancellationToken::new()).await
/// # }
/// ```
pub struct Server {
    listener: std::net::TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    cluster_task: Option<cluster::ClusterTask>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Server {
    /// Binds the listening socket.
    pub async fn bind(mut config: ServerConfig) -> io::Result<Self> {
        reserve_descriptors(&mut config);
        let listener = listen(config.listen, config.reuse_port)?;
        let admin = match config.admin {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        // Session ids count up from a random point (top bit clear, low 32 bits zero), so
        // that they stay unique across restarts in the presence store.
        let first_session = (fastrand::u64(..) & 0x7fff_ffff_0000_0000) | 1;
        let (cluster, cluster_task) = match &config.cluster {
            Some(cluster_config) => {
                let node = match &cluster_config.node_id {
                    Some(node) => node.clone(),
                    None => {
                        let id = cluster::default_node_id(listener.local_addr()?.port());
                        // Instances sharing a port need ids of their own.
                        if config.reuse_port {
                            format!("{id}:{}", std::process::id())
                        } else {
                            id
                        }
                    }
                };
                let (cluster, task) = cluster::Cluster::new(cluster_config.clone(), node)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
                (Some(cluster), Some(task))
            }
            None => (None, None),
        };
        let io_threads = Arc::new(sched::IoThreads::new(config.io_threads.get()));
        let shared = Arc::new(Shared {
            sessions: Mutex::new(SessionRegistry::new(first_session)),
            reactors: reactor::Reactors::new(io_threads.clone())?,
            metrics: Metrics::new(cluster.as_ref().map(|c| &*c.node)),
            cluster,
            draining: CancellationToken::new(),
            connection_config: Arc::new(config.connection_config()),
            workers: WorkerPool::new(config.workers, io_threads),
            counters: Counters::default(),
            next_connection_id: AtomicU64::new(1),
            refusals: TaskTracker::new(),
            config,
        });
        Ok(Self {
            listener,
            admin,
            shared,
            cluster_task,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin endpoint's address, if it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, sends `GOAWAY
    /// shutdown` to every connection, lets jobs in flight finish within the drain
    /// timeout, closes every connection gracefully (cause `shutdown`) and returns once
    /// they are gone.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let addr = self.local_addr()?;
        let admin_addr = self.admin_addr();
        let shared = self.shared;
        let admin_stop = CancellationToken::new();
        // Started before the admin endpoint, whose listings they answer.
        let listener = Arc::new(self.listener);
        shared.reactors.start(&shared, &listener)?;
        let admin_task = self.admin.map(|admin| {
            let token = shared.config.admin_token.clone();
            tokio::spawn(admin::serve(
                admin,
                shared.clone(),
                token,
                admin_stop.clone(),
            ))
        });
        hangup::emit!(
            "listening",
            addr = %addr,
            admin = admin_addr.map(|a| a.to_string()).unwrap_or_default(),
            dead_after_ms = shared.config.policy.dead_after.as_millis() as u64,
            node = shared.cluster.as_ref().map(|c| c.node.to_string()).unwrap_or_default(),
            workers = shared.config.workers.get(),
            on_half_close = %shared.config.half_close,
        );
        let cluster_stop = CancellationToken::new();
        let cluster_task = self
            .cluster_task
            .map(|task| tokio::spawn(task.run(shared.clone(), cluster_stop.clone())));
        shutdown.cancelled().await;
        // Stop listening first (connects are refused from here on, and every I/O
        // thread's accept says so); connections drain after: by the time a client reads
        // GOAWAY, /healthz already answers 503 and new connections are refused.
        let _ = socket2::SockRef::from(listener.as_ref()).shutdown(std::net::Shutdown::Read);
        drop(listener);
        shared.draining.cancel();
        let reactors = &shared.reactors;
        reactors.drain();
        // Refusals (`ERR busy`) are tokio tasks; connections live on the I/O threads.
        let refusals = &shared.refusals;
        refusals.close();
        // Every connection closes by drain timeout + SHUTDOWN_GRACE whatever its peer
        // does; this second bound only guards against a bug there.
        let bound = shared.config.drain_timeout + 2 * SHUTDOWN_GRACE;
        let ended = async {
            reactors.ended().await;
            refusals.wait().await;
        };
        if tokio::time::timeout(bound, ended).await.is_err() {
            tracing::warn!(
                open = shared.metrics.connections_open.get(),
                "connections still open past the shutdown bound; dropping them"
            );
        }
        // Every session's end is queued by now: the cluster task sends them, then leaves.
        cluster_stop.cancel();
        if let Some(task) = cluster_task {
            let _ = task.await;
        }
        admin_stop.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        Ok(())
    }
}

/// When a session's start reaches the presence store, relative to its `WELCOME`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PresenceDurability {
    /// `WELCOME` at once; the start is committed with the next batch (within ~100 ms).
    /// A `kill -9` in that window loses the record of sessions the clients were told
    /// about (a clean shutdown loses nothing).
    #[default]
    Batched,
    /// `WELCOME` only once the start is committed; concurrent `HELLO`s share one
    /// commit. If the store cannot commit within [`DURABLE_WELCOME_LIMIT`], the `HELLO`
    /// gets `ERR busy` and no session is opened.
    Acked,
}

impl PresenceDurability {
    /// The name as `--presence-durability` takes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Batched => "batched",
            Self::Acked => "acked",
        }
    }
}

impl std::fmt::Display for PresenceDurability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PresenceDurability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batched" => Ok(Self::Batched),
            "acked" => Ok(Self::Acked),
            _ => Err(format!("expected `batched` or `acked`, got `{s}`")),
        }
    }
}

/// With [`PresenceDurability::Acked`]: how long a `HELLO` waits for its commit.
pub const DURABLE_WELCOME_LIMIT: Duration = Duration::from_secs(5);

/// After the drain timeout, how long a connection may still take to close gracefully
/// (flush its replies, FIN, read what the peer still sends) before it is reset. A peer
/// that reads nothing (a stalled reader) is cut at this bound rather than at its write
/// timeout. Shutdown therefore completes within `drain_timeout + SHUTDOWN_GRACE`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A listening socket with a backlog deep enough for reconnect storms (the kernel caps
/// it at net.core.somaxconn); tokio's `bind` would leave it at 1024.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // Non-blocking: every I/O thread accepts from it (reactor.rs).
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Descriptors kept apart from connections: listeners, the presence store's SQLite
/// files, the runtime's epoll and eventfd, stdio, and the hangup watches of the
/// library's users in the same process.
pub const RESERVED_DESCRIPTORS: usize = 64;

/// Makes the descriptor limit hold every connection the config allows, plus the admin
/// endpoint's own [`ADMIN_MAX_CONNECTIONS`] and [`RESERVED_DESCRIPTORS`], so that
/// neither port can starve the other: raises the soft `RLIMIT_NOFILE` up to the hard
/// one, and if that is still too small, lowers `max_connections` and says so. Under a
/// limit too small to leave even 64 connections beside the reserve, nothing is lowered:
/// the accept loop's EMFILE handling (pause, never spin) is all there is.
fn reserve_descriptors(config: &mut ServerConfig) {
    let admin = if config.admin.is_some() {
        ADMIN_MAX_CONNECTIONS
    } else {
        0
    };
    let asked = config.max_connections.get();
    let needed = (asked + admin + RESERVED_DESCRIPTORS) as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < needed && limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: needed.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let room = (limit.rlim_cur as usize).saturating_sub(admin + RESERVED_DESCRIPTORS);
    let Some(granted) = NonZeroUsize::new(room).filter(|room| room.get() >= 64) else {
        return;
    };
    if asked > granted.get() {
        hangup::emit!(
            WARN,
            "max_connections_lowered",
            asked,
            granted = room,
            nofile = limit.rlim_cur,
            "the descriptor limit (ulimit -n) holds only {room} connections beside the admin \
             endpoint's {admin} and {RESERVED_DESCRIPTORS} reserved; raise it to serve more"
        );
        config.max_connections = granted;
    }
}

/// Pending connections the kernel may queue before we accept them.
const LISTEN_BACKLOG: i32 = 4096;

pub(crate) fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// At the connection limit: say so, then close gracefully.
pub(crate) async fn refuse_busy(mut stream: TcpStream, peer: SocketAddr, limit: usize) {
    hangup::emit!(
        "connection_refused",
        peer = %peer,
        reason = "busy",
    );
    let line =
        format!("ERR busy the server is at its limit of {limit} connections; try again later\n");
    let refuse = async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await?;
        driver::drain_briefly(&stream).await;
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), refuse).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    /// A server with one I/O thread, running on loopback.
    struct Running {
        addr: SocketAddr,
        shared: Arc<Shared>,
        stop: CancellationToken,
        served: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Running {
        async fn start(dead_after: Duration) -> Self {
            let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dead_after);
            config.io_threads = NonZeroUsize::MIN;
            let server = Server::bind(config).await.unwrap();
            let addr = server.local_addr().unwrap();
            let shared = server.shared.clone();
            let stop = CancellationToken::new();
            let served = tokio::spawn(server.run(stop.clone()));
            Self {
                addr,
                shared,
                stop,
                served,
            }
        }

        /// A client that sent `hello` (a whole line) and got its `WELCOME` line.
        async fn client(&self, hello: &str) -> (BufReader<TcpStream>, String) {
            let mut client = BufReader::new(TcpStream::connect(self.addr).await.unwrap());
            client.get_mut().write_all(hello.as_bytes()).await.unwrap();
            let mut line = String::new();
            client.read_line(&mut line).await.unwrap();
            assert!(line.starts_with("WELCOME "), "{line:?}");
            (client, line)
        }

        /// The mailbox of the connection holding `device`'s session.
        fn mailbox(&self, device: &str) -> reactor::Mailbox {
            live::lock(&self.shared.sessions)
                .get_mut(device)
                .and_then(|(_, handle)| handle.kick.clone())
                .unwrap()
        }

        async fn stop(self) {
            self.stop.cancel();
            self.served.await.unwrap().unwrap();
        }
    }

    /// A connection whose handler panics gives back its live-table entry and its slot
    /// (the slab entry's guards run while the panic unwinds), and its I/O thread goes
    /// on serving the others.
    #[tokio::test]
    async fn a_panicking_connection_leaks_neither_its_slot_nor_its_entry() {
        let running = Running::start(Duration::from_secs(30)).await;
        let shared = running.shared.clone();
        let (mut doomed, _) = running.client("HELLO doomed\n").await;
        let (mut bystander, mut line) = running.client("HELLO bystander\n").await;
        assert_eq!(shared.metrics.connections_open.get(), 2);
        assert_eq!(shared.reactors.connections().await.len(), 2);

        running.mailbox("doomed").send(reactor::ConnMessage::Panic);
        // Its socket closes: end of stream or a reset, never a hang.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), doomed.read_to_end(&mut rest));
        assert!(
            ended.await.is_ok(),
            "the panicked connection's socket stayed open"
        );
        // The slot comes back as the entry drops, just after its socket closed (the
        // client can see the end first).
        let slot_back = async {
            while shared.metrics.connections_open.get() != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(5), slot_back)
                .await
                .is_ok(),
            "the slot did not come back: {} open",
            shared.metrics.connections_open.get()
        );
        let left = shared.reactors.connections().await;
        assert_eq!(left.len(), 1, "the entry is gone: {left:?}");
        assert_eq!(left[0].device.as_deref(), Some("bystander"));

        bystander
            .get_mut()
            .write_all(b"PING after\n")
            .await
            .unwrap();
        line.clear();
        bystander.read_line(&mut line).await.unwrap();
        assert_eq!(line, "PONG after\n", "the thread serves the others on");
        running.stop().await;
    }

    /// An I/O thread that falls behind its deadlines (stalled here for longer than the
    /// dead-after budget, as on a saturated machine) reads what the kernel holds before
    /// it ends a connection `heartbeat_missed`: the PING that arrived during the stall
    /// is answered, and the session lives on.
    #[tokio::test]
    async fn a_stalled_thread_does_not_take_its_own_lag_for_the_peers_silence() {
        let running = Running::start(Duration::from_secs(1)).await;
        let (mut client, mut line) = running.client("HELLO laggard heartbeat=1\n").await;
        let dead_after: f64 = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("dead-after="))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no dead-after in {line:?}"));
        let budget = Duration::from_secs_f64(dead_after);
        running
            .mailbox("laggard")
            .send(reactor::ConnMessage::Stall(budget * 2));
        tokio::time::sleep(budget / 4).await;
        // Sent well within the budget; the thread only sees it after its deadline.
        client.get_mut().write_all(b"PING late\n").await.unwrap();
        line.clear();
        let answer = tokio::time::timeout(budget * 10, client.read_line(&mut line)).await;
        assert!(
            matches!(answer, Ok(Ok(n)) if n > 0),
            "no answer: {answer:?}"
        );
        assert_eq!(line, "PONG late\n");
        // The session lives on: the next heartbeat is answered too.
        client.get_mut().write_all(b"PING on\n").await.unwrap();
        line.clear();
        client.read_line(&mut line).await.unwrap();
        assert_eq!(line, "PONG on\n");
        running.stop().await;
    }
}
