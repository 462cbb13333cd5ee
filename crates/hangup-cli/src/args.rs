//! Every command-line flag of `hangup`, as clap derive structs.
//!
//! Nothing here does work: arguments are resolved into settings by the
//! commands in `commands/`. Nothing here decides a default either: each `default_value`
//! is read from the crate that owns the setting (hangup-core's policy and connection
//! constants, hangup-server's `DEFAULT_*`), so `--help` shows what actually applies.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hangup_bench::{HangupMode, HttpServerKind, LoadProtocol, ScalePeer};
use hangup_core::{
    AutoDuration, HalfClosePolicy, KeepaliveSetting, LivenessSettings, DEFAULT_HEARTBEAT,
    DEFAULT_MAX_ROUNDS,
};
use hangup_server::cluster::DEFAULT_CLUSTER_LEASE;
use hangup_server::presence::DEFAULT_DATA_DIR;
use hangup_server::{
    PresenceDurability, DEFAULT_ADMIN, DEFAULT_DRAIN_TIMEOUT, DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_QUEUED_BYTES,
};

/// A duration constant as clap's `default_value`: formatted once, the way the flag reads
/// it back (`30s`). clap's own `default_value_t` keeps its rendering in a static too.
macro_rules! shown {
    ($duration:expr) => {{
        static SHOWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        SHOWN
            .get_or_init(|| hangup_core::format_duration($duration))
            .as_str()
    }};
}

/// Know when the other end of a TCP connection is gone, and stop spending work on it.
#[derive(Debug, Parser)]
#[command(name = "hangup", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the line-protocol server whose jobs stop the moment their client hangs up.
    Serve(ServeArgs),
    /// Talk to a server from the terminal; notices a dead server even while idle at the prompt.
    Client(ClientArgs),
    /// Measure detection and cancellation against a real server.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// List TCP sockets through sock_diag and flag ghosts, leaks and dying peers.
    Inspect(InspectArgs),
    /// Fault lab: kill, freeze and unplug real clients and servers in network namespaces
    /// and measure how fast each death is detected (needs root and iproute2).
    Lab(LabArgs),
    /// Print a device's token: hex HMAC-SHA256(secret, device-id), for `HELLO … token=`.
    Token(TokenArgs),
    /// Is a device online, when did it drop, and why: sessions from the presence store.
    Presence(PresenceArgs),
}

/// How connections are watched, shared by `serve` and `client` (SPEC §2).
#[derive(Debug, Clone, Args)]
pub struct LivenessArgs {
    /// The liveness budget D: the longest time from a peer's silent death to its
    /// detection. Every timer below is derived from it unless set explicitly.
    #[arg(long, value_name = "DURATION", default_value = shown!(LivenessSettings::default().dead_after), value_parser = parse_duration)]
    pub dead_after: Duration,

    /// TCP keepalive: `auto` (idle D/2, interval D/10, 5 probes), `os` (SO_KEEPALIVE with
    /// the system's timers), `off`, or explicit `IDLE,INTERVAL,COUNT` (durations, count).
    #[arg(
        long,
        value_name = "auto|os|off|IDLE,INTVL,COUNT",
        default_value_t = LivenessSettings::default().keepalive
    )]
    pub keepalive: KeepaliveSetting,

    /// TCP_USER_TIMEOUT: `auto` (D − min(D/8, 250 ms): Linux counts it from the first
    /// retransmission, one RTO after the send), `off`, or a duration. Bounds how long
    /// sent data may stay unacknowledged before the kernel gives up with ETIMEDOUT.
    #[arg(long, value_name = "auto|off|DURATION", default_value_t = LivenessSettings::default().user_timeout, value_parser = parse_user_timeout)]
    pub user_timeout: AutoDuration,

    /// Watch for FIN and RST through EPOLLRDHUP/EPOLLERR readiness without reading data.
    // `bool` fields are flags in clap unless the action says they take a value.
    #[arg(long, value_name = "on|off", default_value = on_off(LivenessSettings::default().watch_hangup), value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub watch_hangup: bool,

    /// Give up on a peer that accepts none of our bytes for this long (cause `stalled`):
    /// `auto` (D − 2·min(D/8, 250 ms), below the user timeout), `off`, or a duration.
    #[arg(long, value_name = "auto|off|DURATION", default_value_t = LivenessSettings::default().write_timeout)]
    pub write_timeout: AutoDuration,
}

