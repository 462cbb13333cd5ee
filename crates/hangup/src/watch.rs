//! Await "the peer is gone" without reading a byte of its data.
//!
//! The kernel tells epoll about a FIN (`EPOLLRDHUP`) and an RST (`EPOLLERR`/`EPOLLHUP`)
//! the moment they arrive, even while unread data sits in the receive queue. tokio
//! surfaces both through readiness (`Ready::is_read_closed`, `Ready::is_error`), so the
//! watch needs no private epoll loop and consumes nothing: data the peer pipelined stays
//! queued for whoever reads it later.

use std::io;
use std::sync::Arc;

use hangup_core::Cause;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How the peer went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGone {
    /// Why: [`Cause::PeerClosed`] for FIN, [`Cause::PeerReset`] for RST, or what the
    /// socket error says ([`Cause::Timeout`] for keepalive or user-timeout expiry, …).
    pub cause: Cause,
}

/// Resolves when the peer sends FIN or RST, or the kernel gives up on it.
///
/// Reads no data. FIN means the peer will send nothing more; it may still be reading
/// (a half-close, as `nc -N` does). Where that matters, answer FIN with a write the
/// protocol tolerates and await this again: a peer that closed its socket answers the
/// write with RST ([`Cause::PeerReset`]).
///
/// While data is queued but unread, readiness is cleared without consuming it, so this
/// does not spin. Do not run it while another task reads the same stream: clearing the
/// readiness could make that reader miss a wake-up. It is meant for the time the
/// application is busy elsewhere (computing a reply) and not reading.
pub async fn peer_gone(stream: &TcpStream) -> io::Result<PeerGone> {
    loop {
        let ready = stream.ready(Interest::READABLE | Interest::ERROR).await?;
        if ready.is_error() || ready.is_read_closed() {
            let cause = match stream.take_error()? {
                Some(err) => Cause::from_io_error(&err),
                None if ready.is_error() => Cause::PeerReset,
                None => Cause::PeerClosed,
            };
            return Ok(PeerGone { cause });
        }
        // Plain data: forget this readiness edge (the closure reads nothing) and wait
        // for the next one. The data stays in the socket.
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
    }
}

/// A [`CancellationToken`] that fires when the peer of `stream` goes away.
///
/// Hand the token to the work done for this connection; check it from CPU loops with
/// `is_cancelled()`, or await `cancelled()`. The watch ends when the token fires or is
/// cancelled by anyone else; [`HangupToken::cause`] tells why it fired.
///
/// ```no_run
/// # async fn demo(stream: tokio::net::TcpStream) {
/// use std::sync::Arc;
/// let stream = Arc::new(stream);
/// let hangup = hangup::cancel_on_hangup(stream.clone());
/// let token = hangup.token();
/// let answer = tokio::task::spawn_blocking(move || {
///     let mut x = 0u64;
///     for i in 0..1_000_000_000u64 {
///         if i % 4096 == 0 && token.is_cancelled() {
///             return None; // the client is gone: stop spending CPU on it
///         }
///         x = x.wrapping_mul(31).wrapping_add(i);
///     }
///     Some(x)
/// })
/// .await
/// .unwrap();
/// if answer.is_none() {
///     println!("cancelled: {:?}", hangup.cause());
/// }
/// # }
/// ```
pub fn cancel_on_hangup(stream: Arc<TcpStream>) -> HangupToken {
    let token = CancellationToken::new();
    let stop = CancellationToken::new();
    let cause = Arc::new(std::sync::OnceLock::new());
    let (watch_token, watch_stop, watch_cause) = (token.clone(), stop.clone(), cause.clone());
    tokio::spawn(async move {
        tokio::select! {
            gone = peer_gone(&stream) => {
                let cause = gone.map_or(Cause::PeerReset, |gone| gone.cause);
                let _ = watch_cause.set(cause);
                watch_token.cancel();
            }
            () = watch_token.cancelled() => {}
            () = watch_stop.cancelled() => {}
        }
    });
    HangupToken { token, stop, cause }
}

/// The result of [`cancel_on_hangup`].
#[derive(Debug, Clone)]
pub struct HangupToken {
    token: CancellationToken,
    stop: CancellationToken,
    cause: Arc<std::sync::OnceLock<Cause>>,
}

impl HangupToken {
    /// A clone of the token, to hand to work.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Why the peer went away, once it has.
    pub fn cause(&self) -> Option<Cause> {
        self.cause.get().copied()
    }

    /// Stops the watch without cancelling the token (for example when the reply was
    /// sent and the stream is about to be read again).
    pub fn disarm(&self) {
        self.stop.cancel();
    }
}
