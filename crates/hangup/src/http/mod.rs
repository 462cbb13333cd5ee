//! Hangup for HTTP servers: a per-request [`CancellationToken`] that fires the moment
//! the client's connection ends, also while hyper is not reading (a pipelined second
//! request, an unread body), and when the handler is dropped.
//!
//! ```text
//!  accept ──▶ WatchedStream { TcpStream, Connection } ──▶ hyper / axum own and read it
//!                              │
//!                              └─ Connection::request() ─▶ RequestHangup (per request)
//!                                    │ token: child of the connection's hangup token,
//!                                    │        cancelled when the RequestHangup drops
//!                                    └─ first use starts a PeerWatch on a duplicate of
//!                                       the socket (RDHUP/ERR/HUP only, no data read)
//! ```
//!
//! The watch starts lazily: a connection whose handlers never ask for a token costs a
//! small allocation and nothing else.
//!
//! ## What a FIN means in HTTP/1.1
//!
//! RFC 9112 §9.6 describes closing as the server's staged half-close; it gives a
//! client's half-close no meaning of its own, and the clients in use (browsers, curl,
//! Python's `http.client`, Go's and Rust's clients) close both directions when they
//! give up on a response. hyper and axum therefore treat a FIN as the end of the
//! connection, and so does [`OnFin::Cancel`], the default. A client that half-closes on
//! purpose and still reads (`curl` never does; `nc -N` does) is served by
//! [`OnFin::Finish`]: then only an RST or a kernel error (keepalive, user timeout)
//! cancels, and the client's EOF is held back from hyper until the request read before
//! it is answered (hyper, as `axum::serve` runs it, would otherwise close the
//! connection the moment it reads EOF). hangup's line-protocol probe is not offered here: the only bytes a server
//! may send before its response are a `1xx` interim response, which an HTTP/1.0 client
//! cannot parse and which would have to be written past hyper, which owns the write
//! side.

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "hyper")]
pub mod hyper;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use hangup_core::{classify_ended_state, Cause, LivenessPolicy};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::watch::{HalfClose, PeerWatch};

/// What a FIN from the client means while a request is being handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFin {
    /// The client is gone: cancel (what hyper and axum do).
    #[default]
    Cancel,
    /// The client may have half-closed and still read: only RST or a kernel error
    /// cancels.
    Finish,
}

impl OnFin {
    fn half_close(self) -> HalfClose {
        match self {
            OnFin::Cancel => HalfClose::Cancel,
            OnFin::Finish => HalfClose::Finish,
        }
    }
}

/// An accepted connection with its hangup state: what hyper or axum serve.
///
/// Reads and writes go straight to the `TcpStream`; the wrapper adds nothing to them.
/// Dropping it stops its watch.
#[derive(Debug)]
pub struct WatchedStream {
    stream: TcpStream,
    connection: Connection,
    half_close: HalfCloseReads,
}

/// With [`OnFin::Finish`]: hyper (as `axum::serve` runs it) closes a connection the
/// moment it reads EOF, answer or not. So a half-closed client's EOF is held back from
/// hyper while a request read before it is unanswered, and handed over once the answer
/// is flushed: hyper then closes gracefully, after the response.
#[derive(Debug, Default)]
struct HalfCloseReads {
    /// Request bytes were read since the last response was flushed.
    request_in_flight: bool,
    /// Bytes were written since the last flush.
    wrote: bool,
    /// The client's EOF was read and is being held back.
    eof_held: bool,
    reader: Option<std::task::Waker>,
}

impl WatchedStream {
    /// Wraps an accepted stream; applies `policy` (keepalive, user timeout) first.
    pub fn new(stream: TcpStream, policy: &LivenessPolicy, on_fin: OnFin) -> io::Result<Self> {
        crate::apply_policy(&stream, policy)?;
        let peer = stream.peer_addr()?;
        let connection = Connection {
            inner: Arc::new(Inner {
                peer,
                on_fin,
                socket: Mutex::new(Some(stream.as_raw_fd())),
                watching: OnceLock::new(),
                hangup: CancellationToken::new(),
                stop: CancellationToken::new(),
                cause: OnceLock::new(),
                sent_fin: AtomicBool::new(false),
            }),
        };
        Ok(Self {
            stream,
            connection,
            half_close: HalfCloseReads::default(),
        })
    }

    /// The connection's hangup state, to hand to request handlers.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for WatchedStream {
    fn drop(&mut self) {
        let inner = &self.connection.inner;
        // Under the lock, so that no watch can start on a descriptor about to close.
        *inner.socket.lock().unwrap_or_else(|e| e.into_inner()) = None;
        inner.stop.cancel();
        // hyper let go of the connection (it read the client's EOF or error, or it is
        // shutting down): nothing a handler still computes can be delivered. If hyper
        // noticed the hangup before the watch did, the socket's state still says which.
        if inner.watching.get().is_some() && inner.cause.get().is_none() {
            let cause = crate::tcp_info(&self.stream)
                .ok()
                .and_then(|info| classify_ended_state(info.state, inner.sent_fin()));
            let _ = inner.cause.set(cause.unwrap_or(Cause::Local));
        }
        let _ = inner.cause.set(Cause::Local);
        inner.hangup.cancel();
    }
}