/// `hangup serve`.
///
/// Every flag can also be set in a TOML file given with `--config`, under the flag's
/// name without dashes in front (`dead-after = "2s"`, `workers = 4`, `insecure = true`);
/// flags on the command line win over the file.
// The file's flags are placed before the command line's, so a flag may come twice: the
// last one (the command line's) wins instead of clap refusing the repetition.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// Read settings from this TOML file (keys: the flags' long names).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on for the line protocol.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Share the port with other `hangup serve --reuse-port` instances (SO_REUSEPORT): the
    /// kernel spreads new connections over them. Give each its own `--admin` port (or
    /// `off`); they may share `--data-dir`. Sessions and takeover are per instance.
    #[arg(long)]
    pub reuse_port: bool,

    /// Admin HTTP endpoint: /metrics (Prometheus), /connections, /sessions, /healthz;
    /// `off` disables it.
    #[arg(long, value_name = "ADDR|off", default_value_t = AdminAddr::At(DEFAULT_ADMIN), value_parser = parse_admin)]
    pub admin: AdminAddr,

    /// Directory of the presence store (SQLite): every session, when it started and
    /// ended, and why. Created if missing.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// File holding the secret for device tokens: `HELLO` then needs
    /// `token=<hex HMAC-SHA256(secret, device-id)>` (`hangup token` prints it).
    /// Trailing line breaks in the file are ignored.
    #[arg(long, value_name = "FILE")]
    pub auth_secret: Option<PathBuf>,

    /// Require `Authorization: Bearer <token>` on every admin request; the token is this
    /// file's content (trailing newline ignored). For an admin endpoint beyond loopback.
    #[arg(long, value_name = "FILE")]
    pub admin_token: Option<PathBuf>,

    /// Allow listening on a non-loopback address without `--auth-secret` (anyone who
    /// can connect could then take over any device's session).
    #[arg(long)]
    pub insecure: bool,

    /// On SIGTERM/SIGINT, how long jobs in flight may still run after `GOAWAY`.
    #[arg(long, value_name = "DURATION", default_value = shown!(DEFAULT_DRAIN_TIMEOUT), value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Liveness policy applied to every accepted connection.
    #[command(flatten)]
    pub liveness: LivenessArgs,

    /// What to do when a client sends FIN while its jobs are pending: `probe` writes a `#`
    /// line and cancels only if the peer answers with RST (it closed, rather than
    /// half-closed); `cancel` treats FIN as a hangup; `finish` never cancels on FIN.
    #[arg(long, value_name = "probe|cancel|finish", default_value_t = HalfClosePolicy::default())]
    pub on_half_close: HalfClosePolicy,

    /// Jobs running at once across all connections [default: number of CPUs].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Threads that drive the connections, each with its own epoll and a share of them
    /// [default: half the CPUs, at least 1].
    #[arg(long, value_name = "N")]
    pub io_threads: Option<usize>,

    /// Connections served at once; the next one gets `ERR busy` and is closed.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS.get())]
    pub max_connections: usize,

    /// Largest accepted `JOB <rounds>`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ROUNDS)]
    pub max_rounds: u64,

    /// When a session's start reaches the presence store: `batched` (WELCOME at once, the
    /// start committed within ~100 ms; a kill -9 in that window loses it) or `acked`
    /// (WELCOME only once the start is committed; concurrent HELLOs share one commit).
    #[arg(long, value_name = "batched|acked", default_value_t = PresenceDurability::default())]
    pub presence_durability: PresenceDurability,

    /// Bytes of queued jobs (seeds included) across all connections; past it `JOB` gets
    /// `ERR too-many-jobs`. Seeds are at most 256 bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_QUEUED_BYTES)]
    pub max_queued_bytes: usize,

    /// Event log format on stderr: human `text`, or `json` (one object a line, with `ts_ns`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Cluster mode: share sessions with every node that uses this Redis
    /// (`redis://HOST:PORT[/DB]`): a HELLO on any node evicts the device's session on the
    /// others; a node that dies has its sessions ended (`server_lost`) within the lease
    /// plus a fifth of it. Without Redis a node keeps serving with local takeover only.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,

    /// This node's id in the cluster (1-128 of A-Za-z0-9._:-), stable across restarts
    /// [default: host name and listening port, HOST:PORT; with --reuse-port
    /// HOST:PORT:PID].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,

    /// How long this node's lease in Redis lives unrenewed (renewed every fifth of it).
    /// Others end a dead or cut-off node's sessions within lease + lease/5.
    #[arg(long, value_name = "DURATION", default_value = shown!(DEFAULT_CLUSTER_LEASE), value_parser = parse_duration)]
    pub cluster_lease: Duration,
}

