//! Know that the peer is gone without reading a byte of its data, and without getting
//! in the way of whoever does read it.
//!
//! ```text
//!  your reader (hyper, tonic, your loop) ── tokio's registration: IN, OUT, RDHUP ──┐
//!                                                                                  ├─ socket
//!  PeerWatch ── private epoll: RDHUP | ERR | HUP only, edge-triggered ─────────────┘
//!                 └─ its descriptor is driven by tokio (AsyncFd): no thread, no loop
//! ```
//!
//! The kernel reports a FIN (`EPOLLRDHUP`) and an RST or a kernel timeout
//! (`EPOLLERR`/`EPOLLHUP`) the moment they happen, even while unread data sits in the
//! receive queue. A [`PeerWatch`] asks for those conditions only, through its own epoll
//! registration: data arriving never wakes it, it consumes nothing, and it never clears
//! the readiness the socket's owner waits on. So it can watch a socket that another part
//! of the program owns and reads.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hangup_core::{classify_readiness, Cause};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_util::sync::CancellationToken;

use crate::sys::{send_nonblocking, HangupEvents, HangupRegistration};

/// How the peer went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGone {
    /// Why: [`Cause::PeerClosed`] for FIN, [`Cause::PeerReset`] for RST, or what the
    /// socket error says ([`Cause::Timeout`] for keepalive or user-timeout expiry, …).
    pub cause: Cause,
}

/// What the watch knows about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// No FIN, no RST, no error.
    Open,
    /// The peer sent FIN: it will send nothing more, but it may still be reading
    /// (`shutdown(SHUT_WR)`, as `nc -N` does) — or it closed its socket entirely.
    /// Only a write can tell: see [`HalfClose::Probe`].
    HalfClosed,
    /// The connection is over: RST, a kernel timeout, unreachable, or closed both ways.
    Gone(Cause),
}

/// What a FIN means for your protocol (SPEC §3 "Hangup during a job").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HalfClose {
    /// Write `bytes` (something the protocol tolerates: `#\n` for hangup's line
    /// protocol, `\r\n` for many line protocols) when the FIN arrives. A peer that
    /// closed its socket answers with RST within a few round trips: that is a hangup,
    /// reported as [`Cause::PeerClosed`]. No RST within `window`: the peer only
    /// half-closed and still reads; the work goes on, and only a later RST or kernel
    /// error counts.
    Probe {
        /// The probe, written once with `MSG_DONTWAIT`.
        bytes: &'static [u8],
        /// How long to wait for the RST that a closed peer answers the probe with.
        window: Duration,
    },
    /// A FIN is a hangup (what axum and hyper do).
    Cancel,
    /// Never a hangup on FIN; only RST or kernel errors count.
    Finish,
}

impl HalfClose {
    /// How long a probe waits for its RST by default: many round trips on any network
    /// a server sits on, short enough to stop work early.
    pub const DEFAULT_PROBE_WINDOW: Duration = Duration::from_millis(200);

    /// [`HalfClose::Probe`] with `bytes` and [`HalfClose::DEFAULT_PROBE_WINDOW`].
    pub const fn probe(bytes: &'static [u8]) -> Self {
        Self::Probe {
            bytes,
            window: Self::DEFAULT_PROBE_WINDOW,
        }
    }
}

/// Watches one socket for FIN, RST and kernel errors, consuming none of its data.
///
/// It borrows the socket (any `AsFd`: `tokio::net::TcpStream`, `std::net::TcpStream`,
/// a `socket2::Socket`) and holds one extra descriptor, its private epoll instance. It
/// may be created while another task reads the socket; neither disturbs the other.
/// Create it inside a tokio runtime.
///
/// The one thing it does take is the socket's pending error (`SO_ERROR`, which the
/// kernel hands out once): the watch that sees it first remembers it and reports it
/// every time; a reader then sees the end of the stream instead of `ECONNRESET`, and
/// a second watch on the same socket sees the connection gone without the errno.
///
/// ```
/// use hangup::{PeerState, PeerWatch};
/// use hangup::Cause;
/// use tokio::io::AsyncWriteExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let mut client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
/// let (server_side, _) = listener.accept().await?;
/// let mut watch = PeerWatch::new(&server_side)?;
///
/// client.write_all(b"GET / HTTP/1.1\r\n\r\n").await?; // data: the watch stays quiet
/// assert_eq!(watch.state()?, PeerState::Open);
/// client.shutdown().await?;                          // FIN
/// assert_eq!(watch.closed().await?, Cause::PeerClosed);
/// assert_eq!(watch.state()?, PeerState::HalfClosed);  // the request is still unread
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PeerWatch<'s> {
    registration: AsyncFd<HangupRegistration>,
    socket: BorrowedFd<'s>,
    fin: bool,
    gone: Option<Cause>,
}