impl AsFd for WatchedStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.connection.inner.on_fin != OnFin::Finish {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let held = &mut this.half_close;
        if !held.eof_held {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                held.request_in_flight = true;
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            held.eof_held = true;
        }
        if held.request_in_flight {
            held.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(())) // EOF, now that every request read was answered
    }
}

impl WatchedStream {
    fn wrote(&mut self, n: usize) {
        if n > 0 {
            self.half_close.wrote = true;
        }
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, buf))?;
        self.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = std::task::ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, bufs))?;
        self.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        let held = &mut self.half_close;
        if std::mem::take(&mut held.wrote) {
            held.request_in_flight = false;
            if let Some(reader) = held.reader.take() {
                reader.wake();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.connection
            .inner
            .sent_fin
            .store(true, Ordering::Relaxed);
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One connection's hangup state; cheap to clone, shared by its requests.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    peer: SocketAddr,
    on_fin: OnFin,
    /// The stream's descriptor while the stream is open; `None` once it is dropped.
    socket: Mutex<Option<RawFd>>,
    watching: OnceLock<()>,
    /// Fires when the client hangs up or the server closes the connection.
    hangup: CancellationToken,
    /// Fires when the stream is dropped: ends the watch task.
    stop: CancellationToken,
    cause: OnceLock<Cause>,
    /// hyper shut the write side down (our FIN is out).
    sent_fin: AtomicBool,
}

impl Inner {
    fn sent_fin(&self) -> bool {
        self.sent_fin.load(Ordering::Relaxed)
    }
}

impl Connection {
    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The state for one request: a token that fires when the client hangs up and when
    /// the returned value is dropped (the handler finished or was dropped).
    pub fn request(&self) -> RequestHangup {
        RequestHangup {
            token: self.hangup_token().child_token(),
            connection: self.clone(),
        }
    }

    /// The connection's token: fires when the client hangs up or the connection is
    /// closed. Starts the watch on first use.
    pub fn hangup_token(&self) -> CancellationToken {
        self.inner.watching.get_or_init(|| self.start_watch());
        self.inner.hangup.clone()
    }

    /// Why the connection ended, once it has.
    pub fn cause(&self) -> Option<Cause> {
        self.inner.cause.get().copied()
    }

    fn start_watch(&self) {
        let duplicate = {
            let socket = self.inner.socket.lock().unwrap_or_else(|e| e.into_inner());
            let Some(fd) = *socket else { return };
            // SAFETY: `fd` is the stream's descriptor, open while `socket` holds it
            // (the stream clears it under this lock before closing).
            unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
        };
        let inner = self.inner.clone();
        match duplicate {
            Ok(fd) => {
                tokio::spawn(watch_connection(fd, inner));
            }
            Err(err) => {
                // Out of descriptors: the client may be gone and we cannot tell, so
                // the work is not worth doing either.
                tracing::warn!(target: crate::events::TARGET, error = %err, "hangup watch not started");
            }
        }
    }
}

/// Watches a duplicate of the connection's descriptor (so that a descriptor number
/// reused after the stream closes is never touched) until the hangup or the stream's
/// drop.
async fn watch_connection(fd: OwnedFd, inner: Arc<Inner>) {
    let mut watch = match PeerWatch::new(&fd) {
        Ok(watch) => watch,
        Err(err) => {
            tracing::warn!(target: crate::events::TARGET, error = %err, "hangup watch not started");
            return;
        }
    };
    let half_close = inner.on_fin.half_close();
    tokio::select! {
        gone = watch.hangup(&half_close) => {
            let mut cause = gone.unwrap_or(Cause::PeerReset);
            // hyper reads the socket too: when its read took the RST's errno first, the
            // watch saw only the end of the stream. The state still tells (a socket
            // that never sent a FIN reaches CLOSE only by RST).
            if cause == Cause::PeerClosed {
                let ended = crate::tcp_info(&fd)
                    .ok()
                    .and_then(|info| classify_ended_state(info.state, inner.sent_fin()));
                cause = ended.unwrap_or(cause);
            }
            let _ = inner.cause.set(cause);
            inner.hangup.cancel();
        }
        () = inner.stop.cancelled() => {}
    }
}

/// One request's hangup state: its token fires when the client hangs up, the
/// connection closes, or this value is dropped (the handler returned or was dropped).
#[derive(Debug)]
pub struct RequestHangup {
    token: CancellationToken,
    connection: Connection,
}

impl RequestHangup {
    /// A clone of the token, to hand to work (`spawn_blocking` loops check
    /// `is_cancelled()`).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Resolves when the token fires.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Why the client's connection ended ([`Cause::PeerClosed`] for FIN,
    /// [`Cause::PeerReset`] for RST, [`Cause::Local`] when the server closed it), once
    /// it has.
    pub fn cause(&self) -> Option<Cause> {
        self.connection.cause()
    }

    /// The connection this request came on.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Runs `work` until it finishes or the client hangs up; on hangup the work is
    /// dropped and the cause returned.
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, Cause> {
        tokio::select! {
            biased;
            output = work => Ok(output),
            () = self.token.cancelled() => Err(self.cause().unwrap_or(Cause::Local)),
        }
    }
}

impl Drop for RequestHangup {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