/// `hangup client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server address.
    #[arg(default_value_t = DEFAULT_LISTEN.to_string())]
    pub addr: String,

    /// Liveness policy applied to the connection to the server.
    #[command(flatten)]
    pub liveness: LivenessArgs,

    /// Exit (non-zero) when the connection is lost instead of reconnecting.
    #[arg(long)]
    pub once: bool,

    /// Open a session for this device id on every connect (`HELLO`), with heartbeats.
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,

    /// The device's token (`hangup token ID` on the server side prints it).
    #[arg(long, value_name = "HEX", requires = "device")]
    pub token: Option<String>,

    /// Heartbeat to propose: the client sends PING after this much of its own silence and
    /// declares the server dead after 1.5 times the granted heartbeat without inbound data
    /// (whole seconds).
    #[arg(long, value_name = "DURATION", default_value = shown!(DEFAULT_HEARTBEAT), value_parser = parse_whole_seconds, requires = "device")]
    pub heartbeat: u64,

    /// Event log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `hangup bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Latency from a client's hangup (FIN or RST) to its running job being stopped.
    Cancel(BenchCancelArgs),
    /// A reconnect storm: every device connects again while its old connection is open;
    /// eviction latency and ghosts left in the kernel's socket table.
    Takeover(BenchTakeoverArgs),
    /// N concurrent heartbeating sessions over reuse-port server instances and load
    /// worker processes: sessions reached and lost, server memory per connection, server
    /// CPU per heartbeat, PING round trip under load, and the limits in the way.
    Scale(BenchScaleArgs),
    /// N clients in a network namespace whose link is pulled at once: how long the
    /// servers take to detect every death (against D), with which cause, and the
    /// connect-plus-PING latency of fresh clients meanwhile. Needs root.
    MassDeath(BenchMassDeathArgs),
    /// A bounded mix of churn, takeovers, bad input, stalled readers and abandoned jobs
    /// across server restarts; then checks memory and descriptors are back to their
    /// baseline, every session is stored with a cause, and no ghost is left.
    Soak(BenchSoakArgs),
    /// One load process of `scale` and `mass-death` (internal).
    #[command(hide = true)]
    LoadWorker(LoadWorkerArgs),
    /// Plain axum and hyper against their hangup variants, side by side with one client:
    /// how fast each stops a handler's work when the client hangs up (FIN, RST, a
    /// pipelined request, an unread body), whether a half-closed client is answered, and
    /// what the hangup variants cost in requests per second.
    Http(BenchHttpArgs),
    /// One reference HTTP server of `bench http` (internal).
    #[command(hide = true)]
    HttpPeer(BenchHttpPeerArgs),
}