impl<'s> PeerWatch<'s> {
    /// Starts watching `socket`. A FIN or RST that arrived before this is reported too.
    ///
    /// Errors: outside a tokio runtime, on platforms without epoll (`Unsupported`), or
    /// when the descriptor limit is reached.
    pub fn new(socket: &'s impl AsFd) -> io::Result<Self> {
        let socket = socket.as_fd();
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("PeerWatch::new needs a tokio runtime"));
        }
        let registration = HangupRegistration::new(socket)?;
        // SAFETY: the registration owns its epoll descriptor, which stays open and
        // unchanged until the AsyncFd (which owns the registration) is dropped.
        let registration =
            unsafe { AsyncFd::register_with_interest(registration, Interest::READABLE) }?;
        Ok(Self {
            registration,
            socket,
            fin: false,
            gone: None,
        })
    }

    /// The peer's state now, taking in whatever the kernel reported since last asked.
    /// Costs one `epoll_wait` with a zero timeout.
    pub fn state(&mut self) -> io::Result<PeerState> {
        loop {
            match self.registration.get_ref().take() {
                Ok(events) => self.absorb(events),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(self.current()),
                Err(err) => return Err(err),
            }
        }
    }

    /// Resolves on the peer's FIN or RST (or a kernel error), with its cause; at once if
    /// that already happened, every time it is asked. After a FIN ([`Cause::PeerClosed`])
    /// use [`PeerWatch::gone`] to wait for the end of a half-closed peer: awaiting this
    /// again would return at once.
    pub async fn closed(&mut self) -> io::Result<Cause> {
        std::future::poll_fn(|cx| {
            self.poll_until(cx, |watch| {
                watch.gone.or(watch.fin.then_some(Cause::PeerClosed))
            })
        })
        .await
    }

    /// Resolves when the connection is over: RST, a kernel error (keepalive or
    /// user-timeout expiry, unreachable) or closed in both directions. A FIN alone does
    /// not resolve it, so it is what to await after a half-close.
    pub async fn gone(&mut self) -> io::Result<Cause> {
        std::future::poll_fn(|cx| self.poll_until(cx, |watch| watch.gone)).await
    }

    /// Resolves when the peer hung up, as `half_close` defines a FIN: at the FIN
    /// ([`HalfClose::Cancel`]), never for a FIN alone ([`HalfClose::Finish`]), or when a
    /// probe written at the FIN is answered with RST ([`HalfClose::Probe`]).
    ///
    /// The probe is written straight to the socket: use it while the owner is not
    /// writing (it is computing the reply), as the line protocol does.
    pub async fn hangup(&mut self, half_close: &HalfClose) -> io::Result<Cause> {
        match half_close {
            HalfClose::Cancel => self.closed().await,
            HalfClose::Finish => self.gone().await,
            HalfClose::Probe { bytes, window } => {
                let cause = self.closed().await?;
                if cause != Cause::PeerClosed || self.gone.is_some() {
                    return Ok(cause);
                }
                // A peer that closed its socket answers any segment with RST; one that
                // only half-closed reads the probe and ignores it.
                match send_nonblocking(self.socket, bytes) {
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    // Already reset: the answer to an earlier write.
                    Err(_) => return Ok(Cause::PeerClosed),
                }
                match tokio::time::timeout(*window, self.gone()).await {
                    // Answered with RST: it closed. Other errors keep their cause.
                    Ok(Ok(Cause::PeerReset)) => Ok(Cause::PeerClosed),
                    Ok(other) => other,
                    // Still reading: a half-close. Only the end of the connection counts.
                    Err(_elapsed) => self.gone().await,
                }
            }
        }
    }

    /// Runs `work` to completion, cancelling `token` the moment the peer hangs up (as
    /// `half_close` defines it); returns the work's output and the hangup's cause, if
    /// there was one. The work is never dropped: hand `token` to it (a `spawn_blocking`
    /// loop checks `is_cancelled()`), and it returns early on its own.
    ///
    /// Nothing is spawned: the watch runs inside this future, and stops with it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hangup::{CancellationToken, Cause, HalfClose, PeerWatch};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// let (stream, _) = listener.accept().await?;
    ///
    /// let token = CancellationToken::new();
    /// let work = tokio::task::spawn_blocking({
    ///     let token = token.clone();
    ///     move || {
    ///         let mut rounds = 0u64;
    ///         while !token.is_cancelled() {
    ///             rounds += 1; // a slice of real work
    ///             std::thread::sleep(Duration::from_micros(50));
    ///         }
    ///         rounds
    ///     }
    /// });
    /// drop(client); // the client hangs up while the server computes
    /// let mut watch = PeerWatch::new(&stream)?;
    /// let (rounds, cause) = watch.cancel_on_hangup(&token, &HalfClose::probe(b"\n"), work).await;
    /// assert!(rounds.is_ok());
    /// assert_eq!(cause, Some(Cause::PeerClosed));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancel_on_hangup<F: Future>(
        &mut self,
        token: &CancellationToken,
        half_close: &HalfClose,
        work: F,
    ) -> (F::Output, Option<Cause>) {
        let mut work = pin!(work);
        let cause = {
            let hangup = self.hangup(half_close);
            let mut hangup = pin!(hangup);
            tokio::select! {
                biased;
                output = &mut work => return (output, None),
                gone = &mut hangup => gone.unwrap_or(Cause::PeerReset),
                () = token.cancelled() => return (work.await, None),
            }
        };
        token.cancel();
        (work.await, Some(cause))
    }

    fn poll_until(
        &mut self,
        cx: &mut Context<'_>,
        done: impl Fn(&Self) -> Option<Cause>,
    ) -> Poll<io::Result<Cause>> {
        loop {
            if let Some(cause) = done(self) {
                return Poll::Ready(Ok(cause));
            }
            let mut guard = ready!(self.registration.poll_read_ready(cx))?;
            match guard.try_io(|registration| registration.get_ref().take()) {
                Ok(Ok(events)) => self.absorb(events),
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                // Nothing queued: the readiness is cleared, wait for the next edge.
                Err(_would_block) => {}
            }
        }
    }

    fn absorb(&mut self, events: HangupEvents) {
        if events.read_closed {
            self.fin = true;
        }
        if events.error && self.gone.is_none() {
            // SO_ERROR is read once and remembered: the owner's next read then sees
            // the end of the stream rather than the errno.
            let pending = socket2::SockRef::from(&self.socket)
                .take_error()
                .ok()
                .flatten();
            let cause = classify_readiness(true, self.fin, pending.as_ref());
            self.gone = Some(match (cause, pending.is_some()) {
                // EPOLLHUP with nothing pending after a FIN: closed both ways, in order.
                (Some(Cause::PeerReset), false) if self.fin => Cause::PeerClosed,
                (Some(cause), _) => cause,
                (None, _) => Cause::PeerReset,
            });
        }
    }

    fn current(&self) -> PeerState {
        match (self.gone, self.fin) {
            (Some(cause), _) => PeerState::Gone(cause),
            (None, true) => PeerState::HalfClosed,
            (None, false) => PeerState::Open,
        }
    }
}

/// Resolves when the peer of `stream` sends FIN or RST, or the kernel gives up on it.
///
/// A shorthand for [`PeerWatch::new`] and [`PeerWatch::closed`]; keep a [`PeerWatch`]
/// to ask more than once (a FIN is then reported again at once; [`PeerWatch::gone`]
/// waits past it).
pub async fn peer_gone(stream: &impl AsFd) -> io::Result<PeerGone> {
    let cause = PeerWatch::new(stream)?.closed().await?;
    Ok(PeerGone { cause })
}
