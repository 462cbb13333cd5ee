//! Linux: one raw `getsockopt(TCP_INFO)`.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use super::{HangupEvents, TcpInfo};

/// Reads TCP_INFO (`getsockopt(IPPROTO_TCP, TCP_INFO)`) from a TCP socket.
///
/// Works on any TCP socket, connected or not; costs one system call.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let stream = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let info = hangup::tcp_info(&stream)?;
/// assert_eq!(info.state, 1); // ESTABLISHED
/// assert_eq!(info.unacked, 0);
/// # Ok(())
/// # }
/// ```
pub fn tcp_info(socket: &impl AsFd) -> io::Result<TcpInfo> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut raw: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `raw`, which outlives the call; the kernel
    // writes at most `len` bytes and reports how many it wrote.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut raw as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let micros = |us: u32| Duration::from_micros(u64::from(us));
    let millis = |ms: u32| Duration::from_millis(u64::from(ms));
    Ok(TcpInfo {
        state: raw.tcpi_state,
        retransmits: raw.tcpi_retransmits,
        probes: raw.tcpi_probes,
        backoff: raw.tcpi_backoff,
        rto: micros(raw.tcpi_rto),
        rtt: micros(raw.tcpi_rtt),
        rtt_var: micros(raw.tcpi_rttvar),
        unacked: raw.tcpi_unacked,
        total_retrans: raw.tcpi_total_retrans,
        last_data_sent: millis(raw.tcpi_last_data_sent),
        last_data_recv: millis(raw.tcpi_last_data_recv),
        last_ack_recv: millis(raw.tcpi_last_ack_recv),
        snd_cwnd: raw.tcpi_snd_cwnd,
    })
}

/// A private epoll instance holding one registration of a socket, for FIN, RST and
/// errors only: `EPOLLRDHUP | EPOLLET`, and the `EPOLLERR`/`EPOLLHUP` epoll always
/// reports. No `EPOLLIN`: plain data never queues an event here, so the socket's owner
/// keeps its own readiness and its data, and this registration stays silent until the
/// connection's state changes. Edge-triggered: each change is reported once.
///
/// The epoll descriptor is itself pollable (readable while it has an event queued), so
/// tokio drives it through `AsyncFd`. Closing it drops the registration with it; it
/// never outlives the borrow of the socket, so it never needs an `EPOLL_CTL_DEL` on a
/// descriptor number that might have been reused.
#[derive(Debug)]
pub struct HangupRegistration {
    epoll: std::os::fd::OwnedFd,
}

impl HangupRegistration {
    /// Registers `socket` (epoll_create1 + one epoll_ctl).
    pub fn new(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<Self> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new
        // descriptor that we own from here on.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just returned by epoll_create1 and is owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open for the call; `event` outlives it.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &mut event,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { epoll })
    }

    /// The queued change, if any (`epoll_wait` with a zero timeout); `WouldBlock` when
    /// there is none, so that `AsyncFd::try_io` clears the readiness.
    pub fn take(&self) -> io::Result<HangupEvents> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        loop {
            // SAFETY: room for exactly one event, which outlives the call.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut event, 1, 0) };
            match n {
                0 => return Err(io::ErrorKind::WouldBlock.into()),
                n if n > 0 => {
                    let bits = event.events as libc::c_int;
                    return Ok(HangupEvents {
                        read_closed: bits & libc::EPOLLRDHUP != 0,
                        error: bits & (libc::EPOLLERR | libc::EPOLLHUP) != 0,
                    });
                }
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }
}

impl AsRawFd for HangupRegistration {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.epoll.as_raw_fd()
    }
}

/// Sends `bytes` without blocking and without SIGPIPE; how many left.
pub fn send_nonblocking(socket: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `bytes`, which outlives the call.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
