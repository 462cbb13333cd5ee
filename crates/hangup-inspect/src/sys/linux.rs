//! Linux collection: one sock_diag dump per address family, then `/proc/*/fd`.
//!
//! The request and the bulk of the answer go through `netlink-packet-sock-diag`.
//! Two things are read from the raw bytes instead:
//!
//! - the timer fields of `struct inet_diag_msg`: the crate's `Timer` keeps
//!   `idiag_retrans` only for the retransmit timer and drops `idiag_expires` for
//!   TIME_WAIT, and `ss -o` prints both for every timer;
//! - `struct tcp_info`: its length grows with kernel versions, and the crate's
//!   typed parser rejects answers shorter than the newest layout it knows.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket as NetlinkSocket, SocketAddr as NlAddr};

use crate::error::InspectError;
use crate::model::{
    KernelTimer, Owner, OwnerStatus, Snapshot, Socket, TcpInfo, TcpState, TimerKind,
};

/// Size of `struct nlmsghdr`.
const NLMSG_HEADER_LEN: usize = 16;
/// Offsets inside `struct inet_diag_msg` (family, state, timer, retrans, id[48], expires, ...).
const IDIAG_TIMER: usize = 2;
const IDIAG_RETRANS: usize = 3;
const IDIAG_EXPIRES: usize = 52;

/// Dumps every TCP socket of the calling thread's network namespace, IPv4 and
/// IPv6, all states, with TCP_INFO, then resolves owners through `/proc`.
pub(crate) fn collect() -> Result<Snapshot, InspectError> {
    let mut snapshot = collect_sockets()?;
    resolve_owners(&mut snapshot);
    Ok(snapshot)
}

/// [`collect`] without the owners: the netlink dumps only, no walk of `/proc`
/// (cheap enough to repeat every few milliseconds).
pub(crate) fn collect_sockets() -> Result<Snapshot, InspectError> {
    let mut snapshot = Snapshot::default();
    let netlink = open()?;
    for (sequence, (family, name)) in (1..).zip([(AF_INET, "ipv4"), (AF_INET6, "ipv6")]) {
        match dump(&netlink, family, sequence) {
            Ok(mut sockets) => snapshot.sockets.append(&mut sockets),
            // A kernel built or booted without IPv6 has no AF_INET6 handler.
            Err(InspectError::Kernel {
                family: "ipv6",
                source,
            }) if matches!(
                source.raw_os_error(),
                Some(libc::ENOENT | libc::EAFNOSUPPORT)
            ) =>
            {
                snapshot
                    .notes
                    .push("ipv6 sockets not listed: the kernel has no ipv6 sock_diag".to_owned());
            }
            Err(InspectError::Kernel { source, .. }) => {
                return Err(InspectError::Kernel {
                    family: name,
                    source,
                })
            }
            Err(other) => return Err(other),
        }
    }
    Ok(snapshot)
}

/// How long one `recv` may wait for the kernel before the dump is abandoned.
/// The kernel answers a dump at once; this only bounds a wedged one.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

fn open() -> Result<NetlinkSocket, InspectError> {
    let mut socket = NetlinkSocket::new(NETLINK_SOCK_DIAG).map_err(InspectError::Netlink)?;
    set_recv_timeout(&socket, RECV_TIMEOUT).map_err(InspectError::Netlink)?;
    socket.bind_auto().map_err(InspectError::Netlink)?;
    socket
        .connect(&NlAddr::new(0, 0))
        .map_err(InspectError::Netlink)?;
    Ok(socket)
}

/// `SO_RCVTIMEO`: `recv` fails with `EAGAIN` after `timeout` without data.
fn set_recv_timeout(socket: &NetlinkSocket, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 1_000_000, so it fits suseconds_t on every target (i32 or i64).
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the fd is a live socket owned by `socket`, and the option value is a
    // correctly sized, initialized timeval.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(value).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(0),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn dump(netlink: &NetlinkSocket, family: u8, sequence: u32) -> Result<Vec<Socket>, InspectError> {
    let family_name = if family == AF_INET { "ipv4" } else { "ipv6" };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    netlink.send(&bytes, 0).map_err(InspectError::Netlink)?;

    let mut sockets = Vec::new();
    loop {
        let (datagram, _) = netlink.recv_from_full().map_err(InspectError::Netlink)?;
        let part = parse_dump_datagram(&datagram, family_name)?;
        sockets.extend(part.sockets);
        if part.done {
            return Ok(sockets);
        }
    }
}

