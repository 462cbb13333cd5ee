//! The I/O threads. Each owns an epoll instance (through mio), a slab of the
//! connections it was handed and one timer wheel of their deadlines, and drives them itself:
//! no task, waker, timer entry or readiness cell per connection, so a connection costs
//! its state in the slab and nothing beside it.
//!
//! ```text
//!  listener ─────────────────────────┐     epoll (edge-triggered, one per thread)
//!  kicks, job ends, commits ─▶ inbox │  ┌──────────────┘
//!                               ▼    ▼  ▼
//!                      slab of connections (driver.rs) ◀── timer wheel (wheel.rs)
//! ```
//!
//! Every thread accepts from the listening socket itself: a new connection is served
//! by the thread that woke for it, without a hand-over (a second wake-up, behind
//! whatever that thread was doing).
//!
//! Other threads reach a connection through its [`Mailbox`]: a message into its
//! thread's inbox, with the connection's id, so that one meant for a connection that
//! ended never reaches the next one in its slot.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hangup_core::{JobId, SessionId};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tokio::sync::oneshot;

use crate::driver::{Conn, Drive, Slot};
use crate::live::{lock, ConnectionSnapshot, SessionSnapshot};
use crate::sched::IoThreads;
use crate::wheel::{Tick, Wheel};
use crate::workers::Finished;
use crate::Shared;

/// The inbox's token; connections use their slab index.
const WAKER: Token = Token(usize::MAX);
/// The listening socket's token.
const LISTENER: Token = Token(usize::MAX - 1);
/// Expired deadlines handled per pass of the loop, before readiness again.
const DUE_PER_TURN: usize = 64;
/// Connections accepted per turn before the others get theirs.
const ACCEPTS_PER_TURN: usize = 64;
/// How long accepting pauses when the process is out of descriptors or memory (unless
/// one of this thread's connections ends first).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Readiness events taken per `epoll_wait`.
const EVENTS_PER_POLL: usize = 1024;
/// Bytes read from a socket per read call.
const READ_CHUNK: usize = 16 * 1024;

/// Where a connection lives: its slot in its thread's slab, and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub index: usize,
    pub id: u64,
}

/// What another thread tells one connection.
#[derive(Debug)]
pub(crate) enum ConnMessage {
    /// Its session was taken over by a `HELLO` handled at this instant.
    Kicked(Instant),
    /// Its job ended on the worker pool.
    JobFinished(JobId, Finished),
    /// The durable start of its session was committed (true) or not in time.
    Committed(SessionId, bool),
    /// Panics in the connection's handler (tests prove a panic leaks nothing).
    #[cfg(test)]
    Panic,
    /// Holds the connection's whole thread for this long, as an overloaded machine
    /// would (tests prove its lag is not taken for the peer's silence).
    #[cfg(test)]
    Stall(Duration),
}

enum Message {
    /// Shutdown began: `GOAWAY` to every connection, then the drain stages.
    Drain,
    Conn(Key, ConnMessage),
    /// The admin endpoint asks for the thread's connections.
    Connections(oneshot::Sender<Vec<ConnectionSnapshot>>),
    /// The admin endpoint asks for the thread's sessions.
    Sessions(oneshot::Sender<Vec<SessionSnapshot>>),
}

/// A thread's inbox: messages, and the eventfd that wakes its `epoll_wait`.
struct Inbox {
    /// `None` once the thread ended: a message then is dropped at once (and a question's
    /// reply channel with it, so nobody waits for an answer that cannot come).
    queue: Mutex<Option<Vec<Message>>>,
    waker: Waker,
}

impl Inbox {
    /// Queues a message; wakes the thread only if the queue was empty (it takes the
    /// whole queue when it wakes, so one wake-up serves a burst).
    fn send(&self, message: Message) {
        let was_empty = {
            let mut queue = lock(&self.queue);
            let Some(queue) = queue.as_mut() else {
                return;
            };
            queue.push(message);
            queue.len() == 1
        };
        if was_empty {
            if let Err(err) = self.waker.wake() {
                tracing::error!(error = %err, "could not wake an I/O thread");
            }
        }
    }
}

/// How any thread reaches one connection.
#[derive(Clone)]
pub(crate) struct Mailbox {
    inbox: Arc<Inbox>,
    key: Key,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("key", &self.key).finish()
    }
}

impl Mailbox {
    /// Delivers `message` to the connection, if it is still open when its thread
    /// looks.
    pub(crate) fn send(&self, message: ConnMessage) {
        self.inbox.send(Message::Conn(self.key, message));
    }
}

