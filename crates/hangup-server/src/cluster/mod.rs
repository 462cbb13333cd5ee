//! Cluster mode (SPEC §11): several `hangup serve` nodes share one Redis, so that a
//! device's `HELLO` on any node evicts its session on every other node.
//!
//! ```text
//!  driver: HELLO ──▶ local registry (local takeover at once, as without a cluster)
//!                └──▶ Op::Claim ──▶ cluster task ──▶ claim.lua: epoch = HINCRBY, owner = us,
//!                                   (one pipeline     previous owner's session ended,
//!                                    per batch)       PUBLISH evict:<old node>
//!  cluster task ◀── subscriber (evict:<this node>): kick the local session if its
//!                   epoch is older than the message's; a newer one is left alone
//!  every lease/5: SET lease:<node> PX lease, sweep.lua (nodes whose lease expired:
//!                 their sessions end `server_lost`); failure = degraded (local
//!                 takeover only); success again = restored: reclaim.lua for every
//!                 session still held, epochs decide.
//! ```
//!
//! Redis is never on the data path of a connection: the driver hands operations to an
//! unbounded channel and goes on; a node without Redis keeps serving. The key layout
//! and the scripts are in docs/CLUSTER.md.

mod query;

pub use query::{query, ClusterSessionRow};

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hangup_core::{Cause, SessionId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::live::lock;
use crate::Shared;

/// How long a node's lease lives without renewal unless configured otherwise.
pub const DEFAULT_CLUSTER_LEASE: Duration = Duration::from_secs(5);
/// Sessions kept per device in the cluster history.
pub const CLUSTER_HISTORY: usize = 20;
/// How long a device's cluster records outlive its last session's end.
pub const CLUSTER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Every key the cluster writes starts with this.
pub const KEY_PREFIX: &str = "hangup:";
/// Session ends waiting for Redis to come back, at most (older ones are dropped).
const MAX_STASHED_RELEASES: usize = 100_000;
/// Operations sent in one pipeline (one round trip), at most.
const MAX_BATCH: usize = 1024;
/// On shutdown, how long the last session ends may take to reach Redis.
const LEAVE_BOUND: Duration = Duration::from_secs(2);

/// Why a cluster setting is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The Redis URL does not parse.
    #[error("invalid Redis URL `{url}`: {source}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
    /// A node id with characters outside `A-Za-z0-9._:-`, or empty, or too long.
    #[error("invalid node id `{0}`: 1-128 characters of A-Za-z0-9._:-")]
    BadNodeId(String),
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// `--cluster`, `--node-id`, `--cluster-lease`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// This node's id; `None`: the host name and the listening port.
    pub node_id: Option<String>,
    /// The node's lease in Redis: renewed every `lease / 5`. A node that stops renewing
    /// (dead, or cut off from Redis) has its sessions ended within
    /// [`ClusterConfig::lost_budget`].
    pub lease: Duration,
}

impl ClusterConfig {
    /// A cluster config for `url` with the default lease; checks the URL and node id.
    pub fn new(url: &str, node_id: Option<String>) -> Result<Self, ClusterError> {
        redis::Client::open(url).map_err(|source| ClusterError::BadUrl {
            url: url.to_owned(),
            source,
        })?;
        if let Some(id) = &node_id {
            check_node_id(id)?;
        }
        Ok(Self {
            url: url.to_owned(),
            node_id,
            lease: DEFAULT_CLUSTER_LEASE,
        })
    }

    /// How often the lease is renewed and every node sweeps for expired leases.
    pub fn sweep_interval(&self) -> Duration {
        (self.lease / 5).max(Duration::from_millis(20))
    }

    /// From a node's death (or its last contact with Redis) to its sessions being
    /// recorded as ended (`server_lost`) by another node: the lease, then at most one
    /// sweep interval. With the default lease of 5 s: 6 s.
    pub fn lost_budget(&self) -> Duration {
        self.lease + self.sweep_interval()
    }

