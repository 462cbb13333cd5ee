//! Platforms without TCP_INFO support in hangup.

use std::io;
use std::os::fd::AsFd;

use super::{HangupEvents, TcpInfo};

/// TCP_INFO is read on Linux only.
pub fn tcp_info(_socket: &impl AsFd) -> io::Result<TcpInfo> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_INFO is only read on Linux",
    ))
}

/// Hangup-only registrations need epoll (`EPOLLRDHUP` without `EPOLLIN`): Linux only.
#[derive(Debug)]
pub struct HangupRegistration {
    never: std::convert::Infallible,
}

impl HangupRegistration {
    /// Always `Unsupported` here.
    pub fn new(_socket: std::os::fd::BorrowedFd<'_>) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the hangup watch needs Linux epoll",
        ))
    }

    /// Never called: no registration exists.
    pub fn take(&self) -> io::Result<HangupEvents> {
        match self.never {}
    }
}

impl std::os::fd::AsRawFd for HangupRegistration {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self.never {}
    }
}

/// Unsupported here.
pub fn send_nonblocking(_socket: std::os::fd::BorrowedFd<'_>, _bytes: &[u8]) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}