/// `hangup bench http`.
#[derive(Debug, Args)]
pub struct BenchHttpArgs {
    /// Hangups measured per server and case.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub trials: usize,

    /// A hangup whose work is not stopped within this counts as missed.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub miss_limit: Duration,

    /// Stop a case after this many misses in a row (each costs the miss limit plus the
    /// work's cap); the case then reports the trials it ran. 0: run every trial.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub give_up_after: usize,

    /// The bounded work the half-close case asks for; a client that half-closed is
    /// answered once it is done.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    pub half_close_work: Duration,

    /// How long one throughput run loads a server (each run first warms up for a tenth
    /// of it).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub throughput_time: Duration,

    /// Keep-alive connections of the throughput client, one thread each.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub throughput_connections: usize,

    /// Throughput runs per server, interleaved plain / hangup (0: skip throughput).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub throughput_runs: usize,

    /// The route the throughput client requests: `/ok` (the hangup variants take the
    /// request's token) or `/no-token` (they do not: only their listener or wrapper
    /// costs).
    #[arg(long, value_name = "PATH", default_value = "/ok", value_parser = ["/ok", "/no-token"])]
    pub throughput_path: String,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `hangup bench http-peer`: serves `/work?ms=` (CPU work until the request's token
/// fires or `ms` pass) and `/ok`; prints `listening` and one JSON line per work start
/// and stop on stderr.
#[derive(Debug, Args)]
pub struct BenchHttpPeerArgs {
    /// Which server to run.
    #[arg(long, value_name = "axum|axum-hangup|hyper|hyper-hangup")]
    pub server: HttpServerKind,

    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// With a hangup server: serve a client that half-closes (`OnFin::Finish`) instead of
    /// cancelling on its FIN.
    #[arg(long)]
    pub finish_on_fin: bool,
}

/// `hangup bench soak`.
#[derive(Debug, Args)]
pub struct BenchSoakArgs {
    /// How long the load runs.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Server restarts during the run (SIGTERM, then a fresh server on the same port and
    /// presence store), spread evenly.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub restarts: usize,

    /// Client threads.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub clients: usize,

    /// How far the last server's RSS may end above the first's idle baseline, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub rss_slack: u64,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `hangup bench scale`.
#[derive(Debug, Args)]
pub struct BenchScaleArgs {
    /// Sessions to open and hold.
    #[arg(long, value_name = "N", default_value_t = 19_000)]
    pub connections: usize,

    /// Heartbeat every session asks for: a PING after this much silence (whole seconds).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_whole_seconds)]
    pub heartbeat: u64,

    /// Server instances sharing the port (SO_REUSEPORT) [default: enough for about
    /// 18 000 sessions each, under the 20 000 descriptors a process may hold].
    #[arg(long, value_name = "K", conflicts_with = "target")]
    pub instances: Option<usize>,

    /// Load a server that is already running here instead of starting instances.
    #[arg(long, value_name = "ADDR")]
    pub target: Option<SocketAddr>,

    /// With `--target`: the server processes to measure (memory, CPU); repeatable.
    #[arg(long, value_name = "PID", requires = "target")]
    pub server_pid: Vec<u32>,

    /// How long to hold every session heartbeating once all are open (the measurement
    /// window for CPU and round trips) [default: 2 heartbeats, at least 20 s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub hold: Option<Duration>,

    /// Sessions per load-worker process (each holds one descriptor per session, and
    /// spreads them over 127.0.x.y source addresses, about 4 000 per address).
    #[arg(long, value_name = "N", default_value_t = 18_000)]
    pub per_worker: usize,

    /// Connects plus HELLOs in flight per load worker during ramp-up.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub concurrency: usize,

    /// The servers' --dead-after [default: 3 × heartbeat, so that keepalive (idle D/2)
    /// stays quiet while the heartbeats flow, and the heartbeat (dead after 1.5 × H) is
    /// what watches the sessions].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dead_after: Option<Duration>,

    /// The servers' --io-threads [default: theirs, half the CPUs].
    #[arg(long, value_name = "N", conflicts_with = "target")]
    pub io_threads: Option<usize>,

    /// Give up if ramp-up takes longer than this.
    #[arg(long, value_name = "DURATION", default_value = "20m", value_parser = parse_duration)]
    pub ramp_limit: Duration,

    /// Run the same load against this server too, in the same run, and print both side
    /// by side with the ratios hangup/peer. `mosquitto`: a broker the bench starts on a
    /// free loopback port, loaded over MQTT 3.1.1 (CONNECT with keepalive = 2 × heartbeat,
    /// PINGREQ → PINGRESP); one process, so at most the descriptor hard limit of
    /// sessions. Install it with `scripts/bench-peers`.
    #[arg(long, value_name = "mosquitto", conflicts_with_all = ["target", "server_pid"])]
    pub peer: Option<ScalePeer>,

    /// With `--peer`: rounds per server, interleaved (hangup, peer, peer, hangup, …).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "peer", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=20))]
    pub repeat: usize,

    /// Run the whole bench (servers, load workers) in a network namespace of its own,
    /// whose TCP established table has a bucket per socket of the run (root; the host's
    /// table is sized at boot: 262 144 buckets on a 24 GiB machine, 8 sockets a bucket
    /// at a million sessions).
    #[arg(long, conflicts_with = "target")]
    pub netns: bool,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `hangup bench mass-death`.
#[derive(Debug, Args)]
pub struct BenchMassDeathArgs {
    /// Sessions that die at once.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub connections: usize,

    /// The servers' --dead-after D, against which detection is measured.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub dead_after: Duration,

    /// The sessions' heartbeat H (whole seconds). With 1.5 × H below D the heartbeat must
    /// catch every death (`heartbeat_missed`); with H at or above D, keepalive and the
    /// user timeout do (`timeout`); in between either may.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_whole_seconds)]
    pub heartbeat: u64,

    /// Server instances sharing the port [default: about 18 000 sessions each].
    #[arg(long, value_name = "K")]
    pub instances: Option<usize>,

    /// Sessions per load-worker process.
    #[arg(long, value_name = "N", default_value_t = 18_000)]
    pub per_worker: usize,

    /// Connects plus HELLOs in flight per load worker during ramp-up.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub concurrency: usize,

    /// Fresh connect-plus-PING probes per second from outside the namespace.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub probe_rate: u32,

    /// Give up if ramp-up takes longer than this.
    #[arg(long, value_name = "DURATION", default_value = "20m", value_parser = parse_duration)]
    pub ramp_limit: Duration,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `hangup bench load-worker`: opens and heartbeats its share of sessions, reporting
/// JSON lines on stdout; stops on `stop` (or end of input) on stdin.
#[derive(Debug, Args)]
pub struct LoadWorkerArgs {
    /// The server.
    #[arg(long)]
    pub target: SocketAddr,

    /// Source addresses, used in turn (repeatable).
    #[arg(long, required = true)]
    pub source: Vec<IpAddr>,

    /// Sessions to open.
    #[arg(long)]
    pub connections: usize,

    /// Number of the first device (devices are `<prefix>-<n>`).
    #[arg(long, default_value_t = 0)]
    pub first_device: u64,

    /// Device id prefix.
    #[arg(long, default_value = "load")]
    pub device_prefix: String,

    /// Heartbeat (whole seconds).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_whole_seconds)]
    pub heartbeat: u64,

    /// Connects plus HELLOs in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,

    /// What the sessions speak: hangup's line protocol, or MQTT 3.1.1 to a broker.
    #[arg(long, value_name = "line|mqtt", default_value_t = LoadProtocol::default())]
    pub protocol: LoadProtocol,

    /// Close every session with a reset (SO_LINGER 0), as `bench mass-death` asks: its
    /// devices die with their link, where a FIN would only leave orphan sockets.
    #[arg(long)]
    pub abort_on_close: bool,
}

/// `hangup bench takeover`.
#[derive(Debug, Args)]
pub struct BenchTakeoverArgs {
    /// Devices that reconnect, in total.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub devices: usize,

    /// Devices per wave: each wave holds this many old sessions plus as many new
    /// connections (two descriptors a device, under the 20 000 per-process limit).
    #[arg(long, value_name = "N", default_value_t = 5_000)]
    pub wave: usize,

    /// Reconnects in flight at once during the storm (more in flight: a faster storm,
    /// and each reconnect waits behind the others).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub concurrency: usize,

    /// The server's `--presence-durability` (`acked`: each WELCOME waits for its commit).
    #[arg(long, value_name = "batched|acked", default_value_t = PresenceDurability::default())]
    pub presence_durability: PresenceDurability,
    /// Cluster nodes to run (`serve --cluster`): each device opens its session on one
    /// node and reconnects to the next, so every takeover is a cross-node eviction.
    /// With more than one, a `redis-server` of the bench's own is started unless
    /// `--redis` names one.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nodes: usize,

    /// With `--nodes`: use this Redis (`redis://HOST:PORT`) instead of starting one. Its
    /// `hangup:` keys are written to.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `hangup bench cancel`.
#[derive(Debug, Args)]
pub struct BenchCancelArgs {
    /// Idle connections held open against the server during the measurement.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub idle: usize,

    /// Hangups measured per mode.
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    pub iterations: usize,

    /// Which hangups to measure.
    #[arg(long, value_name = "fin|rst|both", default_value_t = HangupMode::default())]
    pub mode: HangupMode,

    /// Server policy for FIN during a job (passed to the server under test).
    #[arg(long, value_name = "probe|cancel|finish", default_value_t = HalfClosePolicy::default())]
    pub on_half_close: HalfClosePolicy,

    /// Time this reference server too, in the same run by the same client, trials
    /// interleaved, and print the ratios hangup/peer: plain `axum` or `hyper` (the
    /// servers of `bench http`, which stop their work by the drop-guard idiom), or their
    /// hangup variants. It gets as many idle connections as `hangup serve`.
    #[arg(long, value_name = "axum|hyper")]
    pub peer: Option<HttpServerKind>,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `hangup token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The device id.
    pub device: String,

    /// The server's secret file (as given to `hangup serve --auth-secret`).
    #[arg(long, value_name = "FILE")]
    pub auth_secret: PathBuf,
}

/// `hangup inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Only sockets whose local or peer port is P.
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,

    /// Only sockets owned by this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only sockets in this TCP state (e.g. established, close-wait, listen).
    #[arg(long, value_name = "S")]
    pub state: Option<String>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Refresh at this interval until interrupted (`2s`, `500ms`; a bare number is seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub watch: Option<Duration>,

    /// Flag CLOSE_WAIT sockets older than this as `close-wait-leak`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub close_wait_after: Duration,

    /// Flag ESTABLISHED sockets silent for longer than this, with keepalive off, as
    /// `half-open-suspect`.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub silent_after: Duration,
}

/// `hangup lab`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    /// Internal helpers the lab runs inside its namespaces.
    #[command(subcommand)]
    pub command: Option<LabCommand>,

    /// The `full` set-up only, for CI (about a minute with D = 2 s).
    #[arg(long)]
    pub quick: bool,

    /// Run only this scenario (repeatable): client-exit, client-exit-unread,
    /// client-half-close, client-crash-idle, client-crash-sending, client-crash-uploading,
    /// client-cable-flap, client-reboot, client-reconnect, client-unreachable,
    /// client-unreachable-sending, client-stalled, server-exit, server-crash, server-unreachable, server-reboot,
    /// server-shutdown.
    #[arg(long, value_name = "NAME", value_parser = parse_scenario)]
    pub scenario: Vec<hangup_lab::Scenario>,

    /// Run only this set-up (repeatable): os-defaults, keepalive-os, keepalive-tuned,
    /// keepalive+user-timeout, full.
    #[arg(long, value_name = "NAME", value_parser = parse_setup, conflicts_with = "quick")]
    pub setup: Vec<hangup_lab::Setup>,

    /// The liveness budget D given to servers and clients.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub dead_after: Duration,

    /// How long a cell waits for a detection before it reports "not detected"
    /// [default: 3·D + 5 s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub cap: Option<Duration>,

    /// Divide the namespaces' own TCP timers by N (tcp_keepalive_time and _intvl; the
    /// counts tcp_keepalive_probes and tcp_retries2 cannot be divided: retries2 is lowered
    /// to the count whose timeout is nearest 924.6 s / N). The os-defaults and
    /// keepalive-os columns then show the kernel's own verdicts, scaled; the default cap
    /// grows to fit them. N = 75 divides keepalive exactly (96 s, 1 s).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub time_scale: Option<u32>,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write a chart (detection time per scenario and set-up, log scale) as SVG.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Remove what a killed lab run left behind (namespaces `hlab-*`, their processes,
    /// temporary directories) and exit. Runs still alive are left alone.
    #[arg(long, conflicts_with_all = ["quick", "scenario", "setup", "json", "svg"])]
    pub cleanup: bool,

    /// Run the server-side scenarios against this TCP server instead of `hangup serve`:
    /// `sh -c 'exec COMMAND'` in the server namespace (it must stay in the foreground;
    /// HANGUP_LAB_SERVER_IP and HANGUP_LAB_PORT are in its environment). Detection is
    /// read from sock_diag: the moment its socket leaves ESTABLISHED/CLOSE_WAIT.
    #[arg(long, value_name = "COMMAND", requires = "port", conflicts_with_all = ["setup", "quick"])]
    pub target: Option<String>,

    /// The port the --target server listens on.
    #[arg(long, value_name = "PORT", requires = "target")]
    pub port: Option<u16>,

    /// What the --target peer sends first (an HTTP request, an MQTT CONNECT, …).
    #[arg(long, value_name = "FILE", requires = "target")]
    pub payload: Option<PathBuf>,

    /// Instead of --payload in client-crash-sending and client-stalled: a request whose
    /// answer streams at least 1 MiB (e.g. a GET of a large file).
    #[arg(long, value_name = "FILE", requires = "target")]
    pub payload_streaming: Option<PathBuf>,

    /// Instead of --payload in client-crash-uploading: the head of a large request whose
    /// body the peer then streams as filler bytes (e.g. a POST with a large Content-Length).
    #[arg(long, value_name = "FILE", requires = "target")]
    pub payload_upload: Option<PathBuf>,

    /// Fail on purpose once the first cell's processes run (tests the cleanup).
    #[arg(long, hide = true)]
    pub fail_after_start: bool,
}

/// `hangup lab` subcommands (internal).
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// A raw-socket peer for the lab's scenarios (runs inside a lab namespace).
    #[command(hide = true)]
    Peer(LabPeerArgs),
    /// Reports a --target server's connections from sock_diag as JSON events (runs
    /// inside a lab namespace).
    #[command(hide = true)]
    Sockwatch(LabSockwatchArgs),
}

/// `hangup lab sockwatch`.
#[derive(Debug, Args)]
pub struct LabSockwatchArgs {
    /// The server's port.
    #[arg(long, value_name = "PORT")]
    pub port: u16,
}

/// `hangup lab peer`.
#[derive(Debug, Args)]
pub struct LabPeerArgs {
    /// The server to connect to.
    #[arg(long, value_name = "ADDR")]
    pub connect: SocketAddr,

    /// `unread`: send PING and an endless JOB, never read; `large-replies`: rounds of
    /// 8192 pipelined STATUS, each reply read in full; `flood`: pipeline STATUS without
    /// end while reading as fast as possible; `upload`: stream comment lines without end;
    /// `raw-read`, `raw-unread`, `raw-half-close`, `raw-upload`: any protocol (--target),
    /// after the payload.
    #[arg(long, value_name = "MODE", value_parser = parse_peer_mode)]
    pub mode: hangup_lab::PeerMode,

    /// Open a session for this device first (HELLO, then WELCOME).
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,

    /// The heartbeat to propose with --device, in seconds.
    #[arg(long, value_name = "SECS", requires = "device")]
    pub heartbeat: Option<u64>,

    /// The raw modes' first bytes: this file's content.
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
}

/// `hangup presence`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when sessions were listed, or none are recorded at all; \
1 when --device selects no session (the device was never seen, or with --online: it is not \
online now); 2 on errors, such as a data directory without a presence database."
)]
pub struct PresenceArgs {
    /// Only this device's sessions.
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,

    /// Only sessions that are online now: not ended, and their server still running.
    #[arg(long)]
    pub online: bool,

    /// Print a JSON array of sessions (times in RFC 3339 with milliseconds) instead of a
    /// table.
    #[arg(long)]
    pub json: bool,

    /// The data directory the server records sessions in (`hangup serve --data-dir`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Show at most N sessions, the newest.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Read the whole cluster's view from this Redis (`hangup serve --cluster URL`)
    /// instead of the local data directory: where each device is online and since when,
    /// and its last sessions (up to 20, kept 7 days) with their node and cause.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
}

/// Event log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, each with `ts_ns` (Unix time in nanoseconds).
    Json,
}

/// The admin endpoint's address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAddr {
    /// No admin endpoint.
    Off,
    /// Listen here.
    At(SocketAddr),
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::At(addr) => addr.fmt(f),
        }
    }
}