    /// How long one Redis round trip may take before the node counts as cut off.
    fn response_timeout(&self) -> Duration {
        (self.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

fn check_node_id(id: &str) -> Result<(), ClusterError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadNodeId(id.to_owned()))
    }
}

/// The default node id: `<host name>:<listening port>`, stable across restarts of the
/// same service and unique among nodes on one host.
pub fn default_node_id(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .collect::<String>()
    } else {
        String::new()
    };
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}:{port}")
}

/// What an eviction message (`epoch` = the new owner's) means for our session of the
/// device, whose epoch is `ours` (0: our claim has not returned yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eviction {
    /// Ours is older: kick it.
    Kick,
    /// Our claim is in flight: remember the epoch and decide when it returns.
    Defer,
    /// Ours is newer (a stale owner's message): keep it.
    Ignore,
}

fn eviction(ours: u64, epoch: u64) -> Eviction {
    match ours {
        0 => Eviction::Defer,
        ours if ours < epoch => Eviction::Kick,
        _ => Eviction::Ignore,
    }
}

/// Our claim came back with `granted`; an eviction message naming `seen` arrived
/// meanwhile: whether it was for us (a newer HELLO elsewhere) rather than for an older
/// session of ours.
fn evicted_in_flight(granted: u64, seen: u64) -> bool {
    seen > granted
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The Lua scripts, each run with `common.lua`'s shared prelude before it.
#[derive(Debug, Clone, Copy)]
enum Script {
    Claim,
    Reclaim,
    Release,
    DropStale,
    Sweep,
}

impl Script {
    /// The script's full source, built once.
    fn source(self) -> &'static str {
        static BUILT: [OnceLock<String>; 5] = [const { OnceLock::new() }; 5];
        let body = match self {
            Script::Claim => include_str!("claim.lua"),
            Script::Reclaim => include_str!("reclaim.lua"),
            Script::Release => include_str!("release.lua"),
            Script::DropStale => include_str!("drop_stale.lua"),
            Script::Sweep => include_str!("sweep.lua"),
        };
        BUILT[self as usize].get_or_init(|| format!("{}\n{body}", include_str!("common.lua")))
    }
}

/// What a driver asks of the cluster; sent without waiting.
#[derive(Debug)]
enum Op {
    Claim {
        device: Box<str>,
        session: SessionId,
        peer: SocketAddr,
        since_ms: u64,
    },
    Release {
        device: Box<str>,
        session: SessionId,
        cause: Cause,
        at_ms: u64,
    },
}

/// Whether this node reaches Redis, for `/healthz` and the metrics.
#[derive(Debug, Default)]
pub(crate) struct ClusterStatus {
    degraded: AtomicBool,
    /// Unix ms since when it is degraded.
    degraded_since_ms: AtomicU64,
}

/// The drivers' side of the cluster: cheap, never blocks.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub node: Arc<str>,
    ops: mpsc::UnboundedSender<Op>,
    pub status: Arc<ClusterStatus>,
}

impl Cluster {
    /// The handle and the task to run (once the server's shared state exists).
    pub fn new(config: ClusterConfig, node: String) -> Result<(Self, ClusterTask), ClusterError> {
        check_node_id(&node)?;
        let client =
            redis::Client::open(config.url.as_str()).map_err(|source| ClusterError::BadUrl {
                url: config.url.clone(),
                source,
            })?;
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let status = Arc::new(ClusterStatus {
            // Degraded until Redis first answered.
            degraded: AtomicBool::new(true),
            degraded_since_ms: AtomicU64::new(unix_ms(SystemTime::now())),
        });
        let node: Arc<str> = node.into();
        let task = ClusterTask {
            client,
            config: config.clone(),
            node: node.clone(),
            ops_rx,
            status: status.clone(),
            stash: VecDeque::new(),
            incarnation: None,
        };
        Ok((Self { node, ops, status }, task))
    }

    /// A session opened here: claim the device cluster-wide.
    pub fn claim(&self, device: &str, session: SessionId, peer: SocketAddr, since: SystemTime) {
        let _ = self.ops.send(Op::Claim {
            device: device.into(),
            session,
            peer,
            since_ms: unix_ms(since),
        });
    }

