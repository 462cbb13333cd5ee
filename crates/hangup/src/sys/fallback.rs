//! Platforms without TCP_INFO support in hangup.

use std::io;
use std::os::fd::AsFd;

use super::TcpInfo;

/// TCP_INFO is read on Linux only.
pub fn tcp_info(_socket: &impl AsFd) -> io::Result<TcpInfo> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_INFO is only read on Linux",
    ))
}