/// Parses `off` or a socket address.
pub fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    match s {
        "off" => Ok(AdminAddr::Off),
        addr => addr
            .parse()
            .map(AdminAddr::At)
            .map_err(|_| format!("expected ADDRESS:PORT or `off`, got `{addr}`")),
    }
}

/// Parses `auto`, `off` or a non-zero duration, for TCP_USER_TIMEOUT.
pub fn parse_user_timeout(s: &str) -> Result<AutoDuration, String> {
    AutoDuration::parse_user_timeout(s).map_err(|e| e.to_string())
}

/// `on` or `off`, as [`parse_on_off`] reads it.
pub const fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// Parses `on` or `off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected `on` or `off`, got `{other}`")),
    }
}

/// Parses a lab scenario name.
pub fn parse_scenario(s: &str) -> Result<hangup_lab::Scenario, String> {
    s.parse().map_err(|e: hangup_lab::LabError| e.to_string())
}

/// Parses a lab set-up name.
pub fn parse_setup(s: &str) -> Result<hangup_lab::Setup, String> {
    s.parse().map_err(|e: hangup_lab::LabError| e.to_string())
}

/// Parses a lab peer mode.
pub fn parse_peer_mode(s: &str) -> Result<hangup_lab::PeerMode, String> {
    s.parse().map_err(|e: hangup_lab::LabError| e.to_string())
}

/// Parses a duration of whole seconds (`5s`, `2m`, or a bare `5`) into its seconds: the
/// protocol's heartbeat unit.
pub fn parse_whole_seconds(s: &str) -> Result<u64, String> {
    let duration = parse_duration(s)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "expected whole seconds, e.g. `5s` or `1m`, got `{s}`"
        ));
    }
    Ok(duration.as_secs())
}

/// Parses a duration such as `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    hangup_core::parse_duration(s).map_err(|e| e.to_string())
}