    /// A session opened here ended.
    pub fn release(&self, device: &str, session: SessionId, cause: Cause, at: SystemTime) {
        let _ = self.ops.send(Op::Release {
            device: device.into(),
            session,
            cause,
            at_ms: unix_ms(at),
        });
    }

    /// `/healthz`'s line about the cluster.
    pub fn health_line(&self) -> String {
        if self.status.degraded.load(Ordering::Relaxed) {
            let since = self.status.degraded_since_ms.load(Ordering::Relaxed);
            let for_ms = unix_ms(SystemTime::now()).saturating_sub(since);
            format!(
                "cluster: node {} degraded: redis unreachable for {:.1}s; serving with local takeover only\n",
                self.node,
                for_ms as f64 / 1000.0
            )
        } else {
            format!("cluster: node {} ok\n", self.node)
        }
    }
}

/// What the subscriber tells the cluster task.
#[derive(Debug)]
enum Subscriber {
    /// Subscribed to this node's eviction channel: messages from now on arrive.
    Ready,
    /// The subscription ended (or never began).
    Lost(String),
}

/// The cluster's background task: one per server.
#[derive(Debug)]
pub(crate) struct ClusterTask {
    client: redis::Client,
    config: ClusterConfig,
    node: Arc<str>,
    ops_rx: mpsc::UnboundedReceiver<Op>,
    status: Arc<ClusterStatus>,
    /// Session ends that could not be sent while Redis was unreachable.
    stash: VecDeque<Op>,
    /// The Redis data set our epochs belong to (`hangup:incarnation`, set once by the
    /// first node): a Redis restarted empty starts epochs afresh, and ours mean nothing
    /// there.
    incarnation: Option<String>,
}

/// One session this node holds, as reconciliation sends it.
struct Held {
    device: Box<str>,
    session: SessionId,
    epoch: u64,
    peer: SocketAddr,
    since_ms: u64,
}