/// What a connection's handlers get from their thread.
pub(crate) struct Context {
    pub shared: Arc<Shared>,
    /// For work the connection starts elsewhere (jobs, durable commits).
    pub runtime: tokio::runtime::Handle,
    inbox: Arc<Inbox>,
    /// The read buffer of every connection on this thread, zeroed once.
    pub buffer: Box<[u8]>,
}

impl Context {
    /// The mailbox of the connection at `key`.
    pub(crate) fn mailbox(&self, key: Key) -> Mailbox {
        Mailbox {
            inbox: self.inbox.clone(),
            key,
        }
    }
}

/// The I/O threads: made with the server, started when it runs.
pub(crate) struct Reactors {
    inboxes: Vec<Arc<Inbox>>,
    /// Where each thread is, for the job threads to give way to it.
    awake: Arc<IoThreads>,
    /// The threads' epoll instances until they start.
    polls: Mutex<Vec<Poll>>,
    /// Each closes when its thread ends (also by a panic).
    ended: Mutex<Vec<oneshot::Receiver<()>>>,
}

impl Reactors {
    /// One epoll instance with its inbox per thread of `awake`; no thread yet.
    pub(crate) fn new(awake: Arc<IoThreads>) -> io::Result<Self> {
        let threads = awake.len();
        let mut inboxes = Vec::with_capacity(threads);
        let mut polls = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            inboxes.push(Arc::new(Inbox {
                queue: Mutex::new(Some(Vec::new())),
                waker,
            }));
            polls.push(poll);
        }
        Ok(Self {
            inboxes,
            awake,
            polls: Mutex::new(polls),
            ended: Mutex::new(Vec::new()),
        })
    }

    /// Starts the threads, accepting from `listener` (non-blocking) and serving
    /// `shared`'s connections (once; from inside the runtime, which their connections'
    /// jobs run on).
    pub(crate) fn start(
        &self,
        shared: &Arc<Shared>,
        listener: &Arc<std::net::TcpListener>,
    ) -> io::Result<()> {
        let runtime = tokio::runtime::Handle::current();
        let polls = std::mem::take(&mut *lock(&self.polls));
        for (n, (poll, inbox)) in polls.into_iter().zip(&self.inboxes).enumerate() {
            let (ended_tx, ended_rx) = oneshot::channel();
            poll.registry().register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )?;
            let reactor = Reactor {
                listening: Some(Listening {
                    listener: listener.clone(),
                    ready: true,
                    paused_until: None,
                }),
                poll,
                conns: Slab::new(),
                wheel: Wheel::new(Instant::now()),
                deadlines: Vec::new(),
                came_up: Vec::new(),
                due: VecDeque::new(),
                runnable: VecDeque::new(),
                ctx: Context {
                    shared: shared.clone(),
                    runtime: runtime.clone(),
                    inbox: inbox.clone(),
                    buffer: vec![0; READ_CHUNK].into_boxed_slice(),
                },
                drain: None,
                awake: (self.awake.clone(), n),
            };
            std::thread::Builder::new()
                .name(format!("hangup-io-{n}"))
                .spawn(move || {
                    let _ended = ended_tx;
                    let runtime = reactor.ctx.runtime.clone();
                    let _entered = runtime.enter();
                    let inbox = reactor.ctx.inbox.clone();
                    let _batched = crate::log::batch_this_thread();
                    reactor.run();
                    *lock(&inbox.queue) = None;
                })?;
            lock(&self.ended).push(ended_rx);
        }
        Ok(())
    }

    /// Starts every thread's drain; they end once their last connection has closed.
    pub(crate) fn drain(&self) {
        for inbox in &self.inboxes {
            inbox.send(Message::Drain);
        }
    }

    /// Waits for every thread to end.
    pub(crate) async fn ended(&self) {
        let ended = std::mem::take(&mut *lock(&self.ended));
        for ended in ended {
            let _ = ended.await;
        }
    }

    /// Every connection's row, by id.
    pub(crate) async fn connections(&self) -> Vec<ConnectionSnapshot> {
        let mut rows: Vec<_> = self.ask(Message::Connections).await;
        rows.sort_by_key(|row| row.id);
        rows
    }

    /// Every session's row, by device.
    pub(crate) async fn sessions(&self) -> Vec<SessionSnapshot> {
        let mut rows: Vec<_> = self.ask(Message::Sessions).await;
        rows.sort_by(|a, b| a.device.cmp(&b.device));
        rows
    }

    /// Asks every thread, and gathers the answers (a thread that ended has none).
    async fn ask<T>(&self, question: fn(oneshot::Sender<Vec<T>>) -> Message) -> Vec<T> {
        let answers: Vec<_> = self
            .inboxes
            .iter()
            .map(|inbox| {
                let (tx, rx) = oneshot::channel();
                inbox.send(question(tx));
                rx
            })
            .collect();
        let mut rows = Vec::new();
        for answer in answers {
            rows.extend(answer.await.unwrap_or_default());
        }
        rows
    }
}

