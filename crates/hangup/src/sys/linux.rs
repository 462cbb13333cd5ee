//! Linux: one raw `getsockopt(TCP_INFO)`.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use super::TcpInfo;

/// Reads TCP_INFO (`getsockopt(IPPROTO_TCP, TCP_INFO)`) from a TCP socket.
///
/// Works on any TCP socket, connected or not; costs one system call.
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