impl ClusterTask {
    /// Runs until `stop`; then sends the session ends still queued and leaves the
    /// cluster (lease deleted), within [`LEAVE_BOUND`].
    pub async fn run(mut self, shared: Arc<Shared>, stop: CancellationToken) {
        let timeout = self.config.response_timeout();
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let mut conn =
            match ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config) {
                Ok(conn) => conn,
                Err(err) => {
                    hangup::emit!(WARN, "cluster_degraded", node = %self.node, error = %err);
                    return;
                }
            };
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let mut subscriber: Option<tokio::task::JoinHandle<()>> = None;
        let mut tick = tokio::time::interval(self.config.sweep_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Redis answered once (`cluster_joined`); the outage is announced once.
        let mut joined = false;
        let mut announced = false;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(event) = sub_rx.recv() => match event {
                    Subscriber::Ready => {
                        if !self.degraded() {
                            self.reconcile(&shared, &mut conn).await;
                        }
                    }
                    Subscriber::Lost(error) => {
                        tracing::debug!(node = %self.node, error, "cluster subscription lost");
                        subscriber = None;
                    }
                },
                Some(op) = self.ops_rx.recv() => {
                    let mut batch = vec![op];
                    while batch.len() < MAX_BATCH {
                        match self.ops_rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.send(&shared, &mut conn, batch).await;
                }
                _ = tick.tick() => {
                    let was_degraded = self.degraded();
                    let renewed = self.renew(&shared, &mut conn).await;
                    match renewed {
                        Ok(added) => {
                            if joined && added && !was_degraded && subscriber.is_some() {
                                // Swept while we still reached Redis (a stall longer
                                // than the lease): our sessions were recorded as lost
                                // and their devices disowned. Claim them back.
                                hangup::emit!(
                                    WARN,
                                    "cluster_rejoined",
                                    node = %self.node,
                                    "this node's lease ran out and it was swept; claiming its sessions again"
                                );
                                self.reconcile(&shared, &mut conn).await;
                            }
                            if !joined {
                                joined = true;
                                hangup::emit!(
                                    "cluster_joined",
                                    node = %self.node,
                                    lease_ms = self.config.lease.as_millis() as u64,
                                    lost_budget_ms = self.config.lost_budget().as_millis() as u64,
                                );
                                self.restored(&shared, &mut conn, announced).await;
                            } else if self.degraded() {
                                self.restored(&shared, &mut conn, true).await;
                            }
                            announced = false;
                            if subscriber.is_none() {
                                subscriber = Some(tokio::spawn(subscribe(
                                    self.client.clone(),
                                    self.node.clone(),
                                    shared.clone(),
                                    timeout,
                                    sub_tx.clone(),
                                )));
                            }
                            self.sweep(&shared, &mut conn).await;
                        }
                        Err(err) => {
                            if !self.degraded() || !announced {
                                announced = true;
                                self.set_degraded(&shared, &err);
                            }
                            // A subscription over a cut link may never notice: start
                            // a fresh one once Redis answers again.
                            if let Some(task) = subscriber.take() {
                                task.abort();
                            }
                        }
                    }
                }
            }
        }
        if let Some(task) = subscriber.take() {
            task.abort();
        }
        let _ = tokio::time::timeout(LEAVE_BOUND, self.leave(&shared, &mut conn)).await;
    }

    fn degraded(&self) -> bool {
        self.status.degraded.load(Ordering::Relaxed)
    }

    fn set_degraded(&self, shared: &Shared, err: &redis::RedisError) {
        let was = self.status.degraded.swap(true, Ordering::Relaxed);
        if !was {
            self.status
                .degraded_since_ms
                .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        }
        shared.metrics.cluster_degraded.set(1);
        hangup::emit!(
            WARN,
            "cluster_degraded",
            node = %self.node,
            error = %err,
            "redis unreachable: serving with local takeover only"
        );
    }

    /// Redis answers again: send the session ends kept meanwhile; the subscriber's
    /// `Ready` then reconciles every session still held.
    async fn restored(&mut self, shared: &Shared, conn: &mut ConnectionManager, announce: bool) {
        let since = self.status.degraded_since_ms.load(Ordering::Relaxed);
        self.status.degraded.store(false, Ordering::Relaxed);
        shared.metrics.cluster_degraded.set(0);
        if announce {
            hangup::emit!(
                "cluster_restored",
                node = %self.node,
                degraded_ms = unix_ms(SystemTime::now()).saturating_sub(since),
                stashed_releases = self.stash.len(),
            );
        }
        while !self.stash.is_empty() && !self.degraded() {
            let n = self.stash.len().min(MAX_BATCH);
            let batch: Vec<Op> = self.stash.drain(..n).collect();
            self.send(shared, conn, batch).await;
        }
    }

    async fn renew(
        &mut self,
        shared: &Shared,
        conn: &mut ConnectionManager,
    ) -> redis::RedisResult<bool> {
        let incarnation_key = format!("{KEY_PREFIX}incarnation");
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{KEY_PREFIX}lease:{}", self.node))
            .arg(unix_ms(SystemTime::now()))
            .arg("PX")
            .arg(self.config.lease.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(format!("{KEY_PREFIX}nodes"))
            .arg(&*self.node)
            .cmd("SET")
            .arg(&incarnation_key)
            .arg(format!("{:016x}", fastrand::u64(..)))
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&incarnation_key);
        shared.metrics.cluster_round_trips.inc();
        let (added, incarnation): (u64, String) = pipe.query_async(conn).await?;
        if self
            .incarnation
            .as_ref()
            .is_some_and(|known| *known != incarnation)
        {
            self.forget_epochs(shared);
        }
        self.incarnation = Some(incarnation);
        Ok(added == 1)
    }

    /// Redis lost its data (restarted empty): every epoch we hold is void. Reconciling
    /// then decides our sessions as ones opened while Redis was away: by HELLO time.
    fn forget_epochs(&self, shared: &Shared) {
        let mut registry = lock(&shared.sessions);
        let devices: Vec<Box<str>> = registry.iter().map(|(device, ..)| device.into()).collect();
        for device in &devices {
            if let Some((_, handle)) = registry.get_mut(device) {
                handle.claim_mut().epoch = 0;
                handle.claim_mut().evict_seen = 0;
            }
        }
        hangup::emit!(
            WARN,
            "cluster_store_reset",
            node = %self.node,
            sessions = devices.len(),
            "redis came back without our data: claiming every session again"
        );
    }

    async fn sweep(&self, shared: &Shared, conn: &mut ConnectionManager) {
        shared.metrics.cluster_round_trips.inc();
        let lost: redis::RedisResult<Vec<String>> = redis::cmd("EVAL")
            .arg(Script::Sweep.source())
            .arg(0)
            .arg(KEY_PREFIX)
            .arg(unix_ms(SystemTime::now()))
            .arg(CLUSTER_RETENTION.as_secs())
            .query_async(conn)
            .await;
        match lost {
            Ok(lost) => {
                for pair in lost.chunks(2) {
                    let [node, sessions] = pair else { continue };
                    shared.metrics.cluster_nodes_lost.inc();
                    hangup::emit!(
                        WARN,
                        "cluster_node_lost",
                        node = %self.node,
                        lost_node = %node,
                        sessions = sessions.parse::<u64>().unwrap_or(0),
                        cause = "server_lost",
                    );
                }
            }
            Err(err) => tracing::debug!(error = %err, "cluster sweep failed"),
        }
    }

    /// Sends a batch of claims and releases in one round trip and applies the epochs.
    async fn send(&mut self, shared: &Shared, conn: &mut ConnectionManager, batch: Vec<Op>) {
        if self.degraded() {
            // Claims are redone from the registry on reconciliation; ends are kept.
            self.stash_releases(batch);
            return;
        }
        let now_ms = unix_ms(SystemTime::now());
        let retention = CLUSTER_RETENTION.as_secs();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in &batch {
            match op {
                Op::Claim {
                    device,
                    session,
                    peer,
                    since_ms,
                } => {
                    pipe.cmd("EVAL")
                        .arg(Script::Claim.source())
                        .arg(0)
                        .arg(KEY_PREFIX)
                        .arg(&**device)
                        .arg(&*self.node)
                        .arg(session.to_string())
                        .arg(*since_ms)
                        .arg(peer.to_string())
                        .arg(now_ms)
                        .arg(retention)
                        .arg(CLUSTER_HISTORY);
                }
                Op::Release {
                    device,
                    session,
                    cause,
                    at_ms,
                } => {
                    pipe.cmd("EVAL")
                        .arg(Script::Release.source())
                        .arg(0)
                        .arg(KEY_PREFIX)
                        .arg(&**device)
                        .arg(&*self.node)
                        .arg(session.to_string())
                        .arg(cause.as_str())
                        .arg(*at_ms)
                        .arg(retention);
                }
            }
        }
        shared.metrics.cluster_round_trips.inc();
        let replies: Vec<redis::RedisResult<i64>> = match pipe.query_async(conn).await {
            Ok(replies) => replies,
            Err(err) => {
                self.set_degraded(shared, &err);
                self.stash_releases(batch);
                return;
            }
        };
        let mut registry = lock(&shared.sessions);
        for (op, reply) in batch.iter().zip(replies) {
            let Op::Claim {
                device, session, ..
            } = op
            else {
                if let Err(err) = reply {
                    tracing::warn!(error = %err, "cluster release failed");
                }
                continue;
            };
            let epoch = match reply {
                Ok(epoch) => epoch as u64,
                Err(err) => {
                    tracing::warn!(device = %device, error = %err, "cluster claim failed");
                    continue;
                }
            };
            shared.metrics.cluster_claims.inc();
            let Some((current, handle)) = registry.get_mut(device) else {
                continue;
            };
            if current != *session {
                continue;
            }
            handle.claim_mut().epoch = epoch;
            if evicted_in_flight(epoch, handle.claim().evict_seen) {
                // A newer HELLO elsewhere was announced before our own claim returned.
                let newer_epoch = handle.claim().evict_seen;
                Evicted {
                    node: &self.node,
                    device,
                    session: *session,
                    epoch,
                    newer_epoch,
                    reason: "claim",
                    by_node: None,
                }
                .kick(shared, handle, Instant::now());
            }
        }
    }

    fn stash_releases(&mut self, batch: Vec<Op>) {
        for op in batch {
            if matches!(op, Op::Release { .. }) {
                if self.stash.len() >= MAX_STASHED_RELEASES {
                    self.stash.pop_front();
                }
                self.stash.push_back(op);
            }
        }
    }
}