/// A [`Deadline`] tick when there is none: later than any tick.
const NOT_FILED: Tick = Tick::MAX;

/// A connection in its thread's slab.
struct Entry {
    conn: Conn,
    /// In the run queue already.
    queued: bool,
}

/// A slab index's deadline as the wheel sees it, in a dense array beside the slab: the
/// wheel turns once per heartbeat per connection, and its turn then reads 16 bytes
/// here instead of a connection entry gone cold since its last input.
/// (Ticks, not `Option`s: those would be 8 bytes more each.)
#[derive(Debug, Clone, Copy)]
struct Deadline {
    /// The earliest tick filed in the wheel for this index, or [`NOT_FILED`]. A later
    /// one the connection moved to is filed when this one comes up: one entry per
    /// connection, not per change.
    filed: Tick,
    /// The tick of the connection's deadline as of its last turn, or [`NOT_FILED`].
    due: Tick,
}

impl Deadline {
    const NONE: Self = Self {
        filed: NOT_FILED,
        due: NOT_FILED,
    };
}

/// Where a thread is in the server's shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainStage {
    /// `GOAWAY` sent; jobs in flight finish within the drain timeout.
    Jobs,
    /// Closing gracefully; reset once `SHUTDOWN_GRACE` is over.
    Close,
    /// Everything was reset: waiting for the last connections to go.
    Over,
}

/// The listening socket, as one thread accepts from it.
struct Listening {
    listener: Arc<std::net::TcpListener>,
    /// Connections may be waiting (edge-triggered: until `accept` says `EAGAIN`).
    ready: bool,
    /// Out of descriptors or memory: no `accept` before this.
    paused_until: Option<Instant>,
}

struct Reactor {
    poll: Poll,
    /// Until shutdown began.
    listening: Option<Listening>,
    conns: Slab<Entry>,
    /// Every connection's next deadline.
    /// Keyed by slab index alone (an entry is 8 bytes): a connection that took over the
    /// index of one that filed is only woken if it filed the same tick, when it is due
    /// anyway.
    wheel: Wheel<u32>,
    /// Each slab index's deadline (the wheel's side of its connection).
    deadlines: Vec<Deadline>,
    /// The indices whose filed tick came up in this pass (kept for its capacity).
    came_up: Vec<u32>,
    /// Connections whose deadline came up and that have not had their turn yet: at
    /// most [`DUE_PER_TURN`] get it per pass, so that a storm of expiries (100 000
    /// silent deaths) does not hold up new connections and input behind it.
    due: VecDeque<Key>,
    /// Connections with work left after their fair share (more input to read, or input
    /// held back that can go on).
    runnable: VecDeque<Key>,
    ctx: Context,
    /// Set once shutdown began: the stage and when it ends.
    drain: Option<(DrainStage, Instant)>,
    /// The server's I/O threads and this one's number among them.
    awake: (Arc<IoThreads>, usize),
}