/// What one datagram of a sock_diag dump held.
#[derive(Debug, Default)]
pub struct DumpDatagram {
    /// The TCP sockets it described, in order (messages for unknown states are skipped).
    pub sockets: Vec<Socket>,
    /// It ended the dump (`NLMSG_DONE`); later messages in it were not read.
    pub done: bool,
}

/// Parses one datagram of the kernel's answer to a sock_diag dump: the netlink
/// messages in it, 4-byte aligned, each `InetResponse` into a [`Socket`].
///
/// `family` (`ipv4` or `ipv6`) names the dump in [`InspectError::Kernel`].
///
/// # Errors
/// [`InspectError::Decode`] for a message that does not fit or does not decode;
/// [`InspectError::Kernel`] for the kernel's `NLMSG_ERROR`.
pub fn parse_dump_datagram(
    datagram: &[u8],
    family: &'static str,
) -> Result<DumpDatagram, InspectError> {
    let mut part = DumpDatagram::default();
    let mut offset = 0;
    while offset + NLMSG_HEADER_LEN <= datagram.len() {
        let message_bytes = &datagram[offset..];
        let length = u32::from_ne_bytes(
            message_bytes[..4]
                .try_into()
                .map_err(|_| InspectError::Decode("truncated netlink header".into()))?,
        ) as usize;
        if length < NLMSG_HEADER_LEN || length > message_bytes.len() {
            return Err(InspectError::Decode(format!(
                "netlink message length {length} does not fit in {} bytes",
                message_bytes.len()
            )));
        }
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&message_bytes[..length])
            .map_err(|error| InspectError::Decode(error.to_string()))?;
        match message.payload {
            NetlinkPayload::Done(_) => {
                part.done = true;
                return Ok(part);
            }
            NetlinkPayload::Error(error) => {
                // Not `to_io()`: it negates the code, which overflows on i32::MIN.
                let errno = error.raw_code().saturating_abs();
                return Err(InspectError::Kernel {
                    family,
                    source: io::Error::from_raw_os_error(errno),
                });
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                let raw = &message_bytes[NLMSG_HEADER_LEN..length];
                if let Some(socket) = to_socket(&response, raw) {
                    part.sockets.push(socket);
                }
            }
            _ => {}
        }
        // Netlink messages are 4-byte aligned inside a datagram.
        offset += (length + 3) & !3;
    }
    Ok(part)
}

fn to_socket(response: &InetResponse, raw: &[u8]) -> Option<Socket> {
    let header = &response.header;
    let state = TcpState::from_kernel(header.state)?;
    let id = &header.socket_id;
    let cookie_low = u32::from_ne_bytes(id.cookie[..4].try_into().ok()?);
    let cookie_high = u32::from_ne_bytes(id.cookie[4..].try_into().ok()?);
    let timer = timer_from_raw(raw);
    let tcp_info = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(bytes) => parse_tcp_info(bytes),
        _ => None,
    });
    Some(Socket {
        state,
        local: socket_addr(id.source_address, id.source_port),
        peer: socket_addr(id.destination_address, id.destination_port),
        recv_q: header.recv_queue,
        send_q: header.send_queue,
        uid: header.uid,
        inode: header.inode,
        cookie: u64::from(cookie_low) | (u64::from(cookie_high) << 32),
        timer,
        tcp_info,
        owners: Vec::new(),
        owner_status: if header.inode == 0 {
            OwnerStatus::Orphan
        } else {
            OwnerStatus::Unknown
        },
    })
}

fn socket_addr(address: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(address, port)
}

/// Reads `idiag_timer`, `idiag_retrans` and `idiag_expires` from a raw
/// `struct inet_diag_msg` (see `inet_sk_diag_fill` in `net/ipv4/inet_diag.c`).
pub(crate) fn timer_from_raw(raw: &[u8]) -> Option<KernelTimer> {
    let kind = match raw.get(IDIAG_TIMER)? {
        1 => TimerKind::Retransmit,
        2 => TimerKind::Keepalive,
        3 => TimerKind::TimeWait,
        4 => TimerKind::Persist,
        _ => return None,
    };
    let retries = *raw.get(IDIAG_RETRANS)?;
    let expires = u32::from_ne_bytes(raw.get(IDIAG_EXPIRES..IDIAG_EXPIRES + 4)?.try_into().ok()?);
    Some(KernelTimer {
        kind,
        expires_in: Duration::from_millis(u64::from(expires)),
        retries,
    })
}