/// An eviction message for this node, applied by the subscriber itself, so that it
/// never waits behind the cluster task's round trips.
fn evict(shared: &Shared, node: &str, device: &str, epoch: u64, since_ms: u64, by: &str) {
    let mut registry = lock(&shared.sessions);
    let Some((session, handle)) = registry.get_mut(device) else {
        return;
    };
    match eviction(handle.claim().epoch, epoch) {
        Eviction::Defer => {
            handle.claim_mut().evict_seen = handle.claim().evict_seen.max(epoch);
            return;
        }
        Eviction::Ignore => return,
        Eviction::Kick => {}
    }
    // The HELLO's instant on this machine's clock, for the eviction latency.
    let age = unix_ms(SystemTime::now()).saturating_sub(since_ms);
    let hello_at = Instant::now()
        .checked_sub(Duration::from_millis(age))
        .unwrap_or_else(Instant::now);
    Evicted {
        node,
        device,
        session,
        epoch: handle.claim().epoch,
        newer_epoch: epoch,
        reason: "message",
        by_node: Some(by),
    }
    .kick(shared, handle, hello_at);
}

/// Our session of a device lost it to a newer claim elsewhere.
struct Evicted<'a> {
    node: &'a str,
    device: &'a str,
    session: SessionId,
    /// Our session's epoch.
    epoch: u64,
    /// The epoch that won.
    newer_epoch: u64,
    /// What told us: our claim's reply (`claim`), the owner's message (`message`), or a
    /// reconciliation (`reconcile`).
    reason: &'static str,
    /// The node that took the device, when the message said.
    by_node: Option<&'a str>,
}