impl Reactor {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let (awake, n) = self.awake.clone();
        let mut wakes = 0u32;
        loop {
            let timeout = self.poll_timeout(Instant::now());
            // This pass's log lines, in one write, before the thread sleeps.
            crate::log::flush_this_thread();
            awake.idle(n);
            let polled = self.poll.poll(&mut events, timeout);
            wakes = wakes.wrapping_add(1);
            awake.awake(n, wakes);
            if let Err(err) = polled {
                if err.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %err, "epoll_wait failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            // The batch's connections and deadlines, read together up front: their
            // cache misses overlap here instead of stalling each connection's turn in
            // order (each is touched once per heartbeat, and has gone cold since).
            let warm = events.iter().fold(0, |warm, event| {
                let index = event.token().0;
                let filed = self.deadlines.get(index).map_or(0, |d| d.filed);
                warm ^ filed ^ u64::from(self.conns.contains(index))
            });
            std::hint::black_box(warm);
            let mut inbox = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => inbox = true,
                    LISTENER => {
                        if let Some(listening) = &mut self.listening {
                            listening.ready = true;
                        }
                    }
                    Token(index) => {
                        if let Some(entry) = self.conns.get_mut(index) {
                            entry.conn.on_readiness(event);
                            self.drive(index);
                        }
                    }
                }
            }
            if inbox {
                self.take_inbox();
            }
            self.accept_some(Instant::now());
            self.run_queue();
            self.fire_deadlines(Instant::now());
            if self.drain.is_some() && self.conns.is_empty() {
                return;
            }
        }
    }

    /// How long `epoll_wait` may sleep: not at all with work queued, else until the
    /// earliest deadline.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.runnable.is_empty() || !self.due.is_empty() {
            return Some(Duration::ZERO);
        }
        let paused = match &self.listening {
            Some(Listening {
                ready: true,
                paused_until: None,
                ..
            }) => return Some(Duration::ZERO),
            Some(listening) => listening.paused_until,
            None => None,
        };
        let next = self.wheel.next_expiry();
        let drain = self
            .drain
            .filter(|(stage, _)| *stage != DrainStage::Over)
            .map(|(_, at)| at);
        let earliest = [next, drain, paused].into_iter().flatten().min();
        earliest.map(|at| at.saturating_duration_since(now))
    }

    fn take_inbox(&mut self) {
        let messages = lock(&self.ctx.inbox.queue)
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for message in messages {
            match message {
                Message::Connections(reply) => {
                    let (now, wall) = (Instant::now(), SystemTime::now());
                    let mut rows: Vec<_> = self
                        .conns
                        .iter()
                        .map(|(_, e)| e.conn.snapshot(now, wall))
                        .collect();
                    // The devices live in the registry: one lock for all of them, taken
                    // after the TCP_INFO reads so that HELLOs elsewhere do not wait.
                    let sessions = lock(&self.ctx.shared.sessions);
                    for (row, (_, e)) in rows.iter_mut().zip(self.conns.iter()) {
                        row.device = e.conn.device(&sessions);
                    }
                    drop(sessions);
                    let _ = reply.send(rows);
                }
                Message::Sessions(reply) => {
                    let (now, wall) = (Instant::now(), SystemTime::now());
                    let sessions = lock(&self.ctx.shared.sessions);
                    let rows = self.conns.iter();
                    let rows =
                        rows.filter_map(|(_, e)| e.conn.session_snapshot(now, wall, &sessions));
                    let rows = rows.collect();
                    drop(sessions);
                    let _ = reply.send(rows);
                }
                Message::Drain => self.start_drain(),
                Message::Conn(key, message) => {
                    if current(&self.conns, key).is_some() {
                        self.handle(key.index, |conn, ctx| conn.on_message(ctx, message));
                    }
                }
            }
        }
    }

    /// Accepts what waits on the listener, up to a fair share.
    fn accept_some(&mut self, now: Instant) {
        let Some(listening) = &mut self.listening else {
            return;
        };
        if listening.paused_until.is_some_and(|until| now < until) || !listening.ready {
            return;
        }
        listening.paused_until = None;
        let listener = listening.listener.clone();
        for _ in 0..ACCEPTS_PER_TURN {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.admit(stream, peer);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(listening) = &mut self.listening {
                        listening.ready = false;
                    }
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if crate::is_resource_exhaustion(&err) => {
                    // Out of descriptors or memory: the pending connection stays in the
                    // backlog. Wait for one of ours to end (or a moment), never spin.
                    hangup::emit!(WARN, "accept_paused", error = %err);
                    if let Some(listening) = &mut self.listening {
                        listening.paused_until = Some(now + ACCEPT_PAUSE);
                    }
                    return;
                }
                // Shut down for shutdown: no more connections.
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    return self.stop_listening();
                }
                // The connection died before we accepted it (ECONNABORTED, …): next.
                Err(err) => tracing::debug!(error = %err, "accept failed"),
            }
        }
    }

    /// Stops accepting (shutdown): the listener is out of this thread's epoll.
    fn stop_listening(&mut self) {
        if let Some(listening) = self.listening.take() {
            let fd = listening.listener.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
    }

    /// A connection just accepted: served here, or refused with `ERR busy` at the
    /// connection limit.
    fn admit(&mut self, stream: std::net::TcpStream, peer: SocketAddr) {
        let shared = &self.ctx.shared;
        // The gauge counts slots: taken here, given back once the connection's socket
        // is closed (its descriptor is free again).
        let open = shared.metrics.connections_open.get().max(0) as usize;
        let limit = shared.config.max_connections.get();
        if open >= limit {
            shared.metrics.connections_refused.inc();
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                shared
                    .refusals
                    .spawn(crate::refuse_busy(stream, peer, limit));
            }
            return;
        }
        let slot = Slot::take(shared);
        let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
        self.open(stream, peer, id, slot);
    }

    fn open(&mut self, stream: std::net::TcpStream, peer: SocketAddr, id: u64, slot: Slot) {
        let mut stream = mio::net::TcpStream::from_std(stream);
        let vacant = self.conns.vacant_entry();
        let key = Key {
            index: vacant.key(),
            id,
        };
        if let Err(err) = self.poll.registry().register(
            &mut stream,
            Token(key.index),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            // Dropping the stream closes it; the slot comes back.
            tracing::warn!(conn = id, peer = %peer, error = %err, "could not register a connection");
            return;
        }
        let conn = Conn::open(stream, peer, id, key, &self.ctx, slot);
        vacant.insert(Entry {
            conn,
            queued: false,
        });
        if self.deadlines.len() <= key.index {
            self.deadlines.resize(key.index + 1, Deadline::NONE);
        }
        self.deadlines[key.index] = Deadline::NONE;
        // Its first turn at once: input that arrived before the accept is read now,
        // not after this pass's deadlines (during a storm of expiries, 64 of them).
        // Edge-triggered, the readiness its registration reports comes anyway and
        // finds the socket read to `EAGAIN`.
        self.drive(key.index);
    }

    /// Runs `f` on the connection at `index`, then drives it. A panic in either ends
    /// that connection alone: its entry is dropped, and with it the socket and the
    /// slot.
    fn handle(&mut self, index: usize, f: impl FnOnce(&mut Conn, &mut Context)) {
        let Some(entry) = self.conns.get_mut(index) else {
            return;
        };
        let ctx = &mut self.ctx;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            f(&mut entry.conn, ctx);
            entry.conn.drive(ctx)
        }));
        self.after(index, outcome);
    }

    /// Drives the connection at `index` after readiness or from the run queue.
    fn drive(&mut self, index: usize) {
        self.handle(index, |_, _| {});
    }

    fn after(&mut self, index: usize, outcome: std::thread::Result<Drive>) {
        match outcome {
            Ok(Drive::Idle) => self.refile(index),
            Ok(Drive::Busy) => {
                self.refile(index);
                if let Some(entry) = self.conns.get_mut(index) {
                    if !entry.queued {
                        entry.queued = true;
                        self.runnable.push_back(Key {
                            index,
                            id: entry.conn.id(),
                        });
                    }
                }
            }
            Ok(Drive::Ended) => self.remove(index),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                if let Some(entry) = self.conns.get(index) {
                    tracing::error!(conn = entry.conn.id(), panic = %message, "a connection's handler panicked; the connection is dropped");
                }
                self.remove(index);
            }
        }
    }

    /// Takes the connection out of epoll and drops it. Deregistered before it closes:
    /// a descriptor someone duplicated (pidfd_getfd) would keep its epoll entry, and its
    /// events would reach the next connection in the slot.
    fn remove(&mut self, index: usize) {
        if let Some(mut entry) = self.conns.try_remove(index) {
            // What it filed in the wheel is stale now.
            self.deadlines[index] = Deadline::NONE;
            let _ = self.poll.registry().deregister(entry.conn.stream_mut());
            // A descriptor came free: accepting may go on.
            if let Some(listening) = &mut self.listening {
                listening.paused_until = None;
            }
        }
    }

    /// Notes the connection's deadline after its turn, and files it in the wheel if it
    /// is earlier than the one filed.
    fn refile(&mut self, index: usize) {
        let Some(entry) = self.conns.get(index) else {
            return;
        };
        let due = entry
            .conn
            .deadline()
            .map_or(NOT_FILED, |at| self.wheel.tick_of(at));
        self.deadlines[index].due = due;
        self.file_due(index);
    }

    /// Files the connection's due tick if it comes before the one it is filed at: a
    /// deadline that moved later stays filed where it was, and is moved when that slot
    /// comes up.
    fn file_due(&mut self, index: usize) {
        let deadline = &mut self.deadlines[index];
        if deadline.due < deadline.filed {
            deadline.filed = deadline.due;
            // Slab indices fit: a connection holds a descriptor, at most 2^31 of them.
            self.wheel.file(deadline.due, index as u32);
        }
    }

    /// One more share of work for each connection that had more than its share.
    fn run_queue(&mut self) {
        for _ in 0..self.runnable.len() {
            let Some(key) = self.runnable.pop_front() else {
                break;
            };
            if let Some(entry) = current_mut(&mut self.conns, key) {
                entry.queued = false;
                self.drive(key.index);
            }
        }
    }

    fn fire_deadlines(&mut self, now: Instant) {
        let (deadlines, came_up) = (&self.deadlines, &mut self.came_up);
        self.wheel.expire(
            now,
            |index| {
                let filed = deadlines.get(index as usize)?.filed;
                (filed != NOT_FILED).then_some(filed)
            },
            |index| came_up.push(index),
        );
        let mut came_up = std::mem::take(&mut self.came_up);
        for index in came_up.drain(..) {
            let index = index as usize;
            let deadline = &mut self.deadlines[index];
            if self.wheel.has_passed(deadline.due) {
                // Due: its turn comes from the queue (still filed, so that it is not
                // filed again while it waits there).
                if let Some(entry) = self.conns.get(index) {
                    let id = entry.conn.id();
                    self.due.push_back(Key { index, id });
                }
            } else {
                // Moved later since it was filed (a heartbeat came): filed there, the
                // connection untouched; with no deadline any more, filed nowhere.
                deadline.filed = NOT_FILED;
                self.file_due(index);
            }
        }
        self.came_up = came_up;
        for _ in 0..DUE_PER_TURN.min(self.due.len()) {
            let Some(key) = self.due.pop_front() else {
                break;
            };
            // Gone since, or listed twice (filed again in the same slot a turn on).
            let Some(entry) = current(&self.conns, key) else {
                continue;
            };
            let filed = &mut self.deadlines[key.index].filed;
            if *filed == NOT_FILED {
                continue;
            }
            *filed = NOT_FILED;
            if entry.conn.deadline().is_some_and(|at| at <= now) {
                self.handle(key.index, |conn, ctx| conn.on_timeout(ctx, now));
            } else {
                // The deadline moved later since it was filed: file it there.
                self.refile(key.index);
            }
        }
        if let Some((stage, at)) = self.drain {
            if stage != DrainStage::Over && at <= now {
                self.next_drain_stage(stage, now);
            }
        }
    }

    fn start_drain(&mut self) {
        if self.drain.is_some() {
            return;
        }
        self.stop_listening();
        let now = Instant::now();
        self.drain = Some((DrainStage::Jobs, now + self.ctx.shared.config.drain_timeout));
        self.for_each(|conn, _| conn.goaway(now));
    }

    fn next_drain_stage(&mut self, stage: DrainStage, now: Instant) {
        match stage {
            DrainStage::Jobs => {
                // Jobs had their time: close gracefully, within the grace.
                self.drain = Some((DrainStage::Close, now + crate::SHUTDOWN_GRACE));
                self.for_each(|conn, _| conn.local_close(now, true));
            }
            DrainStage::Close => {
                // The peers do not take our last bytes: reset.
                self.drain = Some((DrainStage::Over, now));
                self.for_each(|conn, _| conn.local_close(now, false));
            }
            DrainStage::Over => {}
        }
    }

    fn for_each(&mut self, f: impl Fn(&mut Conn, &mut Context)) {
        let indices: Vec<usize> = self.conns.iter().map(|(index, _)| index).collect();
        for index in indices {
            self.handle(index, &f);
        }
    }
}

/// The connection at `key`, if it is still the one the key was made for (its slot may
/// hold a newer one).
fn current(conns: &Slab<Entry>, key: Key) -> Option<&Entry> {
    conns
        .get(key.index)
        .filter(|entry| entry.conn.id() == key.id)
}

/// [`current`], to change.
fn current_mut(conns: &mut Slab<Entry>, key: Key) -> Option<&mut Entry> {
    conns
        .get_mut(key.index)
        .filter(|entry| entry.conn.id() == key.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's state is its slab entry, so its size is memory per
    /// connection.
    #[test]
    fn a_connection_entry_stays_small() {
        let size = std::mem::size_of::<Entry>();
        eprintln!("connection entry: {size} bytes");
        assert!(
            size <= 640,
            "a connection's slab entry grew to {size} bytes"
        );
    }
}