/// Decodes the fields the inspector uses from a raw `struct tcp_info`
/// (`include/uapi/linux/tcp.h`). Returns `None` if even the fields every
/// kernel since 2.6 sends are missing.
pub(crate) fn parse_tcp_info(bytes: &[u8]) -> Option<TcpInfo> {
    let u8_at = |offset: usize| bytes.get(offset).copied();
    let u32_at = |offset: usize| {
        bytes
            .get(offset..offset + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |offset: usize| {
        bytes
            .get(offset..offset + 8)
            .map(|b| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    let millis = |offset: usize| u32_at(offset).map(|v| Duration::from_millis(u64::from(v)));
    let micros = |offset: usize| u32_at(offset).map(|v| Duration::from_micros(u64::from(v)));
    Some(TcpInfo {
        retransmits: u8_at(2)?,
        probes: u8_at(3)?,
        backoff: u8_at(4)?,
        rto: micros(8)?,
        unacked: u32_at(24)?,
        lost: u32_at(32)?,
        retrans: u32_at(36)?,
        last_data_sent: millis(44)?,
        last_data_recv: millis(52)?,
        last_ack_recv: millis(56)?,
        rtt: micros(68)?,
        rttvar: micros(72)?,
        total_retrans: u32_at(100)?,
        bytes_acked: u64_at(120),
        bytes_received: u64_at(128),
        notsent_bytes: u32_at(144),
        snd_wnd: u32_at(228),
    })
}

/// Fills `owners` from `/proc/*/fd/*` links named `socket:[INODE]`.
fn resolve_owners(snapshot: &mut Snapshot) {
    let mut wanted: HashMap<u32, Vec<Owner>> = snapshot
        .sockets
        .iter()
        .filter(|socket| socket.inode != 0)
        .map(|socket| (socket.inode, Vec::new()))
        .collect();
    let mut unreadable = Vec::new();
    let Ok(proc_entries) = fs::read_dir("/proc") else {
        snapshot
            .notes
            .push("/proc is not readable: no socket owners shown".to_owned());
        return;
    };
    let mut pids: Vec<u32> = proc_entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let fds = match fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => fds,
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                unreadable.push(pid);
                continue;
            }
            // The process exited since /proc was listed.
            Err(_) => continue,
        };
        let mut comm: Option<String> = None;
        for entry in fds.flatten() {
            let Ok(target) = fs::read_link(entry.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(owners) = wanted.get_mut(&inode) else {
                continue;
            };
            let Some(fd) = entry.file_name().to_str().and_then(|f| f.parse().ok()) else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim_end_matches('\n').to_owned())
                    .unwrap_or_default()
            });
            owners.push(Owner {
                pid,
                comm: comm.clone(),
                fd,
            });
        }
    }
    let mut unresolved = 0usize;
    for socket in &mut snapshot.sockets {
        if socket.inode == 0 {
            continue;
        }
        if let Some(owners) = wanted.get(&socket.inode) {
            if !owners.is_empty() {
                socket.owners = owners.clone();
                socket.owners.sort();
                socket.owner_status = OwnerStatus::Found;
                continue;
            }
        }
        unresolved += 1;
    }
    if unreadable.is_empty() && unresolved > 0 {
        snapshot.notes.push(format!(
            "{unresolved} socket(s) on this host have no owner in /proc: held by processes outside this \
             pid namespace, or closed during the scan"
        ));
    }
    if !unreadable.is_empty() {
        snapshot.notes.push(format!(
            "{unresolved} socket(s) on this host have no known owner: /proc/PID/fd of {} process(es) \
             is not readable by this user; run as root (or with CAP_SYS_PTRACE) to see \
             other users' pids",
            unreadable.len()
        ));
    }
    snapshot.unreadable_pids = unreadable;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: header (length, type, flags, sequence, port) and payload.
    fn netlink_message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(NLMSG_HEADER_LEN + payload.len()).unwrap();
        let mut out = length.to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn kernel_errors_of_any_code_are_errors_not_panics() {
        // Found by fuzz/sock_diag: netlink-packet-core's `to_io()` negates the code,
        // which overflowed (a panic in debug builds) on i32::MIN.
        const NLMSG_ERROR: u16 = 2;
        for code in [-libc::ENOENT, i32::MIN, i32::MAX] {
            let mut payload = code.to_ne_bytes().to_vec();
            payload.extend_from_slice(&[0; 16]);
            let datagram = netlink_message(NLMSG_ERROR, &payload);
            match parse_dump_datagram(&datagram, "ipv4") {
                Err(InspectError::Kernel { family, source }) => {
                    assert_eq!(family, "ipv4");
                    if code == -libc::ENOENT {
                        assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
                    }
                }
                other => panic!("code {code}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_datagram_ends_at_done_and_rejects_bad_lengths() {
        const NLMSG_DONE: u16 = 3;
        let done = parse_dump_datagram(&netlink_message(NLMSG_DONE, &[0; 4]), "ipv6").unwrap();
        assert!(done.done);
        assert!(done.sockets.is_empty());
        let mut truncated = netlink_message(NLMSG_DONE, &[0; 4]);
        truncated[0] = 200;
        assert!(matches!(
            parse_dump_datagram(&truncated, "ipv4"),
            Err(InspectError::Decode(_))
        ));
        let empty = parse_dump_datagram(&[], "ipv4").unwrap();
        assert!(!empty.done);
    }

    #[test]
    fn tcp_info_offsets_follow_the_uapi_layout() {
        let mut bytes = vec![0u8; 232];
        bytes[2] = 3; // retransmits
        bytes[3] = 2; // probes
        bytes[4] = 4; // backoff
        bytes[8..12].copy_from_slice(&1_600_000u32.to_ne_bytes()); // rto us
        bytes[24..28].copy_from_slice(&7u32.to_ne_bytes()); // unacked
        bytes[52..56].copy_from_slice(&9_000u32.to_ne_bytes()); // last_data_recv ms
        bytes[56..60].copy_from_slice(&8_000u32.to_ne_bytes()); // last_ack_recv ms
        bytes[68..72].copy_from_slice(&250u32.to_ne_bytes()); // rtt us
        bytes[100..104].copy_from_slice(&11u32.to_ne_bytes()); // total_retrans
        bytes[228..232].copy_from_slice(&0u32.to_ne_bytes()); // snd_wnd
        let info = parse_tcp_info(&bytes).unwrap();
        assert_eq!(info.retransmits, 3);
        assert_eq!(info.probes, 2);
        assert_eq!(info.backoff, 4);
        assert_eq!(info.rto, Duration::from_millis(1600));
        assert_eq!(info.unacked, 7);
        assert_eq!(info.last_recv(), Duration::from_secs(8));
        assert_eq!(info.rtt, Duration::from_micros(250));
        assert_eq!(info.total_retrans, 11);
        assert_eq!(info.snd_wnd, Some(0));
    }

    #[test]
    fn short_tcp_info_from_old_kernels_leaves_new_fields_empty() {
        let info = parse_tcp_info(&[0u8; 104]).unwrap();
        assert_eq!(info.snd_wnd, None);
        assert_eq!(info.bytes_acked, None);
        assert!(parse_tcp_info(&[0u8; 100]).is_none());
    }

    #[test]
    fn raw_timer_fields_keep_retries_and_expiry_for_every_timer() {
        let mut raw = vec![0u8; 72];
        raw[IDIAG_TIMER] = 2;
        raw[IDIAG_RETRANS] = 1;
        raw[IDIAG_EXPIRES..IDIAG_EXPIRES + 4].copy_from_slice(&6_500u32.to_ne_bytes());
        let timer = timer_from_raw(&raw).unwrap();
        assert_eq!(timer.kind, TimerKind::Keepalive);
        assert_eq!(timer.retries, 1);
        assert_eq!(timer.expires_in, Duration::from_millis(6500));
        raw[IDIAG_TIMER] = 0;
        assert!(timer_from_raw(&raw).is_none());
    }
}