impl Evicted<'_> {
    /// Kicks the session's connection (`at`: the newer HELLO's instant, for the
    /// eviction latency) and reports it, unless it was kicked already.
    fn kick(self, shared: &Shared, handle: &mut crate::SessionHandle, at: Instant) {
        if !handle.kick_now(at) {
            return;
        }
        shared.metrics.cluster_evictions.inc();
        hangup::emit!(
            "cluster_evicted",
            node = %self.node,
            device = %self.device,
            session = %self.session,
            epoch = self.epoch,
            newer_epoch = self.newer_epoch,
            reason = self.reason,
            by_node = self.by_node,
        );
    }
}

impl ClusterTask {
    /// Claims again every session this node holds (after Redis came back, or the
    /// subscription was re-made): `reclaim.lua` decides by epoch.
    async fn reconcile(&mut self, shared: &Shared, conn: &mut ConnectionManager) {
        let held: Vec<Held> = lock(&shared.sessions)
            .iter()
            .map(|(device, session, handle)| Held {
                device: device.into(),
                session,
                epoch: handle.claim().epoch,
                peer: handle.claim().peer,
                since_ms: handle.claim().since_ms,
            })
            .collect();
        // A session whose claim still waits in the queue has no epoch yet, like one
        // opened while Redis was away, but its own claim decides it: send the queue
        // first and leave those out of the reclaim (not of the stale check below: they
        // are held). Reclaiming them by HELLO time as well would take the device from a
        // HELLO that raced ours on another node and won (then both were evicted: every
        // racer lost).
        let queued = self.send_queued(shared, conn).await;
        let reclaim: Vec<&Held> = held
            .iter()
            .filter(|h| !queued.contains(&h.session))
            .collect();
        let started = Instant::now();
        let (mut kept, mut claimed, mut lost) = (0u64, 0u64, 0u64);
        let now_ms = unix_ms(SystemTime::now());
        for chunk in reclaim.chunks(MAX_BATCH) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for held in chunk {
                pipe.cmd("EVAL")
                    .arg(Script::Reclaim.source())
                    .arg(0)
                    .arg(KEY_PREFIX)
                    .arg(&*held.device)
                    .arg(&*self.node)
                    .arg(held.session.to_string())
                    .arg(held.since_ms)
                    .arg(held.peer.to_string())
                    .arg(now_ms)
                    .arg(CLUSTER_RETENTION.as_secs())
                    .arg(CLUSTER_HISTORY)
                    .arg(held.epoch);
            }
            shared.metrics.cluster_round_trips.inc();
            let replies: Vec<redis::RedisResult<(u64, String)>> = match pipe.query_async(conn).await
            {
                Ok(replies) => replies,
                Err(err) => {
                    self.set_degraded(shared, &err);
                    return;
                }
            };
            let mut registry = lock(&shared.sessions);
            for (held, reply) in chunk.iter().zip(replies) {
                let Ok((epoch, verdict)) = reply else {
                    continue;
                };
                let Some((current, handle)) = registry.get_mut(&held.device) else {
                    continue;
                };
                if current != held.session {
                    continue;
                }
                if verdict == "lost" {
                    lost += 1;
                    Evicted {
                        node: &self.node,
                        device: &held.device,
                        session: held.session,
                        epoch: held.epoch,
                        newer_epoch: epoch,
                        reason: "reconcile",
                        by_node: None,
                    }
                    .kick(shared, handle, Instant::now());
                } else {
                    if verdict == "kept" {
                        kept += 1;
                    } else {
                        claimed += 1;
                    }
                    handle.claim_mut().epoch = epoch;
                    handle.claim_mut().evict_seen = 0;
                }
            }
        }
        let stale = self.drop_stale(shared, conn, &held).await;
        hangup::emit!(
            "cluster_reconciled",
            node = %self.node,
            kept,
            claimed,
            lost,
            stale,
            elapsed_ms = started.elapsed().as_millis() as u64,
        );
    }

    /// Devices Redis says this node owns by sessions it does not hold (a previous run
    /// of this node id that died and came back within its lease): ended `server_lost`.
    async fn drop_stale(
        &mut self,
        shared: &Shared,
        conn: &mut ConnectionManager,
        held: &[Held],
    ) -> u64 {
        shared.metrics.cluster_round_trips.inc();
        let owned: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(format!("{KEY_PREFIX}node-devices:{}", self.node))
            .query_async(conn)
            .await
        {
            Ok(owned) => owned,
            Err(err) => {
                tracing::debug!(error = %err, "cluster: could not list our devices");
                return 0;
            }
        };
        let held: std::collections::HashSet<&str> = held.iter().map(|h| &*h.device).collect();
        let stale: Vec<&String> = owned
            .iter()
            .filter(|d| !held.contains(d.as_str()))
            .collect();
        let mut dropped = 0;
        for chunk in stale.chunks(MAX_BATCH) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for device in chunk {
                pipe.cmd("EVAL")
                    .arg(Script::DropStale.source())
                    .arg(0)
                    .arg(KEY_PREFIX)
                    .arg(device.as_str())
                    .arg(&*self.node)
                    .arg(unix_ms(SystemTime::now()))
                    .arg(CLUSTER_RETENTION.as_secs());
            }
            shared.metrics.cluster_round_trips.inc();
            match pipe.query_async::<Vec<redis::RedisResult<i64>>>(conn).await {
                Ok(replies) => {
                    dropped += replies.iter().filter(|r| matches!(r, Ok(1))).count() as u64
                }
                Err(err) => {
                    tracing::debug!(error = %err, "cluster: could not drop stale devices");
                    break;
                }
            }
        }
        dropped
    }

    /// Sends every op queued so far, in batches; returns the sessions it claimed (ids
    /// are unique on a node).
    async fn send_queued(
        &mut self,
        shared: &Shared,
        conn: &mut ConnectionManager,
    ) -> HashSet<SessionId> {
        let mut pending = Vec::new();
        while let Ok(op) = self.ops_rx.try_recv() {
            pending.push(op);
        }
        let claimed = pending
            .iter()
            .filter_map(|op| match op {
                Op::Claim { session, .. } => Some(*session),
                Op::Release { .. } => None,
            })
            .collect();
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(MAX_BATCH));
            self.send(shared, conn, pending).await;
            pending = rest;
        }
        claimed
    }

    /// Shutdown: the last session ends, then the lease and the node's entry go.
    async fn leave(&mut self, shared: &Shared, conn: &mut ConnectionManager) {
        self.send_queued(shared, conn).await;
        if self.degraded() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(format!("{KEY_PREFIX}lease:{}", self.node))
            .ignore()
            .cmd("SREM")
            .arg(format!("{KEY_PREFIX}nodes"))
            .arg(&*self.node)
            .ignore()
            .cmd("DEL")
            .arg(format!("{KEY_PREFIX}node-devices:{}", self.node))
            .ignore();
        let _ = pipe.query_async::<()>(conn).await;
        let metrics = &shared.metrics;
        hangup::emit!(
            "cluster_left",
            node = %self.node,
            round_trips = metrics.cluster_round_trips.get(),
            claims = metrics.cluster_claims.get(),
            evictions = metrics.cluster_evictions.get(),
        );
    }
}

/// Subscribes to this node's eviction channel and forwards its messages.
async fn subscribe(
    client: redis::Client,
    node: Arc<str>,
    shared: Arc<Shared>,
    timeout: Duration,
    tx: mpsc::UnboundedSender<Subscriber>,
) {
    let channel = format!("{KEY_PREFIX}evict:{node}");
    let subscribed = tokio::time::timeout(timeout * 2, async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        redis::RedisResult::Ok(pubsub)
    })
    .await;
    let pubsub = match subscribed {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(err)) => {
            let _ = tx.send(Subscriber::Lost(err.to_string()));
            return;
        }
        Err(_) => {
            let _ = tx.send(Subscriber::Lost("subscribe timed out".into()));
            return;
        }
    };
    if tx.send(Subscriber::Ready).is_err() {
        return;
    }
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let payload: String = match message.get_payload() {
            Ok(payload) => payload,
            Err(_) => continue,
        };
        let mut parts = payload.split(' ');
        let (Some(device), Some(epoch), Some(since_ms), Some(by)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(epoch), Ok(since_ms)) = (epoch.parse(), since_ms.parse()) else {
            continue;
        };
        evict(&shared, &node, device, epoch, since_ms, by);
    }
    let _ = tx.send(Subscriber::Lost("subscription closed".into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_session_is_kicked_a_newer_one_kept_a_pending_one_decided_later() {
        assert_eq!(eviction(3, 4), Eviction::Kick);
        assert_eq!(eviction(5, 4), Eviction::Ignore);
        assert_eq!(eviction(4, 4), Eviction::Ignore);
        assert_eq!(eviction(0, 4), Eviction::Defer);
        // The message overtook our claim's reply, and was for us.
        assert!(evicted_in_flight(3, 4));
        // It was for an older session of ours, replaced locally since.
        assert!(!evicted_in_flight(5, 4));
        assert!(!evicted_in_flight(5, 0));
    }

    #[test]
    fn node_ids_are_checked() {
        assert!(check_node_id("node-a:7557").is_ok());
        assert!(check_node_id("").is_err());
        assert!(check_node_id("a b").is_err());
        assert!(check_node_id("a/b").is_err());
        assert!(check_node_id(&default_node_id(7557)).is_ok());
    }

    #[test]
    fn lost_budget_is_derived_from_the_lease() {
        let config = ClusterConfig::new("redis://127.0.0.1:6379", None).unwrap();
        assert_eq!(config.lost_budget(), Duration::from_secs(6));
        assert!(config.lost_budget() <= Duration::from_secs(10));
        assert!(ClusterConfig::new("nope://", None).is_err());
    }
}
